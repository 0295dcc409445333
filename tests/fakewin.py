"""An in-test Windows client: a Connection that runs our rendered command lines through a
small cmd.exe model (%VAR% expansion, quotes, & && || with cmd's precedence,
( ) blocks, the redirections >nul 2>nul 2>&1, CommandLineToArgvW argument parsing) and reg.exe / msiexec / del / echo / ver with the
output layouts of real Windows (reg query: four-space columns; reg errors on stderr).
Used until the lab's LabConnection lands; every command line is recorded."""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.connections.base import CommandResult
from runner.windows.regfile import RegKey, RegValue, render_reg
from winargv import argv

NOT_FOUND = "ERROR: The system was unable to find the specified registry key or value.\r\n"
IN_USE = "ERROR: The process cannot access the file because it is being used by another process.\r\n"

Hive = dict  # lower relative path -> RegKey (path relative to the hive root)


def split_ops(line: str) -> list[tuple[str, str]]:
    """[(op_before, command_text)] split on & && || outside quotes."""
    out, cur, q, op, i = [], [], False, "", 0
    while i < len(line):
        c = line[i]
        if c == '"':
            q = not q
        if not q and c in "&|":
            two = line[i:i + 2]
            new = two if two in ("&&", "||") else c
            out.append((op, "".join(cur)))
            cur, op = [], new
            i += len(new)
            continue
        cur.append(c)
        i += 1
    out.append((op, "".join(cur)))
    return out


def _tokens(line: str) -> list[str]:
    """Operators (& && || ( )) and command texts, outside quotes; ``2>&1`` stays in its command."""
    out: list[str] = []
    cur: list[str] = []
    q, i = False, 0

    def flush() -> None:
        if "".join(cur).strip():
            out.append("".join(cur))
        cur.clear()
    while i < len(line):
        c = line[i]
        if c == '"':
            q = not q
        if not q and line.startswith("2>&1", i):
            cur.append("2>&1")
            i += 4
            continue
        if not q and c in "&|":
            flush()
            two = line[i:i + 2]
            op = two if two in ("&&", "||") else c
            out.append(op)
            i += len(op)
            continue
        if not q and c == "(" and not "".join(cur).strip():
            flush()
            out.append("(")
            i += 1
            continue
        if not q and c == ")":
            flush()
            out.append(")")
            i += 1
            continue
        cur.append(c)
        i += 1
    flush()
    return out


def _redirections(text: str) -> tuple[str, list[str]]:
    """The command without its trailing ``>nul`` / ``2>nul`` / ``2>&1``, and those."""
    found: list[str] = []
    words = text.rstrip().split(" ")
    while words and words[-1].lower() in (">nul", "2>nul", "2>&1"):
        found.insert(0, words.pop().lower())
    return " ".join(words), found


@dataclass
class FakeClient:
    host: str
    env: dict = field(default_factory=lambda: {"SystemDrive": "C:", "ProgramFiles": r"C:\Program Files"})
    hklm: Hive = field(default_factory=dict)
    mounted: dict = field(default_factory=dict)      # HKU name (lower) -> (name, Hive)
    hive_files: dict = field(default_factory=dict)   # NTUSER.DAT path (lower) -> Hive
    files: dict = field(default_factory=dict)        # path (lower) -> bytes
    locked_files: set = field(default_factory=set)   # lower paths whose reg load reports "in use"
    fail_export: bool = False
    msiexec_rc: int = 0
    msiexec_log: bytes = b"MSI (s) (A0:B4) [12:00:00:000]: Product: Windows Messenger -- Installation failed.\r\n"
    commands: list = field(default_factory=list)
    executed: list = field(default_factory=list)     # each command cmd.exe actually ran (branches taken)

    # -- registry helpers --------------------------------------------------------
    @staticmethod
    def set_value(hive: Hive, path: str, name: str, data, type_: str = "REG_SZ") -> None:
        parts = path.split("\\")
        for n in range(1, len(parts) + 1):
            sub = "\\".join(parts[:n])
            hive.setdefault(sub.lower(), RegKey(sub))
        key = hive[path.lower()]
        key.values = [v for v in key.values if v.name.lower() != name.lower()] + [RegValue(name, type_, data)]

    def _resolve(self, key: str) -> tuple[str, Hive, str] | None:
        root, _, rest = key.partition("\\")
        r = root.upper()
        if r in ("HKLM", "HKEY_LOCAL_MACHINE"):
            return "HKEY_LOCAL_MACHINE", self.hklm, rest
        if r in ("HKU", "HKEY_USERS"):
            if not rest:
                return "HKEY_USERS", {}, ""
            name, _, sub = rest.partition("\\")
            if name.lower() in self.mounted:
                mname, hive = self.mounted[name.lower()]
                return f"HKEY_USERS\\{mname}", hive, sub
        return None

    # -- Connection --------------------------------------------------------------
    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        self.commands.append(command)
        line = command
        for k, v in self.env.items():
            line = line.replace(f"%{k}%", v)
        rc, out, err = self._seq(_tokens(line), [0])
        return CommandResult(rc, out, err)

    # cmd's grammar: seq := chain ('&' chain)*; chain := node (('&&'|'||') node)*;
    # node := '(' seq ')' | command [redirections]
    def _seq(self, toks: list[str], pos: list[int]) -> tuple[int, str, str]:
        rc, out, err = self._chain(toks, pos)
        while pos[0] < len(toks) and toks[pos[0]] == "&":
            pos[0] += 1
            rc, o, e = self._chain(toks, pos)
            out, err = out + o, err + e
        return rc, out, err

    def _chain(self, toks: list[str], pos: list[int]) -> tuple[int, str, str]:
        rc, out, err = self._node(toks, pos, True)
        while pos[0] < len(toks) and toks[pos[0]] in ("&&", "||"):
            op = toks[pos[0]]
            pos[0] += 1
            run = (op == "&&") == (rc == 0)
            r, o, e = self._node(toks, pos, run)
            if run:
                rc, out, err = r, out + o, err + e
        return rc, out, err

    def _node(self, toks: list[str], pos: list[int], run: bool) -> tuple[int, str, str]:
        if pos[0] < len(toks) and toks[pos[0]] == "(":
            pos[0] += 1
            start = pos[0]
            if run:
                result = self._seq(toks, pos)
            else:  # skip the block without running it
                depth = 1
                while pos[0] < len(toks) and depth:
                    depth += {"(": 1, ")": -1}.get(toks[pos[0]], 0)
                    pos[0] += 1
                pos[0] -= 1
                result = (0, "", "")
            assert pos[0] > start - 1 and toks[pos[0]] == ")", toks[pos[0]:]
            pos[0] += 1
            return result
        text = toks[pos[0]] if pos[0] < len(toks) else ""
        pos[0] += 1
        piped: list[str] = []  # cmd ... | findstr ...: a pipeline binds tighter than && || &
        while pos[0] + 1 < len(toks) and toks[pos[0]] == "|":
            piped.append(toks[pos[0] + 1])
            pos[0] += 2
        if not run:
            return 0, "", ""
        *first, last = [text, *piped]
        last, redirects = _redirections(last)
        o, e = "", ""
        for stage in [*first, last]:  # each stage reads what the one before printed
            self.executed.append(stage.strip())
            rc, o, err = self._exec(stage, stdin=o)
            e += err
        for r in redirects:
            if r == ">nul":
                o = ""
            elif r == "2>nul":
                e = ""
            elif r == "2>&1":
                o, e = o + e, ""
        return rc, o, e

    def put(self, data: bytes, remote_path: str) -> None:
        self.files[remote_path.lower()] = data

    def get(self, remote_path: str) -> bytes:
        if remote_path.lower() not in self.files:
            raise FileNotFoundError(remote_path)
        return self.files[remote_path.lower()]

    def close(self) -> None:
        pass

    # -- programs ----------------------------------------------------------------
    def _exec(self, text: str, stdin: str = "") -> tuple[int, str, str]:
        stripped = text.lstrip()
        args = argv(stripped)
        if not args:
            return 0, "", ""
        prog = args[0].lower()
        if prog == "findstr":  # findstr [/i] [/e] [/b] [/l] /c:"string" over stdin (a pipe)
            flags = {a.lower() for a in args[1:] if a.startswith("/") and not a.lower().startswith("/c:")}
            want = next(a[3:] for a in args[1:] if a.lower().startswith("/c:"))
            fold = (lambda x: x.lower()) if "/i" in flags else (lambda x: x)
            hits = [ln for ln in stdin.replace("\r\n", "\n").split("\n")
                    if (fold(ln).endswith(fold(want)) if "/e" in flags else
                        fold(ln).startswith(fold(want)) if "/b" in flags else fold(want) in fold(ln))]
            return (0 if hits else 1), "".join(h + "\r\n" for h in hits), ""
        if prog == "echo":
            return 0, stripped[5:] + "\r\n", ""
        if prog == "ver":
            return 0, "\r\nMicrosoft Windows XP [Version 5.1.2600]\r\n", ""
        if prog == "del":
            self.files.pop(args[-1].lower(), None)
            return 0, "", ""
        if prog == "msiexec":
            log = args[args.index("/l*v") + 1]
            self.files[log.lower()] = self.msiexec_log
            if self.msiexec_rc in (0, 3010, 1641):
                self.set_value(self.hklm, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{WM51}",
                               "DisplayName", "Windows Messenger 5.1")
                self.set_value(self.hklm, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{WM51}",
                               "DisplayVersion", "5.1.0715")
            return self.msiexec_rc, "", ""
        if prog == "reg":
            return self._reg(args[1].lower(), args[2:])
        return 9009, "", f"'{args[0]}' is not recognized as an internal or external command,\r\n" \
                         "operable program or batch file.\r\n"

    def _reg(self, verb: str, args: list[str]) -> tuple[int, str, str]:
        if verb == "query":
            key = args[0]
            if key.upper() in ("HKU", "HKEY_USERS"):
                return 0, "\r\n" + "".join(f"HKEY_USERS\\{n}\r\n" for n, _ in self.mounted.values()), ""
            found = self._resolve(key)
            if found is None or (found[2] and found[2].lower() not in found[1]):
                return 1, "", NOT_FOUND
            prefix, hive, rel = found
            keys = [k for p, k in sorted(hive.items()) if p == rel.lower() or
                    ("/s" in args and p.startswith(rel.lower() + "\\"))]
            out = ["\r\n"]
            for k in keys:
                out.append(f"{prefix}\\{k.path}\r\n")
                for v in k.values:
                    data = v.data if isinstance(v.data, str) else (
                        "\\0".join(v.data) if isinstance(v.data, list) else
                        f"0x{v.data:x}" if isinstance(v.data, int) else bytes(v.data).hex().upper())
                    out.append(f"    {v.name or '(Default)'}    {v.type}    {data}\r\n")
                out.append("\r\n")
            return 0, "".join(out), ""
        if verb == "export":
            found = self._resolve(args[0])
            if found is None or found[2].lower() not in found[1] or self.fail_export:
                return 1, "", NOT_FOUND
            prefix, hive, rel = found
            keys = [RegKey(f"{prefix}\\{k.path}", list(k.values)) for p, k in sorted(hive.items())
                    if p == rel.lower() or p.startswith(rel.lower() + "\\")]
            self.files[args[1].lower()] = render_reg(keys)
            return 0, "The operation completed successfully.\r\n", ""
        if verb == "load":
            name = args[0].split("\\", 1)[1]
            path = args[1].lower()
            if path in self.locked_files or any(h is self.hive_files.get(path) for _, h in self.mounted.values()):
                return 1, "", IN_USE
            if path not in self.hive_files:
                return 1, "", "ERROR: The system cannot find the file specified.\r\n"
            self.mounted[name.lower()] = (name, self.hive_files[path])
            return 0, "The operation completed successfully.\r\n", ""
        if verb == "unload":
            name = args[0].split("\\", 1)[1]
            if self.mounted.pop(name.lower(), None) is None:
                return 1, "", "ERROR: The parameter is incorrect.\r\n"
            return 0, "The operation completed successfully.\r\n", ""
        return 1, "", "ERROR: Invalid syntax.\r\n"
