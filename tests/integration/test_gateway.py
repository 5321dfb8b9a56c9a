"""`waxhouse gateway` against the real broker: a 200 (or an ack) means Kafka has it, and
every limit answers as the contract says."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.dlq import read_topic
from tests.support.gateway import GatewayProcess, post_events, request, start_gateway
from tests.support.kafka_broker import KafkaBroker, TopicFactory
from tests.support.scrape import sample_total
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

TOKEN = "tok-9f2c5e7a1b"
OTHER_TOKEN = "tok-0d4b8a6c3e"


def click(i: int, ts: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{i}",
        "user_id": f"u-{i % 7}",
        "type": "page_view",
        "page": f"/p/{i % 3}",
        "ts": int(time.time() * 1000) if ts is None else ts,
        **extra,
    }


def reading(i: int) -> dict[str, Any]:
    return {
        "reading_id": f"r-{i}",
        "device_id": f"d-{i % 4}",
        "ts": int(time.time() * 1000),
        "temperature": 21.5,
    }


def metrics_text(gw: GatewayProcess) -> str:
    return request("GET", gw.url + "/metrics").body.decode()


def values(records: list[Any]) -> list[Any]:
    return [json.loads(r.value) for r in records]


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# Acknowledged means stored


@pytest.fixture
def topics(topic_factory: TopicFactory) -> tuple[str, str]:
    return topic_factory(1, prefix="gw-events"), topic_factory(1, prefix="gw-readings")


@pytest.fixture
def gateway(kafka_bootstrap: str, topics: tuple[str, str]) -> Iterator[GatewayProcess]:
    events, readings = topics
    env = {
        "KAFKA_TOPIC": events,
        "SENSORS_TOPIC": readings,
        "GATEWAY_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "GATEWAY_RATE_PER_TOKEN": "100",
        "GATEWAY_MAX_BODY_BYTES": str(64 * 1024),
        "GATEWAY_CORS_ORIGINS": "https://shop.example",
        "EVENT_MAX_FUTURE_SECONDS": "60",
    }
    with start_gateway(kafka_bootstrap, env=env) as gw:
        yield gw


def test_a_200_means_every_accepted_event_is_in_the_topic_keyed_and_timestamped(
    gateway: GatewayProcess, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    events_topic, readings_topic = topics
    url = gateway.url + "/v1/events"
    future = int(time.time() * 1000) + 3_600_000
    array = [click(0, extra={"kept": [1, 2]}), {"event_id": "x"}, click(1), click(2, ts=future)]
    before = int(time.time() * 1000)
    answer = post_events(url, array, token=TOKEN)
    after = int(time.time() * 1000)
    assert answer.status == 200, answer
    body = answer.json()
    assert isinstance(body, dict) and body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert body["rejected"][0]["error"] == "user_id: required"
    assert "ahead of the record's timestamp" in body["rejected"][1]["error"]

    lines = [click(3), click(4)]
    ndjson = b"\n".join(json.dumps(e).encode() for e in lines) + b"\n"
    assert post_events(url, ndjson, token=TOKEN, content_type="application/x-ndjson").status == 200
    one = click(5)
    answer = post_events(
        url,
        gzip.compress(json.dumps(one).encode()),
        token=TOKEN,
        headers={"Content-Encoding": "gzip"},
    )
    assert answer.status == 200 and answer.json() == {"accepted": 1, "rejected": []}

    records = read_topic(kafka_bootstrap, events_topic, timeout_s=30)
    assert values(records) == [array[0], array[2], *lines, one]  # as sent, unknown fields kept
    assert [r.key for r in records] == [f"u-{i % 7}".encode() for i in (0, 1, 3, 4, 5)]
    first_two = {r.timestamp for r in records[:2]}
    assert len(first_two) == 1 and before <= first_two.pop() <= after  # the checked now_ms

    answer = post_events(gateway.url + "/v1/readings", [reading(0), reading(1)], token=TOKEN)
    assert answer.status == 200 and answer.json() == {"accepted": 2, "rejected": []}
    records = read_topic(kafka_bootstrap, readings_topic, timeout_s=30)
    assert [r.key for r in records] == [b"d-0", b"d-1"]
    assert values(records)[0]["reading_id"] == "r-0"

    text = metrics_text(gateway)
    assert sample_total(text, "waxhouse_gateway_requests_total", path="/v1/events") == 3
    assert (
        sample_total(text, "waxhouse_gateway_events_total", path="/v1/events", outcome="accepted")
        == 5
    )
    assert (
        sample_total(text, "waxhouse_gateway_events_total", path="/v1/events", outcome="rejected")
        == 2
    )
    assert sample_total(text, "waxhouse_gateway_ack_seconds_count", path="/v1/events") == 3
    assert sample_total(text, "waxhouse_gateway_kafka_ready") == 1


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"42", {"Content-Type": "application/json"}, 400),
        (b"{}", {"Content-Type": "application/xml"}, 415),
        (b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415),
        (b" " * (64 * 1024 + 1), {"Content-Type": "application/json"}, 413),
        (
            gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]"),
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            413,
        ),
    ],
    ids=["not-json", "scalar", "xml", "brotli", "too-large", "gzip-bomb"],
)
def test_refusals_of_the_whole_request(
    gateway: GatewayProcess, body: bytes, headers: dict[str, str], status: int
) -> None:
    answer = request(
        "POST", gateway.url + "/v1/events", body, {**headers, "Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status == status, answer
    assert isinstance(answer.json(), dict) and "error" in answer.json()  # type: ignore[operator]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
def test_a_missing_or_wrong_token_is_401(
    gateway: GatewayProcess, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = request("POST", gateway.url + "/v1/events", json.dumps(click(0)).encode(), headers)
    assert answer.status == 401, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert post_events(gateway.url + "/v1/events", click(0), token=OTHER_TOKEN).status == 200


def test_over_the_token_rate_is_429_with_retry_after_per_token(gateway: GatewayProcess) -> None:
    """100 events/s, a bucket of one second: a second 100-event batch within the second
    is refused (the bucket refills 100 events in a second; these requests take ms)."""
    url = gateway.url + "/v1/events"
    batch = [click(i) for i in range(100)]
    assert post_events(url, batch, token=TOKEN).status == 200
    refused = post_events(url, batch, token=TOKEN)
    assert refused.status == 429, refused
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["retry_after"] == 1  # type: ignore[index]
    assert post_events(url, batch, token=OTHER_TOKEN).status == 200  # its own bucket
    time.sleep(1.0)
    assert post_events(url, batch, token=TOKEN).status == 200


def test_cors_preflight_and_headers_for_allowed_origins_only(gateway: GatewayProcess) -> None:
    url = gateway.url + "/v1/events"
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    answer = request("OPTIONS", url, None, preflight)
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "https://shop.example"
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "content-encoding" in answer.headers["access-control-allow-headers"].lower()
    evil = request("OPTIONS", url, None, {**preflight, "Origin": "https://evil.example"})
    assert evil.status == 403 and "access-control-allow-origin" not in evil.headers

    posted = post_events(url, click(0), token=TOKEN, headers={"Origin": "https://shop.example"})
    assert posted.status == 200
    assert posted.headers["access-control-allow-origin"] == "https://shop.example"
    unauthorized = post_events(url, click(0), headers={"Origin": "https://shop.example"})
    assert unauthorized.status == 401  # browsers can read the refusal too
    assert unauthorized.headers["access-control-allow-origin"] == "https://shop.example"


def test_health_readiness_metrics_and_no_token_in_logs_or_metrics(
    gateway: GatewayProcess,
) -> None:
    assert request("GET", gateway.url + "/healthz").status == 200
    assert request("GET", gateway.url + "/readyz").status == 200
    post_events(gateway.url + "/v1/events", click(0), token=TOKEN)
    post_events(gateway.url + "/v1/events", click(0), token=TOKEN[:-1])
    assert request("GET", gateway.url + "/nowhere").status == 404
    text = metrics_text(gateway)
    for name in (
        "waxhouse_gateway_requests_total",
        "waxhouse_gateway_events_total",
        "waxhouse_gateway_ack_seconds_bucket",
        "waxhouse_gateway_in_flight",
        "waxhouse_gateway_websockets",
        "waxhouse_gateway_kafka_ready",
    ):
        assert name in text
    assert sample_total(text, "waxhouse_gateway_requests_total", path="other", status="404") == 1
    assert sample_total(text, "waxhouse_gateway_requests_total", status="401") == 1
    for secret in (TOKEN, OTHER_TOKEN, TOKEN[:-1]):
        assert secret not in text
        assert secret not in gateway.output()
    assert gateway.stop() == 0
    assert "gateway stopped" in gateway.output()
    for secret in (TOKEN, OTHER_TOKEN):
        assert secret not in gateway.output()


# ---------------------------------------------------------------------------
# WebSocket


async def ws_exchange(
    url: str, frames: list[Any], *, headers: dict[str, str] | None = None, answers: int
) -> list[dict[str, Any]]:
    """Send `frames` (each a JSON value, or str as it is), then read `answers` answers."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers or {}) as ws,
    ):
        for frame in frames:
            await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        received = []
        for _ in range(answers):
            message = await ws.receive(timeout=30)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            received.append(json.loads(message.data))
        return received


def ws_url(gw: GatewayProcess, path: str = "/v1/events/ws") -> str:
    return gw.url.replace("http://", "ws://") + path


def test_websocket_frames_are_acked_once_kafka_has_them(
    gateway: GatewayProcess, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    frames = [{"seq": n, "events": [click(10 * n + i) for i in range(3)]} for n in range(1, 6)]
    frames[2]["events"].append({"event_id": "broken"})
    answers = asyncio.run(
        ws_exchange(
            ws_url(gateway), frames, headers={"Authorization": f"Bearer {TOKEN}"}, answers=5
        )
    )
    by_seq = {a["ack"]: a for a in answers}
    assert sorted(by_seq) == [1, 2, 3, 4, 5]
    assert [by_seq[n]["accepted"] for n in range(1, 6)] == [3] * 5
    assert by_seq[3]["rejected"] == [{"index": 3, "error": "user_id: required"}]
    records = read_topic(kafka_bootstrap, topics[0], timeout_s=30)
    assert sorted(v["event_id"] for v in values(records)) == sorted(
        e["event_id"] for f in frames for e in f["events"] if "user_id" in e
    )
    text = metrics_text(gateway)
    assert (
        sample_total(text, "waxhouse_gateway_requests_total", path="/v1/events/ws", status="200")
        == 5
    )


def test_websocket_auth_by_first_frame_and_per_frame_errors(gateway: GatewayProcess) -> None:
    frames: list[Any] = [
        {"token": TOKEN},
        "{not json",
        {"seq": 2, "events": "not a list"},
        {"seq": 3, "events": [click(0)]},
    ]
    answers = asyncio.run(ws_exchange(ws_url(gateway), frames, answers=3))
    errors = sorted((a for a in answers if "status" in a), key=lambda a: str(a["seq"]))
    assert [(a["seq"], a["status"]) for a in errors] == [(2, 400), (None, 400)]
    assert [a for a in answers if "ack" in a] == [{"ack": 3, "accepted": 1, "rejected": []}]

    refused = asyncio.run(ws_exchange(ws_url(gateway), [{"token": "wrong"}], answers=1))
    assert refused == [{"seq": None, "status": 401, "error": "a valid bearer token is required"}]

    async def wrong_header() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(ws_url(gateway), headers={"Authorization": "Bearer no"})
            except aiohttp.WSServerHandshakeError as e:
                return e.status
        return 0

    assert asyncio.run(wrong_header()) == 401


def test_websocket_frames_over_the_rate_get_429_with_retry_after(
    gateway: GatewayProcess,
) -> None:
    frames = [{"seq": n, "events": [click(i) for i in range(100)]} for n in range(1, 5)]
    answers = asyncio.run(
        ws_exchange(
            ws_url(gateway), frames, headers={"Authorization": f"Bearer {TOKEN}"}, answers=4
        )
    )
    assert [a["ack"] for a in answers if "ack" in a] == [1]  # 100 events/s, a second's burst
    limited = sorted((a["seq"], a["status"], a["retry_after"]) for a in answers if "status" in a)
    assert limited == [(2, 429, 1), (3, 429, 1), (4, 429, 1)]


# ---------------------------------------------------------------------------
# Kafka away: 503, readiness, backpressure


@pytest.mark.slow  # a broker stop and start: ~40 s
def test_503_with_retry_after_while_the_broker_is_down_and_ready_again_after(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1, prefix="gw-outage")
    env = {"KAFKA_TOPIC": topic, "GATEWAY_ACK_TIMEOUT_SECONDS": "5"}
    with start_gateway(kafka_broker.bootstrap_servers, env=env, flow="clickstream") as gw:
        url = gw.url + "/v1/events"
        assert post_events(url, click(0)).status == 200
        kafka_broker.shutdown()
        try:
            refused = wait_for(
                lambda: (a := post_events(url, click(1))).status == 503 and a,
                timeout_s=60,
                what="a 503 while the broker is down",
            )
            assert int(refused.headers["retry-after"]) >= 1
            assert request("GET", gw.url + "/readyz").status == 503
            assert sample_total(metrics_text(gw), "waxhouse_gateway_kafka_ready") == 0
            assert request("GET", gw.url + "/healthz").status == 200  # alive, not ready
        finally:
            kafka_broker.start()
        wait_for(
            lambda: request("GET", gw.url + "/readyz").status == 200, 60, "ready after the restart"
        )
        assert post_events(url, click(2)).status == 200
        assert gw.stop() == 0
    stored = [v["event_id"] for v in values(read_topic(kafka_broker.bootstrap_servers, topic))]
    assert "e-0" in stored and "e-2" in stored  # e-1 was refused: maybe stored, never acked


def test_a_cut_network_holds_acks_the_in_flight_bound_answers_503_and_ws_stops_reading(
    kafka_proxy: TcpProxy, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    """While the broker is silent (a blackholed connection, nothing refused), requests
    wait for their acks; GATEWAY_MAX_INFLIGHT_EVENTS more are refused with 503; a
    WebSocket gets 16 frames read and no more until acks come."""
    topic = topic_factory(1, prefix="gw-cut")
    env = {"KAFKA_TOPIC": topic, "GATEWAY_MAX_INFLIGHT_EVENTS": "200"}
    with start_gateway(kafka_proxy.address, env=env, flow="clickstream") as gw:
        url = gw.url + "/v1/events"
        assert post_events(url, click(0)).status == 200  # connected through the proxy

        async def scenario() -> tuple[list[dict[str, Any]], int, int, float]:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(ws_url(gw))
                kafka_proxy.cut()
                for n in range(1, 21):
                    await ws.send_str(json.dumps({"seq": n, "events": [click(1000 + n)]}))
                await asyncio.sleep(1.0)
                text = metrics_text(gw)
                ws_waiting = sample_total(text, "waxhouse_gateway_in_flight", path="/v1/events/ws")
                over = post_events(url, [click(2000 + i) for i in range(190)], timeout_s=10)
                kafka_proxy.restore()
                answers = [json.loads((await ws.receive(timeout=30)).data) for _ in range(20)]
                await ws.close()
                return answers, int(ws_waiting), over.status, float(over.headers["retry-after"])

        answers, ws_waiting, over_status, retry_after = asyncio.run(scenario())
        assert ws_waiting == 16  # the 17th frame was not read
        assert (over_status, retry_after) == (503, 1)  # 16 + 190 > 200 waiting events
        assert sorted(a["ack"] for a in answers) == list(range(1, 21))
        assert all(a["accepted"] == 1 for a in answers)
        stored = {v["event_id"] for v in values(read_topic(kafka_broker.bootstrap_servers, topic))}
        assert {f"e-{1000 + n}" for n in range(1, 21)} <= stored


def test_sigterm_answers_the_requests_waiting_for_kafka_then_exits_0(
    kafka_proxy: TcpProxy, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1, prefix="gw-term")
    with start_gateway(kafka_proxy.address, env={"KAFKA_TOPIC": topic}, flow="clickstream") as gw:
        assert post_events(gw.url + "/v1/events", click(0)).status == 200

        async def scenario() -> int:
            async with aiohttp.ClientSession() as session:
                kafka_proxy.cut()
                waiting = asyncio.create_task(
                    session.post(gw.url + "/v1/events", json=[click(1), click(2)])
                )
                await asyncio.sleep(0.5)
                assert gw.process is not None
                gw.process.terminate()
                await asyncio.sleep(0.5)
                kafka_proxy.restore()
                response = await waiting
                return response.status

        assert asyncio.run(scenario()) == 200
        assert gw.stop() == 0
    stored = [v["event_id"] for v in values(read_topic(kafka_broker.bootstrap_servers, topic))]
    assert stored == ["e-0", "e-1", "e-2"]


# ---------------------------------------------------------------------------
# Any pipeline


ORDERS_MODULE = """
from waxhouse import Pipeline, Schema, Table, agg, fields, windows

orders = Schema(
    {
        "order_id": fields.text(64),
        "customer": fields.text(64),
        "ts": fields.timestamp(),
        "amount": fields.money(),
    },
    event_time="ts",
    name="Order",
)
Order = orders.event_type
totals = Table(
    "order_totals",
    key="customer",
    window=windows.tumbling(60),
    aggregates={"orders": agg.count(), "amount": agg.sum("amount")},
)
pipeline = Pipeline("orders", orders, key="customer", tables=[totals])
"""


def test_another_pipeline_is_served_by_route_with_its_own_parser_and_key(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Any
) -> None:
    (tmp_path / "shop_orders.py").write_text(ORDERS_MODULE)
    topic = topic_factory(1, prefix="gw-orders")
    with start_gateway(
        kafka_bootstrap,
        env={"PYTHONPATH": str(tmp_path)},
        flow="none",
        args=["--route", f"/v1/orders=shop_orders:pipeline@{topic}"],
    ) as gw:
        now = int(time.time() * 1000)
        good = {"order_id": "o-1", "customer": "c-9", "ts": now, "amount": 12.5}
        bad = {"order_id": "o-2", "customer": "c-9", "ts": now, "amount": -1}
        answer = post_events(gw.url + "/v1/orders", [good, bad])
        assert answer.status == 200, answer
        assert answer.json() == {
            "accepted": 1,
            "rejected": [{"index": 1, "error": "amount: must be between 0 and 1e9"}],
        }
        assert request("POST", gw.url + "/v1/events", b"{}").status == 404  # --flow none
        answers = asyncio.run(
            ws_exchange(ws_url(gw, "/v1/orders/ws"), [{"seq": 1, "events": [good]}], answers=1)
        )
        assert answers == [{"ack": 1, "accepted": 1, "rejected": []}]
    records = read_topic(kafka_bootstrap, topic, timeout_s=30)
    assert [(r.key, json.loads(r.value)) for r in records] == [(b"c-9", good)] * 2


def test_a_websocket_frame_over_the_body_limit_closes_the_socket_with_1009(
    gateway: GatewayProcess,
) -> None:
    async def oversize() -> tuple[Any, int | None]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url(gateway), headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
        ):
            await ws.send_str(json.dumps({"seq": 1, "events": [click(0, pad="x" * 70_000)]}))
            message = await ws.receive(timeout=30)
            return message.type, ws.close_code

    kind, code = asyncio.run(oversize())
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert code == 1009


def test_sigterm_answers_the_frames_waiting_then_closes_websockets_with_1001(
    kafka_proxy: TcpProxy, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1, prefix="gw-term-ws")
    with start_gateway(kafka_proxy.address, env={"KAFKA_TOPIC": topic}, flow="clickstream") as gw:
        assert post_events(gw.url + "/v1/events", click(0)).status == 200

        async def scenario() -> tuple[list[Any], int | None]:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(ws_url(gw))
                kafka_proxy.cut()
                for n in (1, 2, 3):
                    await ws.send_str(json.dumps({"seq": n, "events": [click(n)]}))
                await asyncio.sleep(0.5)
                assert gw.process is not None
                gw.process.terminate()
                await asyncio.sleep(0.5)
                kafka_proxy.restore()
                answers = []
                async for message in ws:
                    answers.append(json.loads(message.data))
                return answers, ws.close_code

        answers, code = asyncio.run(scenario())
        assert sorted(a["ack"] for a in answers) == [1, 2, 3]
        assert code == 1001
        assert gw.stop() == 0
    stored = [v["event_id"] for v in values(read_topic(kafka_broker.bootstrap_servers, topic))]
    assert stored == ["e-0", "e-1", "e-2", "e-3"]
