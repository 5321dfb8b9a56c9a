"""ClickHouse sink without a server: URL parsing, row shaping, retries, table rendering."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    Error,
    OperationalError,
    ProgrammingError,
)
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.support.clickstream import (
    PAGE_STATS_TABLE,
    STATEMENTS,
    TABLES,
    USER_SESSIONS_TABLE,
    PageStatsRow,
    SessionRow,
    batch,
)
from waxhouse.cli import render_json_lines, render_table
from waxhouse.connectors.clickhouse import (
    DEAD_LETTERS_TABLE,
    ClickHouseSink,
    ClickHouseTarget,
    ClickHouseWriter,
    InsertClient,
    Retrier,
    RetryPolicy,
    TableSpec,
    _ClickHousePartition,
    _ClientThread,
    is_transient,
    parse_clickhouse_url,
)
from waxhouse.errors import SettingsError, SinkError
from waxhouse.rows import DeadLetterRow, RowBatch

UTC = timezone.utc
MAX_TS_MS = 253402300799999

# --- URL parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://localhost",
            ClickHouseTarget(scheme="http", host="localhost", port=8123),
        ),
        (
            "https://ch.example.com",
            ClickHouseTarget(scheme="https", host="ch.example.com", port=8443),
        ),
        (
            "http://alice:s3cret@ch:9000/analytics",
            ClickHouseTarget(
                scheme="http",
                host="ch",
                port=9000,
                username="alice",
                password="s3cret",
                database="analytics",
            ),
        ),
        (
            "https://bob:p%40ss%3Aw%2Frd@ch:8443/",
            ClickHouseTarget(
                scheme="https", host="ch", port=8443, username="bob", password="p@ss:w/rd"
            ),
        ),
        (
            "http://:only-password@ch/my%20db",
            ClickHouseTarget(
                scheme="http", host="ch", port=8123, password="only-password", database="my db"
            ),
        ),
        (
            "http://[::1]:8123/db",
            ClickHouseTarget(scheme="http", host="::1", port=8123, database="db"),
        ),
        (
            "chdb:///var/lib/waxhouse/store",
            ClickHouseTarget(scheme="chdb", path="/var/lib/waxhouse/store"),
        ),
    ],
)
def test_parse_clickhouse_url(url: str, expected: ClickHouseTarget) -> None:
    assert parse_clickhouse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host",
        "localhost:8123",
        "http://",
        "http://host:99999",
        "http://host:port",
        "http://host/a/b",
        "http://host/db?secure=1",
        "chdb://relative/path",
        "chdb:",
    ],
)
def test_parse_clickhouse_url_rejects(url: str) -> None:
    with pytest.raises(SettingsError, match="CLICKHOUSE_URL"):
        parse_clickhouse_url(url)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://alice:s3cret@ch:9000/analytics", "http://alice:***@ch:9000/analytics"),
        ("https://ch", "https://default@ch:8443/default"),
        ("http://[::1]/db", "http://default@[::1]:8123/db"),
        ("chdb:///data/store", "chdb:///data/store"),
    ],
)
def test_masked_form(url: str, masked: str) -> None:
    target = parse_clickhouse_url(url)
    assert target.masked() == masked
    assert str(target) == masked


@given(password=st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_masked_form_and_repr_never_show_the_password(password: str) -> None:
    target = parse_clickhouse_url(f"https://user:{quote(password, safe='')}@host:8443/db")
    assert target.password == password
    assert target.masked() == "https://user:***@host:8443/db"
    assert repr(target) == repr(replace(target, password="something else"))


# --- row shaping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_type", "table"),
    [
        (PageStatsRow, PAGE_STATS_TABLE),
        (SessionRow, USER_SESSIONS_TABLE),
        (DeadLetterRow, DEAD_LETTERS_TABLE),
    ],
)
def test_rows_are_inserted_as_they_are_so_their_fields_are_the_columns(
    row_type: type, table: TableSpec
) -> None:
    """Field i of the row type is column i of its table (`_ms` marks epoch ms ticks)."""
    columns = [field.removesuffix("_ms") for field in row_type._fields]
    assert columns == list(table.columns)
    assert len(table.types) == len(table.columns)
    for column, kind in zip(table.columns, table.types, strict=True):
        if column.endswith(("_start", "_end", "_at")):
            assert kind == "DateTime64(3, 'UTC')", column
        if column.endswith("_cents"):
            assert kind == "Int64", column


# --- retries ----------------------------------------------------------------------------


class FakeClient:
    """An `InsertClient` that fails with the scripted errors, then records inserts."""

    def __init__(self, errors: Sequence[Exception] = ()) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.inserted: list[tuple[str, list[Any], tuple[str, ...], tuple[str, ...]]] = []

    def insert(
        self,
        table: str | None = None,
        data: Sequence[Sequence[Any]] | None = None,
        column_names: str | Sequence[str] | None = "*",
        database: str | None = None,
        column_types: Any = None,
        column_type_names: Sequence[str] | None = None,
        column_oriented: bool = False,
    ) -> Any:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        assert table is not None and data is not None and column_type_names is not None
        rows = list(zip(*data, strict=True)) if column_oriented else list(data)
        self.inserted.append((table, rows, tuple(column_names or ()), tuple(column_type_names)))
        return None


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_writer(
    client: InsertClient, fake_time: FakeTime, policy: RetryPolicy, jitter: float = 1.0
) -> ClickHouseWriter:
    retrier = Retrier(policy, sleep=fake_time.sleep, jitter=lambda: jitter, clock=fake_time.clock)
    return ClickHouseWriter(client, TABLES, retrier)


def page_row(page: str = "/p", version: int = 1) -> PageStatsRow:
    return PageStatsRow(0, 60_000, page, "events/0", 1, 0, 0, 0, 0, 1, version)


def metric(name: str, table: str = "page_stats") -> float:
    return REGISTRY.get_sample_value(name, {"table": table}) or 0.0


def transient() -> Exception:
    return DatabaseError("Too many parts", code=252, name="TOO_MANY_PARTS")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (OperationalError("Error executing HTTP request"), True),
        (OperationalError("HTTP 503", code=None), True),
        (DatabaseError("x", code=252), True),
        (DatabaseError("x", code=159), True),
        (DatabaseError("x", code=209), True),
        (DatabaseError("x", code=210), True),
        (DatabaseError("x", code=202), True),
        (DatabaseError("x", code=241), True),
        (DatabaseError("unknown table", code=60), False),
        (DatabaseError("syntax", code=62), False),
        (DatabaseError("auth", code=516), False),
        (DatabaseError("no code"), False),
        (ProgrammingError("Unable to open the chdb engine"), False),
        # Only the code decides: a message that looks transient does not.
        (DatabaseError("TOO_MANY_PARTS timeout network", code=53), False),
    ],
)
def test_is_transient_uses_type_and_code(error: Error, retryable: bool) -> None:
    assert is_transient(error) is retryable


def test_transient_errors_are_retried_then_inserted_once() -> None:
    client = FakeClient([transient(), OperationalError("reset"), transient()])
    fake_time = FakeTime()
    writer = make_writer(client, fake_time, RetryPolicy(max_attempts=5, base_delay_seconds=0.5))
    before = {n: metric(n) for n in ("waxhouse_sink_errors_total", "waxhouse_sink_retries_total")}
    rows_before = metric("waxhouse_sink_rows_total")
    batches_before = metric("waxhouse_sink_batches_total")

    writer.write(batch(page_stats=[page_row("/a"), page_row("/b")]))

    assert client.attempts == 4
    assert len(client.inserted) == 1
    table, data, columns, types = client.inserted[0]
    assert (table, columns, types) == (
        "page_stats_data",
        PAGE_STATS_TABLE.columns,
        PAGE_STATS_TABLE.types,
    )
    assert [row[2] for row in data] == ["/a", "/b"]
    # Full jitter with the random source at its top: the ceilings 0.5 * 2 ** n.
    assert fake_time.sleeps == [0.5, 1.0, 2.0]
    assert metric("waxhouse_sink_errors_total") - before["waxhouse_sink_errors_total"] == 3
    assert metric("waxhouse_sink_retries_total") - before["waxhouse_sink_retries_total"] == 3
    assert metric("waxhouse_sink_rows_total") - rows_before == 2
    assert metric("waxhouse_sink_batches_total") - batches_before == 1


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_sleeps_stay_within_the_jitter_bounds_and_the_cap(jitter: float) -> None:
    client = FakeClient([transient() for _ in range(7)])
    fake_time = FakeTime()
    policy = RetryPolicy(max_attempts=10, base_delay_seconds=0.5, max_delay_seconds=4.0)
    make_writer(client, fake_time, policy, jitter=jitter).write(batch(page_stats=[page_row()]))

    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert fake_time.sleeps == pytest.approx([jitter * c for c in ceilings])
    assert all(0 <= s < c for s, c in zip(fake_time.sleeps, ceilings, strict=True))


def test_permanent_error_raises_without_retry() -> None:
    error = DatabaseError("Unknown table", code=60, name="UNKNOWN_TABLE")
    client = FakeClient([error])
    fake_time = FakeTime()
    errors_before = metric("waxhouse_sink_errors_total", "user_sessions")
    retries_before = metric("waxhouse_sink_retries_total", "user_sessions")
    writer = make_writer(client, fake_time, RetryPolicy())
    session = SessionRow("u", 0, 1, 1, 1, 0, 0, "/a", "/a", 1)

    with pytest.raises(SinkError, match=r"user_sessions_data.*UNKNOWN_TABLE") as raised:
        writer.write(batch(sessions=[session]))

    assert raised.value.__cause__ is error
    assert client.attempts == 1
    assert fake_time.sleeps == []
    assert metric("waxhouse_sink_errors_total", "user_sessions") - errors_before == 1
    assert metric("waxhouse_sink_retries_total", "user_sessions") - retries_before == 0


def test_attempt_budget_exhausted_raises() -> None:
    client = FakeClient([transient() for _ in range(10)])
    fake_time = FakeTime()
    writer = make_writer(client, fake_time, RetryPolicy(max_attempts=3))

    with pytest.raises(SinkError, match="after 3 attempt"):
        writer.write(batch(page_stats=[page_row()]))

    assert client.attempts == 3
    assert len(fake_time.sleeps) == 2
    assert client.inserted == []


def test_time_budget_exhausted_raises_before_a_pointless_wait() -> None:
    client = FakeClient([OperationalError("down") for _ in range(10)])
    fake_time = FakeTime()
    policy = RetryPolicy(max_attempts=100, max_elapsed_seconds=5.0, base_delay_seconds=1.0)
    writer = make_writer(client, fake_time, policy)

    with pytest.raises(SinkError, match="after 3 attempt"):
        writer.write(batch(page_stats=[page_row()]))

    # 1 + 2 seconds slept; the next wait (4 s) would end past the 5 s budget.
    assert fake_time.sleeps == [1.0, 2.0]


def test_other_exceptions_are_bugs_and_propagate_unwrapped() -> None:
    client = FakeClient([TypeError("expected bytes, str found")])
    writer = make_writer(client, FakeTime(), RetryPolicy())
    with pytest.raises(TypeError):
        writer.write(batch(page_stats=[page_row()]))
    assert client.attempts == 1


def test_writer_inserts_each_non_empty_table_once() -> None:
    client = FakeClient()
    writer = make_writer(client, FakeTime(), RetryPolicy())
    letter = DeadLetterRow("generator/1", "invalid_event", "ts", b"{}", 5)
    writer.write(batch(page_stats=[page_row("/a")], dead_letters=[letter]))
    writer.write(RowBatch())
    assert [table for table, *_ in client.inserted] == ["page_stats_data", "dead_letters_data"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_elapsed_seconds": -1.0},
        {"base_delay_seconds": 2.0, "max_delay_seconds": 1.0},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- the sink without I/O ---------------------------------------------------------------


def test_sink_has_one_partition_and_does_no_io_when_built() -> None:
    # Nothing listens on port 1: constructing the sink must not try to connect.
    sink = ClickHouseSink("http://user:pw@127.0.0.1:1/db", TABLES, STATEMENTS)
    assert sink.list_parts() == ["clickhouse"]
    assert {sink.part_fn(key) for key in ("clickhouse", "other", "")} == {0}


# --- CLI rendering ----------------------------------------------------------------------


def test_render_table_aligns_columns_and_counts_rows() -> None:
    when = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
    text = render_table(
        ["page", "views", "revenue", "window_start"],
        [("/home", 12, Decimal("19.99"), when), ("/a-long-page", 3, Decimal("0.00"), when)],
    )
    assert text.splitlines() == [
        "page         | views | revenue | window_start",
        "-------------+-------+---------+------------------------------",
        "/home        |    12 |   19.99 | 2026-11-26 10:15:00.000+00:00",
        "/a-long-page |     3 |    0.00 | 2026-11-26 10:15:00.000+00:00",
        "(2 rows)",
    ]


def test_render_table_with_no_rows() -> None:
    assert render_table(["x"], []).splitlines() == ["x", "-", "(0 rows)"]


def test_render_json_lines_keeps_decimals_exact() -> None:
    when = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
    text = render_json_lines(["page", "revenue", "at"], [("/é", Decimal("0.10"), when)])
    assert [json.loads(line) for line in text.splitlines()] == [
        {"page": "/é", "revenue": "0.10", "at": "2026-11-26T10:15:00+00:00"}
    ]


# --- the sink partition: group commit ---------------------------------------------------


class GatedClient(FakeClient):
    """Inserts wait until `gate` opens, so writes pile up behind the one in flight."""

    def __init__(self, errors: Sequence[Exception] = ()) -> None:
        super().__init__(errors)
        self.gate = threading.Event()
        self.closed = False

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        assert self.gate.wait(timeout=10), "the test never opened the gate"
        return super().insert(*args, **kwargs)

    def close(self) -> None:
        self.closed = True


def sink_partition(client: GatedClient) -> _ClickHousePartition:
    writer = ClickHouseWriter(client, TABLES, Retrier(RetryPolicy(max_attempts=1)))
    return _ClickHousePartition(_ClientThread(), client, writer, on_close=None)  # type: ignore[arg-type]


def in_thread(action: Callable[[], None], timeout: float = 5.0) -> None:
    """Run `action`, failing if it has not returned within `timeout` seconds."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as e:  # handed to the test
            errors.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), "blocked"
    if errors:
        raise errors[0]


def test_batches_queue_behind_the_write_in_flight_and_go_in_together() -> None:
    client = GatedClient()
    part = sink_partition(client)
    # The first batch is being written (blocked at the gate); the next two only queue.
    in_thread(lambda: part.write_batch([batch(page_stats=[page_row("/1")])]))
    in_thread(lambda: part.write_batch([batch(page_stats=[page_row("/2")])]))
    in_thread(lambda: part.write_batch([batch(page_stats=[page_row("/3")])]))
    assert client.inserted == []
    client.gate.set()
    part.snapshot()  # returns only once every row received is stored
    assert [[row[2] for row in rows] for _, rows, *_ in client.inserted] == [["/1"], ["/2", "/3"]]
    part.close()
    assert client.closed


def test_a_write_that_failed_for_good_is_raised_once_and_stops_writing() -> None:
    client = GatedClient([ProgrammingError("no such table")])
    client.gate.set()
    part = sink_partition(client)
    part.write_batch([batch(page_stats=[page_row("/1")])])
    with pytest.raises(SinkError, match="page_stats_data"):
        part.snapshot()
    part.write_batch([batch(page_stats=[page_row("/2")])])
    part.close()  # no second raise: Bytewax calls close while it shuts down
    assert client.inserted == [] and client.attempts == 1 and client.closed


def test_big_batches_are_inserted_in_slices_in_order() -> None:
    client = FakeClient()
    writer = ClickHouseWriter(
        client, TABLES, Retrier(RetryPolicy(max_attempts=1)), max_insert_rows=3
    )
    writer.write(batch(page_stats=[page_row(f"/{i}") for i in range(7)]))
    slices = [[row[2] for row in rows] for _, rows, *_ in client.inserted]
    assert slices == [["/0", "/1", "/2"], ["/3", "/4", "/5"], ["/6"]]
