"""WQL where-clauses of the lab's wmic: parse once, evaluate on instances.

Grammar (WQL, "WHERE Clause" in the WMI SDK docs)::

    expr   := term (OR term)*
    term   := factor (AND factor)*
    factor := NOT factor | '(' expr ')' | PROP op value | PROP IS [NOT] NULL
    op     := = | <> | != | < | > | <= | >= | LIKE
    value  := 'string' | "string" | number | TRUE | FALSE | NULL

Strings take ``\\`` as escape character (``'O\\'Brien'``, ``'C:\\\\x'``)
as WQL does; a doubled quote inside a string (``'O''Brien'``) is also
accepted (conv). Comparisons of strings are case-insensitive as in WMI.
LIKE supports ``%``, ``_``, ``[abc]``, ``[a-z]`` and ``[^a]``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from runner.lab.lcs import WBEM_E_INVALID_QUERY, WmiError

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass
class Where:
    """A parsed where clause: ``matches(props)`` and the top-level AND equalities (``hints``;
    a tuple of values for a property every OR-ed term pins)."""

    text: str
    matches: Predicate
    hints: dict[str, Any]


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:\\.|''|[^'\\])*'|"(?:\\.|""|[^"\\])*")
  | (?P<op><>|!=|<=|>=|=|<|>)
  | (?P<paren>[()])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<num>[-+]?\d+(?:\.\d+)?)
)""", re.X)


def _unquote(tok: str) -> str:
    q = tok[0]
    body = tok[1:-1]
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
        elif c == q and i + 1 < len(body) and body[i + 1] == q:
            out.append(q)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, Any]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise WmiError(WBEM_E_INVALID_QUERY)
        pos = m.end()
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "str":
            out.append(("value", _unquote(tok)))
        elif kind == "num":
            out.append(("value", float(tok) if "." in tok else int(tok)))
        elif kind == "word" and tok.upper() in ("AND", "OR", "NOT", "LIKE", "IS", "NULL", "TRUE", "FALSE"):
            up = tok.upper()
            if up in ("TRUE", "FALSE"):
                out.append(("value", up == "TRUE"))
            else:
                out.append((up, up))
        else:
            out.append((kind, tok))
    return out


def like_regex(pattern: str) -> re.Pattern[str]:
    """Translate a WQL LIKE pattern to a case-insensitive regular expression."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise WmiError(WBEM_E_INVALID_QUERY)
            body = pattern[i + 1:j]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + "".join(
                re.escape(ch) if ch != "-" else "-" for ch in body) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.I | re.S)


def _lookup(props: Mapping[str, Any], name: str) -> Any:
    for k, v in props.items():
        if k.lower() == name.lower():
            return v
    raise WmiError(WBEM_E_INVALID_QUERY)


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return v.casefold()
    return v


def _compare(a: Any, op: str, b: Any) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        a, b = bool(a) if not isinstance(a, str) else a.upper() == "TRUE", \
            bool(b) if not isinstance(b, str) else b.upper() == "TRUE"
    elif isinstance(a, (int, float)) and isinstance(b, str):
        try:
            b = float(b)
        except ValueError:
            return False
    elif isinstance(a, str) and isinstance(b, (int, float)):
        try:
            a = float(a)
        except ValueError:
            return False
    elif isinstance(a, list):
        return False
    a, b = _norm(a), _norm(b)
    if op == "=":
        return a == b
    if op in ("<>", "!="):
        return a != b
    try:
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    except TypeError:
        return False


class _Parser:
    def __init__(self, toks: list[tuple[str, Any]]) -> None:
        self.toks = toks
        self.i = 0
        self.hints: dict[str, Any] = {}
        # predicates that are ``prop = 'string'``: (property, value), for expr's fast OR
        self.equals: dict[Predicate, tuple[str, str]] = {}

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, Any]:
        if self.i >= len(self.toks) or (kind and self.toks[self.i][0] != kind):
            raise WmiError(WBEM_E_INVALID_QUERY)
        t = self.toks[self.i]
        self.i += 1
        return t

    def expr(self, top: bool = False) -> Predicate:
        terms = [self.term(top)]
        per = [self.hints]
        while self.peek() == "OR":
            self.take()
            if top:
                self.hints = {}
            terms.append(self.term(top))
            per.append(self.hints)
        if len(terms) > 1 and top:
            # an OR of terms that each pin a property (InstanceID='a' OR InstanceID='b') is
            # narrowed to those values: hints[prop] is then a tuple (any of them)
            common = set(per[0]).intersection(*per[1:])
            self.hints = {k: tuple(v for h in per for v in (h[k] if isinstance(h[k], tuple) else (h[k],)))
                          for k in common}
        if len(terms) == 1:
            return terms[0]
        eqs = [self.equals.get(t) for t in terms]
        if all(eqs) and len({prop.lower() for prop, _ in eqs}) == 1:
            # InstanceID='a' OR InstanceID='b' OR ... (a chunk's probe of 100 users, tried
            # on every row): one set lookup for a string, what each term would say otherwise
            prop, values = eqs[0][0], tuple(v for _, v in eqs)
            folded = frozenset(v.casefold() for v in values)

            def any_of(p: Mapping[str, Any]) -> bool:
                a = _lookup(p, prop)
                if isinstance(a, str):
                    return a.casefold() in folded
                return any(_compare(a, "=", v) for v in values)
            return any_of
        return lambda p, ts=tuple(terms): any(t(p) for t in ts)

    def term(self, top: bool) -> Predicate:
        facs = [self.factor(top)]
        while self.peek() == "AND":
            self.take()
            facs.append(self.factor(top))
        if len(facs) == 1:
            return facs[0]
        return lambda p, fs=tuple(facs): all(f(p) for f in fs)

    def factor(self, top: bool) -> Predicate:
        k = self.peek()
        if k == "NOT":
            self.take()
            inner = self.factor(False)
            return lambda p: not inner(p)
        if k == "paren":
            _, tok = self.take()
            if tok != "(":
                raise WmiError(WBEM_E_INVALID_QUERY)
            inner = self.expr(False)
            _, tok = self.take("paren")
            if tok != ")":
                raise WmiError(WBEM_E_INVALID_QUERY)
            return inner
        _, prop = self.take("word")
        k = self.peek()
        if k == "IS":
            self.take()
            neg = False
            if self.peek() == "NOT":
                self.take()
                neg = True
            self.take("NULL")
            return lambda p: (_lookup(p, prop) is None) != neg
        if k == "LIKE":
            self.take()
            _, pat = self.take("value")
            rx = like_regex(str(pat))
            return lambda p: isinstance(_lookup(p, prop), str) and bool(rx.match(_lookup(p, prop)))
        _, op = self.take("op")
        kind, val = self.take()
        if kind == "NULL":
            val = None
        elif kind != "value":
            raise WmiError(WBEM_E_INVALID_QUERY)
        if top and op == "=" and val is not None:
            self.hints[prop] = val
        pred: Predicate = lambda p: _compare(_lookup(p, prop), op, val)  # noqa: E731
        if op == "=" and isinstance(val, str):
            self.equals[pred] = (prop, val)
        return pred


def parse_where(text: str) -> Where:
    """Parse a WQL condition; raises WmiError(WBEM_E_INVALID_QUERY) on a syntax error."""
    toks = _tokens(text)
    if not toks:
        raise WmiError(WBEM_E_INVALID_QUERY)
    p = _Parser(toks)
    pred = p.expr(top=True)
    if p.i != len(toks):
        raise WmiError(WBEM_E_INVALID_QUERY)
    return Where(text, pred, dict(p.hints))
