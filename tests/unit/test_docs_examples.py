"""Every runnable example in docs/ (a python block whose first line is `# runnable
example: ...`) runs as it stands and its assertions hold: the pages of the building blocks
show code that works, not code that once did."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```python\n(# runnable example: ([^\n]+)\n.*?)```", re.S)
PAGES_WITH_EXAMPLES = {"windows.md", "joins.md", "episodes.md"}


def examples() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
            found.append((page.name, match.group(2), match.group(1)))
    return found


def test_every_building_block_page_has_a_runnable_example() -> None:
    assert {page for page, _, _ in examples()} >= PAGES_WITH_EXAMPLES


@pytest.mark.parametrize(("page", "title", "source"), examples(), ids=lambda v: str(v)[:40])
def test_the_example_runs(page: str, title: str, source: str) -> None:
    # As a module of its own, as a user's file would be: its event types pickle by name.
    name = "docs_example_" + re.sub(r"\W", "_", f"{page}_{title}")
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"docs/{page}: {title}", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
