"""The fast schema yes-check: it may only say "valid" when jsonschema finds no error."""
from __future__ import annotations

import copy

import jsonschema

from runner.fastschema import compile_check
from runner.lab import generator as g
from runner.loader import load_schema


def _inventory() -> dict:
    names, users, extra = g._plan(30, 2, 5, 1)
    return g.inventory(names, users, extra["table_partner"])


def _mutants(doc: dict) -> list[dict]:
    out = []
    for mutate in (
        lambda d: d["users"][next(iter(d["users"]))].update(wave=7),
        lambda d: d["users"][next(iter(d["users"]))].update(colour="red"),
        lambda d: d["users"][next(iter(d["users"]))].pop("im_address"),
        lambda d: d["users"][next(iter(d["users"]))].update(clients="pc0001"),
        lambda d: d["all"].update(hosts=[1, 2]),
        lambda d: d.update(plugin="lab"),
        lambda d: d["all"]["children"]["clients"].update(hosts={"pc0001": {"port": "x"}}),
        lambda d: d["all"]["children"]["clients"].update(hosts={"pc0001": {"port": True}}),
        lambda d: d["all"]["children"]["clients"].update(hosts={"pc0001": {"port": 0}}),
        lambda d: d["all"]["children"]["clients"].update(hosts={"pc0001": {"connection": "telnet"}}),
        lambda d: d["all"]["children"]["clients"]["hosts"].update({"pc 1&x": {}}),
        lambda d: d["all"]["children"].update({"bad group!": {}}),
        lambda d: d["users"].update({"../evil": {"im_address": "e@im.contoso.com", "clients": []}}),
    ):
        m = copy.deepcopy(doc)
        mutate(m)
        out.append(m)
    return out


def test_a_generated_inventory_is_certainly_valid_and_jsonschema_agrees():
    schema = load_schema("inventory")
    doc = _inventory()
    assert compile_check(schema)(doc)
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))


def test_the_check_never_passes_a_document_jsonschema_rejects():
    schema = load_schema("inventory")
    check = compile_check(schema)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    for m in _mutants(_inventory()):
        if list(validator.iter_errors(m)):
            assert not check(m)


def test_unknown_keywords_mean_not_sure():
    assert not compile_check({"type": "string", "format": "email", "uniqueItems": True})("x")
    assert not compile_check({"type": "integer"})(True)
    assert compile_check({"type": "object", "properties": {"a": {"enum": [1, "b"]}}, "required": ["a"]})({"a": 1})
    assert not compile_check({"enum": [1]})(True)
