"""Every compression codec Kafka has, written by Kafka's own Java client, read by the flow
on either Kafka client: the tables equal the oracle's and every dead letter reaches the DLQ
topic.

Each codec's topic (3 partitions, keyed by user, ~1% malformed records) is produced once by
`tests.support.java_producer` with ``compression.type=<codec>`` and read by a bounded run
of the flow on kafka-python (the default) and on confluent-kafka.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBase

from tests.support.dlq import assert_dlq_equals_the_table, read_dlq
from tests.support.flow import run_flow
from tests.support.java_producer import produce_with_java
from tests.support.kafka_broker import KafkaBroker, create_topic, delete_topic
from tests.support.oracle import Expected, oracle
from tests.support.tables import Tables, assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

SEED = 29
EVENTS = 3_000
PARTITIONS = 3
CODECS = {  # compression.type -> the codec id in a record batch's attributes
    "gzip": DefaultRecordBase.CODEC_GZIP,
    "snappy": DefaultRecordBase.CODEC_SNAPPY,
    "lz4": DefaultRecordBase.CODEC_LZ4,
    "zstd": DefaultRecordBase.CODEC_ZSTD,
}
CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)


@pytest.fixture(scope="module")
def expected(records: list[GeneratedRecord]) -> Expected:
    return oracle(records)


@dataclass(frozen=True)
class CodecTopic:
    codec: str
    topic: str
    positions: dict[int, str]  # record n -> topic/partition/offset


@pytest.fixture(scope="module", params=list(CODECS))
def codec_topic(
    request: pytest.FixtureRequest, kafka_bootstrap: str, records: list[GeneratedRecord]
) -> Iterator[CodecTopic]:
    """The records on a new topic, in batches compressed with the codec; made once for
    both clients."""
    codec = request.param
    topic = f"codec-{codec}-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    positions = produce_with_java(kafka_bootstrap, topic, records, {"compression.type": codec})
    yield CodecTopic(codec, topic, positions)
    delete_topic(kafka_bootstrap, topic)


@dataclass(frozen=True)
class FlowRun:
    done: subprocess.CompletedProcess[str]
    store_url: str
    dlq_topic: str

    def tables(self) -> Tables:
        """The run's tables, once it is known to have succeeded."""
        assert self.done.returncode == 0, self.done.stderr[-4000:]
        return read_tables(self.store_url, self.done.stdout)


@pytest.fixture(scope="module")
def flow_runs(
    codec_topic: CodecTopic, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, FlowRun]]:
    """A bounded run of the flow over the codec's topic on each client, each with its own
    store and DLQ topic."""

    def run(client: str) -> FlowRun:
        dlq = f"{codec_topic.topic}.{client}.dlq"
        create_topic(kafka_bootstrap, dlq, 1)
        url = f"chdb://{tmp_path_factory.mktemp(f'{codec_topic.codec}-{client}')}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": codec_topic.topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        }
        if client != "kafka-python":  # the default: KAFKA_CLIENT unset
            env["KAFKA_CLIENT"] = client
        done = run_flow(env, timeout_s=300, check=False)  # each client's tests check its own
        return FlowRun(done, url, dlq)

    runs = {client: run(client) for client in CLIENTS}
    yield runs
    for flow_run in runs.values():
        delete_topic(kafka_bootstrap, flow_run.dlq_topic)


def test_the_topic_is_written_in_the_codec(
    codec_topic: CodecTopic, kafka_broker: KafkaBroker
) -> None:
    """Every record batch in the broker's log segments has the codec: the broker stored
    what the Java client compressed (the topic's compression.type is `producer`)."""
    codecs, records_in_batches = set(), 0
    for segment in kafka_broker.data_dir.glob(f"{codec_topic.topic}-*/*.log"):
        batches = MemoryRecords(segment.read_bytes())
        while (batch := batches.next_batch()) is not None:
            codecs.add(batch.compression_type)
            records_in_batches += batch.records_count
    assert codecs == {CODECS[codec_topic.codec]}
    assert records_in_batches == EVENTS


@pytest.mark.parametrize("client", CLIENTS)
def test_tables_equal_the_oracle(
    flow_runs: dict[str, FlowRun],
    client: str,
    codec_topic: CodecTopic,
    expected: Expected,
    records: list[GeneratedRecord],
) -> None:
    tables = flow_runs[client].tables()
    assert f"{EVENTS:,} records in" in tables.stdout
    assert len(tables.page_stats) > 100 and expected.dead_letters
    assert_tables_match(tables, expected, records, codec_topic.positions)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_dead_letter_reaches_the_dlq_topic_with_headers(
    flow_runs: dict[str, FlowRun], client: str, kafka_bootstrap: str
) -> None:
    run = flow_runs[client]
    tables = run.tables()
    assert_dlq_equals_the_table(read_dlq(kafka_bootstrap, run.dlq_topic), tables)
