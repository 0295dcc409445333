"""Running the CLI in-process for tests of user mistakes (see tests/test_cli_errors.py)."""
from __future__ import annotations

from runner.cli import run


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``runner ARGS`` in-process; the exit code and stdout+stderr."""
    try:
        code = run(list(args))
    except SystemExit as exc:  # `runner lab` commands exit through sys.exit
        code = exc.code
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text and "unexpected error" not in text, text
    return code, text
