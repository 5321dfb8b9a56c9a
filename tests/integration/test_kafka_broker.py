"""The test broker is a real Kafka: keyed records round-trip exactly once and survive restarts,
through its PLAINTEXT listener, its SASL_PLAINTEXT and SASL_SSL listeners (SCRAM-SHA-512)
with either client, and its PROXIED listener behind a cuttable proxy."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict

import confluent_kafka
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from tests.support.kafka_broker import (
    SECURED_PROTOCOLS,
    KafkaBroker,
    SecuredListener,
    SecuredProtocol,
    TopicFactory,
)
from tests.support.tcp_proxy import CutMode, TcpProxy

Record = tuple[bytes, int, int]  # key, partition, seq
WRONG_PASSWORD = "wrong-password-0f3c9a"


def _key(seq: int) -> bytes:
    return f"user-{seq % 37}".encode()


def _value(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def _produce(bootstrap: str, topic: str, seqs: range, **options: str) -> dict[int, int]:
    """Send one JSON record per seq, keyed by user; return seq -> partition it was written to."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
    try:
        futures = {seq: producer.send(topic, key=_key(seq), value=_value(seq)) for seq in seqs}
        producer.flush(timeout=30)
        return {seq: future.get(timeout=30).partition for seq, future in futures.items()}
    finally:
        producer.close(timeout=10)


def _consume_all(bootstrap: str, topic: str, partitions: int, **options: str) -> list[Record]:
    """Read every partition from the beginning up to its end offset (30 s at most)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options
    )
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end_offsets = consumer.end_offsets(assigned)
        records: list[Record] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in end_offsets.items()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading {topic} back: {len(records)} records so far")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.partition, json.loads(r.value)["seq"]) for r in batch)
        return records
    finally:
        consumer.close()


def _assert_exactly_once(records: list[Record], written: dict[int, int]) -> None:
    counts = Counter(seq for _, _, seq in records)
    assert sorted(counts) == sorted(written)
    assert set(counts.values()) == {1}
    assert {seq: partition for _, partition, seq in records} == written
    assert all(key == _key(seq) for key, _, seq in records)


def test_keyed_records_come_back_exactly_once_and_stay_in_their_partition(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(4)
    written = _produce(kafka_bootstrap, topic, range(1000))

    records = _consume_all(kafka_bootstrap, topic, 4)

    _assert_exactly_once(records, written)
    partitions_by_key: defaultdict[bytes, set[int]] = defaultdict(set)
    for key, partition, _ in records:
        partitions_by_key[key].add(partition)
    assert all(len(found) == 1 for found in partitions_by_key.values())
    assert len({partition for _, partition, _ in records}) > 1


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_records_survive_a_broker_restart(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, hard: bool
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(2)
    written = _produce(bootstrap, topic, range(200))

    secured = kafka_broker.secured_listener("SASL_SSL")

    kafka_broker.restart(hard=hard)
    written |= _produce(bootstrap, topic, range(200, 300))

    assert kafka_broker.bootstrap_servers == bootstrap
    _assert_exactly_once(_consume_all(bootstrap, topic, 2), written)
    # The secured listener, its certificate and its user are the same after the restart.
    assert kafka_broker.secured_listener("SASL_SSL") == secured
    records = _consume_all(secured.bootstrap_servers, topic, 2, **secured.kafka_python_options())
    _assert_exactly_once(records, written)


# ---------------------------------------------------------------------------
# The secured listeners


def _produce_confluent(listener: SecuredListener, topic: str, seqs: range) -> dict[int, int]:
    """`_produce` with confluent-kafka (librdkafka)."""
    written: dict[int, int] = {}
    failed: list[str] = []

    def delivered(
        error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message
    ) -> None:
        if error is not None:
            failed.append(str(error))
        else:
            written[json.loads(message.value())["seq"]] = message.partition()

    producer = confluent_kafka.Producer({**listener.confluent_config(), "acks": "all"})
    for seq in seqs:
        producer.produce(topic, key=_key(seq), value=_value(seq), on_delivery=delivered)
    assert producer.flush(30) == 0, "confluent producer did not deliver within 30 s"
    assert not failed, failed
    return written


def _consume_all_confluent(listener: SecuredListener, topic: str, partitions: int) -> list[Record]:
    """`_consume_all` with confluent-kafka (librdkafka)."""
    consumer = confluent_kafka.Consumer(
        {**listener.confluent_config(), "group.id": "waxhouse-tests", "enable.auto.commit": False}
    )
    try:
        assigned = [
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
            for p in range(partitions)
        ]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in assigned}
        consumer.assign(assigned)
        records: list[Record] = []
        seen = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 30
        while any(seen[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading {topic} back: {len(records)} records so far")
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                seen[message.partition()] = message.offset() + 1
                seq = json.loads(message.value())["seq"]
                records.append((message.key(), message.partition(), seq))
        return records
    finally:
        consumer.close()


@pytest.mark.parametrize("protocol", SECURED_PROTOCOLS)
def test_a_secured_listener_serves_both_clients(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, protocol: SecuredProtocol
) -> None:
    listener = kafka_broker.secured_listener(protocol)
    options = listener.kafka_python_options()
    topic = topic_factory(2)

    written = _produce(listener.bootstrap_servers, topic, range(100), **options)
    written |= _produce_confluent(listener, topic, range(100, 200))

    _assert_exactly_once(_consume_all(listener.bootstrap_servers, topic, 2, **options), written)
    _assert_exactly_once(_consume_all_confluent(listener, topic, 2), written)
    # What went in through the secured listener is what PLAINTEXT clients read.
    _assert_exactly_once(_consume_all(kafka_broker.bootstrap_servers, topic, 2), written)


@pytest.mark.parametrize("protocol", SECURED_PROTOCOLS)
def test_a_wrong_password_is_refused_and_no_password_is_logged(
    kafka_broker: KafkaBroker, protocol: SecuredProtocol, caplog: pytest.LogCaptureFixture
) -> None:
    listener = kafka_broker.secured_listener(protocol)
    caplog.set_level(logging.WARNING, logger="kafka")

    # kafka-python retries the bootstrap until its timeout, logging why it failed. A busy
    # broker can take longer than one attempt's 5 s to answer the SCRAM exchange: a few
    # attempts, each refused.
    for _ in range(4):
        with pytest.raises(KafkaTimeoutError):
            KafkaProducer(
                bootstrap_servers=listener.bootstrap_servers,
                bootstrap_timeout_ms=5_000,
                **listener.kafka_python_options(password=WRONG_PASSWORD),
            )
        if "SaslAuthenticationFailedError" in caplog.text:
            break
    assert "SaslAuthenticationFailedError" in caplog.text
    # librdkafka reports an authentication error to the error callback.
    errors: list[confluent_kafka.KafkaError] = []
    producer = confluent_kafka.Producer(
        {**listener.confluent_config(password=WRONG_PASSWORD), "error_cb": errors.append}
    )
    for _ in range(60):
        if any(e.code() == confluent_kafka.KafkaError._AUTHENTICATION for e in errors):
            break
        producer.poll(0.5)
    assert confluent_kafka.KafkaError._AUTHENTICATION in [e.code() for e in errors], errors
    producer.flush(1)

    log = kafka_broker.log_path.read_text(errors="replace")
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log
    for secret in (listener.password, WRONG_PASSWORD):
        assert secret not in caplog.text
        assert secret not in log
    # No file of the broker's holds the password (the user is stored salted and hashed).
    for path in kafka_broker.work_dir.rglob("*"):
        if path.is_file():
            assert listener.password.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------
# The proxied listener


def _poll_seqs(consumer: KafkaConsumer, want: int, timeout_s: float = 30) -> list[int]:
    """Poll until `want` records have come (failing after `timeout_s`)."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(seqs) < want:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(seqs)} of {want} records within {timeout_s:.0f} s")
        for batch in consumer.poll(timeout_ms=500).values():
            seqs.extend(json.loads(r.value)["seq"] for r in batch)
    return seqs


def _poll_nothing(consumer: KafkaConsumer, polls: int = 6) -> list[int]:
    """What arrives in `polls` polls of half a second: nothing, while partitioned."""
    seqs: list[int] = []
    for _ in range(polls):
        for batch in consumer.poll(timeout_ms=500).values():
            seqs.extend(json.loads(r.value)["seq"] for r in batch)
    return seqs


def test_the_proxied_listener_is_advertised_at_the_proxy(
    kafka_broker: KafkaBroker, kafka_proxy: TcpProxy
) -> None:
    assert kafka_proxy.address == kafka_broker.proxied_bootstrap_servers
    with KafkaAdminClient(bootstrap_servers=kafka_proxy.address) as admin:
        brokers = admin.describe_cluster()["brokers"]
    assert [(b["host"], b["port"]) for b in brokers] == [("127.0.0.1", kafka_proxy.listen_port)]
    assert kafka_proxy.bytes_to_client > 0


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_a_consumer_behind_the_proxy_reads_nothing_while_it_is_cut(
    kafka_broker: KafkaBroker, kafka_proxy: TcpProxy, topic_factory: TopicFactory, mode: CutMode
) -> None:
    topic = topic_factory(1)
    _produce(kafka_broker.bootstrap_servers, topic, range(50))
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.proxied_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        reconnect_backoff_max_ms=1_000,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        assert sorted(_poll_seqs(consumer, 50)) == list(range(50))
        assert kafka_proxy.bytes_to_client > 0

        kafka_proxy.cut(mode)
        through = kafka_proxy.bytes_to_client
        _produce(kafka_broker.bootstrap_servers, topic, range(50, 80))
        # Had the consumer found its way to the broker around the proxy, these would come.
        assert _poll_nothing(consumer) == []
        assert kafka_proxy.bytes_to_client == through

        kafka_proxy.restore()
        assert sorted(_poll_seqs(consumer, 30)) == list(range(50, 80))
    finally:
        consumer.close()
