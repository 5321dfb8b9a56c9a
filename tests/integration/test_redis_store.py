"""The Redis sink's scripts against a real Redis: versions, provisional rows, tops and
their announcement, outages."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis

from tests.support.redis_server import RedisServer
from waxhouse import Pipeline, Schema, Table, agg, fields, windows
from waxhouse.connectors.metrics import REDIS_ROWS, REDIS_UP
from waxhouse.connectors.redis_store import RedisWriter
from waxhouse.livetables import LiveTable, live_tables
from waxhouse.rows import RowBatch

pytestmark = pytest.mark.integration

MINUTE = 60_000
LATENESS = 10_000
schema = Schema(
    {"user": fields.text(64), "page": fields.text(64), "ts": fields.timestamp()},
    event_time="ts",
)


def tables(**live: Any) -> dict[str, LiveTable]:
    """`pages` (keyed apart from the Kafka key: one part per source partition) and
    `users` (keyed by it), both live."""
    pages = Table(
        "pages",
        key="page",
        window=windows.tumbling(60),
        aggregates={"views": agg.count()},
        live=windows.live(top_by="views", top=2, provisional=True, **live),
    )
    users = Table(
        "users", key="user", window=windows.tumbling(60), aggregates={"views": agg.count()}
    )
    users = replace(users, live=windows.live(provisional=True))
    pipeline = Pipeline("shop", schema, key="user", tables=[pages, users])
    return live_tables(pipeline.compile(LATENESS))


def page_row(start: int, page: str, part: str, views: int) -> tuple:
    # window_start, window_end, page, part, views, version
    return (start, start + MINUTE, page, part, views, views)


def user_row(start: int, user: str, views: int) -> tuple:
    return (start, start + MINUTE, user, views, views)


def batch(*, pages: list[tuple] = (), users: list[tuple] = (), marks=None, provisional=None):  # type: ignore[no-untyped-def, assignment]
    out = RowBatch()
    if pages:
        out.rows("pages").extend(pages)
    if users:
        out.rows("users").extend(users)
    out.marks.update(marks or {})
    out.provisional.update(provisional or {})
    return out


def counted(table: str, result: str) -> float:
    return REDIS_ROWS.labels(table, result)._value.get()


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    with redis.Redis.from_url(redis_url) as c:
        yield c


def shown(client: redis.Redis, table: LiveTable, wid: int, kid: str) -> dict | None:
    return table.render_row(kid, client.hgetall(f"{table.namespace}:r:{wid}:{kid}"))


def stream(client: redis.Redis, table: LiveTable) -> list[dict]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(f"{table.namespace}:s")
    ]


def test_a_replayed_older_or_equal_version_is_refused(client: redis.Redis) -> None:
    live = tables()
    users = live["users"]
    writer = RedisWriter(client, "shop", live)
    refused = counted("users", "refused")
    writer.write(batch(users=[user_row(0, "u1", 5)]))
    writer.write(batch(users=[user_row(0, "u1", 3)]))  # an older version, replayed
    writer.write(batch(users=[user_row(0, "u1", 5)]))  # the same one again
    assert shown(client, users, 0, "u1")["row"]["views"] == 5
    assert counted("users", "refused") - refused == 2
    entries = stream(client, users)
    assert len(entries) == 1, "a refused row adds no stream entry"
    assert orjson.loads(entries[0]["r"])[3] == 5
    writer.write(batch(users=[user_row(0, "u1", 7)]))  # a fuller one wins
    assert shown(client, users, 0, "u1")["row"]["views"] == 7
    assert len(stream(client, users)) == 2


def test_provisional_rows_never_replace_a_final_one(client: redis.Redis) -> None:
    live = tables()
    users = live["users"]
    writer = RedisWriter(client, "shop", live)
    writer.write(batch(provisional={"users": [user_row(0, "u1", 2)]}))
    got = shown(client, users, 0, "u1")
    assert got["final"] is False and got["row"]["views"] == 2
    writer.write(batch(provisional={"users": [user_row(0, "u1", 1)]}))  # older: refused
    assert shown(client, users, 0, "u1")["row"]["views"] == 2
    writer.write(batch(users=[user_row(0, "u1", 4)]))
    got = shown(client, users, 0, "u1")
    assert got["final"] is True and got["row"]["views"] == 4
    assert b"q:" not in client.hgetall(f"{users.namespace}:r:0:u1")
    writer.write(batch(provisional={"users": [user_row(0, "u1", 9)]}))  # after the final
    assert shown(client, users, 0, "u1") == got
    # The newest window is what a key lookup finds, provisional until it closes.
    writer.write(batch(provisional={"users": [user_row(MINUTE, "u1", 1)]}))
    newest = client.zrevrange(f"{users.namespace}:k:u1", 0, 0)
    assert newest == [str(MINUTE).encode()]


def test_tops_add_up_partitions_and_are_announced_once_every_partition_closed(
    client: redis.Redis,
) -> None:
    live = tables()
    pages = live["pages"]
    writer = RedisWriter(client, "shop", live)
    closes = 0 + MINUTE + LATENESS
    writer.write(batch(marks={"0": 5, "1": 5}))  # both partitions have seen events
    writer.write(
        batch(
            pages=[page_row(0, "/a", "0", 3), page_row(0, "/b", "0", 4), page_row(0, "/c", "0", 1)],
            marks={"0": closes + 1},
        )
    )
    writer.write(batch(marks={"1": closes}))  # partition 1 has not passed the close yet
    assert [e for e in stream(client, pages) if e["k"] == "top"] == []
    assert client.get(f"{pages.namespace}:closed") is None
    writer.write(batch(pages=[page_row(0, "/a", "1", 5)], marks={"1": closes + 5}))
    tops = [e for e in stream(client, pages) if e["k"] == "top"]
    assert len(tops) == 1
    assert orjson.loads(tops[0]["t"]) == [["/a", 8], ["/b", 4]]  # top 2, summed
    assert client.get(f"{pages.namespace}:closed") == b"0"
    # Replayed after a crash: the rows are refused, the window is not announced again.
    writer.write(batch(pages=[page_row(0, "/a", "1", 5)], marks={"1": closes + 5}))
    writer.write(batch(marks={"0": closes + 1, "1": closes + 9}))
    assert len([e for e in stream(client, pages) if e["k"] == "top"]) == 1
    assert client.zscore(f"{pages.namespace}:t:0", "/a") == 8
    _, event = pages.render_entry(client.xrange(f"{pages.namespace}:s")[-1][1])
    assert orjson.loads(event)["top"] == [{"key": "/a", "views": 8}, {"key": "/b", "views": 4}]
    # A partition's row, combined on reading as the ClickHouse view combines them.
    assert shown(client, pages, 0, "/a")["row"]["views"] == 8


def test_redis_down_past_the_budget_drops_and_counts_then_resumes() -> None:
    with RedisServer() as server:
        url = server.database()
        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
            live = tables()
            clock = [0.0]
            writer = RedisWriter(
                client,
                "shop",
                live,
                budget_seconds=2.0,
                sleep=lambda s: clock.__setitem__(0, clock[0] + s),
                clock=lambda: clock[0],
                jitter=lambda: 1.0,
            )
            dropped = counted("users", "dropped")
            server.kill()
            writer.write(batch(users=[user_row(0, "u1", 1), user_row(0, "u2", 1)]))
            assert writer.dropping and REDIS_UP._value.get() == 0
            assert counted("users", "dropped") - dropped == 2
            server.start()
            clock[0] += 10  # past the probe interval
            writer.write(batch(users=[user_row(0, "u3", 1)]))
            assert not writer.dropping and REDIS_UP._value.get() == 1
            assert shown(client, live["users"], 0, "u3")["row"]["views"] == 1
            assert shown(client, live["users"], 0, "u1") is None


def session_tables() -> dict[str, LiveTable]:
    visits = Table(
        "visits",
        key="user",
        window=windows.session(100),
        aggregates={"views": agg.count()},
        live=windows.live(provisional=True),
    )
    return live_tables(Pipeline("shop", schema, key="user", tables=[visits]).compile(0))


def session_row(user: str, start: int, end: int, views: int, deleted: int = 0) -> tuple:
    # user, session_start, session_end, views, version, deleted (the table's layout)
    return (user, start, end, views, views, deleted)


def test_a_session_so_far_follows_its_start_and_merges_then_the_final_row_replaces_it(
    client: redis.Redis,
) -> None:
    live = session_tables()
    visits = live["visits"]
    assert visits.compiled.columns == (
        "user", "session_start", "session_end", "views", "version", "deleted"
    )  # fmt: skip
    writer = RedisWriter(client, "shop", live)
    index = f"{visits.namespace}:k:u1"

    def provisional(*rows: tuple) -> None:
        writer.write(batch_of("visits", provisional=list(rows)))

    provisional(session_row("u1", 100_000, 110_000, 2), session_row("u1", 500_000, 500_000, 1))
    assert client.zrange(index, 0, -1) == [b"100000", b"500000"]
    # An earlier event moved the first session's start: its old row goes.
    provisional(session_row("u1", 90_000, 110_000, 3))
    assert client.zrange(index, 0, -1) == [b"90000", b"500000"]
    assert not client.exists(f"{visits.namespace}:r:100000:u1")
    # The two sessions merged, and closed: one final row replaces both provisional ones.
    writer.write(batch_of("visits", final=[session_row("u1", 90_000, 500_000, 5)]))
    assert client.zrange(index, 0, -1) == [b"90000"]
    assert not client.exists(f"{visits.namespace}:r:500000:u1")
    got = visits.render_row("u1", client.hgetall(f"{visits.namespace}:r:90000:u1"))
    assert got["final"] is True and got["row"]["views"] == 5


def batch_of(table: str, *, final: list[tuple] = (), provisional: list[tuple] = ()) -> RowBatch:  # type: ignore[assignment]
    out = RowBatch()
    if final:
        out.rows(table).extend(final)
    if provisional:
        out.provisional[table] = list(provisional)
    return out
