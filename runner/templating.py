"""Templating of step arguments and ``when`` conditions (jinja2, sandboxed, strict).

- ``render(value, variables)`` renders every string inside dicts/lists; a string
  that is exactly one ``{{ expr }}`` yields the expression's native value (a
  list stays a list, 3 stays an int), anything else yields a string.
- ``evaluate_when(expr, variables)`` accepts ``"{{ x > 1 }}"``, a bare
  expression ``"x > 1"`` (Ansible style) or a YAML boolean.
- An undefined variable, a sandbox violation or a runtime error while
  rendering raises ``TemplateError``, a PermanentFault: the engine fails that
  task at once (retrying cannot define a variable) with a message naming
  the variable. ``check_syntax`` lets the loader report syntax errors early.

Compiled templates are cached by source text: the engine renders the same few
strings for thousands of tasks.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any, Callable, Mapping

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from runner.errors import PermanentFault

#: The largest string or list one operation of a template may build, and the largest
#: power: a template's result is a step argument or a condition, never megabytes
#: (``{{ 'x' * 10**9 }}`` in a ``when`` took 1 GB).
MAX_TEMPLATE_RESULT = 1 << 20
#: The most passes a template's ``{% for %}`` loops may make in one render, all loops
#: together: two nested loops over 100,000 items print nothing and would run for hours.
MAX_TEMPLATE_STEPS = 1_000_000
MAX_TEMPLATE_POWER = 1 << 10


def _too_long(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > MAX_TEMPLATE_RESULT


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what}: the result would be longer than {MAX_TEMPLATE_RESULT:,} items")


#: A ``%`` conversion's width and precision (``%-0999999999.5d``, ``%*d``).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(fmt: str, args: Any) -> None:
    """``fmt % args`` may not pad to more than MAX_TEMPLATE_RESULT (``'%0999999999d' % 1``
    built 1 GB: 5.9 GB and 56 s of a ``when``)."""
    star = False
    for m in _PERCENT_SPEC.finditer(fmt):
        for part in m.groups():
            star = star or part == "*"
            if part and part != "*" and _too_long(int(part)):
                raise _refuse(f"the format {fmt[:40]!r}")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        if any(_too_long(v) for v in values):
            raise _refuse(f"the format {fmt[:40]!r}")


def _check_format(fmt: str, args: Any, kwargs: Any) -> None:
    """``fmt.format(...)`` likewise (``'{:>999999999}'.format(1)``): widths in the field
    specs, and any number given when a spec takes its width from an argument."""
    import string
    nested = False
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        nested = nested or "{" in spec
        if any(_too_long(int(d)) for d in re.findall(r"\d+", spec)):
            raise _refuse(f"the format {fmt[:40]!r}")
    if nested and any(_too_long(v) for v in (*args, *kwargs.values())):
        raise _refuse(f"the format {fmt[:40]!r}")


def _check_method(obj: Any, args: tuple, kwargs: dict) -> None:
    """The ``str`` methods (and filters) that pad or repeat by a number given to them."""
    name = getattr(obj, "__name__", "")
    self_ = getattr(obj, "__self__", None)
    if not isinstance(self_, str):
        return
    if name in ("ljust", "rjust", "center", "zfill") and args and _too_long(args[0]):
        raise _refuse(f"{name}({args[0]})")
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and size * self_.count("\t") + len(self_) > MAX_TEMPLATE_RESULT:
            raise _refuse(f"expandtabs({size})")
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = self_.count(args[0]) if args[0] else len(self_) + 1
        if len(self_) + count * max(0, len(args[1]) - len(args[0])) > MAX_TEMPLATE_RESULT:
            raise _refuse("replace()")


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, bounded so a template cannot fill memory: ``*``, ``**``, ``+`` and ``%``,
    ``str.format``, the ``str`` methods and filters that pad or replace (``ljust``,
    ``center``, ``zfill``, ``expandtabs``, ``replace``, ``|center``, ``|indent``,
    ``|format``, ``|replace``), and a whole template's output, all at MAX_TEMPLATE_RESULT.

    Intercepted operators are also never folded at compile time, so loading a
    playbook that holds such an expression costs nothing.
    """

    intercepted_binops = frozenset(("*", "**", "+", "%"))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree with every ``{% for %}`` loop's iterable passed through
        :meth:`runner_loop_budget` (an attribute of the environment: no variable shadows it)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("runner_loop_budget"), [loop.iter], [], None, None)
        return tree

    @staticmethod
    def runner_loop_budget(iterable: Any) -> Any:
        """``iterable``, each pass counted against the render's MAX_TEMPLATE_STEPS."""
        return _Counted(iterable)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        for name in ("center", "indent", "format", "replace"):
            self.filters[name] = _bounded_filter(name, self.filters[name])

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format(fmt, args if value.__name__ == "format" else (), kwargs if value.__name__ == "format"
                          else dict(args[0]) if args and isinstance(args[0], Mapping) else {})
            return wrapped(*args, **kwargs)
        return bounded

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_TEMPLATE_POWER:
            raise SecurityError(f"the power {right} is larger than {MAX_TEMPLATE_POWER}")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_RESULT:
                    raise SecurityError(f"the result would be longer than {MAX_TEMPLATE_RESULT:,} items")
        result = super().call_binop(context, operator, left, right)
        if operator == "+" and isinstance(result, (str, list)) and len(result) > MAX_TEMPLATE_RESULT:
            raise SecurityError(f"the result would be longer than {MAX_TEMPLATE_RESULT:,} items")
        return result


def _bounded_filter(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's ``name`` filter, refusing a result over MAX_TEMPLATE_RESULT before building it."""
    import functools

    @functools.wraps(impl)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not hasattr(a, "environment")]  # drop an eval context
        value = str(values[0]) if values else ""
        rest = values[1:]
        if name == "center" and rest and _too_long(rest[0]):
            raise _refuse(f"center({rest[0]})")
        if name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            width = len(width) if isinstance(width, str) else width
            if isinstance(width, int) and width * (value.count("\n") + 1) + len(value) > MAX_TEMPLATE_RESULT:
                raise _refuse(f"indent({width})")
        if name == "format":
            _check_percent(value, tuple(rest) or kwargs)
        if name == "replace" and len(rest) >= 2:
            _check_method(value.replace, (str(rest[0]), str(rest[1])), {})
        return impl(*args, **kwargs)
    return bounded


_ENV = _BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_PURE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)
_MARKERS = ("{{", "{%", "{#")
_UNDEFINED = re.compile(r"'([^']+)' is undefined")
_NO_ATTR = re.compile(r"has no attribute '([^']+)'")


class TemplateError(PermanentFault):
    """A template could not be rendered (undefined variable, sandbox violation,
    syntax error). Permanent: the engine fails the task without retrying."""

    def __init__(self, message: str, *, template: str | None = None) -> None:
        self.template = template
        super().__init__(message)


def is_template(value: Any) -> bool:
    """True when ``value`` is a string with jinja markup in it."""
    return isinstance(value, str) and any(m in value for m in _MARKERS)


def _pure_expression(source: str) -> str | None:
    m = _PURE.match(source)
    if not m:
        return None
    expr = m.group("expr")
    if "{{" in expr or "}}" in expr:
        return None
    return expr


@lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Callable[..., Any]:
    return _ENV.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def _explain(exc: Exception, source: str) -> TemplateError:
    text = str(exc)
    if isinstance(exc, jinja2.UndefinedError):
        m = _UNDEFINED.search(text)
        if m:
            return TemplateError(f"undefined variable '{m.group(1)}' in {source!r}", template=source)
        m = _NO_ATTR.search(text)
        if m:
            return TemplateError(f"undefined attribute '{m.group(1)}' in {source!r} ({text})",
                                 template=source)
        return TemplateError(f"undefined value in {source!r}: {text}", template=source)
    if isinstance(exc, SecurityError):
        return TemplateError(f"unsafe operation in {source!r}: {text}", template=source)
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateError(f"template syntax error in {source!r}: {exc.message}", template=source)
    return TemplateError(f"cannot render {source!r}: {type(exc).__name__}: {text}", template=source)


def _defined(value: Any) -> Any:
    """Raise the UndefinedError a StrictUndefined result carries (expressions return it unraised)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def check_syntax(source: str) -> str | None:
    """The syntax error message of ``source`` (a template string), or None if it compiles."""
    try:
        expr = _pure_expression(source)
        if expr is not None:
            _compiled_expression(expr)
        else:
            _compiled_template(source)
    except jinja2.TemplateSyntaxError as exc:
        return exc.message or str(exc)
    return None


def render_string(source: str, variables: Mapping[str, Any]) -> Any:
    """Render one string; a pure ``{{ expr }}`` returns the native value."""
    if not any(m in source for m in _MARKERS):
        return source
    try:
        expr = _pure_expression(source)
        if expr is not None:
            return _defined(_compiled_expression(expr)(**variables))
        return _bounded_render(_compiled_template(source), variables)
    except TemplateError:
        raise
    except Exception as exc:  # jinja raises many types; all become one clear fault
        raise _explain(exc, source) from None


_steps = threading.local()


class _Counted:
    """An iterable whose passes are counted against this thread's render budget (its
    length is the underlying one's, for ``loop.length``)."""

    def __init__(self, iterable: Any) -> None:
        self._it = iterable

    def __len__(self) -> int:
        return len(self._it)

    def __iter__(self) -> Any:
        for item in self._it:
            left = getattr(_steps, "left", MAX_TEMPLATE_STEPS) - 1
            if left < 0:
                raise SecurityError(f"the template's loops make more than {MAX_TEMPLATE_STEPS:,} passes")
            _steps.left = left
            yield item


def _bounded_render(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """``template.render``, stopped once the output passes MAX_TEMPLATE_RESULT (a loop in a
    loop printing ``x``): the pieces are counted as they are made, never all held."""
    out: list[str] = []
    size = 0
    _steps.left = MAX_TEMPLATE_STEPS
    for piece in template.generate(variables):
        size += len(piece)
        if size > MAX_TEMPLATE_RESULT:
            raise _refuse("the template's output")
        out.append(piece)
    return "".join(out)


def render(value: Any, variables: Mapping[str, Any]) -> Any:
    """Render every string in ``value`` (recursively through dicts, lists, tuples)."""
    if isinstance(value, str):
        return render_string(value, variables)
    if isinstance(value, Mapping):
        return {render(k, variables) if isinstance(k, str) else k: render(v, variables)
                for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    if isinstance(value, tuple):
        return tuple(render(v, variables) for v in value)
    return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


def evaluate_when(expr: str | bool | None, variables: Mapping[str, Any]) -> bool:
    """Evaluate a ``when`` condition to a bool.

    None means "no condition" (True). A string result "true"/"false" (as a
    mixed template like ``"{{ a }}"`` may produce) is read as that boolean;
    any other string is an error rather than a silent truthy value.
    """
    if expr is None:
        return True
    if isinstance(expr, bool):
        return expr
    source = str(expr)
    if is_template(source):
        value = render_string(source, variables)
    else:
        try:
            value = _defined(_compiled_expression(source)(**variables))
        except Exception as exc:
            raise _explain(exc, source) from None
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise TemplateError(f"'when' condition {source!r} gave {value!r}, not true or false",
                            template=source)
    return bool(value)
