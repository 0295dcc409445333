"""One cProfile per thread, collected for a combined report (shared by the benchmarks)."""
from __future__ import annotations

import cProfile
import threading


class ThreadProfiles:
    """Hands each thread its own cProfile.Profile (created on first use) and keeps them all."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def current(self) -> cProfile.Profile:
        """The calling thread's profile; enable/disable it around the work to measure."""
        prof = getattr(self._local, "prof", None)
        if prof is None:
            prof = self._local.prof = cProfile.Profile()
            with self._lock:
                self.profiles.append(prof)
        return prof
