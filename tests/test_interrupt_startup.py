"""Ctrl-C while the runner is still starting up (modules importing) exits 99 with a
message, never a KeyboardInterrupt traceback (issue 8, item 7)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs the real entry point (runner.__main__.main) with every import of the CLI's
# modules slowed down, and says on stderr when the imports have begun, so that the
# test can send SIGINT at a moment that is certainly inside them.
SLOW_IMPORTS = textwrap.dedent('''\
    import importlib.abc, os, sys, time
    class Slow(importlib.abc.MetaPathFinder):
        said = False
        def find_spec(self, name, path, target=None):
            # not runner.__main__ itself: the window before its first line is Python's own
            if name.split(".")[0] in ("click", "yaml", "jinja2", "jsonschema") or (
                    name.startswith("runner.") and name != "runner.__main__"):
                if not Slow.said:
                    Slow.said = True
                    os.write(2, b"IMPORTING\\n")
                time.sleep(0.05)
            return None
    sys.meta_path.insert(0, Slow())
    sys.argv = ["runner", *sys.argv[1:]]
    from runner.__main__ import main
    main()
''')


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_IMPORTS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("delay", [0.0, 0.2])
def test_ctrl_c_while_modules_import_exits_99_without_traceback(tmp_path, delay):
    proc = _start(tmp_path, "validate", "nosuch.yml")
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"IMPORTING\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 99, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "interrupted" in text


def test_python_m_runner_and_the_console_script_use_the_same_entry_point():
    toml = (REPO / "pyproject.toml").read_text()
    assert 'runner = "runner.__main__:main"' in toml
    proc = subprocess.run([sys.executable, "-m", "runner", "--help"], cwd=REPO, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0 and b"Exit codes" in proc.stdout
