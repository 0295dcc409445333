"""The ``runner`` command's entry point (console script and ``python -m runner``).

Ctrl-C must end the command with exit 99 and a one-line message at any
moment, including while the modules are still importing (about 170 ms at
start-up, when Python would print a ``KeyboardInterrupt`` traceback) and
while the interpreter shuts down. So this module imports nothing heavy: it
installs a SIGINT handler that exits 99 at once, imports the CLI, hands
SIGINT back to Python (``runner.cli.run`` and ``runner apply`` handle it
from there) for the command itself, and takes it again for the exit, which
skips Python's shutdown (it would restore the default SIGINT action first).
"""
from __future__ import annotations

import os
import signal
import sys

EXIT_INTERRUPTED = 99  # runner.errors.EXIT_INTERRUPTED, without importing it


def _exit_interrupted(signum: int, frame: object) -> None:
    """SIGINT outside a command: nothing has started (or everything has ended), so stop now."""
    try:
        os.write(2, b"\ninterrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    """Run the ``runner`` command line and exit with its code."""
    try:
        signal.signal(signal.SIGINT, _exit_interrupted)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        from runner.cli import main as cli_main
        cli_main(argv)
        return
    from runner.cli import run
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = run(argv)
    signal.signal(signal.SIGINT, _exit_interrupted)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    # The command is over (the state store closed, the lock released): leave now. Python's
    # own shutdown would first hand SIGINT back to the system, and a Ctrl-C in that window
    # would kill the process (exit -2) instead of exiting 99.
    os._exit(code)


if __name__ == "__main__":
    main()
