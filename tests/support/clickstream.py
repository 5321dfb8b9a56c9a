"""The clickstream pipeline's tables for tests that write or read its rows directly.

The pipeline is declared in dataflows/clickstream.py; its physical rows are tuples in the
columns `waxhouse.engine` derives. These named tuples give the tests names for them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dataflows.clickstream import declare
from waxhouse.dataflow import table_specs
from waxhouse.engine import TableState
from waxhouse.pipeline import CompiledPipeline
from waxhouse.rows import DeadLetterRow, RowBatch

W_SECONDS, GAP_SECONDS = 60, 1800
PIPELINE = declare(W_SECONDS, GAP_SECONDS)
COMPILED = PIPELINE.compile(10_000)
TABLES = table_specs(COMPILED)
PAGE_STATS_TABLE, USER_SESSIONS_TABLE = TABLES
STATEMENTS = COMPILED.statements()


class PageStatsRow(NamedTuple):
    """One page's counts in one tumbling window, from one source partition."""

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
    """One closed user session."""

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
    deleted: int = 0  # 1: retracts a row a bounded run flushed under another start


assert len(PageStatsRow._fields) == len(PAGE_STATS_TABLE.columns)
assert len(SessionRow._fields) == len(USER_SESSIONS_TABLE.columns)


def batch(
    page_stats: list[PageStatsRow] | None = None,
    sessions: list[SessionRow] | None = None,
    dead_letters: list[DeadLetterRow] | None = None,
) -> RowBatch:
    """A RowBatch of the clickstream's tables."""
    tables: dict[str, list[tuple]] = {}
    if page_stats:
        tables["page_stats"] = list(page_stats)
    if sessions:
        tables["user_sessions"] = list(sessions)
    return RowBatch(tables, list(dead_letters or []))


def page_stats(out: RowBatch) -> list[PageStatsRow]:
    return [PageStatsRow(*row) for row in out.tables.get("page_stats", [])]


def sessions(out: RowBatch) -> list[SessionRow]:
    return [SessionRow(*row) for row in out.tables.get("user_sessions", [])]


class Output:
    """A windowing step's output with the clickstream's tables by name."""

    def __init__(self, rows: RowBatch | None = None) -> None:
        rows = RowBatch() if rows is None else rows
        self.batch = rows
        self.page_stats = page_stats(rows)
        self.sessions = sessions(rows)
        self.dead_letters = rows.dead_letters

    def __bool__(self) -> bool:
        return bool(self.batch)

    def extend(self, other: Output) -> None:
        self.batch.extend(other.batch)
        self.page_stats.extend(other.page_stats)
        self.sessions.extend(other.sessions)


class Windows:
    """One source partition of the clickstream, driven directly (no Bytewax): the compiled
    pipeline's `PartitionState`, its output named by table."""

    def __init__(self, window_ms: int, lateness_ms: int, session_gap_ms: int, part: str) -> None:
        self.config = (window_ms, lateness_ms, session_gap_ms)
        self.state = self._compiled().partition_state(part)

    def _compiled(self) -> CompiledPipeline:
        window_ms, lateness_ms, session_gap_ms = self.config
        return declare(window_ms / 1000, session_gap_ms / 1000).compile(lateness_ms)

    def __getstate__(self) -> dict[str, object]:
        return {"config": self.config, "state": self.state}

    def __setstate__(self, held: dict[str, Any]) -> None:
        self.config = held["config"]
        self.state = self._compiled().restore(held["state"])

    @property
    def sessions(self) -> TableState:
        """The open user sessions (`len()` counts them)."""
        return self.state.tables[1]

    def process(self, events: list[tuple]) -> Output:
        return Output(self.state.process(events))

    def idle(self, idle_ms: int) -> Output:
        return Output(self.state.idle(idle_ms))

    def flush(self) -> Output:
        return Output(self.state.flush())
