"""A toolkit pipeline's tables and views in the real ClickHouse engine (chDB, in-process).

`waxhouse.testing` says what a plain `SELECT` on each view returns once the physical rows
are stored (`Result.rows`, its Python model of the views). Here the same physical rows
(`Result.emitted`: replays included, so the same identity arrives several times with its
versions, and the rows of two source partitions) go into the tables the pipeline's DDL
creates, and each view must return exactly those rows: the DDL and the model checked
against each other.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from waxhouse import aggregates as agg
from waxhouse.connectors.clickhouse_store import ensure_schema, open_client, parse_clickhouse_url
from waxhouse.fields import Schema, decimal, integer, money, one_of, text, timestamp
from waxhouse.pipeline import CompiledPipeline, Pipeline
from waxhouse.tables import Table, count, session, sliding, tumbling
from waxhouse.testing import Record, Result, run

pytestmark = pytest.mark.integration

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = 1_790_000_000_000

ORDERS = Schema(
    {
        "order_id": text(16),
        "customer": text(16),
        "sku": text(8),
        "status": one_of("placed", "cancelled"),
        "ts": timestamp(),
        "amount": money(),
        "discount": decimal(3, min=-5, max=5, optional=True),
        "qty": integer(min=1, max=99, optional=True),
    },
    event_time="ts",
    name="Order",
)
Order = ORDERS.event_type


def big(e: Any) -> bool:
    return e.amount >= 5_000


def figures(*, combined: bool) -> dict[str, agg.Aggregate]:
    out = {
        "orders": agg.count(),
        "cancelled": agg.count(where={"status": "cancelled"}),
        "big_orders": agg.count(where=big),
        "units": agg.sum("qty"),
        "revenue": agg.sum("amount", where={"status": "placed"}),
        "discounts": agg.sum("discount"),
        "avg_amount": agg.mean("amount"),
        "avg_discount": agg.mean("discount"),
        "avg_qty": agg.mean("qty", where=big),
        "smallest": agg.min("amount"),
        "lowest_discount": agg.min("discount"),
        "most_units": agg.max("qty", where={"status": "cancelled"}),
        "first_at": agg.min("ts"),
        "last_at": agg.max("ts"),
        "first_sku": agg.first("sku", by="order_id"),
        "last_sku": agg.last("sku", by=("status", "order_id"), where=big),
        "first_discount": agg.first("discount", by="order_id"),
        "last_qty": agg.last("qty"),
        "customers": agg.count_distinct("customer"),
    }
    if not combined:
        out["skus"] = agg.count_distinct("sku")
    return out


PIPELINE = Pipeline(
    "shop",
    ORDERS,
    key="customer",
    tables=[
        Table(
            "sku_minutes",  # keyed apart from the Kafka key: per partition, combined
            key="sku",
            window=tumbling(timedelta(seconds=60)),
            aggregates=figures(combined=True),
        ),
        Table(
            "sku_status_slide",
            key=("sku", "status"),
            window=sliding(timedelta(seconds=90), timedelta(seconds=30)),
            aggregates=figures(combined=True),
            where=big,
        ),
        Table(
            "customer_slide",
            key="customer",
            window=sliding(timedelta(seconds=120), timedelta(seconds=60)),
            aggregates=figures(combined=False),
        ),
        Table(
            "visits",
            key=("customer", "status"),
            window=session(timedelta(seconds=45), columns=("visit_start", "visit_end")),
            aggregates=figures(combined=False),
        ),
        Table(
            "customer_batches",
            key="customer",
            window=count(4),
            aggregates=figures(combined=False),
            where={"status": "placed"},
        ),
    ],
)


def orders(seed: int, n: int = 400) -> list[Record]:
    """Orders of 8 customers over two partitions, a few seconds apart, a tenth of them a
    minute or two behind (late for some windows), some values absent or null."""
    rng = random.Random(seed)
    clock = T0 + rng.randrange(60_000)
    records = []
    for i in range(n):
        customer = rng.randrange(8)
        clock += rng.randrange(0, 4_000)
        ts = clock - (rng.randrange(30_000, 150_000) if rng.random() < 0.1 else 0)
        value: dict[str, Any] = {
            "order_id": f"o{i:04}",
            "customer": f"c{customer}",
            "sku": rng.choice(["s1", "s2", "s3"]),
            "status": "cancelled" if rng.random() < 0.25 else "placed",
            "ts": ts,
        }
        if rng.random() < 0.9:
            value["amount"] = rng.randrange(0, 10_000) / 100
        if rng.random() < 0.6:
            value["discount"] = None if rng.random() < 0.2 else rng.randrange(-5000, 5000) / 1000
        if rng.random() < 0.7:
            value["qty"] = None if rng.random() < 0.1 else rng.randrange(1, 10)
        records.append(Record(value, partition=customer % 2, timestamp_ms=clock))
    return records


@pytest.fixture
def client(store_url: str) -> Iterator[Client]:
    client = open_client(parse_clickhouse_url(store_url))
    try:
        yield client
    finally:
        client.close()


def store(client: Client, compiled: CompiledPipeline, result: Result) -> None:
    """The physical rows as the sink writes them, a few at a time (several parts)."""
    for name, table in compiled.tables.items():
        rows = result.emitted.get(name, [])
        for start in range(0, len(rows), 40):
            client.insert(
                table.physical,
                [list(row) for row in rows[start : start + 40]],
                column_names=list(table.columns),
                column_type_names=list(table.types),
            )


def shown(client: Client, view: str) -> list[dict[str, Any]]:
    """`SELECT * FROM view`, times as epoch milliseconds, sorted as `Result.rows` is."""
    result = client.query("SELECT * FROM {view:Identifier}", parameters={"view": view})
    rows = []
    for row in result.result_rows:
        rows.append(
            {
                name: (value - _EPOCH) // timedelta(milliseconds=1)
                if isinstance(value, datetime)
                else value
                for name, value in zip(result.column_names, row, strict=True)
            }
        )
    return rows


def leading(compiled: CompiledPipeline, view: str, row: dict[str, Any]) -> tuple:
    return tuple(row[name] for name in compiled.tables[view].leading)


@pytest.mark.parametrize("seed", [1, 2])
def test_each_view_shows_what_the_python_model_of_the_views_says(client: Client, seed: int) -> None:
    compiled = PIPELINE.compile(default_lateness_ms=20_000)
    records = orders(seed)
    result = run(compiled, records, batch_size=9, replay_every=2)

    # The rows are hard enough: replays wrote identities again, partitions overlap in the
    # combined tables, some events were late.
    for name, table in compiled.tables.items():
        identity = [table.columns.index(column) for column in table.order_by]
        seen = Counter(tuple(row[i] for i in identity) for row in result.emitted[name])
        assert max(seen.values()) > 1, name
    part = compiled.tables["sku_minutes"].columns.index("part")
    assert {row[part] for row in result.emitted["sku_minutes"]} == {"events/0", "events/1"}
    assert any(d.reason == "late" for d in result.dead_letters)

    ensure_schema(client, compiled.statements())
    store(client, compiled, result)
    for name in compiled.tables:
        got = sorted(shown(client, name), key=lambda row: leading(compiled, name, row))
        assert got == result.rows[name], name
        assert len(got) > 3, name
