"""The process's open-file limit: raised to what the system allows before a wide run.

A run keeps descriptors open per host: an SSH connection's socket for the whole
run (runner.connections.registry), and in the lab a few SQLite connections per
engine thread (runner.lab.store). Many systems start programs with a soft limit
of 1,024 and a hard limit far above it (systemd's default hard limit is
524,288): the soft limit is the program's to raise, and a 200-client lab run
with 25 threads failed at 1,024 with "unable to open database file".
"""
from __future__ import annotations

import resource

#: The most a run asks for, even when the hard limit is unlimited.
CEILING = 1 << 20


def raise_open_files(needed: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (default: as far as the hard limit allows);
    returns the soft limit now in force (never lowers it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    want = top if needed is None else min(needed, top)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return CEILING if soft == resource.RLIM_INFINITY else soft


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE in force (CEILING when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return CEILING if soft == resource.RLIM_INFINITY else soft
