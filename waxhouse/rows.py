"""Output rows: what the windowing step emits and the ClickHouse sink writes.

Each row is a tuple in its physical table's column order, so the sink inserts rows as
they are. Times are integer epoch milliseconds (UTC), which is how `DateTime64(3, 'UTC')`
stores them, and money is integer cents; the views make it `Decimal(18, 2)`.

Each row carries the identity ClickHouse deduplicates on and a `version` that grows with
its content, so a replayed row overwrites an identical one and a partial row can never
replace a fuller one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class PageStatsRow(NamedTuple):
    """One page's counts in one tumbling window, from one source partition.

    Identity: `(page, window_start_ms, part)`. The `page_stats` view sums the partitions;
    `unique_users` sums exactly because the topic is keyed by user.
    """

    window_start_ms: int
    window_end_ms: int
    page: str
    part: str
    views: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue_cents: int
    unique_users: int
    version: int


class SessionRow(NamedTuple):
    """One closed user session. Identity: `(user_id, session_start_ms)`."""

    user_id: str
    session_start_ms: int
    session_end_ms: int
    events: int
    page_views: int
    purchases: int
    revenue_cents: int
    entry_page: str
    exit_page: str
    version: int


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
    """Everything one windowing activation emits, written by the sink in one go."""

    page_stats: list[PageStatsRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.page_stats or self.sessions or self.dead_letters)

    def __len__(self) -> int:
        return len(self.page_stats) + len(self.sessions) + len(self.dead_letters)

    def extend(self, other: RowBatch) -> None:
        self.page_stats.extend(other.page_stats)
        self.sessions.extend(other.sessions)
        self.dead_letters.extend(other.dead_letters)
