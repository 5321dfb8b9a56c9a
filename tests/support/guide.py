"""The guide's example pipeline, as the guide gives it.

docs/guide.md shows the example in pieces: every ```python block whose first line is
`# orders.py` is part of it, and together, in order, they are the file a reader would
write. Tests run that file, so the guide cannot drift from what works.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "guide.md"
MARK = "# orders.py"


def guide_source() -> str:
    """The example's source: the marked blocks of docs/guide.md, joined in order."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    parts = [block.split("\n", 1)[1] for block in blocks if block.startswith(MARK + "\n")]
    if not parts:
        raise AssertionError(f"{GUIDE} has no ```python block starting with {MARK!r}")
    return "\n".join(parts)


def write_guide_module(directory: Path) -> Path:
    """Write the example to `directory/orders.py` (to run it with `bytewax.run orders`)."""
    path = directory / "orders.py"
    path.write_text(guide_source(), encoding="utf-8")
    return path


def import_guide_module(name: str = "guide_orders") -> types.ModuleType:
    """The example imported as a module (its `flow` is built but not run)."""
    module = types.ModuleType(name)
    module.__file__ = str(GUIDE)
    sys.modules[name] = module
    exec(compile(guide_source(), str(GUIDE), "exec"), module.__dict__)
    return module
