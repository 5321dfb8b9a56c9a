"""The ClickHouse sink, schema and CLI against the real ClickHouse engine (chDB, in-process).

Each test gets a fresh store under its own `tmp_path`; every client is closed before the
test ends, so the next test's store can open in this process (see tests/support/clickhouse).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from tests.support.clickhouse import query_rows
from tests.support.clickstream import STATEMENTS, TABLES, PageStatsRow, SessionRow
from tests.support.clickstream import batch as rows_of
from tests.support.flow import run_cli
from waxhouse.connectors.clickhouse import (
    ClickHouseSink,
    RetryPolicy,
    ensure_schema,
    open_client,
    parse_clickhouse_url,
)
from waxhouse.connectors.clickhouse_store import ClickHouseTarget
from waxhouse.errors import SinkError
from waxhouse.rows import DeadLetterRow, RowBatch

pytestmark = pytest.mark.integration

UTC = timezone.utc
MAX_TS_MS = 253402300799999

CONTRACT = {
    "page_stats": [
        ("window_start", "DateTime64(3, 'UTC')"),
        ("window_end", "DateTime64(3, 'UTC')"),
        ("page", "String"),
        ("views", "UInt64"),
        ("clicks", "UInt64"),
        ("add_to_carts", "UInt64"),
        ("purchases", "UInt64"),
        ("revenue", "Decimal(18, 2)"),
        ("unique_users", "UInt64"),
    ],
    "user_sessions": [
        ("user_id", "String"),
        ("session_start", "DateTime64(3, 'UTC')"),
        ("session_end", "DateTime64(3, 'UTC')"),
        ("events", "UInt64"),
        ("page_views", "UInt64"),
        ("purchases", "UInt64"),
        ("revenue", "Decimal(18, 2)"),
        ("entry_page", "String"),
        ("exit_page", "String"),
    ],
    "dead_letters": [
        ("source", "String"),
        ("reason", "String"),
        ("error", "String"),
        ("payload", "String"),
        ("received_at", "DateTime64(3, 'UTC')"),
    ],
}


@pytest.fixture
def client(store_url: str) -> Iterator[Client]:
    ch = open_client(parse_clickhouse_url(store_url))
    try:
        ensure_schema(ch, STATEMENTS)
        yield ch
    finally:
        ch.close()


def page_row(
    page: str = "/home",
    *,
    window_start_ms: int = 60_000,
    part: str = "events/0",
    views: int = 1,
    revenue_cents: int = 0,
    unique_users: int = 1,
    version: int | None = None,
) -> PageStatsRow:
    return PageStatsRow(
        window_start_ms=window_start_ms,
        window_end_ms=window_start_ms + 60_000,
        page=page,
        part=part,
        views=views,
        clicks=2 * views,
        add_to_carts=0,
        purchases=1 if revenue_cents else 0,
        revenue_cents=revenue_cents,
        unique_users=unique_users,
        version=views + 2 * views + (1 if revenue_cents else 0) if version is None else version,
    )


def session_row(
    user_id: str = "u1", *, events: int = 3, exit_page: str = "/checkout"
) -> SessionRow:
    return SessionRow(
        user_id=user_id,
        session_start_ms=1_000,
        session_end_ms=1_000 + 10_000 * (events - 1),
        events=events,
        page_views=events - 1,
        purchases=1,
        revenue_cents=1999,
        entry_page="/home",
        exit_page=exit_page,
        version=events,
    )


def write_through_sink(
    url: str, *batches: list[RowBatch], on_close: Callable[[Client], None] | None = None
) -> None:
    """Build the sink's one partition, write each list of batches, close it."""
    sink = ClickHouseSink(url, TABLES, STATEMENTS, on_close=on_close)
    (part,) = sink.list_parts()
    partition = sink.build_part("test_output", part, None)
    try:
        for values in batches:
            partition.write_batch(values)
    finally:
        partition.close()


# --- schema -----------------------------------------------------------------------------


def test_schema_is_idempotent_and_keeps_data(client: Client) -> None:
    client.insert(
        "dead_letters_data",
        [("s/0/1", "late", "page_stats", b"x", datetime(2026, 1, 1, tzinfo=UTC))],
        column_names=["source", "reason", "error", "payload", "received_at"],
        column_type_names=["String", "String", "String", "String", "DateTime64(3, 'UTC')"],
    )
    ensure_schema(client, STATEMENTS)
    ensure_schema(client, STATEMENTS)
    tables = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    ).result_rows
    assert tables == [
        ("dead_letters", "View"),
        ("dead_letters_data", "ReplacingMergeTree"),
        ("page_stats", "View"),
        ("page_stats_data", "ReplacingMergeTree"),
        ("user_sessions", "View"),
        ("user_sessions_data", "ReplacingMergeTree"),
    ]
    assert client.query("SELECT source FROM dead_letters").result_rows == [("s/0/1",)]


@pytest.mark.parametrize("view", sorted(CONTRACT))
def test_views_describe_exactly_as_the_contract(client: Client, view: str) -> None:
    described = client.query("DESCRIBE TABLE {view:Identifier}", parameters={"view": view})
    assert [(row[0], row[1]) for row in described.result_rows] == CONTRACT[view]


# --- writing through the sink -----------------------------------------------------------


def test_sink_writes_rows_that_the_views_return(store_url: str) -> None:
    seen_on_close: list[int] = []

    def on_close(ch: Client) -> None:
        seen_on_close.append(ch.query("SELECT count() FROM page_stats").result_rows[0][0])

    batch_one = rows_of(
        page_stats=[page_row("/home", views=2, revenue_cents=1999, unique_users=2)],
        sessions=[session_row("u1")],
    )
    batch_two = rows_of(
        page_stats=[page_row("/cart", window_start_ms=120_000)],
        dead_letters=[DeadLetterRow("events/0/9", "invalid_event", "ts", b'{"ts":1}', 5_000)],
    )
    write_through_sink(store_url, [batch_one, batch_two], [RowBatch()], on_close=on_close)

    assert seen_on_close == [2]
    assert query_rows(store_url, "SELECT * FROM page_stats ORDER BY window_start") == [
        (
            datetime(1970, 1, 1, 0, 1, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 2, tzinfo=UTC),
            "/home",
            2,
            4,
            0,
            1,
            Decimal("19.99"),
            2,
        ),
        (
            datetime(1970, 1, 1, 0, 2, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 3, tzinfo=UTC),
            "/cart",
            1,
            2,
            0,
            0,
            Decimal("0.00"),
            1,
        ),
    ]
    assert query_rows(store_url, "SELECT * FROM user_sessions") == [
        (
            "u1",
            datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 0, 21, tzinfo=UTC),
            3,
            2,
            1,
            Decimal("19.99"),
            "/home",
            "/checkout",
        )
    ]
    assert query_rows(store_url, "SELECT * FROM dead_letters") == [
        ("events/0/9", "invalid_event", "ts", '{"ts":1}', datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC))
    ]


def test_replayed_rows_appear_once(store_url: str) -> None:
    batch = rows_of(
        page_stats=[page_row("/a"), page_row("/b", views=3)],
        sessions=[session_row("u1"), session_row("u2")],
        dead_letters=[DeadLetterRow("events/1/4", "invalid_json", "not JSON", b"{", 7)],
    )
    write_through_sink(store_url, [batch])
    write_through_sink(store_url, [batch, batch])

    assert query_rows(store_url, "SELECT page, views FROM page_stats ORDER BY page") == [
        ("/a", 1),
        ("/b", 3),
    ]
    assert query_rows(store_url, "SELECT user_id, events FROM user_sessions ORDER BY user_id") == [
        ("u1", 3),
        ("u2", 3),
    ]
    assert query_rows(store_url, "SELECT source FROM dead_letters") == [("events/1/4",)]


def test_a_partial_row_never_replaces_a_fuller_one(store_url: str) -> None:
    fuller = rows_of(
        page_stats=[page_row("/a", views=10, version=30)],
        sessions=[session_row("u1", events=5, exit_page="/late")],
    )
    partial = rows_of(
        page_stats=[page_row("/a", views=4, version=12)],
        sessions=[session_row("u1", events=2, exit_page="/early")],
    )
    write_through_sink(store_url, [fuller])
    write_through_sink(store_url, [partial])

    assert query_rows(store_url, "SELECT page, views, clicks FROM page_stats") == [("/a", 10, 20)]
    assert query_rows(store_url, "SELECT events, exit_page FROM user_sessions") == [(5, "/late")]


def test_page_stats_sums_the_parts_of_one_window(store_url: str) -> None:
    parts = [
        page_row("/a", part="events/0", views=2, revenue_cents=1050, unique_users=2),
        page_row("/a", part="events/1", views=3, revenue_cents=949, unique_users=1),
        page_row("/a", part="events/1", views=3, revenue_cents=949, unique_users=1),  # replay
        page_row("/a", window_start_ms=120_000, part="events/1", views=7),
    ]
    write_through_sink(store_url, [rows_of(page_stats=parts)])

    rows = query_rows(
        store_url,
        "SELECT toUnixTimestamp64Milli(window_start), views, clicks, purchases, revenue,"
        " unique_users FROM page_stats WHERE page = {page:String} ORDER BY window_start",
        {"page": "/a"},
    )
    assert rows == [
        (60_000, 5, 10, 2, Decimal("19.99"), 3),
        (120_000, 7, 14, 0, Decimal("0.00"), 1),
    ]


def test_invalid_utf8_payload_round_trips(store_url: str) -> None:
    payload = b"\xff\xfe\x00{not json\xc3\x28"
    letter = DeadLetterRow("generator/17", "invalid_json", "not UTF-8", payload, 0)
    write_through_sink(store_url, [rows_of(dead_letters=[letter])])

    rows = query_rows(store_url, "SELECT source, hex(payload), length(payload) FROM dead_letters")
    assert rows == [("generator/17", payload.hex().upper(), len(payload))]


def test_time_and_money_boundaries_round_trip_exactly(store_url: str) -> None:
    rows = [
        page_row("/first", window_start_ms=0, revenue_cents=1),
        page_row("/last", window_start_ms=MAX_TS_MS - 60_000, revenue_cents=99_999_999_999_999_999),
    ]
    write_through_sink(store_url, [rows_of(page_stats=rows)])

    assert query_rows(
        store_url,
        "SELECT page, toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end),"
        " toString(revenue) FROM page_stats ORDER BY window_start",
    ) == [
        ("/first", 0, 60_000, "0.01"),
        ("/last", MAX_TS_MS - 60_000, MAX_TS_MS, "999999999999999.99"),
    ]


def test_sink_in_a_dataflow(store_url: str) -> None:
    batches = [
        rows_of(page_stats=[page_row("/a", part="generator", views=1, version=1)]),
        rows_of(page_stats=[page_row("/a", part="generator", views=2, version=2)]),
        rows_of(sessions=[session_row("u9")]),
    ]
    flow = Dataflow("clickhouse_sink_test")
    items = op.input("in", flow, TestingSource(batches))
    keyed = op.key_on("key", items, lambda _batch: "clickhouse")
    op.output("out", keyed, ClickHouseSink(store_url, TABLES, STATEMENTS))
    run_main(flow)

    assert query_rows(store_url, "SELECT page, views FROM page_stats") == [("/a", 2)]
    assert query_rows(store_url, "SELECT user_id FROM user_sessions") == [("u9",)]


def test_unreachable_server_fails_after_the_retry_budget(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: every attempt is a transport error (retryable).
    policy = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.01)
    sink = ClickHouseSink(
        "http://writer:top%2Fsecret@127.0.0.1:1/analytics", TABLES, STATEMENTS, retry=policy
    )

    with pytest.raises(SinkError, match="after 3 attempt") as raised:
        sink.build_part("out", "clickhouse", None)

    assert isinstance(raised.value.__cause__, OperationalError)
    retries = [r for r in caplog.records if r.name == "waxhouse.connectors.clickhouse"]
    assert len(retries) == 2
    assert "top/secret" not in caplog.text and "top%2Fsecret" not in caplog.text
    assert "top/secret" not in str(raised.value)


# --- chDB store switching (documented in tests/support/clickhouse.py) --------------------


def test_one_store_per_process_at_a_time(tmp_path: Path) -> None:
    first = ClickHouseTarget(scheme="chdb", path=str(tmp_path / "a"))
    second = ClickHouseTarget(scheme="chdb", path=str(tmp_path / "b"))

    ch = open_client(first)
    ensure_schema(ch, STATEMENTS)
    try:
        with pytest.raises(ProgrammingError):
            open_client(second)
    finally:
        ch.close()

    other = open_client(second)  # every client on the first store is closed: allowed
    other.close()
    assert query_rows(f"chdb://{first.path}", "SELECT count() FROM page_stats") == [(0,)]


# --- the waxhouse CLI -------------------------------------------------------------------


def test_cli_sql_prints_a_table_and_json_lines(store_url: str) -> None:
    rows = [page_row("/home", views=2, revenue_cents=1999), page_row("/a-long-page", views=11)]
    write_through_sink(store_url, [rows_of(page_stats=rows)])

    sql = "SELECT page, views, revenue FROM page_stats ORDER BY page"
    table = run_cli({"CLICKHOUSE_URL": store_url}, "sql", sql)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "page         | views | revenue",
        "-------------+-------+--------",
        "/a-long-page |    11 |    0.00",
        "/home        |     2 |   19.99",
        "(2 rows)",
    ]

    lines = run_cli({"CLICKHOUSE_URL": store_url}, "sql", "--format", "json", sql, "-p", "unused=1")
    assert lines.returncode == 0, lines.stderr
    parsed: list[dict[str, Any]] = [json.loads(line) for line in lines.stdout.splitlines()]
    assert parsed == [
        {"page": "/a-long-page", "views": 11, "revenue": "0.00"},
        {"page": "/home", "views": 2, "revenue": "19.99"},
    ]


def test_cli_schema_and_errors(store_url: str) -> None:
    applied = run_cli({"CLICKHOUSE_URL": store_url}, "schema")
    assert applied.returncode == 0, applied.stderr
    assert "Schema is up to date" in applied.stdout

    bad_sql = run_cli({"CLICKHOUSE_URL": store_url}, "sql", "SELECT no_such_column FROM page_stats")
    assert bad_sql.returncode == 1
    assert len(bad_sql.stderr.strip().splitlines()) == 1
    assert "UNKNOWN_IDENTIFIER" in bad_sql.stderr

    bad_url = run_cli({"CLICKHOUSE_URL": "ftp://nowhere"}, "sql", "SELECT 1")
    assert bad_url.returncode == 2
    assert "CLICKHOUSE_URL" in bad_url.stderr
