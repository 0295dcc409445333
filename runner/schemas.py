"""Step-module argument schemas, exported to schemas/steps/ for editors and reviewers.

Each step module declares its ``args_schema`` beside its code (the loader
validates against that); ``schemas/steps/<module>.schema.json`` is the same
schema as a standalone JSON Schema 2020-12 document, regenerated with
``python -m runner.schemas`` and kept in sync by a test.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runner.steps.registry import all_steps

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "steps"


SCHEMAS = SCHEMA_DIR.parent


def schema_header(kind: str, yaml_file: Path) -> str:
    """The first line of a generated YAML file that editors read (yaml-language-server, used
    by VS Code's YAML extension and by Vim/Neovim language clients) to validate and complete
    it against ``schemas/<kind>.schema.json``: a path relative to where the file is written.
    Empty when the schemas are not beside the package (an installed copy without them)."""
    schema = SCHEMAS / f"{kind}.schema.json"
    if not schema.is_file():
        return ""
    rel = os.path.relpath(schema, Path(yaml_file).resolve().parent)
    return f"# yaml-language-server: $schema={Path(rel).as_posix()}\n"


def step_schema_document(module: str) -> dict[str, Any]:
    """The standalone schema document of one step module's arguments."""
    cls = all_steps()[module]
    doc = (cls.__doc__ or "").strip().splitlines()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://github.com/lcs-migration-runner/runner/schemas/steps/{module}.schema.json",
        "title": f"Arguments of the {module} step module",
        "description": f"{doc[0] if doc else module} Runs once per {cls.target}.",
        **cls.args_schema,
    }


def render(module: str) -> str:
    """The file text of a step module's schema (stable key order, trailing newline)."""
    return json.dumps(step_schema_document(module), indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write every step module's schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for module in sorted(all_steps()):
        path = directory / f"{module}.schema.json"
        path.write_text(render(module), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p)
