"""A text stream that outlives its reader: ``runner apply``'s stdout and stderr.

An overnight run must not die because nobody reads it any more: a pager quit
(``| less``, ``| head``), a terminal closed, an ssh session to the control node
dropped (SIGHUP, and then EIO on every write). The first write that fails marks
the stream lost: it says so once on another stream (stderr), points its file
descriptor at ``/dev/null`` (so later writes and Python's own flushes go nowhere
instead of failing again) and calls ``on_lost``; every later write is dropped.
The run itself is recorded in the state store either way, so ``runner status``
and ``runner report`` show what the lost lines would have said.

Example::

    out = LosableStream(sys.stdout, "standard output", notice=err,
                        then="the run goes on; `runner status` shows how it ends")
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, TextIO


class LosableStream:
    """``stream``, except that once it cannot be written to, it is dropped, said once on ``notice``."""

    def __init__(self, stream: TextIO, name: str, *, notice: "LosableStream | TextIO | None" = None,
                 then: str = "", on_lost: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.name = name
        self.notice = notice
        self.then = then
        self.on_lost = on_lost
        self.lost: str | None = None  # why, once lost
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                return self.stream.write(text)
            except (OSError, ValueError) as exc:  # BrokenPipeError, EIO of a hung-up tty, a closed file
                self.lose(_why(exc))
        return len(text)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self.lose(_why(exc))

    def lose(self, why: str, *, say: bool = True) -> None:
        """Stop writing to the stream (``why`` it went away), say it once unless ``say`` is false."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = why
        _to_devnull(self.stream)
        if say and self.notice is not None:
            try:
                self.notice.write(f"\noutput stopped: {self.name} {why}" + (f"; {self.then}" if self.then else "")
                                  + "\n")
                self.notice.flush()
            except (OSError, ValueError):
                pass
        if self.on_lost is not None:
            self.on_lost()

    def isatty(self) -> bool:
        try:
            return self.lost is None and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno... for rich and click
        return getattr(self.stream, name)


def _why(exc: BaseException) -> str:
    if isinstance(exc, BrokenPipeError):
        return "was closed by its reader (a pager quit, or `| head`)"
    if isinstance(exc, ValueError):
        return "was closed"
    return f"cannot be written to ({getattr(exc, 'strerror', None) or exc})"


def _to_devnull(stream: TextIO) -> None:
    """Point the stream's descriptor (stdout's 1, stderr's 2) at /dev/null: what is still
    buffered, and any later write by other code, goes nowhere instead of failing."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)
