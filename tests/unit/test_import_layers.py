"""The package layout's rules, read from the import statements of ``core`` and ``services``.

Every import counts, including ones inside functions and under ``TYPE_CHECKING``:
a circle of type-only imports still ties two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "services")
CLIENT_LIBRARIES = ("aiokafka", "redis", "fakeredis")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _imported_modules(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every module ``path`` imports: ``from a import b`` is a.b if that is a module, else a."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in modules else node.module


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, every imported module) by module."""
    modules = _modules()
    imports = {name: set(_imported_modules(path, modules)) for name, path in modules.items()}
    edges = {
        name: {n for n in names if n in modules and n != name} for name, names in imports.items()
    }
    return edges, imports


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _importers(imports: dict[str, set[str]], prefix: str) -> set[str]:
    return {
        module
        for module, names in imports.items()
        if any(n == prefix or n.startswith(prefix + ".") for n in names)
    }


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_core_or_services() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


@pytest.mark.parametrize("library", CLIENT_LIBRARIES)
def test_only_the_adapters_import_client_libraries(library: str) -> None:
    _, imports = _graph()
    allowed = (
        ("core.streaming.kafka",) if library == "aiokafka" else ("core.streaming.redis_client",)
    )
    offenders = {m for m in _importers(imports, library) if not _under(m, *allowed)}
    assert offenders == set()


def test_the_embedded_broker_depends_only_on_the_surface_and_shared_types() -> None:
    _, imports = _graph()
    embedded = {m: names for m, names in imports.items() if _under(m, "core.streaming.embedded")}
    assert embedded, "no embedded modules found"
    allowed = (
        "core.config",
        "core.streaming.embedded",
        "core.streaming.broker_api",
        "core.streaming.types",
        "core.streaming.errors",
        "core.topic_names",
    )
    offenders = {
        (module, name)
        for module, names in embedded.items()
        for name in names
        if _under(name, "core") and not _under(name, *allowed)
    }
    assert offenders == set()


def test_the_kafka_adapter_does_not_depend_on_the_embedded_broker_or_redis() -> None:
    _, imports = _graph()
    offenders = {
        m
        for m in _importers(imports, "core.streaming.embedded")
        | _importers(imports, "core.streaming.redis_client")
        if _under(m, "core.streaming.kafka")
    }
    assert offenders == set()


def test_schemas_do_not_import_the_streaming_framework() -> None:
    _, imports = _graph()
    offenders = {
        m for m in _importers(imports, "core.streaming") if _under(m, "core.schemas", "core.config")
    }
    assert offenders == set()


def test_the_streaming_framework_does_not_import_trading_code() -> None:
    _, imports = _graph()
    trading = _importers(imports, "services") | _importers(imports, "core.schemas.topics")
    assert {m for m in trading if _under(m, "core.streaming")} == set()
