"""Both Kafka sources against a real broker, partition objects driven directly.

Every test runs with each client (kafka-python, confluent-kafka): they share one partition
state machine (`waxhouse.connectors.kafka_reader`), and each must feed it the same truths. Topics
are written with kafka-python (not the client under test), and `build_part` /
`next_batch` are called the way Bytewax does, in loops bounded by a count and a deadline.
The last test runs the whole flow with `KAFKA_CLIENT=confluent` against the oracle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions

from tests.support.flow import run_flow
from tests.support.kafka_broker import KafkaBroker, TopicFactory, create_topic
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors import kafka, kafka_confluent, kafka_reader
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig
from waxhouse.connectors.kafka import KafkaSource
from waxhouse.connectors.kafka_confluent import ConfluentKafkaSource, librdkafka_options
from waxhouse.connectors.kafka_reader import KafkaPartition, KafkaTopicSource
from waxhouse.errors import SourceError
from waxhouse.records import IdleTick, InputBatch

pytestmark = pytest.mark.integration

STEP = "kafka_in"
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SOURCES: dict[str, type[KafkaTopicSource]] = {
    "kafka-python": KafkaSource,
    "confluent": ConfluentKafkaSource,
}
MODULES = {"kafka-python": kafka, "confluent": kafka_confluent}


@pytest.fixture(params=sorted(SOURCES))
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
    part: KafkaPartition,
    *,
    records: int | None = None,
    until_tick: bool = False,
    timeout_s: float = 30.0,
    max_calls: int = 100_000,
) -> Drained:
    """Call `next_batch` until `records` were read, a tick came, the partition stopped, or
    the deadline; between empty calls wait a little, as `next_awake` asks."""
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


def source(client: str, bootstrap: str, topic: str, **options: object) -> KafkaTopicSource:
    return SOURCES[client](bootstrap, topic, **options)  # type: ignore[arg-type]


def build(
    client: str,
    bootstrap: str,
    topic: str,
    resume_state: int | None = None,
    partition: int = 0,
    **options: object,
) -> KafkaPartition:
    return source(client, bootstrap, topic, **options).build_part(
        STEP, f"{topic}/{partition}", resume_state
    )


@pytest.fixture
def parts() -> Iterator[list[KafkaPartition]]:
    """Partitions a test builds; all closed afterwards."""
    built: list[KafkaPartition] = []
    yield built
    for part in built:
        part.close()


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
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(3)
    assert source(client, kafka_bootstrap, topic).list_parts() == [
        f"{topic}/0",
        f"{topic}/1",
        f"{topic}/2",
    ]


def test_list_parts_fails_when_the_topic_never_appears(
    client: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MODULES[client], "_METADATA_TIMEOUT_S", 2.0)
    missing = f"missing-{uuid.uuid4().hex}"
    with pytest.raises(SourceError, match=f"Kafka topic '{missing}' not found"):
        source(client, kafka_bootstrap, missing).list_parts()


def test_records_come_out_in_order_with_offsets_values_and_timestamps(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    values = [b'{"n":0}', b"", None, "ünïcode".encode(), b"x" * 100_000, b'{"n":5}']
    offsets = produce(kafka_bootstrap, topic, values)
    part = build(client, kafka_bootstrap, topic)
    parts.append(part)
    got = drain(part, records=len(values))
    assert got.offsets == offsets == list(range(len(values)))
    assert got.values == values  # the tombstone stays None, the empty value b""
    assert got.timestamps_ms == [BASE_TS + i for i in range(len(values))]
    assert part.snapshot() == len(values)
    assert got.ticks == []  # behind until the last record was read


def test_a_batch_names_its_records_for_dead_letters(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"a", b"b"])
    part = build(client, kafka_bootstrap, topic)
    parts.append(part)
    deadline = time.monotonic() + 30
    batches: list[InputBatch] = []
    while not batches and time.monotonic() < deadline:
        batches = [i for _, i in part.next_batch() if isinstance(i, InputBatch)]
        time.sleep(0.005)
    assert batches[0].source_prefix == f"{topic}/0/"
    assert batches[0].source(0) == f"{topic}/0/0"


def test_bounded_mode_stops_at_the_end_offset_seen_at_build(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(100)])
    part = build(client, kafka_bootstrap, topic, stop_at_end=True)
    parts.append(part)
    produce(kafka_bootstrap, topic, [b"later-%d" % i for i in range(50)])
    got = drain(part)
    assert got.stopped
    assert got.offsets == list(range(100))
    assert got.values == [b"%d" % i for i in range(100)]
    assert got.ticks == []  # never an idle tick in bounded mode
    assert part.snapshot() == 100
    with pytest.raises(StopIteration):
        part.next_batch()


def test_bounded_mode_on_an_empty_partition_stops_at_once(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    part = build(client, kafka_bootstrap, topic, stop_at_end=True)
    parts.append(part)
    with pytest.raises(StopIteration):
        part.next_batch()
    assert part.snapshot() == 0


def test_resume_from_a_snapshot_reads_on_exactly_after_it(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    first = build(client, kafka_bootstrap, topic)
    parts.append(first)
    assert drain(first, records=10).offsets == list(range(10))
    assert first.snapshot() == 10
    produce(kafka_bootstrap, topic, [b"new-%d" % i for i in range(3)])
    resumed = build(client, kafka_bootstrap, topic, 10)
    parts.append(resumed)
    got = drain(resumed, records=3)
    assert got.offsets == [10, 11, 12]
    assert got.values == [b"new-0", b"new-1", b"new-2"]
    middle = build(client, kafka_bootstrap, topic, 6, starting_offset="latest")  # resume wins
    parts.append(middle)
    assert drain(middle, records=7).offsets == list(range(6, 13))


def test_latest_skips_the_backlog_and_reads_what_comes_after_build(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"old-%d" % i for i in range(5)])
    part = build(client, kafka_bootstrap, topic, starting_offset="latest")
    parts.append(part)
    assert part.snapshot() == 5
    produce(kafka_bootstrap, topic, [b"new-0", b"new-1"])
    got = drain(part, records=2)
    assert got.offsets == [5, 6]
    assert got.values == [b"new-0", b"new-1"]


def test_a_partition_without_state_in_a_resumed_flow_starts_at_its_beginning(
    client: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    parts: list[KafkaPartition],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A partition the topic gained since the flow first ran: `latest` must not skip it."""
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"early-%d" % i for i in range(4)])
    with caplog.at_level(logging.INFO, logger=kafka_reader.__name__):
        part = build(client, kafka_bootstrap, topic, starting_offset="latest", resumed=True)
    parts.append(part)
    assert part.snapshot() == 0
    assert "added to the topic since the flow first ran" in caplog.text
    assert drain(part, records=4).values == [b"early-%d" % i for i in range(4)]


def test_a_caught_up_live_partition_ticks_and_says_when_to_look_again(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"a", b"b", b"c"])
    part = build(client, kafka_bootstrap, topic)
    parts.append(part)
    got = drain(part, records=3)
    assert got.offsets == [0, 1, 2]
    assert got.ticks == []  # data, and the partition was behind before it
    assert part.next_awake() is None  # right after data: at once
    first = drain(part, until_tick=True, timeout_s=10)
    assert first.offsets == [] and len(first.ticks) == 1
    assert first.ticks[0].part == f"{topic}/0"
    assert part.next_awake() is not None  # caught up: poll gently, not in a busy loop
    # Ticks are spaced out; the idle time they report only grows.
    later = drain(part, timeout_s=1.5)
    assert 1 <= len(later.ticks) <= 1.5 / kafka_reader.IDLE_TICK_EVERY_S + 1
    idle = [t.idle_ms for t in first.ticks + later.ticks]
    assert idle == sorted(idle) and idle[-1] > idle[0]
    # New data resets the idle clock.
    produce(kafka_bootstrap, topic, [b"d"])
    assert drain(part, records=1).offsets == [3]
    after = drain(part, until_tick=True, timeout_s=10)
    assert after.ticks and after.ticks[0].idle_ms < idle[-1]


def test_an_empty_live_partition_ticks_once_a_fetch_answered(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    part = build(client, kafka_bootstrap, topic)
    parts.append(part)
    got = drain(part, until_tick=True, timeout_s=10)
    assert got.offsets == [] and len(got.ticks) == 1


def test_a_resume_offset_deleted_under_it_continues_at_the_first_offset(
    client: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    parts: list[KafkaPartition],
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    # DeleteRecords moves the log start offset at once, as retention would later.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 6}, timeout_ms=30_000)
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger=kafka_reader.__name__):
        part = build(client, kafka_bootstrap, topic, 2)
    parts.append(part)
    assert part.snapshot() == 6
    assert f"partition {topic}/0: resume offset 2 was deleted by retention" in caplog.text
    got = drain(part, records=4)
    assert got.offsets == [6, 7, 8, 9]
    assert got.values == [b"6", b"7", b"8", b"9"]


# ---------------------------------------------------------------------------
# Transactions: read committed, positions past markers and aborted batches


def transactional_producer(bootstrap: str, name: str) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{name}-{uuid.uuid4().hex}"
    )
    producer.init_transactions()
    return producer


def transaction(producer: KafkaProducer, topic: str, values: list[bytes], commit: bool) -> None:
    producer.begin_transaction()
    for value in values:
        producer.send(topic, value=value, partition=0)
    producer.flush()  # the records are in the log, whichever way the transaction ends
    if commit:
        producer.commit_transaction()
    else:
        producer.abort_transaction()


def test_only_committed_records_are_read_and_bounded_mode_ends_past_a_final_abort(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    topic = topic_factory(1)
    producer = transactional_producer(kafka_bootstrap, "tx")
    try:
        transaction(producer, topic, [b"c1-0", b"c1-1"], commit=True)
        transaction(producer, topic, [b"a1-0", b"a1-1", b"a1-2"], commit=False)
        transaction(producer, topic, [b"c2-0"], commit=True)
        transaction(producer, topic, [b"a2-0", b"a2-1"], commit=False)  # the last word
    finally:
        producer.close()
    part = build(client, kafka_bootstrap, topic, stop_at_end=True)
    parts.append(part)
    got = drain(part, timeout_s=30)
    assert got.stopped, "bounded mode must end on a topic whose last offsets are not records"
    assert got.values == [b"c1-0", b"c1-1", b"c2-0"]
    # c1 (2) + marker, a1 (3) + marker, c2 (1) + marker, a2 (2) + marker = 12 offsets.
    assert got.offsets == [0, 1, 7]
    assert part.snapshot() == 12


def test_a_live_partition_is_caught_up_at_an_open_transaction(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, parts: list[KafkaPartition]
) -> None:
    """Caught up means at the last stable offset: an open transaction holds it back, and
    idle time still passes there; the transaction's records come once it commits."""
    topic = topic_factory(1)
    produce(kafka_bootstrap, topic, [b"before"])
    producer = transactional_producer(kafka_bootstrap, "open")
    try:
        producer.begin_transaction()
        producer.send(topic, value=b"pending", partition=0)
        producer.flush()
        part = build(client, kafka_bootstrap, topic)
        parts.append(part)
        assert drain(part, records=1).values == [b"before"]
        ticked = drain(part, until_tick=True, timeout_s=15)
        assert ticked.offsets == [] and ticked.ticks, "no idle tick at an open transaction"
        assert part.snapshot() == 1
        producer.commit_transaction()
        got = drain(part, records=1, timeout_s=30)
        assert (got.offsets, got.values) == ([1], [b"pending"])
    finally:
        producer.close()


# ---------------------------------------------------------------------------
# A topic that gains partitions


@pytest.mark.slow
def test_a_new_partition_is_noticed_said_and_stops_the_partition(
    client: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    parts: list[KafkaPartition],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client's own metadata refresh (every 10 s) notices the third partition, well
    within 30 s; the partition logs an error at once and raises after the grace period."""
    monkeypatch.setattr(kafka_reader, "STOP_GRACE_S", 2.0)
    topic = topic_factory(2)
    topic_source = source(client, kafka_bootstrap, topic)
    assert topic_source.list_parts() == [f"{topic}/0", f"{topic}/1"]
    part = topic_source.build_part(STEP, f"{topic}/1", None)
    parts.append(part)
    drain(part, until_tick=True, timeout_s=10)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_partitions({topic: NewPartitions(total_count=3)})
    finally:
        admin.close()
    added = time.time()
    with (
        caplog.at_level(logging.ERROR, logger=kafka_reader.__name__),
        pytest.raises(SourceError, match=rf"grew from 2 to 3 partitions.*{topic}/2"),
    ):
        drain(part, timeout_s=45)
    noticed = [r for r in caplog.records if "grew from 2 to 3 partitions" in r.getMessage()]
    assert noticed, "the error must be logged when the new partition is noticed"
    assert noticed[0].created - added < 30
    sample = kafka_reader.UNREAD_PARTITIONS.labels(topic=topic)._value.get()
    assert sample == 1


# ---------------------------------------------------------------------------
# Broker outages


def test_a_broker_restart_is_waited_out(
    client: str, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(1)
    produce(bootstrap, topic, [b"before"])
    part = build(client, bootstrap, topic)
    try:
        assert drain(part, records=1).values == [b"before"]
        ticking = drain(part, until_tick=True, timeout_s=10)
        assert ticking.ticks
        kafka_broker.shutdown()
        drain(part, timeout_s=1.0)  # the last answers before the outage
        down = drain(part, timeout_s=3.0)  # no crash, nothing invented, time stands still
        assert down.offsets == [] and not down.stopped
        assert down.ticks == [], "no fetch answers, so no idle time passes"
        kafka_broker.start()
        produce(bootstrap, topic, [b"after"])
        got = drain(part, records=1, timeout_s=60)
        assert (got.offsets, got.values) == ([1], [b"after"])
    finally:
        part.close()


@pytest.mark.slow
def test_building_a_partition_waits_for_a_broker_that_is_down(
    client: str, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(1)
    produce(bootstrap, topic, [b"kept"])
    kafka_broker.shutdown()
    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(build, client, bootstrap, topic)
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
    """(The confluent client: kafka-python's consumer itself waits out its own bootstrap
    timeout of about half a minute before the first retry.)"""
    module = kafka_confluent
    monkeypatch.setattr(module, "_UNREACHABLE_TIMEOUT_S", 3.0)
    monkeypatch.setattr(module, "_REQUEST_TIMEOUT_S", 1.0)
    topic_source = ConfluentKafkaSource("127.0.0.1:9", "events")  # nothing listens on port 9
    with (
        caplog.at_level(logging.WARNING, logger=module.__name__),
        pytest.raises(SourceError, match="no Kafka broker answered for 3 s"),
    ):
        topic_source.build_part(STEP, "events/0", None)
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
    assert "'kafka_client': 'confluent'" in done.stderr
    assert f"{E2E_EVENTS:,} records in" in done.stdout
    tables = read_tables(url, done.stdout)
    assert len(tables.page_stats) > 1_000 and expected.dead_letters
    assert_tables_match(tables, expected, records, positions)
