"""The reference Windows argument parser the tests check rendered command lines against.

Written from the documentation (learn.microsoft.com, "Parsing C++ command-line
arguments": CommandLineToArgvW and the MS C runtime), independently of the
lab's cmd.exe model (runner.lab.shell.split_args), so a bug in one cannot hide
in the other.
"""
from __future__ import annotations


def argv(line: str) -> list[str]:
    """Split ``line`` as CommandLineToArgvW does: 2n backslashes + quote -> n + delimiter,
    2n+1 backslashes + quote -> n + a literal quote, other backslashes are literal."""
    args: list[str] = []
    cur: list[str] = []
    in_quotes = False
    have = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            j = i
            while j < len(line) and line[j] == "\\":
                j += 1
            n = j - i
            if j < len(line) and line[j] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i = j + 1
                else:
                    i = j
                have = True
                continue
            cur.append("\\" * n)
            have = True
            i = j
            continue
        if c == '"':
            in_quotes = not in_quotes
            have = True
        elif c in " \t" and not in_quotes:
            if have:
                args.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if have:
        args.append("".join(cur))
    return args
