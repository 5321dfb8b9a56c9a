"""waxhouse.serve's pure parts: the history query (names quoted, values bound), event
frames, ids, push delays, fan-out to bounded queues, the CLI's table list."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from tests.support.serve import LATENESS_MS, PIPELINE_SPEC, tables
from waxhouse.cli import main, serve_tables
from waxhouse.errors import SettingsError
from waxhouse.serve import fanout
from waxhouse.serve.fanout import QUEUE_LIMIT, Feed, event_of
from waxhouse.serve.history import EMBEDDED, History, HistoryUnavailable, history_query, present
from waxhouse.serve.metrics import push_delay_s
from waxhouse.serve.server import Refused, parse_limit, parse_time
from waxhouse.serve.store import parse_id
from waxhouse.settings import load_settings

LIVE = tables()


def test_history_binds_every_value_and_quotes_every_name() -> None:
    sql, parameters = history_query(
        LIVE["visits"], "u1'; DROP TABLE x --//a/b", 1_000, 2_000, limit=50
    )
    assert sql == (
        "SELECT * FROM `visits` WHERE `user_id` = {k0:String} AND `page` = {k1:String} "
        "AND `window_start` >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
        "AND `window_start` < fromUnixTimestamp64Milli({until:Int64}, 'UTC') "
        "ORDER BY `window_start` LIMIT {limit:UInt32}"
    )
    assert parameters == {
        "k0": "u1'; DROP TABLE x --",
        "k1": "/a/b",
        "since": 1_000,
        "until": 2_000,
        "limit": 50,
    }


def test_history_without_bounds_and_with_a_single_key() -> None:
    sql, parameters = history_query(LIVE["trending"], "/a/b", None, None, limit=1)
    assert sql == (
        "SELECT * FROM `trending` WHERE `page` = {k0:String} "
        "ORDER BY `window_start` LIMIT {limit:UInt32}"
    )
    assert parameters == {"k0": "/a/b", "limit": 1}


def test_history_needs_every_value_of_a_composite_key() -> None:
    with pytest.raises(ValueError, match="user_id/page"):
        history_query(LIVE["visits"], "only-a-user", None, None, limit=1)


class FakeClient:
    """A clickhouse-connect client that answers one query and records it."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.queries.append((sql, parameters))
        start = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
        return type(
            "Result",
            (),
            {
                "column_names": ("window_start", "page", "revenue", "views"),
                "result_rows": [(start, "/a", Decimal("1.25"), 3)],
            },
        )()


def test_history_rows_are_presented_like_live_rows() -> None:
    history = History(None)
    client = FakeClient()
    history._client = client  # type: ignore[assignment]
    history.target = object()  # type: ignore[assignment]  # any server: check() passes
    history.check = lambda: None  # type: ignore[method-assign]
    rows = asyncio.run(history.rows(LIVE["trending"], "/a", 0, None, 10))
    assert rows == [
        {"window_start": "2026-01-01T00:01:00.000Z", "page": "/a", "revenue": 1.25, "views": 3}
    ]
    assert client.queries[0][1] == {"k0": "/a", "since": 0, "limit": 10}


def test_history_is_unavailable_with_an_embedded_store() -> None:
    from waxhouse.connectors.clickhouse_store import parse_clickhouse_url

    with pytest.raises(HistoryUnavailable, match="needs a ClickHouse server"):
        History(parse_clickhouse_url("chdb:///tmp/store")).check()
    assert EMBEDDED.startswith("history needs a ClickHouse server")
    with pytest.raises(ValueError, match="naive"):
        present(datetime(2026, 1, 1))  # noqa: DTZ001 - the case refused


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", (0, 0)), ("1700000000000-3", (1700000000000, 3)), ("5", (5, 0))],
)
def test_parse_id(text: str, expected: tuple[int, int]) -> None:
    assert parse_id(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "a-b", "1-", "1-2-3", "$"])
def test_parse_id_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_id(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1000", 1000), ("2026-01-01T00:00:00Z", 1767225600000), ("1970-01-01T00:00:01+01:00", 0)],
)
def test_since_and_until_are_rfc3339_or_epoch_ms(text: str, expected: int) -> None:
    if expected == 0:  # before the epoch: refused as the events' timestamps are
        with pytest.raises(Refused):
            parse_time(text, "since")
        return
    assert parse_time(text, "since") == expected


@pytest.mark.parametrize(("text", "ok"), [(None, 10), ("1", 1), ("1000", 1000)])
def test_limits(text: str | None, ok: int) -> None:
    assert parse_limit(text, 10) == ok


@pytest.mark.parametrize("text", ["0", "1001", "-1", "x", ""])
def test_limits_refused(text: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_limit(text, 10)
    assert refused.value.status == 400


def test_an_event_is_rendered_once_as_both_frames() -> None:
    fields = {b"k": b"top", b"w": b"60000", b"t": b'[["/a",5]]'}
    event = event_of(LIVE["trending"], "17-2", fields)
    assert event.order == (17, 2)
    data = LIVE["trending"].render_entry(fields)[1]
    assert event.sse == b"id: 17-2\nevent: top\ndata: " + data + b"\n\n"
    assert orjson.loads(event.ws) == {"id": "17-2", "event": "top", "data": orjson.loads(data)}


def test_push_delay_is_from_the_window_close() -> None:
    table = LIVE["trending"]
    close = 60_000 + 60_000 + LATENESS_MS  # window [60 s, 120 s) + lateness
    assert push_delay_s(table, "60000", close + 250) == 0.25
    assert push_delay_s(table, None, close) is None


class ListReader:
    """A LiveReader over a list: what the feed's fan-out needs, no store."""

    def __init__(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        self.entries = entries

    async def stream_after(self, table: Any, after: str | None, count: int) -> Any:
        start = (0, 0) if after is None else parse_id(after)
        found = [e for e in self.entries if parse_id(e[0]) > start][:count]
        return found, self.entries[0][0] if self.entries else None


def test_a_client_too_far_behind_is_dropped_and_the_others_are_not() -> None:
    async def scenario() -> tuple[bool, int, bool, int]:
        feed = Feed(LIVE["trending"], ListReader([]))  # type: ignore[arg-type]
        slow, fast = feed.subscribe(), feed.subscribe()
        top = {b"k": b"top", b"w": b"0", b"t": b"[]"}
        for i in range(QUEUE_LIMIT + 1):
            feed._publish([(f"1-{i}", top)])
            while not fast.queue.empty():
                await fast.queue.get()
        return slow.dropped, slow.queue.qsize(), fast.dropped, len(feed.subscribers)

    dropped, queued, fast_dropped, left = asyncio.run(scenario())
    assert dropped and queued == QUEUE_LIMIT + 1  # the events, then None: close
    assert not fast_dropped and left == 1


def test_the_feed_starts_after_the_stream_s_last_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "PAGE", 2)
    entries = [(f"1-{i}", {}) for i in range(5)]
    feed = Feed(LIVE["trending"], ListReader(entries))  # type: ignore[arg-type]
    assert asyncio.run(feed._tail()) == "1-4"
    assert asyncio.run(Feed(LIVE["trending"], ListReader([]))._tail()) == "0-0"  # type: ignore[arg-type]


def test_serve_refuses_two_live_tables_of_one_name() -> None:
    settings = load_settings({})
    assert set(serve_tables(settings, "none", [PIPELINE_SPEC])) == {"visits", "trending"}
    with pytest.raises(SettingsError, match="two pipelines have a live table 'visits'"):
        serve_tables(settings, "none", [PIPELINE_SPEC, PIPELINE_SPEC])
    with pytest.raises(SettingsError, match="no live tables"):
        serve_tables(settings, "none", [])


def test_serve_needs_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["serve", "--flow", "none", "--pipeline", PIPELINE_SPEC]) == 2
    assert "REDIS_URL must be set" in capsys.readouterr().err
