"""Seeded, deterministic fault injection for the lab (lab.json ``faults``).

Config: ``{"seed": 7, "global": {"drop": 0.0, "timeout": 0.0, "slow": 0.0,
"down": 0.0, "msiexec_1618": 0.0, "lcs_busy": 0.0, "hive_locked": 0.0,
"put_truncated": 0.0},
"hosts": {"pc0003": {"down": 1.0}}}``; a host's own rate wins over the
global one.

Decision for an event: ``sha256(f"{seed}|{host}|{kind}|{n}")`` read as a
fraction in [0, 1) is compared with the rate, where ``n`` is a per-host,
per-kind counter persisted in host.db (so separate processes of a served
lab continue the same sequence). ``down`` uses no counter: a host is down
for the whole life of the lab or not at all. A rate of 0 never draws (and
never writes), a rate of 1 always fires.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

from runner.lab.store import Lab, LabHost

SLOW_SECONDS = 0.05
KINDS = ("drop", "timeout", "slow", "down", "msiexec_1618", "lcs_busy", "hive_locked", "put_truncated")
#: What each fault does to a run (``runner lab faults --help`` lists them).
MEANINGS = {
    "drop": "the connection drops after a command ran (it did run); retried",
    "timeout": "a command times out before it runs; retried",
    "slow": f"every command waits {SLOW_SECONDS:g} s first; nothing fails",
    "down": "the host never answers (per host, for good): unreachable",
    "msiexec_1618": "msiexec exits 1618 (another install runs); retried",
    "lcs_busy": "the LCS server answers busy; retried",
    "hive_locked": "a user's hive is in use, cannot be loaded; retried",
    "put_truncated": "a file put on a host arrives cut short; the upgrade's hash check fails, retried",
}


def _fraction(*parts: object) -> float:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


class Faults:
    """The fault rates of one lab and the draws against them."""

    def __init__(self, lab: Lab) -> None:
        cfg: dict[str, Any] = lab.config.get("faults") or {}
        self.seed = cfg.get("seed", lab.config.get("seed", 0))
        self.global_rates: dict[str, float] = {k: float(v) for k, v in (cfg.get("global") or {}).items()}
        self.host_rates: dict[str, dict[str, float]] = {
            str(h).lower(): {k: float(v) for k, v in (r or {}).items()}
            for h, r in (cfg.get("hosts") or {}).items()}

    def rate(self, host: str, kind: str) -> float:
        """The configured rate of ``kind`` for ``host`` (0.0 when none)."""
        own = self.host_rates.get(host.lower(), {})
        return own.get(kind, self.global_rates.get(kind, 0.0))

    def any(self, host: str) -> bool:
        """Whether any fault can fire on ``host`` (lets callers skip all work)."""
        return any(self.rate(host, k) > 0 for k in KINDS)

    def fires(self, host: LabHost, kind: str) -> bool:
        """Draw once for ``kind`` on ``host``; deterministic for the seed and the draw count."""
        r = self.rate(host.name, kind)
        if r <= 0.0:
            return False
        if r >= 1.0:
            return True
        if kind == "down":
            return _fraction(self.seed, host.name.lower(), kind) < r
        n = host.next_counter(kind)
        return _fraction(self.seed, host.name.lower(), kind, n) < r

    def before_command(self, host: LabHost) -> str | None:
        """Connection-level faults before a command runs: "down" or "timeout" (None: go on).

        "slow" sleeps ``SLOW_SECONDS`` and lets the command run.
        """
        if self.fires(host, "down"):
            return "down"
        if self.fires(host, "timeout"):
            return "timeout"
        if self.fires(host, "slow"):
            time.sleep(SLOW_SECONDS)
        return None

    def after_command(self, host: LabHost) -> str | None:
        """"drop" when the connection drops after the command ran (its effect stays)."""
        return "drop" if self.fires(host, "drop") else None
