"""A device with its clock in 2099: one event far in the future, in the middle of a
partition. It is a `future` dead letter, moves no watermark, and every later event of the
partition still counts where it belongs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.dlq import assert_dlq_equals_the_table, read_dlq
from tests.support.flow import run_flow
from tests.support.kafka_broker import TopicFactory
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

EVENTS = 4_000
TS_2099 = 4_070_908_800_000  # 2099-01-01T00:00:00Z


def test_an_event_dated_2099_is_future_and_every_later_event_counts(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    generated = ClickstreamGenerator(GeneratorConfig(seed=17, events=EVENTS)).take(EVENTS)
    middle = EVENTS // 2
    neighbour = generated[middle]
    skewed = orjson.dumps(
        {
            "event_id": "from-2099",
            "user_id": "u-skewed",
            "type": "click",
            "page": "/p",
            "ts": TS_2099,
        }
    )
    records = [
        *generated[:middle],
        GeneratedRecord(EVENTS, b"u-skewed", skewed, neighbour.timestamp_ms),  # record time: now
        *generated[middle:],
    ]
    topic, dlq = topic_factory(1, prefix="skew"), topic_factory(1, prefix="skew-dlq")
    positions = produce_records(kafka_bootstrap, topic, records)
    url = f"chdb://{tmp_path / 'store'}"
    done = run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        }
    )
    expected = oracle(records)
    assert expected.dead_letters[EVENTS][0] == "future"
    tables = read_tables(url, done.stdout)
    assert [row for row in tables.dead_letters if row[1] == "late"] == []
    assert_tables_match(tables, expected, records, positions)
    [future] = [row for row in tables.dead_letters if row[1] == "future"]
    assert future[0] == positions[EVENTS] and "ahead of the record's timestamp" in future[2]
    assert "future 1" in done.stdout  # the run summary counts it
    assert_dlq_equals_the_table(read_dlq(kafka_bootstrap, dlq), tables)
