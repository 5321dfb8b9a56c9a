"""Lateness through the whole pipeline, and live mode closing idle windows by wall clock."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.support.clickhouse import query_rows
from tests.support.flow import run_flow, run_live_while_idle
from tests.support.kafka_broker import TopicFactory

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # a window boundary
W, L = 60_000, 10_000


def produce(bootstrap: str, topic: str, events: list[dict]) -> list[int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [
        producer.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e)) for e in events
    ]
    producer.flush()
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    return offsets


def event(n: int, user: str, page: str, ts: int, kind: str = "page_view") -> dict:
    return {"event_id": f"e{n}", "user_id": user, "type": kind, "page": page, "ts": ts}


def test_late_event_is_dead_lettered_and_still_counted_where_on_time(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic, dlq = topic_factory(1, prefix="late"), topic_factory(1, prefix="late-dlq")
    events = [
        event(1, "u1", "/x", T0 + 1_000),
        event(2, "u2", "/y", T0 + W + L + 1),  # moves the watermark past /x's window
        event(3, "u1", "/x", T0 + 2_000),  # too late for page_stats, on time for its session
    ]
    offsets = produce(kafka_bootstrap, topic, events)
    url = f"chdb://{tmp_path / 'store'}"
    run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        }
    )
    assert query_rows(
        url, "SELECT page, toUnixTimestamp64Milli(window_start), views FROM page_stats ORDER BY 1"
    ) == [("/x", T0, 1), ("/y", T0 + W, 1)]
    assert query_rows(
        url, "SELECT user_id, events, entry_page, exit_page FROM user_sessions ORDER BY 1"
    ) == [("u1", 2, "/x", "/x"), ("u2", 1, "/y", "/y")]
    late_source = f"{topic}/0/{offsets[2]}"
    assert query_rows(url, "SELECT source, reason, error, payload FROM dead_letters") == [
        (late_source, "late", "missed page_stats", orjson.dumps(events[2]).decode())
    ]

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=5_000)
    consumer.assign([TopicPartition(dlq, 0)])
    consumer.seek_to_beginning()
    letters = [(m.value, dict(m.headers)) for m in consumer]
    consumer.close()
    assert letters == [
        (
            orjson.dumps(events[2]),
            {"reason": b"late", "error": b"missed page_stats", "source": late_source.encode()},
        )
    ]


def test_live_mode_closes_idle_windows_and_sessions_by_wall_clock(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(2, prefix="live")
    now = int(time.time() * 1000)
    events = [event(n, f"u{n % 5}", f"/p{n % 2}", now + n) for n in range(40)]
    produce(kafka_bootstrap, topic, events)
    url = f"chdb://{tmp_path / 'store'}"
    log = tmp_path / "flow.log"
    # No new event will ever arrive: only the idle clock can close these windows.
    run_live_while_idle(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="live-dlq"),
            "CLICKHOUSE_URL": url,
        },
        log,
        partitions=2,
    )

    views = query_rows(url, "SELECT page, sum(views) FROM page_stats GROUP BY page ORDER BY 1")
    assert views == [("/p0", 20), ("/p1", 20)]
    sessions = query_rows(url, "SELECT user_id, events FROM user_sessions ORDER BY 1")
    assert sessions == [(f"u{i}", 8) for i in range(5)]
    assert query_rows(url, "SELECT count() FROM dead_letters") == [(0,)]
