"""Read the three output tables in a comparable form, and shape the oracle's to match."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.clickhouse import query_rows
from tests.support.oracle import Expected
from waxhouse.connectors.generator import GeneratedRecord

PAGE_STATS_SQL = """
    SELECT toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), page,
           views, clicks, add_to_carts, purchases, toInt64(revenue * 100), unique_users
    FROM page_stats ORDER BY 1, 2, 3"""
SESSIONS_SQL = """
    SELECT user_id, toUnixTimestamp64Milli(session_start), toUnixTimestamp64Milli(session_end),
           events, page_views, purchases, toInt64(revenue * 100), entry_page, exit_page
    FROM user_sessions ORDER BY 1, 2"""
DEAD_LETTERS_SQL = """
    SELECT source, reason, error, hex(payload), toUnixTimestamp64Milli(received_at)
    FROM dead_letters ORDER BY source"""


@dataclass
class Tables:
    page_stats: list[tuple]
    sessions: list[tuple]
    dead_letters: list[tuple]
    stdout: str = ""


def read_tables(url: str, stdout: str = "") -> Tables:
    return Tables(
        [tuple(r) for r in query_rows(url, PAGE_STATS_SQL)],
        [tuple(r) for r in query_rows(url, SESSIONS_SQL)],
        [tuple(r) for r in query_rows(url, DEAD_LETTERS_SQL)],
        stdout,
    )


def expected_dead_letters(
    expected: Expected, records: list[GeneratedRecord], name: dict[int, str]
) -> list[tuple]:
    """The oracle's dead letters as `as_comparable` rows, records named by `name[n]`."""
    by_n = {r.n: r for r in records}
    return sorted(
        (name[n], reason, field, payload.hex().upper(), by_n[n].timestamp_ms)
        for n, (reason, field, payload) in expected.dead_letters.items()
    )


def as_comparable(rows: list[tuple]) -> list[tuple]:
    """Dead letters with the error cut down to the field it names (the oracle's words)."""
    return sorted(
        (source, reason, error.split(":")[0] if reason == "invalid_event" else "", payload, at)
        for source, reason, error, payload, at in rows
    )


def differences(got: list[tuple], want: list[tuple], shown: int = 10) -> str:
    """What `got` has that `want` lacks and the other way round, a few rows of each."""
    extra = sorted(set(got) - set(want))
    missing = sorted(set(want) - set(got))
    return (
        f"{len(got)} rows, {len(want)} expected; {len(extra)} unexpected: {extra[:shown]}; "
        f"{len(missing)} missing: {missing[:shown]}"
    )


def assert_tables_match(
    tables: Tables, expected: Expected, records: list[GeneratedRecord], positions: dict[int, str]
) -> None:
    """All three tables equal the oracle's, row by row."""
    assert tables.page_stats == expected.page_stats, differences(
        tables.page_stats, expected.page_stats
    )
    assert tables.sessions == expected.sessions, differences(tables.sessions, expected.sessions)
    assert as_comparable(tables.dead_letters) == expected_dead_letters(expected, records, positions)
