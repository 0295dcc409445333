"""How many sessions one connection may have open at once, and waiting for a free one.

An SSH server caps the session channels (command executions, the SFTP
subsystem) of one connection: OpenSSH's ``MaxSessions``, 10 by default, on
Linux and on Windows alike. Every task on a shared server (LCS, Exchange IM)
runs over that server's one connection, so without a cap of our own a run
with many forks asks for more channels than the server grants and the
server refuses the surplus. A ``SessionLimiter`` is that cap on the client
side: a session is opened only while holding a slot, tasks beyond the limit
wait for one, and a refusal by the server anyway (its count lags ours by a
round trip when a channel has just closed) is back-pressure: ``backoff``
says how long to wait before asking again.
"""
from __future__ import annotations

import random
import threading
import time

DEFAULT_MAX_SESSIONS = 8   # below OpenSSH's MaxSessions 10: room for a session the server has not yet freed


class SessionLimiter:
    """A counting gate of ``limit`` slots, with the figures a test or benchmark wants to see."""

    def __init__(self, limit: int = DEFAULT_MAX_SESSIONS) -> None:
        if limit < 1:
            raise ValueError("a session limit is at least 1")
        self.limit = limit
        self._cond = threading.Condition()
        self._in_use = 0
        self.peak = 0          # the most slots ever held at once
        self.waited = 0        # acquisitions that had to wait for a free slot
        self.refusals = 0      # channel opens the server refused while we held a slot

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds (None: until one is free)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._in_use >= self.limit:
                self.waited += 1
            while self._in_use >= self.limit:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._in_use += 1
            self.peak = max(self.peak, self._in_use)
            return True

    def release(self) -> None:
        """Give a slot back and wake one waiter."""
        with self._cond:
            if self._in_use <= 0:
                raise RuntimeError("release() without acquire()")
            self._in_use -= 1
            self._cond.notify()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before asking the server again after its ``attempt``-th refusal (1-based).

        Short and growing (50 ms doubling to 1 s, with jitter so that waiters
        do not ask in lockstep): a refused session is a busy server, not a
        down one, and is freed as soon as another command's channel closes.
        """
        with self._cond:
            self.refusals += 1
        base = min(1.0, 0.05 * (2 ** max(0, attempt - 1)))
        return base * (0.5 + random.random() / 2)


def parse_max_sessions(value: object) -> int:
    """The ``ssh_max_sessions`` host variable as a positive int; ValueError names what is wrong."""
    if value is None:
        return DEFAULT_MAX_SESSIONS
    if isinstance(value, bool):
        raise ValueError(f"ssh_max_sessions must be a whole number of at least 1, not {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"ssh_max_sessions must be a whole number of at least 1, not {value!r}") from None
    if n < 1:
        raise ValueError(f"ssh_max_sessions must be a whole number of at least 1, not {value!r}")
    return n
