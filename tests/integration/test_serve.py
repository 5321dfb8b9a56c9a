"""`waxhouse serve` against a real redis-server, rows written by the flow's own writer.

Lookups (composite keys, keys holding `/`, 404), closed windows' tops, Server-Sent
Events and WebSocket streams resumed after a dropped connection with no gap and no
duplicate (compared with the stream's XRANGE), the gap event once the stream was trimmed,
tokens, CORS, SERVE_MAX_STREAMS, metrics, and no secret in /metrics or the log.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.gateway import request
from tests.support.redis_server import RedisServer
from tests.support.serve import LiveRows, ServeProcess, SseClient, SseEvent, start_serve

pytestmark = pytest.mark.integration


@pytest.fixture
def live(redis_url: str) -> Iterator[LiveRows]:
    rows = LiveRows(redis_url)
    yield rows
    rows.close()


@pytest.fixture
def serve(redis_url: str) -> Iterator[ServeProcess]:
    with start_serve(redis_url) as process:
        yield process


def get(url: str, **headers: str) -> Any:
    return request("GET", url, headers=headers)


def rendered(live: LiveRows, table: str, fields: dict[bytes, bytes]) -> tuple[str, Any]:
    name, data = live.tables[table].render_entry(fields)
    return name, orjson.loads(data)


def assert_exactly_the_stream(live: LiveRows, table: str, got: list[SseEvent]) -> None:
    """`got` is the stream's entries, each once, in order, as the server renders them."""
    stream = live.stream(table)
    assert [event.id for event in got] == [entry_id for entry_id, _ in stream]
    for event, (_, fields) in zip(got, stream, strict=True):
        assert (event.event, event.data) == rendered(live, table, fields)


# --- lookups ------------------------------------------------------------------------------


def test_a_key_answers_its_newest_window_row(live: LiveRows, serve: ServeProcess) -> None:
    live.visit(0, "u1", "/a/b", views=3)
    live.visit(1, "u1", "/a/b", views=5)
    live.visit(1, "u2", "/a/b", views=1)

    answer = get(serve.url + "/v1/visits/u1//a/b")  # (user_id, page): the page holds "/"
    assert answer.status == 200, answer
    assert answer.json() == {
        "table": "visits",
        "key": "u1//a/b",
        "final": True,
        "row": {
            "window_start": "1970-01-01T00:01:00.000Z",
            "window_end": "1970-01-01T00:02:00.000Z",
            "user_id": "u1",
            "page": "/a/b",
            "views": 5,
        },
    }
    assert get(serve.url + "/v1/visits?key=u2//a/b").json()["row"]["views"] == 1
    missing = get(serve.url + "/v1/visits/u3//a/b")
    assert missing.status == 404 and "u3//a/b" in missing.json()["error"]
    assert get(serve.url + "/v1/nosuch/u1").status == 404
    assert get(serve.url + "/v1/visits").status == 400  # no key


def test_top_is_the_newest_closed_window(live: LiveRows, serve: ServeProcess) -> None:
    assert get(serve.url + "/v1/trending/top").status == 404  # nothing closed yet
    live.trending(0, {"/a": 5, "/b": 7, "/c": 1, "/d": 6})
    live.trending(1, {"/a": 9}, close=False)  # open: not shown

    answer = get(serve.url + "/v1/trending/top")
    assert answer.status == 200, answer
    assert answer.json() == {
        "table": "trending",
        "window_start": "1970-01-01T00:00:00.000Z",
        "window_end": "1970-01-01T00:01:00.000Z",
        "by": "views",
        "top": [{"key": "/b", "views": 7}, {"key": "/d", "views": 6}, {"key": "/a", "views": 5}],
    }
    assert [t["key"] for t in get(serve.url + "/v1/trending/top?limit=2").json()["top"]] == [
        "/b",
        "/d",
    ]
    for bad in ("0", "1001", "x", "-1"):
        assert get(serve.url + f"/v1/trending/top?limit={bad}").status == 400
    assert get(serve.url + "/v1/visits/top").status == 404  # no top_by
    # A page named "top" is still a key: /v1/{table}?key=top
    assert get(serve.url + "/v1/trending?key=top").status == 404


def test_history_is_refused_with_an_embedded_store(serve: ServeProcess) -> None:
    answer = get(serve.url + "/v1/visits/history/u1//a?since=2026-01-01T00:00:00Z")
    assert answer.status == 503
    assert answer.json()["error"].startswith("history needs a ClickHouse server")
    assert get(serve.url + "/v1/visits/history/u1?since=yesterday").status == 400


# --- streams ------------------------------------------------------------------------------


def test_sse_resumes_after_a_dropped_connection_without_gap_or_duplicate(
    live: LiveRows, serve: ServeProcess
) -> None:
    for i in range(5):
        live.visit(0, f"u{i}", "/p", views=i + 1)
    stream_url = serve.url + "/v1/visits/stream"

    with SseClient(stream_url, last_event_id="0") as first:  # from the start
        assert first.status == 200 and first.headers["content-type"] == "text/event-stream"
        got = first.read(3)
    # Dropped after three; five more written while it is away.
    for i in range(5, 10):
        live.visit(0, f"u{i}", "/p", views=i + 1)

    assert got[-1].id is not None
    with SseClient(stream_url, last_event_id=got[-1].id) as resumed:
        got += resumed.read(7)  # the missed ones (catch-up)
        writer = threading.Thread(
            target=lambda: [live.visit(1, f"u{i}", "/q", views=i + 1) for i in range(4)]
        )
        writer.start()
        got += resumed.read(4)  # then live
        writer.join()
    assert len(got) == 14
    assert_exactly_the_stream(live, "visits", got)


def test_a_client_without_last_event_id_gets_what_comes_next(
    live: LiveRows, serve: ServeProcess
) -> None:
    live.visit(0, "old", "/p", views=1)
    with SseClient(serve.url + "/v1/visits/stream") as client:
        time.sleep(0.3)  # connected (the server's first comment is sent at once)
        live.visit(0, "new", "/p", views=2)
        (event,) = client.read(1)
    assert event.event == "row" and event.data["key"] == "new//p"
    assert event.id == live.stream("visits")[-1][0]


def test_a_trimmed_stream_announces_the_gap_first(redis_url: str) -> None:
    live = LiveRows(redis_url, stream_length=10)  # MAXLEN ~ 10: trimmed by whole nodes
    try:
        live.visit(0, "u0", "/p", views=1)
        gone = live.stream("visits")[0][0]
        for i in range(1, 400):
            live.visit(0, f"u{i}", "/p", views=1)
        stream = live.stream("visits")
        first = stream[0][0]
        assert first != gone, "the stream was not trimmed"
        with start_serve(redis_url) as serve:
            with SseClient(serve.url + "/v1/visits/stream", last_event_id=gone) as client:
                got = client.read(1 + len(stream))
            with SseClient(serve.url + "/v1/visits/stream", last_event_id=first) as client:
                kept = client.read(1)
    finally:
        live.close()
    assert (got[0].event, got[0].id, got[0].data) == ("gap", None, {"after": gone, "first": first})
    assert_exactly_the_stream(live, "visits", got[1:])
    assert kept[0].event == "row" and kept[0].id == stream[1][0]  # no gap: nothing lost


def test_websocket_resumes_without_gap_or_duplicate(live: LiveRows, serve: ServeProcess) -> None:
    for i in range(4):
        live.visit(0, f"u{i}", "/p", views=i + 1)

    async def frames(last: str | None, count: int, more: int = 0) -> list[dict[str, Any]]:
        ws_url = serve.url.replace("http", "ws") + "/v1/visits/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            await ws.send_str(orjson.dumps({"last_event_id": last}).decode())
            got = [await ws.receive_json(timeout=10) for _ in range(count)]
            if more:
                await asyncio.to_thread(
                    lambda: [live.visit(2, f"w{i}", "/r", views=1) for i in range(more)]
                )
                got += [await ws.receive_json(timeout=10) for _ in range(more)]
            return got

    got = asyncio.run(frames("0", 2))
    for i in range(4, 8):
        live.visit(0, f"u{i}", "/p", views=i + 1)
    got += asyncio.run(frames(got[-1]["id"], 6, more=3))
    stream = live.stream("visits")
    assert [frame["id"] for frame in got] == [entry_id for entry_id, _ in stream]
    for frame, (_, fields) in zip(got, stream, strict=True):
        assert (frame["event"], frame["data"]) == rendered(live, "visits", fields)


def test_top_events_stream_as_windows_close(live: LiveRows, serve: ServeProcess) -> None:
    with SseClient(serve.url + "/v1/trending/stream", last_event_id="0") as client:
        live.trending(0, {"/a": 2, "/b": 3})
        live.trending(1, {"/c": 4})
        got = client.read(2)
    assert [event.event for event in got] == ["top", "top"]
    assert got[0].data["top"] == [{"key": "/b", "views": 3}, {"key": "/a", "views": 2}]
    assert_exactly_the_stream(live, "trending", got)


# --- limits, tokens, CORS, metrics ------------------------------------------------------------


def test_streams_beyond_serve_max_streams_are_refused(redis_url: str) -> None:
    with start_serve(redis_url, env={"SERVE_MAX_STREAMS": "2"}) as serve:
        url = serve.url + "/v1/visits/stream"
        with SseClient(url) as one, SseClient(url) as two:
            assert (one.status, two.status) == (200, 200)
            third = SseClient(url)
            assert third.status == 503 and third.headers["retry-after"] == "5"
            third.close()
            one.close()
            deadline = time.monotonic() + 20  # the server sees the close at its next write
            while True:
                again = SseClient(url, timeout_s=5)
                if again.status == 200 or time.monotonic() > deadline:
                    break
                again.close()
                time.sleep(0.2)
            assert again.status == 200
            again.close()
        assert re.search(
            r'waxhouse_serve_requests_total\{route="/v1/\{table\}/stream",status="503"\} [1-9]',
            get(serve.url + "/metrics").body.decode(),
        )


def test_tokens_cors_metrics_and_no_secret_in_metrics_or_log() -> None:
    token, password = "tok-" + "s3cr3t" * 3, "pw-" + "hidden" * 3
    with RedisServer(password=password) as redis_server:
        redis_server.start()
        url = redis_server.database()
        live = LiveRows(url)
        live.visit(0, "u1", "/p", views=2)
        live.trending(0, {"/p": 2})
        env = {"SERVE_TOKENS": token, "SERVE_CORS_ORIGINS": "http://shop.example"}
        with start_serve(url, env=env) as serve:
            base = serve.url
            assert get(base + "/v1/visits/u1//p").status == 401
            assert get(base + "/v1/visits/u1//p", Authorization="Bearer nope").status == 401
            answer = get(
                base + "/v1/visits/u1//p",
                Authorization=f"Bearer {token}",
                Origin="http://shop.example",
            )
            assert answer.status == 200
            assert answer.headers["access-control-allow-origin"] == "http://shop.example"
            other = get(
                base + "/v1/visits/u1//p", Authorization=f"Bearer {token}", Origin="http://x.test"
            )
            assert "access-control-allow-origin" not in other.headers
            preflight = request(
                "OPTIONS",
                base + "/v1/visits/stream",
                headers={"Origin": "http://shop.example", "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status == 204
            assert "Last-Event-ID" in preflight.headers["access-control-allow-headers"]
            # EventSource cannot send headers: ?token= on streams.
            assert SseClient(base + "/v1/visits/stream").status == 401
            with SseClient(
                f"{base}/v1/trending/stream?token={token}",
                last_event_id="0",
                headers={"Origin": "http://shop.example"},
            ) as client:
                assert client.headers["access-control-allow-origin"] == "http://shop.example"
                live.trending(1, {"/q": 1})  # read live by the server: its push delay counts
                tops = client.read(2)
            assert [top.event for top in tops] == ["top", "top"]
            scraped = get(base + "/metrics").body.decode()
        log = serve.output()
        live.close()
    assert token not in scraped and password not in scraped
    assert token not in log and password not in log
    assert "redis://:***@127.0.0.1" in log  # the URL is logged, masked
    for line in (
        'waxhouse_serve_requests_total{route="/v1/{table}/{key}",status="200"} 2.0',
        'waxhouse_serve_requests_total{route="/v1/{table}/{key}",status="401"} 2.0',
        'waxhouse_serve_stream_events_total{table="trending"} 2.0',
        'waxhouse_serve_streams{transport="sse"}',
        "waxhouse_serve_redis_up 1.0",
        'waxhouse_serve_request_seconds_count{route="/v1/{table}/{key}"}',
    ):
        assert line in scraped, line
    # Window [60, 120 s) closed in 1970: read decades later, past every finite bucket.
    assert 'waxhouse_serve_push_delay_seconds_bucket{le="+Inf",table="trending"} 1.0' in scraped
    assert 'waxhouse_serve_push_delay_seconds_bucket{le="60.0",table="trending"} 0.0' in scraped


def test_serve_stops_on_sigterm_and_ends_its_streams(redis_url: str) -> None:
    serve = start_serve(redis_url)
    client = SseClient(serve.url + "/v1/visits/stream")
    assert client.status == 200
    assert serve.stop() == 0
    with pytest.raises((EOFError, OSError)):
        client.read(1)
    client.close()


def test_start_in_thread_serves_in_process_and_stops(live: LiveRows, redis_url: str) -> None:
    from waxhouse.serve.server import start_in_thread
    from waxhouse.serve.store import RedisReader
    from waxhouse.settings import ServeSettings

    live.visit(0, "u1", "/p", views=4)
    handle = start_in_thread(
        live.tables, RedisReader(redis_url), ServeSettings(listen="127.0.0.1:0")
    )
    try:
        base = f"http://{handle.address}"
        assert get(base + "/v1/visits/u1//p").json()["row"]["views"] == 4
        history = get(base + "/v1/visits/history/u1//p")
        assert history.status == 503  # the flow holds the store
        assert history.json()["error"].startswith("history needs a ClickHouse server")
        with SseClient(base + "/v1/visits/stream", last_event_id="0") as client:
            live.visit(0, "u2", "/p", views=1)
            got = client.read(2)
        assert_exactly_the_stream(live, "visits", got)
    finally:
        handle.stop()
    assert not handle.thread.is_alive()


def test_concurrent_lookups_each_get_their_own_row_and_survive_a_script_flush(
    live: LiveRows, serve: ServeProcess
) -> None:
    users = [f"u{n}" for n in range(64)]
    for n, user in enumerate(users):
        live.visit(0, user, "/p", views=n + 1)

    async def lookups() -> list[Any]:
        async with aiohttp.ClientSession() as session:

            async def one(user: str) -> Any:
                async with session.get(f"{serve.url}/v1/visits/{user}//p") as response:
                    return await response.json()

            return await asyncio.gather(*(one(user) for user in users))

    # Served in batches (one pipeline per turn of serve's event loop): each its own answer.
    assert [answer["row"]["views"] for answer in asyncio.run(lookups())] == list(range(1, 65))
    live.client.script_flush()  # as after a Redis restart: the scripts are loaded again
    assert [answer["key"] for answer in asyncio.run(lookups())] == [f"{u}//p" for u in users]
    assert get(serve.url + "/v1/trending/top").status == 404


def test_a_client_that_stops_reading_is_cut_off_and_resumes_without_gap(
    live: LiveRows, serve: ServeProcess
) -> None:
    import socket

    stalled = socket.create_connection(("127.0.0.1", serve.port))
    stalled.sendall(b"GET /v1/visits/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    with SseClient(serve.url + "/v1/visits/stream") as reading:
        time.sleep(0.3)  # both subscribed
        got: list[SseEvent] = []
        reader = threading.Thread(target=lambda: got.extend(reading.read(2000)))
        reader.start()  # this one reads as events come: it gets every one
        page = "/" + "x" * 2000  # 2 KB events: 4 MB, more than the kernel and 1 MiB hold
        for n in range(2000):
            live.visit(n // 200, f"u{n % 200}", page, views=1)
        reader.join(60)
    written = [entry_id for entry_id, _ in live.stream("visits")]
    assert [event.id for event in got] == written
    stalled.settimeout(20)
    received = b""
    while chunk := stalled.recv(1 << 16):  # what was sent before the cut, then EOF
        received += chunk
    stalled.close()
    complete = re.findall(rb"id: (\S+)\nevent: row\ndata: [^\n]*\n\n", received)
    assert 0 < len(complete) < 2000  # cut off
    last = complete[-1].decode()
    with SseClient(serve.url + "/v1/visits/stream", last_event_id=last) as resumed:
        rest = resumed.read(2000 - len(complete))
    assert [i.decode() for i in complete] + [event.id for event in rest] == written


def test_redis_down_answers_503_and_serve_recovers_when_it_is_back() -> None:
    with RedisServer() as redis_server:
        redis_server.start()
        url = redis_server.database()
        live = LiveRows(url)
        live.visit(0, "u1", "/p", views=2)
        with start_serve(url) as serve:
            assert get(serve.url + "/v1/visits/u1//p").status == 200
            redis_server.kill()
            down = get(serve.url + "/v1/visits/u1//p")
            assert (down.status, down.headers["retry-after"]) == (503, "1")
            assert down.json() == {"error": "the live store is unreachable", "retry_after": 1}
            assert get(serve.url + "/readyz").status == 503
            assert "waxhouse_serve_redis_up 0.0" in get(serve.url + "/metrics").body.decode()
            redis_server.start()  # the append-only file kept the row
            deadline = time.monotonic() + 20
            while get(serve.url + "/readyz").status != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert get(serve.url + "/v1/visits/u1//p").json()["row"]["views"] == 2
            # The stream's reader came back too: a new entry reaches a new client.
            with SseClient(serve.url + "/v1/visits/stream") as client:
                time.sleep(0.5)
                live.visit(0, "u2", "/p", views=1)
                (event,) = client.read(1)
            assert event.data["key"] == "u2//p"
        live.close()


def test_a_websocket_that_sends_nothing_gets_what_comes_after_it_connected(
    live: LiveRows, serve: ServeProcess
) -> None:
    live.visit(0, "before", "/p", views=1)

    async def first_frame() -> dict[str, Any]:
        ws_url = serve.url.replace("http", "ws") + "/v1/visits/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            await asyncio.sleep(0.2)  # connected; serve still waits for a first frame
            await asyncio.to_thread(live.visit, 0, "after", "/p", 2)
            return dict(await ws.receive_json(timeout=10))

    frame = asyncio.run(first_frame())
    assert (frame["event"], frame["data"]["key"]) == ("row", "after//p")
    assert frame["id"] == live.stream("visits")[-1][0]
