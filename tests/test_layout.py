"""The house rules that keep the server readable as it grows, checked on the source itself."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelport
from test_package import import_graph

PACKAGE = Path(modelport.__file__).parent
DOORS = ("modelport.server.rest", "modelport.server.grpc", "modelport.server.graphql")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_no_door_imports_another(graph: dict[str, set[str]]) -> None:
    crossings = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for door in DOORS
        if _within(module, door)
        for target in targets
        for other in DOORS
        if other != door and _within(target, other)
    ]
    assert crossings == []


def test_what_the_doors_share_knows_no_door(graph: dict[str, set[str]]) -> None:
    shared = ["engine", "registry", "runner", "metrics", "lookups", "requests", "tensors"]
    for name in shared:
        module = f"modelport.server.{name}"
        assert not [t for t in graph[module] if any(_within(t, d) for d in DOORS)], module


def test_our_http_protocol_is_imported_by_nothing(graph: dict[str, set[str]]) -> None:
    # uvicorn loads it by name (lifecycle.py); it may be swapped or dropped without a trace.
    ours = "modelport.server.protocols.http1"
    assert [module for module, targets in graph.items() if ours in targets] == []


def test_no_module_is_over_450_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if "proto" not in path.parts and (n := len(path.read_text().splitlines())) > 450
    }
    assert long == {}
