"""A pipeline written from the guide alone, run the way its reader would run it.

docs/guide.md's `orders.py` (a new event schema; a sliding-window table keyed by SKU, not
by the Kafka key; a session table; a count-window table) is written to a directory and
run there with `python -m bytewax.run orders`: embedded, and against the real broker with
its orders produced to a topic keyed by customer. Either way, what the views return must be
exactly the rows `waxhouse.testing.run` computes from the same records, and those are
checked against plain Python in tests/unit/test_guide.py.
"""

from __future__ import annotations

import subprocess
import types
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, run_python
from tests.support.guide import guide_source, import_guide_module
from tests.support.kafka_broker import TopicFactory
from waxhouse.records import Record
from waxhouse.testing import Result, run

pytestmark = pytest.mark.integration

TABLES = ("sku_sales", "customer_sessions", "customer_batches")


@pytest.fixture(scope="module")
def guide() -> types.ModuleType:
    return import_guide_module("guide_orders_integration")


@pytest.fixture(scope="module")
def records(guide: types.ModuleType) -> list[Record]:
    return [record for p in range(guide.PARTITIONS) for record in guide.orders(p)]


def expected(guide: types.ModuleType, records: list[Record], topic: str) -> Result:
    return run(guide.pipeline, records, topic=topic)


def run_orders(
    directory: Path, env: dict[str, str], args: Sequence[str] = (), source: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Write the guide's `orders.py` (or `source`) to `directory` and run it from there."""
    text = guide_source() if source is None else source
    (directory / "orders.py").write_text(text, encoding="utf-8")
    return run_python(["-m", "bytewax.run", "orders", *args], env, cwd=directory, timeout_s=600)


def _plain(value: Any) -> Any:
    """A value as `waxhouse.testing` gives it: times in epoch ms."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return value


def read_views(url: str, result: Result) -> dict[str, list[dict[str, Any]]]:
    """Every table's view, in the column order and row order `result` has them."""
    out = {}
    for table in TABLES:
        columns = list(result.rows[table][0])
        order = ", ".join(columns[:3])
        rows = query_rows(url, f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")  # noqa: S608
        out[table] = [dict(zip(columns, map(_plain, row), strict=True)) for row in rows]
    return out


def dead_letters(url: str) -> list[tuple[str, str, str]]:
    return sorted(
        (source, reason, error)
        for source, reason, error in query_rows(
            url, "SELECT source, reason, error FROM dead_letters"
        )
    )


def assert_exact(url: str, result: Result) -> None:
    views = read_views(url, result)
    for table in TABLES:
        want = result.rows[table]
        assert len(views[table]) == len(want), table
        # Decimals compare exactly; means are floats on both sides, from the same integer
        # sums and counts divided in the same order.
        assert views[table] == want, table
    assert dead_letters(url) == sorted((d.source, d.reason, d.error) for d in result.dead_letters)


def test_the_guide_pipeline_runs_embedded_with_exact_results(
    guide: types.ModuleType, records: list[Record], tmp_path: Path
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    done = run_orders(tmp_path, {"CLICKHOUSE_URL": url}, recovery_args(tmp_path / "recovery"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = expected(guide, records, "orders")
    assert result.dead_letters, "the guide's orders include broken ones"
    assert_exact(url, result)


def test_the_guide_pipeline_reads_kafka_with_exact_results(
    guide: types.ModuleType,
    records: list[Record],
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
) -> None:
    topic = topic_factory(guide.PARTITIONS, prefix="orders")
    dlq = topic_factory(1, prefix="orders-dlq")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for record in records:
            customer = (
                str(record.value["customer"]).encode() if isinstance(record.value, dict) else None
            )
            producer.send(
                topic,
                value=record.encoded(),
                key=customer,
                partition=record.partition,
                timestamp_ms=record.timestamp_ms,
            )
        producer.flush(60)
    finally:
        producer.close()
    url = f"chdb://{tmp_path / 'store'}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": dlq,
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": url,
    }
    done = run_orders(tmp_path, env, recovery_args(tmp_path / "recovery"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exact(url, expected(guide, records, topic))


def test_a_pipeline_that_cannot_be_exact_stops_with_one_line(tmp_path: Path) -> None:
    source = guide_source()
    bad = 'aggregates={\n        "order_ids": agg.count_distinct("order_id"),'
    assert "aggregates={" in source
    refused = source.replace("aggregates={", bad, 1)
    done = run_orders(tmp_path, {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}"}, source=refused)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("waxhouse: orders cannot be built: ")
    assert "count_distinct('order_id') cannot be exact" in lines[0]
    assert not (tmp_path / "store").exists(), "nothing may be written before the refusal"
