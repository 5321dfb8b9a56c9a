"""The runnable examples of a docs page in any language: a fenced block whose first line is
a comment `runnable example: <title>` (`# ...` in bash and python, `// ...` in js), as
tests/unit/test_docs_examples.py finds the python ones. A bash example may end with
`# answers: <json>`, the answer the page promises."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMENT = {"bash": "#", "python": "#", "js": "//"}
ANSWERS = re.compile(r"^# answers: (.+)$", re.M)


@dataclass(frozen=True)
class Example:
    page: str
    language: str
    title: str
    source: str  # the whole block, its first comment line included

    @property
    def answer(self) -> Any:
        """The decoded `# answers:` line."""
        found = ANSWERS.findall(self.source)
        assert len(found) == 1, f"{self.title}: {len(found)} '# answers:' lines"
        return json.loads(found[0])


def runnable_examples(page: str, language: str) -> list[Example]:
    """The page's runnable `language` examples, in page order."""
    marker = re.escape(COMMENT[language]) + r" runnable example: ([^\n]+)"
    block = re.compile(rf"```{language}\n({marker}\n.*?)```", re.S)
    text = (DOCS / page).read_text(encoding="utf-8")
    return [Example(page, language, m.group(2), m.group(1)) for m in block.finditer(text)]
