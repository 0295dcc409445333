"""A tiny StepContext for step tests: args, vars, an inventory, connections and
content-addressed artifacts in tmp_path (same semantics as runner.artifacts:
identical content under a name adds no version)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from runner.connections.base import Connection
from runner.model import Inventory
from runner.steps.base import ArtifactRef


class DirArtifacts:
    """Versioned artifacts under a directory; ``versions(name)`` lists them oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions: dict[str, list[ArtifactRef]] = {}

    def write(self, name: str, data: bytes) -> ArtifactRef:
        sha = hashlib.sha256(data).hexdigest()
        history = self._versions.setdefault(name, [])
        if history and history[-1].sha256 == sha:
            return history[-1]
        path = self.root / f"{name}.{sha[:12]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        ref = ArtifactRef(str(path), sha, len(data))
        history.append(ref)
        return ref

    def read(self, name: str) -> bytes | None:
        history = self._versions.get(name)
        return Path(history[-1].path).read_bytes() if history else None

    def versions(self, name: str) -> list[ArtifactRef]:
        return list(self._versions.get(name, []))


class StepCtx:
    """Implements runner.steps.base.StepContext for tests."""

    def __init__(self, inventory: Inventory, connections: Mapping[str, Connection], tmp_path: Path, *,
                 args: Mapping[str, Any] | None = None, vars: Mapping[str, Any] | None = None,
                 check: bool = False, artifacts: DirArtifacts | None = None) -> None:
        self.inventory = inventory
        self._connections = connections
        self.args = dict(args or {})
        self.vars = dict(vars or {})
        self.check = check
        self.run_id = "testrun0"
        self.artifacts = artifacts or DirArtifacts(tmp_path / "artifacts")
        self._facts: dict[str, Any] = {}

    def connection(self, host: str) -> Connection:
        return self._connections[host]

    def previous(self, module: str, target: str) -> list:
        return []

    def facts(self, host: str) -> Mapping[str, Any] | None:
        return self._facts.get(host)
