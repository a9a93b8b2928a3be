"""Run the ```python blocks of the docs, so the examples cannot drift from the code.

Convention (also stated at the top of ``docs/writing-a-service.md``):

- every block fenced as ```python runs; use another language tag (```text,
  ```bash, ...) for anything that must not run;
- the blocks of one file run in order in one shared namespace, so a later block
  may use what an earlier one defined; ``__name__`` is ``"docs_example"``, so an
  ``if __name__ == "__main__":`` guard keeps a block's entry point from running;
- after a block runs, each ``async def example...()`` it defines at top level is
  called with no arguments through ``asyncio.run``, in the order written.

Examples run with no ``TRADESTREAM_*`` variables and no ``.env`` file, so they
always use the embedded broker and dedup store. ``README.md`` follows the same
convention; a file without ```python blocks is skipped.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["docs/writing-a-service.md", "docs/migration.md", "README.md"]
EXAMPLE_PREFIX = "example"

_FENCE = re.compile(r"^```[ \t]*python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text, with the line each starts on."""
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1)) for match in _FENCE.finditer(text)
    ]


def example_names(source: str) -> list[str]:
    """Top-level ``async def example...`` names of a block, in source order."""
    return [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith(EXAMPLE_PREFIX)
    ]


def test_fence_parser_finds_blocks_and_their_examples() -> None:
    text = (
        "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
        "```python\nasync def example_a():\n    pass\n```\n"
    )
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["x = 1\n", "async def example_a():\n    pass\n"]
    assert blocks[0][0] == 3
    assert example_names(blocks[1][1]) == ["example_a"]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``TRADESTREAM_*`` variables and no ``.env``: the embedded defaults."""
    for name in list(os.environ):
        if name.upper().startswith("TRADESTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(
    document: str, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT / document
    if not path.exists():
        pytest.skip(f"{document} does not exist")
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{document} has no python blocks")
    # A real module, so dataclasses, pickling and the like find their module.
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    started = time.monotonic()
    for line, source in blocks:
        where = f"{document}:{line}"
        exec(compile(source, where, "exec"), namespace)
        for name in example_names(source):
            try:
                asyncio.run(namespace[name]())
            except Exception as exc:
                raise AssertionError(f"{where}: {name}() failed: {exc!r}") from exc
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"{document}: examples took {elapsed:.1f} s; keep them quick"
