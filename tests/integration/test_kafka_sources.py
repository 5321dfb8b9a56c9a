"""The confluent-kafka source against a real broker, partition objects driven directly.

Each test makes its own topic, produces with kafka-python (not the client under test),
and calls `build_part` / `next_batch` the way Bytewax does, in loops bounded by a count and
a deadline. The last test runs the whole flow with `KAFKA_CLIENT=confluent` against the
oracle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from connectors import kafka_confluent
from connectors.generator import ClickstreamGenerator, GeneratorConfig
from connectors.kafka_confluent import ConfluentKafkaSource, librdkafka_options
from dataflows.records import IdleTick, InputBatch
from tests.support.flow import run_flow
from tests.support.kafka_broker import KafkaBroker, TopicFactory, create_topic
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.errors import SourceError

pytestmark = pytest.mark.integration

STEP = "kafka_in"
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class Drained:
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    ticks: list[IdleTick] = field(default_factory=list)
    stopped: bool = False


def produce(
    bootstrap: str, topic: str, values: Sequence[bytes | None], first_ts: int = BASE_TS
) -> list[int]:
    """`values` to partition 0, record i at `first_ts + i`; returns their offsets."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [
        producer.send(topic, key=b"user", value=v, partition=0, timestamp_ms=first_ts + i)
        for i, v in enumerate(values)
    ]
    producer.flush()
    producer.close()
    return [f.get(timeout=30).offset for f in futures]


def drain(
    part: kafka_confluent._ConfluentPartition,
    *,
    records: int | None = None,
    until_tick: bool = False,
    timeout_s: float = 30.0,
    max_calls: int = 100_000,
) -> Drained:
    """Call `next_batch` until `records` were read, a tick came, the partition stopped, or
    the deadline; between empty calls wait as `next_awake` asks (at most 50 ms)."""
    got = Drained()
    deadline = time.monotonic() + timeout_s
    for _ in range(max_calls):
        if time.monotonic() > deadline:
            break
        try:
            items = part.next_batch()
        except StopIteration:
            got.stopped = True
            break
        for key, item in items:
            assert key == item.part
            if isinstance(item, InputBatch):
                got.offsets += item.offsets
                got.values += item.values
                got.timestamps_ms += item.timestamps_ms
            else:
                got.ticks.append(item)
        if records is not None and len(got.offsets) >= records:
            break
        if until_tick and got.ticks:
            break
        if not items:
            time.sleep(0.005)
    return got


def build(
    bootstrap: str,
    topic: str,
    resume_state: int | None = None,
    **options: object,
) -> kafka_confluent._ConfluentPartition:
    source = ConfluentKafkaSource(bootstrap, topic, **options)  # type: ignore[arg-type]
    return source.build_part(STEP, f"{topic}/0", resume_state)


# ---------------------------------------------------------------------------
# Configuration translation (no broker needed)


def test_security_options_are_translated_to_librdkafka_names() -> None:
    options = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "reader",
        "sasl_plain_password": "hunter2",
        "ssl_cafile": "/etc/ssl/ca.pem",
    }
    assert librdkafka_options(options) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "reader",
        "sasl.password": "hunter2",
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }


def test_an_option_without_translation_fails_at_construction() -> None:
    with pytest.raises(SourceError, match="sasl_kerberos_service_name"):
        ConfluentKafkaSource("127.0.0.1:9", "t", client_options={"sasl_kerberos_service_name": "k"})


# ---------------------------------------------------------------------------
# Partitions and records


def test_list_parts_names_every_partition(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(3)
    assert ConfluentKafkaSource(kafka_bootstrap, topic).list_parts() == [
        f"{topic}/0",
        f"{topic}/1",
        f"{topic}/2",
    ]


def test_list_parts_fails_when_the_topic_never_appears(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_confluent, "_METADATA_TIMEOUT_S", 2.0)
    missing = f"missing-{uuid.uuid4().hex}"
    with pytest.raises(SourceError, match=f"Kafka topic '{missing}' not found"):
        ConfluentKafkaSource(kafka_bootstrap, missing).list_parts()


def test_records_come_out_in_order_with_offsets_values_and_timestamps(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    values = [b'{"n":0}', b"", None, "ünïcode".encode(), b"x" * 100_000, b'{"n":5}']
    offsets = produce(kafka_bootstrap, topic, values)
    part = build(kafka_bootstrap, topic)
    try:
        got = drain(part, records=len(values))
        assert got.offsets == offsets == list(range(len(values)))
        assert got.values == values  # the tombstone stays None, the empty value b""
        assert got.timestamps_ms == [BASE_TS + i for i in range(len(values))]
        assert part.snapshot() == len(values)
        assert got.ticks == []  # behind until the last record was read
    finally:
        part.close()


def test_a_batch_names_its_records_for_dead_letters(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"a", b"b"])
    part = build(kafka_bootstrap, topic)
    try:
        deadline = time.monotonic() + 30
        batches: list[InputBatch] = []
        while not batches and time.monotonic() < deadline:
            batches = [i for _, i in part.next_batch() if isinstance(i, InputBatch)]
            time.sleep(0.005)
        assert batches[0].source_prefix == f"{topic}/0/"
        assert batches[0].source(0) == f"{topic}/0/0"
    finally:
        part.close()


def test_bounded_mode_stops_at_the_end_offset_seen_at_build(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(100)])
    part = build(kafka_bootstrap, topic, stop_at_end=True)
    try:
        produce(kafka_bootstrap, topic, [b"later-%d" % i for i in range(50)])
        # Let the consumer prefetch the later records too, so that one poll returns records
        # on both sides of the stop offset.
        deadline = time.monotonic() + 30
        while part._highwater() != 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = drain(part)
        assert got.stopped
        assert got.offsets == list(range(100))
        assert got.values == [b"%d" % i for i in range(100)]
        assert got.ticks == []  # never an idle tick in bounded mode
        assert part.snapshot() == 100
        with pytest.raises(StopIteration):
            part.next_batch()
    finally:
        part.close()


def test_bounded_mode_on_an_empty_partition_stops_at_once(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    part = build(kafka_bootstrap, topic, stop_at_end=True)
    try:
        with pytest.raises(StopIteration):
            part.next_batch()
        assert part.snapshot() == 0
    finally:
        part.close()


def test_resume_from_a_snapshot_reads_on_exactly_after_it(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    first = build(kafka_bootstrap, topic)
    try:
        assert drain(first, records=10).offsets == list(range(10))
        snapshot = first.snapshot()
    finally:
        first.close()
    assert snapshot == 10
    produce(kafka_bootstrap, topic, [b"new-%d" % i for i in range(3)])
    resumed = build(kafka_bootstrap, topic, snapshot)
    try:
        got = drain(resumed, records=3)
        assert got.offsets == [10, 11, 12]
        assert got.values == [b"new-0", b"new-1", b"new-2"]
    finally:
        resumed.close()
    middle = build(kafka_bootstrap, topic, 6, starting_offset="latest")  # resume wins
    try:
        assert drain(middle, records=7).offsets == list(range(6, 13))
    finally:
        middle.close()


def test_latest_skips_the_backlog_and_reads_what_comes_after_build(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"old-%d" % i for i in range(5)])
    part = build(kafka_bootstrap, topic, starting_offset="latest")
    try:
        assert part.snapshot() == 5
        produce(kafka_bootstrap, topic, [b"new-0", b"new-1"])
        got = drain(part, records=2)
        assert got.offsets == [5, 6]
        assert got.values == [b"new-0", b"new-1"]
    finally:
        part.close()


def test_a_caught_up_live_partition_ticks_and_says_when_to_look_again(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"a", b"b", b"c"])
    part = build(kafka_bootstrap, topic)
    try:
        got = drain(part, records=3)
        assert got.offsets == [0, 1, 2]
        assert got.ticks == []  # data, and the partition was behind before it
        assert part.next_awake() is None  # right after data: at once
        first = drain(part, until_tick=True, timeout_s=10)
        assert first.offsets == [] and len(first.ticks) == 1
        assert first.ticks[0].part == f"{topic}/0"
        awake = part.next_awake()
        assert awake is not None  # caught up: poll gently, not in a busy loop
        # Ticks are spaced out; the idle time they report only grows.
        later = drain(part, timeout_s=1.0)
        assert 1 <= len(later.ticks) <= 1.0 / kafka_confluent._IDLE_TICK_EVERY_S + 1
        idle = [t.idle_ms for t in first.ticks + later.ticks]
        assert idle == sorted(idle) and idle[-1] > idle[0]
        # New data resets the idle clock.
        produce(kafka_bootstrap, topic, [b"d"])
        assert drain(part, records=1).offsets == [3]
        after = drain(part, until_tick=True, timeout_s=10)
        assert after.ticks and after.ticks[0].idle_ms < idle[-1]
    finally:
        part.close()


def test_an_empty_live_partition_ticks_once_the_first_fetch_answered(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    part = build(kafka_bootstrap, topic)
    try:
        got = drain(part, until_tick=True, timeout_s=10)
        assert got.offsets == [] and len(got.ticks) == 1
    finally:
        part.close()


def test_a_resume_offset_deleted_under_it_continues_at_the_first_offset(
    kafka_bootstrap: str, topic_factory: TopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    # DeleteRecords moves the log start offset at once, as retention would later.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 6}, timeout_ms=30_000)
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger=kafka_confluent.__name__):
        part = build(kafka_bootstrap, topic, 2)
    try:
        assert part.snapshot() == 6
        assert f"partition {topic}/0: resume offset 2 was deleted by retention" in caplog.text
        got = drain(part, records=4)
        assert got.offsets == [6, 7, 8, 9]
        assert got.values == [b"6", b"7", b"8", b"9"]
    finally:
        part.close()


def test_a_broker_restart_is_waited_out(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(1)
    produce(bootstrap, topic, [b"before"])
    part = build(bootstrap, topic)
    try:
        assert drain(part, records=1).values == [b"before"]
        kafka_broker.shutdown()
        down = drain(part, timeout_s=2.0)  # no crash, nothing invented
        assert down.offsets == [] and not down.stopped
        kafka_broker.start()
        produce(bootstrap, topic, [b"after"])
        got = drain(part, records=1, timeout_s=60)
        assert (got.offsets, got.values) == ([1], [b"after"])
    finally:
        part.close()


def test_building_a_partition_waits_for_a_broker_that_is_down(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(1)
    produce(bootstrap, topic, [b"kept"])
    kafka_broker.shutdown()
    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(build, bootstrap, topic)
        finished, _ = wait([building], timeout=3.0)
        assert not finished, "build_part gave up while the broker was down"
        kafka_broker.start()
        part = building.result(timeout=120)
    try:
        got = drain(part, records=1, timeout_s=60)
        assert (got.offsets, got.values) == ([0], [b"kept"])
    finally:
        part.close()


def test_build_gives_up_loudly_when_no_broker_ever_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kafka_confluent, "_UNREACHABLE_TIMEOUT_S", 3.0)
    monkeypatch.setattr(kafka_confluent, "_REQUEST_TIMEOUT_S", 1.0)
    source = ConfluentKafkaSource("127.0.0.1:9", "events")  # nothing listens on port 9
    with (
        caplog.at_level(logging.WARNING, logger=kafka_confluent.__name__),
        pytest.raises(SourceError, match="no Kafka broker answered for 3 s"),
    ):
        source.build_part(STEP, "events/0", None)
    assert "Kafka unreachable" in caplog.text and "retrying in" in caplog.text


# ---------------------------------------------------------------------------
# The whole flow on the confluent source

E2E_SEED = 11
E2E_EVENTS = 20_000
E2E_PARTITIONS = 4


def test_the_flow_on_the_confluent_source_equals_the_oracle(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    records = ClickstreamGenerator(GeneratorConfig(seed=E2E_SEED, events=E2E_EVENTS)).take(
        E2E_EVENTS
    )
    expected = oracle(records)
    suffix = uuid.uuid4().hex[:12]
    topic, dlq = f"confluent-{suffix}", f"confluent-{suffix}.dlq"
    create_topic(kafka_bootstrap, topic, E2E_PARTITIONS)
    create_topic(kafka_bootstrap, dlq, 1)
    positions = produce_records(kafka_bootstrap, topic, records)
    url = f"chdb://{tmp_path_factory.mktemp('confluent-store')}"
    done = run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "KAFKA_CLIENT": "confluent",
            "CLICKHOUSE_URL": url,
        }
    )
    started = [line for line in done.stderr.splitlines() if "starts at offset" in line]
    assert len(started) == E2E_PARTITIONS
    assert all("connectors.kafka_confluent:" in line for line in started), started
    assert f"{E2E_EVENTS:,} records in" in done.stdout
    tables = read_tables(url, done.stdout)
    assert len(tables.page_stats) > 1_000 and expected.dead_letters
    assert_tables_match(tables, expected, records, positions)
