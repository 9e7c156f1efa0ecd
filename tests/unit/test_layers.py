"""Imports flow one way: api/cli -> finetune -> retrieval -> modules/ingest -> core.

`core` knows nothing of the rest; domain modules know only `core`; ingestion may use the
modules (their ingest-time `enrich`); the query path may use modules and ingestion's job
records; fine-tuning builds its examples with the query path; nothing imports the HTTP or
CLI layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("core", "modules", "ingest", "retrieval", "finetune", "api", "cli")
ALLOWED = {
    "core": {"core"},
    "modules": {"core", "modules"},
    "ingest": {"core", "modules", "ingest"},
    "retrieval": {"core", "modules", "ingest", "retrieval"},
    "finetune": {"core", "modules", "ingest", "retrieval", "finetune"},
    "api": set(LAYERS) - {"cli"},
    "cli": set(LAYERS),
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_what_it_may(layer: str) -> None:
    files = sorted((REPO / layer).rglob("*.py"))
    assert files, f"{layer}/ has no Python files"
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - ALLOWED[layer])
        for path in files
        if imported_packages(path) - ALLOWED[layer]
    }
    assert not wrong, f"imports against the layering: {wrong}"
