"""Specification of templating: native values, strict undefined, sandbox, when."""
from __future__ import annotations

import pytest

from runner.errors import PermanentFault
from runner.templating import TemplateError, check_syntax, evaluate_when, render

VARS = {"user": {"alias": "alice", "clients": ["pc1", "pc2"], "n": 3}, "domain": "contoso.com"}


def test_strings_in_nested_structures_are_rendered():
    assert render({"to": "sip:{{ user.alias }}@{{ domain }}", "list": ["{{ user.n }}", 7], "plain": "x"}, VARS) == {
        "to": "sip:alice@contoso.com", "list": [3, 7], "plain": "x"}


def test_a_pure_expression_keeps_its_native_type():
    assert render("{{ user.clients }}", VARS) == ["pc1", "pc2"]
    assert render("  {{ user.n + 1 }} ", VARS) == 4
    assert render("{{ user.n }} and {{ user.n }}", VARS) == "3 and 3"


def test_undefined_variable_is_a_permanent_fault_naming_it():
    with pytest.raises(TemplateError, match=r"undefined variable 'colour' in '\{\{ colour \}\}'") as info:
        render({"a": ["{{ colour }}"]}, VARS)
    assert isinstance(info.value, PermanentFault)
    with pytest.raises(TemplateError, match="undefined attribute 'sid'"):
        render("x-{{ user.sid }}", VARS)
    with pytest.raises(TemplateError, match="undefined attribute 'sid'"):
        render("{{ user.sid }}", VARS)


def test_sandbox_refuses_unsafe_attribute_access():
    with pytest.raises(TemplateError, match="unsafe operation"):
        render("{{ user.__class__.__mro__ }}", VARS)


def test_when_accepts_templates_bare_expressions_and_booleans():
    assert evaluate_when("{{ user.n > 2 }}", VARS) is True
    assert evaluate_when("user.alias == 'bob'", VARS) is False
    assert evaluate_when(None, VARS) is True
    assert evaluate_when(False, VARS) is False
    assert evaluate_when("false", VARS) is False
    with pytest.raises(TemplateError, match="not true or false"):
        evaluate_when("{{ user.alias }}", VARS)
    with pytest.raises(TemplateError, match="undefined variable 'missing'"):
        evaluate_when("missing > 1", VARS)


def test_check_syntax_reports_errors_without_variables():
    assert check_syntax("{{ a.b }} x") is None
    assert check_syntax("{{ a + }}") is not None


@pytest.mark.parametrize("source", ["{{ 'x' * 10**9 }}", "{{ 10**9 * 'x' }}", "{{ [0] * 10**8 }}",
                                    "{{ 2 ** 100000 }}", "{{ ('x' * 1000000) + ('y' * 100000) }}"])
def test_a_template_cannot_build_a_huge_value(source):
    """Each is refused before it allocates (it took 1 GB and exited 0 in a `when`)."""
    with pytest.raises(TemplateError, match="unsafe operation"):
        render(source, {})
    with pytest.raises(TemplateError):
        evaluate_when(source.strip("{} "), {})
    assert check_syntax(source) is None  # loading the playbook stays cheap: nothing is folded


@pytest.mark.parametrize("source", [
    "{{ '%0999999999d' % 1 }}", "{{ '%*d' % (999999999, 1) }}", "{{ 'x'.ljust(10**9) }}", "{{ 'x'.center(999999999) }}",
    "{{ 'x'.zfill(999999999) }}", "{{ ('\t' * 1000).expandtabs(999999) }}", "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}", "{{ '{x:>999999999}'.format_map({'x': 1}) }}",
    "{{ ('x' * 1000000).replace('x', 'xx') }}", "{{ 'abc'.replace('', 'y' * 1000000) }}",
    "{{ 'x' | center(999999999) }}", "{{ ('a\nb' * 1000) | indent(999999) }}", "{{ '%0999999999d' | format(1) }}",
    "{{ ('x' * 1000000) | replace('x', 'xx') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"])
def test_formatting_padding_and_loops_cannot_build_a_huge_value(source):
    """Padding by a number, formatting widths, replace and a template's output are bounded
    too: '%0999999999d' % 1 in a `when` took 5.9 GB and 56 s, '{:>999999999}'.format(1)
    2 GB and exited 0."""
    with pytest.raises(TemplateError, match="unsafe operation"):
        render(source, {})


def test_ordinary_formatting_and_padding_still_work():
    assert render("{{ '%05d' % 3 }}", {}) == "00003"
    assert render("{{ '%(a)s-%(b)d' % {'a': 'x', 'b': 2} }}", {}) == "x-2"
    assert render("{{ 10 % 3 }}", {}) == 1
    assert render("{{ '{:>5}'.format('a') }}|{{ 'a'.ljust(3) }}|{{ 'x' | center(5) }}", {}) == "    a|a  |  x  "
    assert render("{{ 'a\nb' | indent(2) }}", {}) == "a\n  b"
    assert render("{{ '%s-%s' | format(1, 2) }} {{ 'a-b'.replace('-', '+') }} {{ 'a-b' | replace('-', '+') }}", {}) \
        == "1-2 a+b a+b"
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}", {}) == "012"
    assert render("{{ 'x{}'.format(10**12) }}", {}) == "x1000000000000"


def test_ordinary_arithmetic_and_repetition_still_work():
    assert render("{{ 'ab' * 3 }}", {}) == "ababab"
    assert render("{{ 2 ** 10 }}", {}) == 1024
    assert render("{{ [1] * 3 + [2] }}", {}) == [1, 1, 1, 2]


@pytest.mark.parametrize("source,variables", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {}),
    ("{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", {"s": "x" * 100000}),
    ("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(10) %}{% endfor %}{% endfor %}"
     "{% endfor %}", {}),
])
def test_loops_that_print_nothing_are_bounded_too(source, variables):
    """Two nested loops of 100,000 printing nothing ran for hours (CPU, not memory): every
    render's loops together make at most MAX_TEMPLATE_STEPS passes."""
    with pytest.raises(TemplateError, match="more than 1,000,000 passes"):
        render(source, variables)


def test_ordinary_loops_keep_their_length_else_and_namespaces():
    assert render("{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}", {}) == "1/3 2/3 3/3 "
    assert render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"a": 1, "b": 2}}) == "a=1;b=2;"
    assert render("{% for x in [] %}x{% else %}none{% endfor %}", {}) == "none"
    assert render("{% set ns = namespace(n=0) %}{% for i in range(1000) %}{% set ns.n = ns.n + i %}{% endfor %}"
                  "{{ ns.n }}", {}) == "499500"
    # the budget is per render: many renders of an ordinary loop never add up
    for _ in range(50):
        assert render("{% for i in range(100000) %}{% endfor %}ok", {}) == "ok"
    # a variable of the budget's name changes nothing
    assert render("{% for i in range(2) %}{{ i }}{% endfor %}", {"runner_loop_budget": None}) == "01"
