"""Output rows: what the windowing step emits and the ClickHouse sink writes.

A table's row is a tuple in its physical table's column order (`waxhouse.engine`), so the
sink inserts rows as they are. Times are integer epoch milliseconds (UTC), which is how
`DateTime64(3, 'UTC')` stores them; decimals are scaled integers that the views show as
`Decimal`.

Each row carries the identity ClickHouse deduplicates on and a `version` that grows with
its content, so a replayed row overwrites an identical one and a partial row can never
replace a fuller one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class DeadLetterRow(NamedTuple):
    """One rejected record. Identity: `source` (`topic/partition/offset` or `generator/<n>`).

    `received_at_ms` is the record's own timestamp (the Kafka record time), so a replay
    writes the identical row again.
    """

    source: str
    reason: str
    error: str
    payload: bytes
    received_at_ms: int


@dataclass(slots=True)
class RowBatch:
    """What one windowing step emits and the sink writes in one go: each table's rows (by
    table name, in its physical column order) and the dead letters."""

    tables: dict[str, list[tuple]] = field(default_factory=dict)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    # Per table, rows to announce as they happen (an episode reaching its length), in the
    # table's column order; not stored by the sink.
    notices: dict[str, list[tuple]] = field(default_factory=dict)
    # For live tables (Redis only): per table, open windows' rows so far; per source
    # partition, its watermark.
    provisional: dict[str, list[tuple]] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return (
            bool(self.dead_letters)
            or any(self.tables.values())
            or any(self.notices.values())
            or any(self.provisional.values())
            or bool(self.marks)
        )

    def stored(self) -> bool:
        """Whether it holds anything for ClickHouse: rows or dead letters."""
        return bool(self.dead_letters) or any(self.tables.values())

    def __len__(self) -> int:
        return len(self.dead_letters) + sum(len(rows) for rows in self.tables.values())

    def rows(self, table: str) -> list[tuple]:
        """The rows of `table`, a list to append to."""
        rows = self.tables.get(table)
        if rows is None:
            rows = self.tables[table] = []
        return rows

    def extend(self, other: RowBatch) -> None:
        self.dead_letters.extend(other.dead_letters)
        for name, rows in other.tables.items():
            if rows:
                self.rows(name).extend(rows)
        for name, rows in other.notices.items():
            if rows:
                self.notices.setdefault(name, []).extend(rows)
        for name, rows in other.provisional.items():
            if rows:
                self.provisional.setdefault(name, []).extend(rows)
        marks = self.marks
        for part, mark in other.marks.items():
            if mark > marks.get(part, mark - 1):
                marks[part] = mark
