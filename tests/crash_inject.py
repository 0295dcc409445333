"""Kill a Python process right after its N-th durable write, to test all-or-nothing changes.

A durable write is what survives the process: a SQLite COMMIT (explicit, or a
write statement in autocommit mode) and an ``os.replace`` (how the lab and the
runner put files in place). ``run_killed(script, n)`` runs ``script`` in a
fresh interpreter that ``os._exit(KILLED)``s just after its n-th such write:
the same as SIGKILL at that moment, reproducibly. Looping n = 1, 2, ... until
the script finishes visits every moment between two writes.

The script's lab round trips run in its own threads (``RUNNER_LAB_WORKERS=0``), so
that the lab's writes are among the ones counted. Used by tests only; the code under
test is not changed for it.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

KILLED = 77
ROOT = Path(__file__).resolve().parent.parent
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP")


def install(after: int) -> None:
    """Patch sqlite3.connect and os.replace so that the process dies after ``after`` writes."""
    count = [0]

    def durable() -> None:
        count[0] += 1
        if count[0] >= after:
            sys.stdout.flush()
            os._exit(KILLED)

    class Conn(sqlite3.Connection):
        def _after(self, sql: str) -> None:
            word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
            if word in ("COMMIT", "END") or (word in _WRITES and not self.in_transaction):
                durable()

        def execute(self, sql, *args):  # type: ignore[override]
            cur = super().execute(sql, *args)
            self._after(sql)
            return cur

        def executemany(self, sql, *args):  # type: ignore[override]
            cur = super().executemany(sql, *args)
            self._after(sql)
            return cur

        def executescript(self, script):  # type: ignore[override]
            cur = super().executescript(script)
            durable()
            return cur

        def commit(self) -> None:
            was = self.in_transaction
            super().commit()
            if was:
                durable()

    real_connect, real_replace = sqlite3.connect, os.replace

    def connect(*args, **kwargs):
        kwargs.setdefault("factory", Conn)
        return real_connect(*args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        durable()

    sqlite3.connect = connect  # type: ignore[assignment]
    os.replace = replace  # type: ignore[assignment]


def run_killed(script: str, after: int | None, *, cwd: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` (Python source) in a subprocess killed after ``after`` durable writes
    (None: not killed). The repository and tests/ are on its path."""
    prelude = "import crash_inject\n" + (f"crash_inject.install({after})\n" if after else "")
    # The lab's round trips in the script's own threads (runner.lab.workers): its writes are
    # then the process's writes, counted and killed after like the runner's.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), RUNNER_LAB_WORKERS="0")
    return subprocess.run([sys.executable, "-c", prelude + script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
