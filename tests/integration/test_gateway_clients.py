"""docs/sending-events.md's examples, run as they stand against a real gateway process and
the real broker: its `curl` commands in bash, its `fetch` and `WebSocket` code in a real
headless Chromium on a page served from another origin (real CORS). What each example
sent must be on the flow's topic, keyed by the flow's key."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.support.browser import Chromium, FailedRequest, Page, Site, chromium_path
from tests.support.dlq import read_topic
from tests.support.docs_examples import Example, runnable_examples
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.kafka_broker import create_topic, delete_topic
from tests.support.scrape import sample_total
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

PAGE = "sending-events.md"
TOKEN = "browser-" + uuid.uuid4().hex
CURL = runnable_examples(PAGE, "bash")
JS = {example.title: example for example in runnable_examples(PAGE, "js")}
EVENT = re.compile(r'\{"(?:event|reading)_id": [^{}]*\}')  # one event of a curl example


def test_the_page_has_every_kind_of_example() -> None:
    assert [e.title for e in CURL] == [
        "one event",
        "a batch",
        "NDJSON",
        "gzip",
        "retrying",
        "sensor readings",
    ]
    assert set(JS) == {"fetch", "fetch, in use", "WebSocket", "WebSocket, in use"}


# ---------------------------------------------------------------------------
# Fixtures: the flows' topics, a gateway, the sites a browser loads


@dataclass(frozen=True)
class Topics:
    events: str
    readings: str

    def env(self) -> dict[str, str]:
        return {"KAFKA_TOPIC": self.events, "SENSORS_TOPIC": self.readings}


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(f"clients-events-{uuid.uuid4().hex}", f"clients-readings-{uuid.uuid4().hex}")
    create_topic(kafka_bootstrap, made.events, 1)
    create_topic(kafka_bootstrap, made.readings, 1)
    yield made
    delete_topic(kafka_bootstrap, made.events, timeout_s=5.0)
    delete_topic(kafka_bootstrap, made.readings, timeout_s=5.0)


def page_html(gateway: str) -> str:
    """The page: its runnable `fetch` and `WebSocket` examples verbatim, after the two
    constants they use."""
    constants = f"const WAXHOUSE_GATEWAY = {json.dumps(gateway)};\n"
    constants += f"const TOKEN = {json.dumps(TOKEN)};\n"
    examples = "\n".join([JS["fetch"].source, JS["WebSocket"].source])
    return f"<!doctype html>\n<title>shop</title>\n<script>\n{constants}{examples}</script>\n"


@pytest.fixture(scope="module")
def shop() -> Iterator[Site]:
    """The site whose origin the gateways allow."""
    site = Site(page_html, "gateway")
    yield site
    site.close()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Site]:
    """A site whose origin no gateway allows."""
    site = Site(page_html, "gateway")
    yield site
    site.close()


def gateway_env(topics: Topics, shop: Site, **more: str) -> dict[str, str]:
    env = {"GATEWAY_TOKENS": TOKEN, "GATEWAY_CORS_ORIGINS": shop.origin, **topics.env()}
    return {**env, **more}


@pytest.fixture(scope="module")
def gateway(kafka_bootstrap: str, topics: Topics, shop: Site) -> Iterator[GatewayProcess]:
    with start_gateway(kafka_bootstrap, env=gateway_env(topics, shop)) as process:
        yield process


# ---------------------------------------------------------------------------
# Reading back


def on_topic(bootstrap: str, topic: str, id_field: str) -> dict[str, list[tuple[bytes, Any]]]:
    """id -> (key, decoded value) of every record on the topic with that id."""
    found: dict[str, list[tuple[bytes, Any]]] = {}
    for record in read_topic(bootstrap, topic, timeout_s=30):
        value = orjson.loads(record.value)
        found.setdefault(value[id_field], []).append((record.key, value))
    return found


def assert_stored_once(bootstrap: str, topic: str, sent: list[dict[str, Any]]) -> None:
    """Every event of `sent` is on the topic exactly once, as sent, keyed by the flow's
    key."""
    id_field, key_field = (
        ("reading_id", "device_id")
        if "reading_id" in sent[0]
        else (
            "event_id",
            "user_id",
        )
    )
    stored = on_topic(bootstrap, topic, id_field)
    for event in sent:
        assert stored.get(event[id_field]) == [(event[key_field].encode(), event)], event


def assert_not_stored(bootstrap: str, topic: str, sent: list[dict[str, Any]]) -> None:
    stored = on_topic(bootstrap, topic, "event_id")
    assert not [e for e in sent if e["event_id"] in stored]


def clicks(count: int, user: str = "u-browser") -> list[dict[str, Any]]:
    """`count` valid clickstream events with fresh ids."""
    return [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": f"{user}-{n % 7}",
            "type": "click",
            "page": f"/item/{n}",
            "ts": "2026-11-29T12:00:00Z",
        }
        for n in range(count)
    ]


# ---------------------------------------------------------------------------
# curl


@pytest.mark.parametrize("example", CURL, ids=[e.title for e in CURL])
def test_the_curl_example_answers_as_the_page_says_and_kafka_has_its_events(
    example: Example, gateway: GatewayProcess, kafka_bootstrap: str, topics: Topics
) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example.source],
        env={"PATH": "/usr/bin:/bin", "WAXHOUSE_GATEWAY": gateway.url, "TOKEN": TOKEN},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    answer = orjson.loads(done.stdout)
    assert answer == example.answer

    sent = [orjson.loads(event) for event in EVENT.findall(example.source)]
    rejected = {r["index"] for r in answer["rejected"]}
    accepted = [event for n, event in enumerate(sent) if n not in rejected]
    assert len(accepted) == answer["accepted"] > 0
    topic = topics.readings if "/v1/readings" in example.source else topics.events
    assert_stored_once(kafka_bootstrap, topic, accepted)
    if rejected:
        assert_not_stored(kafka_bootstrap, topic, [sent[n] for n in rejected])


# ---------------------------------------------------------------------------
# The browser


def run(scenario: Any) -> Any:
    """Run a coroutine in a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(scenario, 240))


async def evaluate_usage(page: Page, title: str, result: str) -> Any:
    """A 'for example' block of the page, evaluated as a console would (top-level
    await), then the value of `result`."""
    answer = await page.browser.call(
        "Runtime.evaluate",
        {"expression": JS[title].source, "replMode": True, "awaitPromise": True},
        session_id=page.session_id,
    )
    assert "exceptionDetails" not in answer, answer
    return await page.evaluate(result)


def test_a_page_from_an_allowed_origin_sends_by_fetch_and_websocket(
    gateway: GatewayProcess, kafka_bootstrap: str, topics: Topics, shop: Site
) -> None:
    chromium_path()
    batch = clicks(50, "u-fetch")
    frames = [clicks(25, f"u-ws{n}") for n in range(40)]

    async def scenario() -> tuple[Any, ...]:
        async with Chromium() as browser:
            page = await browser.open(shop.url(gateway.url))
            by_fetch = await page.evaluate(f"sendEvents({json.dumps(batch)})")
            acks = await page.evaluate(
                "(async () => {"
                " const socket = new EventSocket("
                '   WAXHOUSE_GATEWAY.replace(/^http/, "ws") + "/v1/events/ws", TOKEN);'
                f" const acks = await Promise.all({json.dumps(frames)}.map(f => socket.send(f)));"
                " socket.close();"
                " return acks;"
                "})()"
            )
            refused = await page.evaluate(
                "new EventSocket("
                '  WAXHOUSE_GATEWAY.replace(/^http/, "ws") + "/v1/events/ws", "not-a-token")'
                f".send({json.dumps(clicks(1))}).then(ack => 'acked', error => error.message)"
            )
            answer = await evaluate_usage(page, "fetch, in use", "answer")
            ack = await evaluate_usage(page, "WebSocket, in use", "ack")
            return by_fetch, acks, refused, answer, ack, page.console

    by_fetch, acks, refused, answer, ack, console = run(scenario())
    assert by_fetch == {"accepted": 50, "rejected": []}, console
    assert acks == [{"ack": n + 1, "accepted": 25, "rejected": []} for n in range(40)], console
    assert refused == "WebSocket closed: unauthorized"  # not retried: the token is wrong
    assert answer == {"accepted": 1, "rejected": []}
    assert ack == {"ack": 1, "accepted": 1, "rejected": []}
    assert_stored_once(kafka_bootstrap, topics.events, batch)
    assert_stored_once(kafka_bootstrap, topics.events, [e for f in frames for e in f])


def test_the_browser_blocks_a_page_from_another_origin(
    gateway: GatewayProcess, kafka_bootstrap: str, topics: Topics, elsewhere: Site
) -> None:
    chromium_path()
    batch = clicks(3, "u-elsewhere")

    async def scenario() -> tuple[str, list[FailedRequest]]:
        async with Chromium() as browser:
            page = await browser.open(elsewhere.url(gateway.url))
            outcome = await page.evaluate(
                f"sendEvents({json.dumps(batch)}, {{attempts: 1}})"
                ".then(answer => JSON.stringify(answer), error => error.name)"
            )
            return outcome, page.failed

    outcome, failed = run(scenario())
    assert outcome == "TypeError"  # what fetch throws when CORS blocks it
    assert [(f.url, f.cors_error is not None) for f in failed] == [
        (gateway.url + "/v1/events", True)
    ], failed
    assert_not_stored(kafka_bootstrap, topics.events, batch)


def test_fetch_retries_a_429_until_every_batch_is_stored(
    kafka_bootstrap: str, topics: Topics, shop: Site
) -> None:
    """Over its rate the gateway answers 429 with Retry-After; `sendEvents` waits and
    sends the same batch again, and each batch is stored once."""
    chromium_path()
    batches = [clicks(100, f"u-rate{n}") for n in range(4)]
    env = gateway_env(topics, shop, GATEWAY_RATE_PER_TOKEN="200")
    with start_gateway(kafka_bootstrap, env=env) as limited:

        async def scenario() -> Any:
            async with Chromium() as browser:
                page = await browser.open(shop.url(limited.url))
                return await page.evaluate(
                    f"Promise.all({json.dumps(batches)}.map(b => sendEvents(b)))",
                    timeout_s=120,
                )

        answers = run(scenario())
        metrics = scrape_gateway(limited)
    assert answers == [{"accepted": 100, "rejected": []}] * 4
    assert sample_total(metrics, "waxhouse_gateway_requests_total", status="429") > 0
    assert_stored_once(kafka_bootstrap, topics.events, [e for b in batches for e in b])


def scrape_gateway(gateway: GatewayProcess) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "10", gateway.url + "/metrics"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    return done.stdout.decode()


def test_the_websocket_client_resends_what_a_killed_gateway_never_acknowledged(
    kafka_proxy: TcpProxy, kafka_bootstrap: str, topics: Topics, shop: Site
) -> None:
    """Frames sent while the gateway cannot reach Kafka stay unacknowledged; the gateway
    is killed with them (kill -9). The page's `EventSocket` reconnects to the restarted
    gateway and sends them again: every frame is acknowledged and its events are on the
    topic (at least once: the flow deduplicates)."""
    chromium_path()
    first = clicks(5, "u-before")
    stalled = [clicks(10, f"u-stalled{n}") for n in range(5)]
    with start_gateway(kafka_proxy.address, env=gateway_env(topics, shop)) as process:

        async def scenario() -> tuple[Any, Any]:
            async with Chromium() as browser:
                page = await browser.open(shop.url(process.url))
                before = await page.evaluate(
                    "window.socket = new EventSocket("
                    '  WAXHOUSE_GATEWAY.replace(/^http/, "ws") + "/v1/events/ws", TOKEN);'
                    f"socket.send({json.dumps(first)})"
                )
                kafka_proxy.cut()
                await page.evaluate(
                    f"window.stalled = Promise.all({json.dumps(stalled)}.map(f => socket.send(f)));"
                    " 'sent'"
                )
                await wait_for(
                    page, "socket.unacked.size === 5 && socket.socket.bufferedAmount === 0"
                )
                await asyncio.sleep(1.0)  # the gateway reads them and waits for Kafka
                process.kill()
                kafka_proxy.restore()
                process.restart()
                after = await page.evaluate("stalled", timeout_s=120)
                return before, after

        before, after = run(scenario())
    assert before == {"ack": 1, "accepted": 5, "rejected": []}
    assert after == [{"ack": n + 2, "accepted": 10, "rejected": []} for n in range(5)]
    stored = on_topic(kafka_bootstrap, topics.events, "event_id")
    missing = [e for f in stalled for e in f if e["event_id"] not in stored]
    assert not missing


async def wait_for(page: Page, condition: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(condition):
        assert time.monotonic() < deadline, f"not true after {timeout_s} s: {condition}"
        await asyncio.sleep(0.05)
