"""The metrics the flow updates per batch: late events, watermark lag, freshness."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.exceptions import ProgrammingError
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest

from dataflows.clickstream import declare, events, generated
from tests.support.clickstream import TABLES, PageStatsRow, SessionRow
from tests.support.clickstream import batch as rows_of
from waxhouse.connectors.clickhouse import ClickHouseWriter, Retrier, RetryPolicy
from waxhouse.connectors.metrics import WatermarkLag, observe_freshness
from waxhouse.dataflow import Parse, PartitionLogic, build_dataflow
from waxhouse.errors import SinkError
from waxhouse.records import InputBatch
from waxhouse.settings import Settings

parse = Parse(events)

W, L, GAP = 60_000, 10_000, 1_800_000
CLICKSTREAM = declare(W / 1000, GAP / 1000)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def batch(part: str, events: list[dict[str, Any]], first_offset: int = 0) -> InputBatch:
    return InputBatch(
        part,
        list(range(first_offset, first_offset + len(events))),
        [orjson.dumps(e) for e in events],
        [e["ts"] for e in events],  # record times: each event's own
    )


def event(n: int, user: str, ts: int) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": "click", "page": "/p", "ts": ts}


def test_late_events_count_per_output_missed_once_per_event() -> None:
    logic = PartitionLogic.builder(CLICKSTREAM.compile(L))(None)
    before = {
        output: sample("waxhouse_late_events_total", output=output)
        for output in ("page_stats", "user_sessions")
    }
    late_before = sample("waxhouse_dead_letters_total", reason="late")
    events = [
        event(1, "u1", 1_000),
        event(2, "u2", W + L + 1_000),  # closes the first window, not u1's session
        event(3, "u1", 2_000),  # misses page_stats only
        event(4, "u2", 2 * (GAP + L)),  # moves the watermark past every session so far
        event(5, "u3", 3_000),  # misses both: a new user whose session would be closed
    ]
    (out,) = logic.on_batch([parse(batch("t/0", events))])[0]
    assert sorted(row.error for row in out.dead_letters) == [
        "missed page_stats",
        "missed page_stats, user_sessions",
    ]
    assert sample("waxhouse_late_events_total", output="page_stats") == before["page_stats"] + 2
    assert (
        sample("waxhouse_late_events_total", output="user_sessions") == before["user_sessions"] + 1
    )
    assert sample("waxhouse_dead_letters_total", reason="late") == late_before + 2


def test_late_events_series_exist_from_the_start() -> None:
    build_dataflow(CLICKSTREAM, Settings(), embedded=generated)
    text = generate_latest(REGISTRY).decode()
    assert 'waxhouse_late_events_total{output="page_stats"}' in text
    assert 'waxhouse_late_events_total{output="user_sessions"}' in text


def test_watermark_lag_is_computed_at_scrape_time_for_partitions_with_a_watermark() -> None:
    now = [1_000.0]
    lag = WatermarkLag(clock=lambda: now[0])
    (family,) = lag.collect()
    assert family.samples == []  # no partition has a watermark yet
    lag.publish("events/0", 990.0)
    lag.publish("events/1", 400.5)
    now[0] = 1_002.0
    (family,) = lag.collect()
    assert family.name == "waxhouse_watermark_lag_seconds"
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"partition": "events/0"}, 12.0),
        ({"partition": "events/1"}, 601.5),
    ]


def test_the_windows_step_publishes_the_watermark_lag_of_its_partition() -> None:
    logic = PartitionLogic.builder(CLICKSTREAM.compile(L))(None)
    logic.on_batch([parse(batch("lagged/0", [event(1, "u1", 5_000)]))])
    lag = sample("waxhouse_watermark_lag_seconds", partition="lagged/0")
    assert lag > 1_700_000_000  # now (a 2023+ clock) minus a watermark of 5 s after the epoch
    assert REGISTRY.get_sample_value("waxhouse_watermark_lag_seconds", {"partition": "x"}) is None


def freshness(table: str) -> tuple[float, float]:
    name = "waxhouse_window_freshness_seconds"
    return sample(f"{name}_count", table=table), sample(f"{name}_sum", table=table)


def test_freshness_is_observed_once_per_distinct_end_and_clamped_at_zero() -> None:
    count, total = freshness("page_stats")
    observe_freshness("page_stats", [60_000, 60_000, 120_000, 60_000, 200_000], now=150.0)
    # ends 60 s, 120 s and 200 s: 90 s + 30 s + 0 (a future end is clamped)
    assert freshness("page_stats") == (count + 3, total + 120.0)


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        return None


def test_the_writer_observes_freshness_per_table_only_after_a_successful_insert() -> None:
    page = PageStatsRow(0, 60_000, "/p", "events/0", 1, 0, 0, 0, 0, 1, 1)
    sessions = [
        SessionRow("u1", 0, 5_000, 1, 1, 0, 0, "/a", "/a", 1),
        SessionRow("u2", 0, 5_000, 1, 1, 0, 0, "/b", "/b", 1),
        SessionRow("u3", 0, 7_000, 1, 1, 0, 0, "/c", "/c", 1),
    ]
    rows = rows_of(page_stats=[page, page._replace(page="/q")], sessions=sessions)
    before = {table: freshness(table)[0] for table in ("page_stats", "user_sessions")}
    failing = ClickHouseWriter(
        FakeClient(ProgrammingError("no such table")), TABLES, Retrier(RetryPolicy(max_attempts=1))
    )
    with pytest.raises(SinkError):
        failing.write(rows)
    assert {table: freshness(table)[0] for table in before} == before
    ClickHouseWriter(FakeClient(), TABLES, Retrier(RetryPolicy(max_attempts=1))).write(rows)
    assert freshness("page_stats")[0] == before["page_stats"] + 1  # one window end
    assert freshness("user_sessions")[0] == before["user_sessions"] + 2  # two session ends
