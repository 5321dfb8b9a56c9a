"""A network partition between the flow and the broker, while producers keep writing.

The flow reaches the broker only through a cuttable TCP proxy (the broker's PROXIED
listener, advertised at the proxy); the producer writes through the PLAINTEXT listener,
which the cut does not touch. Events carry the wall-clock time they were sent. The cut
lasts much longer than window + lateness: had the flow let event time pass with the wall
clock while it heard nothing, every event written during the cut would be late when the
partition heals. It must not: the idle rule applies only to a partition verifiably caught
up, so every event counts where it belongs and the tables equal the oracle's.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from tests.support.flow import start_flow, wait_until_partitions_start
from tests.support.kafka_broker import KafkaBroker, TopicFactory
from tests.support.oracle import oracle
from tests.support.tables import assert_tables_match, read_tables
from tests.support.tcp_proxy import TcpProxy
from waxhouse.connectors.generator import GeneratedRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S, LATENESS_S, GAP_S = 2, 1, 2
CUT_S = 4 * (WINDOW_S + LATENESS_S)
RATE = 40  # events per second, across 8 users and 2 partitions


class LiveProducer:
    """Events stamped with the wall clock, keyed by user, sent in order."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._sent: list[tuple[GeneratedRecord, object]] = []

    def run_for(self, seconds: float) -> None:
        """Send RATE events a second for `seconds` (a bounded loop)."""
        for _ in range(int(seconds * RATE)):
            n = len(self._sent)
            now = int(time.time() * 1000)
            user = f"u{n % 8}"
            value = orjson.dumps(
                {
                    "event_id": f"e{n}",
                    "user_id": user,
                    "type": "page_view",
                    "page": f"/p{n % 5}",
                    "ts": now,
                }
            )
            record = GeneratedRecord(n, user.encode(), value, now)
            future = self._producer.send(self._topic, key=record.key, value=value, timestamp_ms=now)
            self._sent.append((record, future))
            time.sleep(1 / RATE)
        self._producer.flush()

    def close(self) -> tuple[list[GeneratedRecord], dict[int, str]]:
        """The records sent and where each landed."""
        self._producer.flush()
        positions = {}
        for record, future in self._sent:
            meta = future.get(timeout=30)  # type: ignore[attr-defined]
            positions[record.n] = f"{self._topic}/{meta.partition}/{meta.offset}"
        self._producer.close()
        return [record for record, _ in self._sent], positions


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_event_time_stands_still_while_the_broker_is_unreachable(
    client: str,
    kafka_broker: KafkaBroker,
    kafka_proxy: TcpProxy,
    topic_factory: TopicFactory,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2, prefix="partitioned")
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.proxied_bootstrap_servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="partitioned-dlq"),
        "CLICKHOUSE_URL": url,
        "WINDOW_SECONDS": str(WINDOW_S),
        "ALLOWED_LATENESS_SECONDS": str(LATENESS_S),
        "SESSION_GAP_SECONDS": str(GAP_S),
    }
    if client != "kafka-python":
        env["KAFKA_CLIENT"] = client
    producer = LiveProducer(kafka_broker.bootstrap_servers, topic)
    flow = start_flow(env, log)
    try:
        wait_until_partitions_start(flow, log, 2, timeout_s=60)
        producer.run_for(4)  # live and caught up: windows close as time passes
        kafka_proxy.cut()
        producer.run_for(CUT_S)  # written while the flow hears nothing
        assert kafka_proxy.is_cut
        kafka_proxy.restore()
        producer.run_for(3)
        records, positions = producer.close()
        time.sleep(GAP_S + LATENESS_S + 5)  # idle: the last windows and sessions close
        assert flow.poll() is None, log.read_text()[-3000:]
        flow.send_signal(signal.SIGTERM)
        assert flow.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    expected = oracle(records, window_ms=WINDOW_S * 1000, gap_ms=GAP_S * 1000)
    tables = read_tables(url)
    late = [row for row in tables.dead_letters if row[1] == "late"]
    assert late == [], f"{len(late)} events became late across the cut"
    assert_tables_match(tables, expected, records, positions)
