"""A topic that gains a partition while a live flow runs.

Bytewax fixes a flow's partitions when it starts, so the flow cannot read a new partition
live. It must not ignore it either: within 30 s it logs an error and sets
`waxhouse_source_partitions_unread`, then stops in order with exit 1 so the orchestrator
restarts it. The restart, resuming from recovery, reads the new partition from its
beginning although the flow runs with `KAFKA_STARTING_OFFSET=latest`, and the old ones
from their snapshots: nothing lost, nothing twice.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from tests.support.flow import recovery_args, run_flow, start_flow, wait_until_partitions_start
from tests.support.kafka_broker import TopicFactory
from tests.support.oracle import oracle
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import GeneratedRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTICE_WITHIN_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def produce(
    bootstrap: str, topic: str, first: int, count: int, partition: int | None = None
) -> tuple[list[GeneratedRecord], dict[int, str]]:
    """`count` events stamped now, keyed by user (users `u<first>`..: new ones each call)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    sent = []
    for n in range(first, first + count):
        now = int(time.time() * 1000)
        user = f"u{first}-{n % 7}"
        value = orjson.dumps(
            {"event_id": f"e{n}", "user_id": user, "type": "click", "page": f"/p{n % 3}", "ts": now}
        )
        record = GeneratedRecord(n, user.encode(), value, now)
        future = producer.send(
            topic, key=record.key, value=value, timestamp_ms=now, partition=partition
        )
        sent.append((record, future))
    producer.flush()
    positions = {}
    for record, future in sent:
        meta = future.get(timeout=30)
        positions[record.n] = f"{topic}/{meta.partition}/{meta.offset}"
    producer.close()
    return [record for record, _ in sent], positions


def unread_partitions(port: int, topic: str) -> float | None:
    """`waxhouse_source_partitions_unread{topic}` as the flow serves it, if it answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f'waxhouse_source_partitions_unread{{topic="{topic}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_new_partition_stops_the_flow_and_the_restart_reads_it_from_its_beginning(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(2, prefix="growing")
    port = free_port()
    url, log, recovery = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log", tmp_path / "rec"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="growing-dlq"),
        "KAFKA_STARTING_OFFSET": "latest",
        "CLICKHOUSE_URL": url,
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    flow = start_flow(env, log, recovery_args(recovery))
    try:
        wait_until_partitions_start(flow, log, 2, timeout_s=60)
        before, before_at = produce(kafka_bootstrap, topic, 0, 200)
        time.sleep(3)  # read, and snapshotted (every second)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        grown = time.monotonic()
        added, added_at = produce(kafka_bootstrap, topic, 1_000, 20, partition=2)
        unread = None
        while unread != 1.0:
            assert flow.poll() is None, "the flow stopped before it said why on /metrics"
            assert time.monotonic() - grown < NOTICE_WITHIN_S, "the new partition went unnoticed"
            unread = unread_partitions(port, topic)
            time.sleep(0.5)
        assert flow.wait(timeout=60) == 1, "an orderly stop that asks for a restart: exit 1"
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    output = log.read_text()
    lines = output.strip().splitlines()
    assert (
        f"grew from 2 to 3 partitions while the flow ran, and the flow does not read {topic}/2"
        in lines[-1]
    )
    assert "Traceback" not in output

    restart = run_flow({**env, "KAFKA_STOP_AT_END": "true"}, recovery_args(recovery))
    assert (
        f"partition {topic}/2 starts at offset 0 (added since the flow first ran)" in restart.stderr
    )
    records = before + added
    tables = read_tables(url, restart.stdout)
    assert_tables_match(tables, oracle(records), records, before_at | added_at)
