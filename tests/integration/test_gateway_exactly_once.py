"""Exactly once, end to end: clients -> the gateway -> Kafka -> the clickstream flow.

Clients send batches over HTTP and over WebSocket, retry what was not acknowledged (and,
at random, batches that were), while the broker restarts and the gateway is killed with
SIGKILL and started again. Then the flow reads the topic in bounded mode. Every event
that got a 200 or an ack is counted exactly once in the tables; every copy in the topic
is a `duplicate` dead letter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.clickhouse import query_rows
from tests.support.dlq import read_partitions
from tests.support.flow import run_flow
from tests.support.gateway import start_gateway
from tests.support.kafka_broker import KafkaBroker, TopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "exactly-once-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
USERS = 150
PAGES = ["/", "/products/1", "/catégorie/3/naïve-日本語-€", "/cart", "/checkout"]
HTTP_CLIENTS, WS_CLIENTS = 3, 2
BATCHES, EVENTS_PER_BATCH = 30, 40
RESEND_ACKED = 0.2  # chance that a client sends an acknowledged batch once more
DEADLINE_S = 240.0  # every client gives up after this: the test then fails


@dataclass
class Ledger:
    """What the clients saw: every event sent, every event acknowledged, and how often
    the gateway answered something else (so the test shows the faults were felt)."""

    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    batches_acked: int = 0
    resent_acked: int = 0
    failures: Counter[str] = field(default_factory=Counter)


def batch_of(client: str, n: int, rng: random.Random) -> list[dict]:
    now = int(time.time() * 1000)
    events = []
    for i in range(EVENTS_PER_BATCH):
        kind = rng.choice(["page_view", "page_view", "click", "add_to_cart", "purchase"])
        event: dict = {
            "event_id": f"{client}-{n}-{i}",
            "user_id": f"user-{rng.randrange(USERS)}",
            "type": kind,
            "page": rng.choice(PAGES),
            "ts": now - rng.randrange(2_000),
            "client": {"retries": "yes"},  # an unknown field, kept and ignored
        }
        if kind == "purchase":
            event["value"] = rng.randrange(100, 10_000) / 100
        events.append(event)
    return events


async def http_client(name: str, gateway_url: list[str], ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    acked_batches: list[list[dict]] = []
    deadline = time.monotonic() + DEADLINE_S
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for n in range(BATCHES):
            batch = batch_of(name, n, rng)
            ledger.sent.update(e["event_id"] for e in batch)
            await post_until_acked(session, gateway_url, batch, ledger, deadline)
            acked_batches.append(batch)
            if rng.random() < RESEND_ACKED:
                await post_until_acked(
                    session, gateway_url, rng.choice(acked_batches), ledger, deadline
                )
                ledger.resent_acked += 1
            await asyncio.sleep(rng.random() * 0.05)


async def post_until_acked(
    session: aiohttp.ClientSession,
    gateway_url: list[str],
    batch: list[dict],
    ledger: Ledger,
    deadline: float,
) -> None:
    body = orjson.dumps(batch)
    while True:
        assert time.monotonic() < deadline, "a client could not get a batch acknowledged"
        try:
            async with session.post(
                gateway_url[0] + "/v1/events",
                data=body,
                headers={**HEADERS, "Content-Type": "application/json"},
            ) as response:
                answer = await response.read()
                if response.status == 200:
                    result = orjson.loads(answer)
                    assert result == {"accepted": len(batch), "rejected": []}, result
                    ledger.acked.update(e["event_id"] for e in batch)
                    ledger.batches_acked += 1
                    return
                assert response.status in (429, 503), (response.status, answer)
                ledger.failures[f"http {response.status}"] += 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 4)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            ledger.failures[type(e).__name__] += 1
            await asyncio.sleep(0.2)


async def ws_client(name: str, gateway_url: list[str], ledger: Ledger, seed: int) -> None:
    """Sends frames with several in flight; on a lost connection, reconnects and sends
    every unacknowledged frame again (as docs/sending-events.md's client does)."""
    rng = random.Random(seed)
    pending: dict[int, list[dict]] = {}
    acked_frames: list[list[dict]] = []
    next_batch = 0
    seq = 0
    deadline = time.monotonic() + DEADLINE_S
    async with aiohttp.ClientSession() as session:
        while next_batch < BATCHES or pending:
            assert time.monotonic() < deadline, "a WebSocket client could not finish"
            url = gateway_url[0].replace("http://", "ws://") + "/v1/events/ws"
            try:
                async with session.ws_connect(url, headers=HEADERS, heartbeat=5) as ws:
                    for resend_seq, events in sorted(pending.items()):
                        await ws.send_bytes(orjson.dumps({"seq": resend_seq, "events": events}))
                    while next_batch < BATCHES or pending:
                        while len(pending) < 4 and next_batch < BATCHES:
                            seq += 1
                            if acked_frames and rng.random() < RESEND_ACKED:
                                events = rng.choice(acked_frames)
                                ledger.resent_acked += 1
                            else:
                                events = batch_of(name, next_batch, rng)
                                ledger.sent.update(e["event_id"] for e in events)
                                next_batch += 1
                            pending[seq] = events
                            await ws.send_bytes(orjson.dumps({"seq": seq, "events": events}))
                        message = await ws.receive(timeout=15)
                        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            raise ConnectionResetError(f"the socket ended: {message.type}")
                        answer = orjson.loads(message.data)
                        if "ack" in answer:
                            events = pending.pop(answer["ack"])
                            assert answer["accepted"] == len(events), answer
                            ledger.acked.update(e["event_id"] for e in events)
                            ledger.batches_acked += 1
                            acked_frames.append(events)
                        else:
                            assert answer["status"] in (429, 503), answer
                            ledger.failures[f"ws {answer['status']}"] += 1
                            events = pending[answer["seq"]]
                            await asyncio.sleep(answer.get("retry_after", 1) / 4)
                            await ws.send_bytes(
                                orjson.dumps({"seq": answer["seq"], "events": events})
                            )
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError) as e:
                ledger.failures[type(e).__name__] += 1
                await asyncio.sleep(0.3)


def test_every_acknowledged_event_counts_exactly_once_across_broker_and_gateway_crashes(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory(2, prefix="exactly-once"), topic_factory(1, prefix="eo-dlq")
    ledger = Ledger()
    env = {"KAFKA_TOPIC": topic, "GATEWAY_TOKENS": TOKEN}
    with start_gateway(bootstrap, env=env, flow="clickstream") as gateway:
        gateway_url = [gateway.url]

        def faults() -> None:
            """A broker restart, then a gateway SIGKILL, while the clients send."""
            wait_for(lambda: ledger.batches_acked >= 20)
            kafka_broker.shutdown()
            time.sleep(4)
            kafka_broker.start()
            wait_for(lambda: ledger.batches_acked >= 90)
            gateway.kill()
            time.sleep(1)
            gateway.restart()

        async def everyone() -> None:
            fault_thread = asyncio.get_running_loop().run_in_executor(None, faults)
            clients = [
                http_client(f"h{i}", gateway_url, ledger, seed=i) for i in range(HTTP_CLIENTS)
            ] + [ws_client(f"w{i}", gateway_url, ledger, seed=100 + i) for i in range(WS_CLIENTS)]
            await asyncio.gather(*clients)
            await fault_thread

        try:
            asyncio.run(everyone())
        finally:
            kafka_broker.start()  # up again whatever happened
        assert "exactly-once-token" not in gateway.output()

    total = (HTTP_CLIENTS + WS_CLIENTS) * BATCHES * EVENTS_PER_BATCH
    assert len(ledger.sent) == total
    assert ledger.acked == ledger.sent  # the clients retried until every event was acked
    assert ledger.resent_acked > 10
    # The gateway's SIGKILL cut connections: the clients felt it, and sent again.
    cut = sum(n for kind, n in ledger.failures.items() if not kind.startswith(("http", "ws")))
    assert cut > 0, ledger.failures

    records = [(r.partition, r.offset, r.value) for r in read_partitions(bootstrap, topic, 2)]
    in_topic = Counter(orjson.loads(value)["event_id"] for _, _, value in records)
    assert set(in_topic) == ledger.acked  # nothing stored that was never sent
    copies = sum(in_topic.values()) - len(in_topic)
    assert copies >= ledger.resent_acked * EVENTS_PER_BATCH  # resent batches are in Kafka

    url = f"chdb://{tmp_path / 'store'}"
    run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
            # Batches stuck behind the outages arrive behind the others: on time anyway.
            "ALLOWED_LATENESS_SECONDS": "600",
        }
    )
    by_user = Counter(orjson.loads(value)["user_id"] for value in unique_values(records))
    counted = dict(query_rows(url, "SELECT user_id, sum(events) FROM user_sessions GROUP BY 1"))
    assert counted == dict(by_user)  # every acknowledged event once, per user
    (pages_total,) = query_rows(
        url, "SELECT sum(views + clicks + add_to_carts + purchases) FROM page_stats"
    )[0]
    assert pages_total == len(ledger.acked)
    reasons = Counter(r for (r,) in query_rows(url, "SELECT reason FROM dead_letters"))
    assert reasons == Counter({"duplicate": copies})


def unique_values(records: list[tuple[int, int, bytes]]) -> list[bytes]:
    """One value per event_id, the first stored."""
    first: dict[str, bytes] = {}
    for _, _, value in sorted(records):
        first.setdefault(orjson.loads(value)["event_id"], value)
    return list(first.values())


def wait_for(condition: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the clients stopped making progress"
        time.sleep(0.05)
