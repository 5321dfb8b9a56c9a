"""docs/serving.md's examples, run as they stand against a real `waxhouse serve` and a
real redis-server, rows written by the flow's own writer: its `curl` commands in bash,
its `EventSource` and `WebSocket` code in a real headless Chromium on a page served from
another origin (real CORS). The EventSource page must show a closed window's top pages;
the time from the watermark write to the page's DOM change is measured and printed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from dataflows.clickstream import pipeline as clickstream
from tests.support.browser import Chromium, Site, chromium_path
from tests.support.docs_examples import runnable_examples
from tests.support.serve import LiveRows, ServeProcess, start_serve
from waxhouse.fields import parse_rfc3339

pytestmark = pytest.mark.integration

PAGE = "serving.md"
TOKEN = "serve-" + uuid.uuid4().hex
CURL = {example.title: example for example in runnable_examples(PAGE, "bash")}
JS = {example.title: example for example in runnable_examples(PAGE, "js")}
NOON = parse_rfc3339("2026-11-29T12:00:00Z")
MINUTE = 60_000
LATENESS_MS = 10_000
LATENCY_BOUND_S = 5.0


def test_the_page_has_every_kind_of_example() -> None:
    assert list(CURL) == [
        "a key's newest row",
        "a window's top",
        "history",
        "the stream, resumed",
    ]
    assert set(JS) == {
        "EventSource",
        "EventSource, in use",
        "WebSocket",
        "WebSocket, in use",
    }


def page_html(serve: str) -> str:
    """The page: its EventSource and WebSocket examples verbatim after the two constants
    they use, and a list to fill."""
    constants = f"const WAXHOUSE_SERVE = {json.dumps(serve)};\nconst TOKEN = {json.dumps(TOKEN)};\n"
    examples = "\n".join([JS["EventSource"].source, JS["WebSocket"].source])
    # When the list changes, the page notes the time (epoch ms): the latency's end.
    watch = (
        "window.changedAt = [];\n"
        "new MutationObserver(() => window.changedAt.push(Date.now()))"
        '.observe(document.getElementById("top-pages"), {childList: true});\n'
    )
    return (
        '<!doctype html>\n<title>shop</title>\n<ol id="top-pages"></ol>\n'
        f"<script>\n{constants}{examples}\n{watch}</script>\n"
    )


@pytest.fixture(scope="module")
def shop() -> Iterator[Site]:
    site = Site(page_html, "serve")
    yield site
    site.close()


@pytest.fixture
def live(redis_url: str) -> Iterator[LiveRows]:
    rows = LiveRows(redis_url, of=clickstream)
    yield rows
    rows.close()


@pytest.fixture
def serve(redis_url: str, shop: Site) -> Iterator[ServeProcess]:
    env = {"SERVE_TOKENS": TOKEN, "SERVE_CORS_ORIGINS": shop.origin}
    with start_serve(redis_url, env=env, args=("--flow", "clickstream")) as process:
        yield process


def page_rows(window: int, views: dict[str, int], **more: int) -> list[dict[str, Any]]:
    start = NOON + window * MINUTE
    return [
        {
            "window_start": start,
            "window_end": start + MINUTE,
            "page": page,
            "part": "0",
            "views": count,
            "version": count,
            **more,
        }
        for page, count in views.items()
    ]


def closing(window: int) -> dict[str, int]:
    """Partition 0's watermark just past window `window`'s close."""
    return {"0": NOON + (window + 1) * MINUTE + LATENESS_MS + 1}


def session(user: str, minute: int, events: int) -> dict[str, Any]:
    start = NOON + minute * MINUTE
    return {
        "user_id": user,
        "session_start": start,
        "session_end": start + 30_000,
        "events": events,
        "page_views": events,
        "entry_page": "/home",
        "exit_page": "/cart",
        "version": events,
    }


def bash(source: str, serve: ServeProcess, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", source],
        env={"PATH": "/usr/bin:/bin", "WAXHOUSE_SERVE": serve.url, "TOKEN": TOKEN, **env},
        capture_output=True,
        timeout=60,
    )


# --- curl --------------------------------------------------------------------------------


@pytest.mark.parametrize("title", ["a key's newest row", "a window's top"])
def test_the_curl_lookup_answers_as_the_page_says(
    title: str, live: LiveRows, serve: ServeProcess
) -> None:
    home = {"clicks": 7, "add_to_carts": 2, "purchases": 1, "revenue_cents": 1250}
    live.write("page_stats", page_rows(0, {"/home": 42}, **home, unique_users=30), {})
    live.write("page_stats", page_rows(0, {"/cart": 17, "/about": 3}), closing(0))
    done = bash(CURL[title].source, serve)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert orjson.loads(done.stdout) == CURL[title].answer


def test_the_curl_history_needs_a_clickhouse_server(serve: ServeProcess) -> None:
    # No ClickHouse server runs in these tests: serve has the default embedded store, and
    # the page says history answers 503 then (the query itself: tests/unit/test_serve.py).
    done = bash(CURL["history"].source, serve)
    assert done.returncode == 22  # --fail-with-body on a 503
    assert orjson.loads(done.stdout)["error"].startswith("history needs a ClickHouse server")


def test_the_curl_stream_resumes_after_the_id_given(live: LiveRows, serve: ServeProcess) -> None:
    live.write("user_sessions", [session(f"u-{n}", n, n + 1) for n in range(5)], {})
    stream = live.stream("user_sessions")
    assert len(stream) == 5
    done = bash(CURL["the stream, resumed"].source, serve, LAST_EVENT_ID=stream[1][0])
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [entry_id for entry_id, _ in stream[2:]]
    data = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [event["key"] for event in data] == ["u-2", "u-3", "u-4"]


# --- the browser -------------------------------------------------------------------------


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 120))


def test_an_eventsource_page_shows_a_closed_window_s_top_pages(
    live: LiveRows, serve: ServeProcess, shop: Site
) -> None:
    chromium_path()
    views = {"/home": 50, "/cart": 20, "/search": 35, "/about": 5}
    expected = ["/home 50", "/search 35", "/cart 20", "/about 5"]

    async def scenario() -> tuple[list[str], float]:
        async with Chromium() as browser:
            page = await browser.open(shop.url(serve.url))
            await page.evaluate(
                "(async () => {" + JS["EventSource, in use"].source.split("\n", 1)[1] + "\n"
                " window.source = source;"
                " while (source.readyState !== EventSource.OPEN)"
                "   await new Promise((r) => setTimeout(r, 20));"
                "})()"
            )
            await asyncio.to_thread(live.write, "page_stats", page_rows(1, views), {})
            written_ms = time.time_ns() / 1e6
            await asyncio.to_thread(live.write, "page_stats", [], closing(1))  # closes it
            deadline = time.monotonic() + 30
            while True:
                shown = await page.evaluate(
                    '[...document.querySelectorAll("#top-pages li")].map((li) => li.textContent)'
                )
                if shown or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            changed = await page.evaluate("window.changedAt[0]")
            await page.evaluate("window.source.close()")
            return shown, (changed - written_ms) / 1000

    shown, latency_s = run(scenario())
    assert shown == expected
    print(f"\nwatermark write -> EventSource DOM update: {latency_s * 1000:.1f} ms")
    assert 0 <= latency_s < LATENCY_BOUND_S


def test_a_websocket_page_follows_sessions_from_the_start_and_live(
    live: LiveRows, serve: ServeProcess, shop: Site
) -> None:
    chromium_path()
    live.write("user_sessions", [session(f"u-{n}", n, n + 1) for n in range(3)], {})

    async def scenario() -> list[dict[str, Any]]:
        async with Chromium() as browser:
            page = await browser.open(shop.url(serve.url))
            await page.evaluate(
                "(() => {" + JS["WebSocket, in use"].source.split("\n", 1)[1] + "\n"
                " window.sessions = sessions; window.follower = follower; })()"
            )
            await wait_for_count(page, 3)
            await asyncio.to_thread(live.write, "user_sessions", [session("u-late", 9, 4)], {})
            got = await wait_for_count(page, 4)
            await page.evaluate("window.follower.close()")
            return got

    got = run(scenario())
    stream = live.stream("user_sessions")
    assert [frame["id"] for frame in got] == [entry_id for entry_id, _ in stream]
    for frame, (_, fields) in zip(got, stream, strict=True):
        name, data = live.tables["user_sessions"].render_entry(fields)
        assert (frame["event"], frame["data"]) == (name, orjson.loads(data))
    assert got[-1]["data"]["key"] == "u-late"


async def wait_for_count(page: Any, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        got = await page.evaluate("window.sessions")
        if len(got) >= count or time.monotonic() > deadline:
            return list(got)
        await asyncio.sleep(0.05)
