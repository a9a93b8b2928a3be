"""The adapter sits beside the framework, not in it.

Nothing in ``core`` outside ``core/streaming/legacy`` imports it, so the consume
path never loads it and deleting the package breaks no framework module; and it
is built on the public surface only (builder, orchestrator, producer, settings,
the step contract), so it exercises what users can do themselves.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "core.streaming.legacy"
PUBLIC = {
    "core.config.settings",
    "core.streaming.clients",
    "core.streaming.errors",
    "core.streaming.infrastructure.message_producer",
    "core.streaming.orchestration.service_orchestrator",
    "core.streaming.patterns.stream_service_builder",
    "core.streaming.reliability.steps",
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import in ``path``, inside functions too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_nothing_in_core_outside_the_package_imports_it() -> None:
    importers = {
        _module(path)
        for path in (ROOT / "core").rglob("*.py")
        if not _in(_module(path), LEGACY) and any(_in(m, LEGACY) for m in _imports(path))
    }
    assert importers == set()


def test_it_uses_only_the_public_surface_of_the_framework() -> None:
    used = {
        module
        for path in (ROOT / "core" / "streaming" / "legacy").rglob("*.py")
        for module in _imports(path)
        if _in(module, "core") and not _in(module, LEGACY)
    }
    assert used <= PUBLIC, used - PUBLIC


def test_running_a_builder_made_service_never_loads_it() -> None:
    code = (
        "import sys\n"
        "from core.streaming.patterns.stream_service_builder import StreamServiceBuilder\n"
        "from core.streaming.testing import StreamTestHarness\n"
        "import core.streaming.dead_letters, core.streaming.clients\n"
        f"print({LEGACY!r} in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
