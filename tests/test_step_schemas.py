"""schemas/steps/ holds each step module's argument schema, in sync with the code."""
from __future__ import annotations

import json

import jsonschema

from runner import schemas
from runner.steps.registry import get_step


def test_every_step_module_has_its_args_schema_in_schemas_dir():
    from runner.steps.registry import _discovered

    for module in _discovered():
        path = schemas.SCHEMA_DIR / f"{module}.schema.json"
        assert path.exists(), f"{path} missing: run python -m runner.schemas"
        assert path.read_text(encoding="utf-8") == schemas.render(module), (
            f"{path} is out of date: run python -m runner.schemas")


def test_exported_schemas_are_valid_2020_12_and_reject_unknown_args():
    for path in schemas.SCHEMA_DIR.glob("*.schema.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(doc)
        module = path.name.removesuffix(".schema.json")
        assert get_step(module) is not None
        errors = list(jsonschema.Draft202012Validator(doc).iter_errors({"no_such_argument": 1}))
        assert errors, f"{module}: an unknown argument must be rejected"
