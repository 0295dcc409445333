"""Where a Windows host keeps its system folder, learned from the host (never assumed).

``%SystemRoot%`` is ``C:\\WINNT`` on Windows 2000 (fresh installs, and XP
machines upgraded from 2000) and ``C:\\WINDOWS`` on XP and Server 2003
(docs/windows-versions.md). The runner's scratch files (reg exports, LDIF
files, batch scripts) and the installer log go to ``%SystemRoot%\\Temp``,
which every version has; but a file put or fetched over the connection (SFTP,
the lab's in-process channel) needs the real path, which cmd.exe's ``%...%``
expansion cannot give it. So the folder is:

1. the host variable ``remote_temp`` when the inventory sets one;
2. else ``env.SystemRoot`` of the facts inventory_clients recorded for the host;
3. else read from the host with ``echo %SystemRoot%``, once per connection (the
   run's shared connection to the host: one round trip per server per run),
   remembered for that connection; a step that runs a line on the host anyway
   can fold the ``echo`` into it and hand the answer to :func:`remember`.
"""
from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Mapping

from runner.windows.cmdline import Command

#: What is used when the host does not answer with a path (a transport that lost the reply).
FALLBACK_SYSTEM_ROOT = r"C:\WINDOWS"
_PATH = re.compile(r"[A-Za-z]:\\[^\r\n%]*")

_learned: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def system_root(conn: Any, facts: Mapping[str, Any] | None = None) -> str:
    """The host's ``%SystemRoot%``: from its facts, else asked once per connection."""
    env = (facts or {}).get("env") if isinstance(facts, Mapping) else None
    if isinstance(env, Mapping) and isinstance(env.get("SystemRoot"), str) and _PATH.fullmatch(env["SystemRoot"]):
        return env["SystemRoot"]
    try:
        with _lock:
            known = _learned.get(conn)
    except TypeError:  # a connection object that cannot be weakly referenced: ask every time
        known = None
    if known is not None:
        return known
    res = conn.run(Command("echo", "%SystemRoot%").render())
    line = next((ln.strip() for ln in (res.stdout or "").splitlines() if ln.strip()), "")
    root = line.rstrip("\\") if res.rc == 0 and _PATH.fullmatch(line) else FALLBACK_SYSTEM_ROOT
    try:
        with _lock:
            _learned[conn] = root
    except TypeError:
        pass
    return root


def remember(conn: Any, echoed: str) -> None:
    """Keep what an ``echo %SystemRoot%`` the caller ran on ``conn`` printed (folded into a
    line it runs anyway), so :func:`system_root` does not ask again."""
    line = next((ln.strip() for ln in echoed.splitlines() if ln.strip()), "")
    if _PATH.fullmatch(line):
        try:
            with _lock:
                _learned[conn] = line.rstrip("\\")
        except TypeError:
            pass


def temp_dir(conn: Any, vars: Mapping[str, Any], facts: Mapping[str, Any] | None = None) -> str:
    """The folder for scratch files on the host: var ``remote_temp``, else ``%SystemRoot%\\Temp``."""
    configured = vars.get("remote_temp")
    if isinstance(configured, str) and configured.strip():
        return configured.rstrip("\\")
    return system_root(conn, facts) + "\\Temp"
