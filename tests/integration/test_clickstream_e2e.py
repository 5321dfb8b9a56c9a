"""End to end: generated clickstream -> real Kafka -> the flow (bounded) -> ClickHouse.

The same 200,000 records (out of order within the allowed lateness, unicode pages, ~1%
malformed) go through a 4-partition topic keyed by user and, separately, through the
embedded generator path. All three tables are compared row by row with an oracle computed
here in plain Python from the produced records, and the two paths with each other.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig
from tests.support.clickhouse import query_rows
from tests.support.flow import run_flow
from tests.support.kafka_broker import create_topic

pytestmark = pytest.mark.integration

SEED = 7
EVENTS = 200_000
PARTITIONS = 4
WINDOW_MS, GAP_MS = 60_000, 1_800_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# --- the oracle: the contract in plain Python, independent of the code under test -------

TYPES = ("page_view", "click", "add_to_cart", "purchase")


class Invalid(Exception):
    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason, field)
        self.reason, self.field = reason, field


def oracle_ts(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise Invalid("invalid_event", "ts")
    if isinstance(raw, int):
        if not 0 <= raw <= 253402300799999:
            raise Invalid("invalid_event", "ts")
        return raw
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as e:
        raise Invalid("invalid_event", "ts") from e
    if moment.tzinfo is None or len(raw) < 20:
        raise Invalid("invalid_event", "ts")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def oracle_event(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Invalid("invalid_json") from e
    if not isinstance(obj, dict):
        raise Invalid("invalid_json")
    for name, longest in (("event_id", 128), ("user_id", 256)):
        if not isinstance(obj.get(name), str) or not 1 <= len(obj[name]) <= longest:
            raise Invalid("invalid_event", name)
    if obj.get("type") not in TYPES:
        raise Invalid("invalid_event", "type")
    if not isinstance(obj.get("page"), str) or not 1 <= len(obj["page"]) <= 2048:
        raise Invalid("invalid_event", "page")
    obj["ts"] = oracle_ts(obj.get("ts"))
    value = obj.get("value", 0)
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e9:
        raise Invalid("invalid_event", "value")
    obj["cents"] = round(value * 100)
    return obj


@dataclass
class Expected:
    page_stats: list[tuple]
    sessions: list[tuple]
    dead_letters: dict[int, tuple[str, str, bytes]]  # record n -> reason, field, payload


def oracle(records: list[GeneratedRecord]) -> Expected:
    windows: dict[tuple[int, str], list[dict]] = defaultdict(list)
    users: dict[str, list[dict]] = defaultdict(list)
    dead: dict[int, tuple[str, str, bytes]] = {}
    for record in records:
        try:
            event = oracle_event(record.value)
        except Invalid as bad:
            dead[record.n] = (bad.reason, bad.field, record.value)
            continue
        windows[(event["ts"] // WINDOW_MS * WINDOW_MS, event["page"])].append(event)
        users[event["user_id"]].append(event)
    page_stats = []
    for (start, page), group in windows.items():
        kinds = [e["type"] for e in group]
        page_stats.append(
            (
                start,
                start + WINDOW_MS,
                page,
                *(kinds.count(kind) for kind in TYPES),
                sum(e["cents"] for e in group if e["type"] == "purchase"),
                len({e["user_id"] for e in group}),
            )
        )
    sessions = []
    for user, group in users.items():
        group.sort(key=lambda e: e["ts"])
        runs = [[group[0]]]
        for e in group[1:]:
            if e["ts"] - runs[-1][-1]["ts"] <= GAP_MS:
                runs[-1].append(e)
            else:
                runs.append([e])
        for run in runs:
            ordered = sorted(run, key=lambda e: (e["ts"], e["event_id"], e["page"]))
            sessions.append(
                (
                    user,
                    run[0]["ts"],
                    run[-1]["ts"],
                    len(run),
                    sum(e["type"] == "page_view" for e in run),
                    sum(e["type"] == "purchase" for e in run),
                    sum(e["cents"] for e in run if e["type"] == "purchase"),
                    ordered[0]["page"],
                    ordered[-1]["page"],
                )
            )
    return Expected(sorted(page_stats), sorted(sessions), dead)


# --- running the flow ---------------------------------------------------------------------

PAGE_STATS_SQL = """
    SELECT toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), page,
           views, clicks, add_to_carts, purchases, toInt64(revenue * 100), unique_users
    FROM page_stats ORDER BY 1, 2, 3"""
SESSIONS_SQL = """
    SELECT user_id, toUnixTimestamp64Milli(session_start), toUnixTimestamp64Milli(session_end),
           events, page_views, purchases, toInt64(revenue * 100), entry_page, exit_page
    FROM user_sessions ORDER BY 1, 2"""
DEAD_LETTERS_SQL = """
    SELECT source, reason, error, hex(payload), toUnixTimestamp64Milli(received_at)
    FROM dead_letters ORDER BY source"""


@dataclass
class Results:
    page_stats: list[tuple]
    sessions: list[tuple]
    dead_letters: list[tuple]
    stdout: str


def read_results(url: str, stdout: str) -> Results:
    return Results(
        [tuple(r) for r in query_rows(url, PAGE_STATS_SQL)],
        [tuple(r) for r in query_rows(url, SESSIONS_SQL)],
        [tuple(r) for r in query_rows(url, DEAD_LETTERS_SQL)],
        stdout,
    )


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)


@pytest.fixture(scope="module")
def expected(records: list[GeneratedRecord]) -> Expected:
    return oracle(records)


@dataclass
class KafkaRun:
    results: Results
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
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,
        max_request_size=16 * 1024 * 1024,
    )
    futures = [
        producer.send(topic, key=r.key, value=r.value, timestamp_ms=r.timestamp_ms) for r in records
    ]
    producer.flush()
    producer.close()
    positions = {}
    for record, future in zip(records, futures, strict=True):
        meta = future.get(timeout=60)
        positions[record.n] = f"{topic}/{meta.partition}/{meta.offset}"
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
    return KafkaRun(read_results(url, done.stdout), positions, dlq)


@pytest.fixture(scope="module")
def embedded_run(kafka_run: KafkaRun, tmp_path_factory: pytest.TempPathFactory) -> Results:
    url = f"chdb://{tmp_path_factory.mktemp('embedded-store')}"
    done = run_flow(
        {"GENERATOR_SEED": str(SEED), "GENERATOR_EVENTS": str(EVENTS), "CLICKHOUSE_URL": url}
    )
    return read_results(url, done.stdout)


def expected_dead_letters(
    expected: Expected, records: list[GeneratedRecord], name: dict[int, str]
) -> list[tuple]:
    by_n = {r.n: r for r in records}
    return sorted(
        (name[n], reason, field, payload.hex().upper(), by_n[n].timestamp_ms)
        for n, (reason, field, payload) in expected.dead_letters.items()
    )


def as_comparable(rows: list[tuple]) -> list[tuple]:
    """Dead letters with the error cut down to the field it names (the oracle's words)."""
    return sorted(
        (source, reason, error.split(":")[0] if reason == "invalid_event" else "", payload, at)
        for source, reason, error, payload, at in rows
    )


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
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=5_000
    )
    tp = TopicPartition(kafka_run.dlq_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen = {}
    for message in consumer:
        headers = {k: v.decode() for k, v in message.headers}
        seen[headers["source"]] = (headers["reason"], headers["error"], message.value.hex().upper())
    consumer.close()
    stored = {
        src: (reason, error, payload)
        for src, reason, error, payload, _ in kafka_run.results.dead_letters
    }
    assert seen == stored


def test_embedded_path_gives_the_same_tables(
    kafka_run: KafkaRun, embedded_run: Results, records: list[GeneratedRecord]
) -> None:
    assert embedded_run.page_stats == kafka_run.results.page_stats
    assert embedded_run.sessions == kafka_run.results.sessions
    generator_names = {r.n: f"generator/{r.n}" for r in records}
    rename = {kafka_run.positions[n]: name for n, name in generator_names.items()}
    kafka_dead = sorted((rename[src], *rest) for src, *rest in kafka_run.results.dead_letters)
    assert embedded_run.dead_letters == kafka_dead


def test_runs_print_a_summary(kafka_run: KafkaRun, embedded_run: Results) -> None:
    for stdout in (kafka_run.results.stdout, embedded_run.stdout):
        assert f"{EVENTS:,} records in" in stdout
        assert "waxhouse sql" in stdout
