"""End to end: generated clickstream -> real Kafka -> the flow (bounded) -> ClickHouse.

The same 200,000 records (out of order within the allowed lateness, unicode pages, ~1%
malformed) go through a 4-partition topic keyed by user and, separately, through the
embedded generator path. All three tables are compared row by row with an oracle computed
in plain Python from the produced records, and the two paths with each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from tests.support.dlq import assert_dlq_equals_the_table, read_dlq
from tests.support.flow import run_flow
from tests.support.kafka_broker import create_topic
from tests.support.oracle import Expected, Invalid, oracle, oracle_event
from tests.support.produce import produce_records
from tests.support.tables import Tables, as_comparable, expected_dead_letters, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

SEED = 7
EVENTS = 200_000
PARTITIONS = 4


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)


@pytest.fixture(scope="module")
def expected(records: list[GeneratedRecord]) -> Expected:
    return oracle(records)


@dataclass
class KafkaRun:
    results: Tables
    positions: dict[int, str]  # record n -> topic/partition/offset
    dlq_topic: str


@pytest.fixture(scope="module")
def kafka_run(
    kafka_bootstrap: str, records: list[GeneratedRecord], tmp_path_factory: pytest.TempPathFactory
) -> KafkaRun:
    suffix = uuid.uuid4().hex[:12]
    topic, dlq = f"clicks-{suffix}", f"clicks-{suffix}.dlq"
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    create_topic(kafka_bootstrap, dlq, 1)
    positions = produce_records(kafka_bootstrap, topic, records)
    url = f"chdb://{tmp_path_factory.mktemp('kafka-store')}"
    done = run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        }
    )
    return KafkaRun(read_tables(url, done.stdout), positions, dlq)


@pytest.fixture(scope="module")
def embedded_run(kafka_run: KafkaRun, tmp_path_factory: pytest.TempPathFactory) -> Tables:
    url = f"chdb://{tmp_path_factory.mktemp('embedded-store')}"
    done = run_flow(
        {"GENERATOR_SEED": str(SEED), "GENERATOR_EVENTS": str(EVENTS), "CLICKHOUSE_URL": url}
    )
    return read_tables(url, done.stdout)


def test_input_has_what_the_test_claims(records: list[GeneratedRecord], expected: Expected) -> None:
    assert len(records) == EVENTS
    malformed = len(expected.dead_letters) / EVENTS
    assert 0.005 < malformed < 0.02
    assert any(not page.isascii() for _, _, page, *_ in expected.page_stats)
    behind, newest = 0, 0
    for record in records:
        try:
            ts = oracle_event(record.value)["ts"]
        except Invalid:
            continue
        if ts < newest:
            behind += 1
            assert newest - ts <= 10_000  # out of order, but within the allowed lateness
        newest = max(newest, ts)
    assert behind > EVENTS // 10
    assert len({s[0] for s in expected.sessions}) < len(expected.sessions)  # repeat visitors


def test_kafka_page_stats_equal_the_oracle(kafka_run: KafkaRun, expected: Expected) -> None:
    assert len(kafka_run.results.page_stats) == len(expected.page_stats) > 10_000
    assert kafka_run.results.page_stats == expected.page_stats


def test_kafka_user_sessions_equal_the_oracle(kafka_run: KafkaRun, expected: Expected) -> None:
    assert len(kafka_run.results.sessions) == len(expected.sessions) > 10_000
    assert kafka_run.results.sessions == expected.sessions


def test_kafka_dead_letters_equal_the_oracle(
    kafka_run: KafkaRun, expected: Expected, records: list[GeneratedRecord]
) -> None:
    want = expected_dead_letters(expected, records, kafka_run.positions)
    assert as_comparable(kafka_run.results.dead_letters) == want
    assert {reason for _, reason, *_ in want} == {"invalid_json", "invalid_event"}


def test_dead_letters_also_reach_the_dlq_topic_with_headers(
    kafka_run: KafkaRun, kafka_bootstrap: str
) -> None:
    assert_dlq_equals_the_table(read_dlq(kafka_bootstrap, kafka_run.dlq_topic), kafka_run.results)


def test_embedded_path_gives_the_same_tables(
    kafka_run: KafkaRun, embedded_run: Tables, records: list[GeneratedRecord]
) -> None:
    assert embedded_run.page_stats == kafka_run.results.page_stats
    assert embedded_run.sessions == kafka_run.results.sessions
    generator_names = {r.n: f"generator/{r.n}" for r in records}
    rename = {kafka_run.positions[n]: name for n, name in generator_names.items()}
    kafka_dead = sorted((rename[src], *rest) for src, *rest in kafka_run.results.dead_letters)
    assert embedded_run.dead_letters == kafka_dead


def test_runs_print_a_summary(kafka_run: KafkaRun, embedded_run: Tables) -> None:
    for stdout in (kafka_run.results.stdout, embedded_run.stdout):
        assert f"{EVENTS:,} records in" in stdout
        assert "waxhouse sql" in stdout
