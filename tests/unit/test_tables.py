"""Tables: what a declaration refuses and why, the DDL it produces, its generated code, and
its aggregates, keys and filters on small hand-checked inputs."""

from __future__ import annotations

import ast
import pickle
import random
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from waxhouse import Pipeline, PipelineError, Schema, Table, agg, fields
from waxhouse.aggregates import Aggregate
from waxhouse.pipeline import CompiledPipeline
from waxhouse.records import InputBatch
from waxhouse.tables import count, minutes, seconds, session, sliding, tumbling
from waxhouse.testing import Record, run
from waxhouse.views import final_rows

SHOP = Schema(
    {
        "order_id": fields.text(16),
        "customer": fields.text(16),
        "sku": fields.text(8),
        "status": fields.one_of("placed", "cancelled"),
        "ts": fields.timestamp(),
        "amount": fields.money(),
        "discount": fields.decimal(3, min=-5, max=5, optional=True),
        "qty": fields.integer(min=1, max=99, optional=True),
        "note": fields.text(32, optional=True),
    },
    event_time="ts",
    name="Order",
)
Order = SHOP.event_type

T = 1_800_000_000_000  # a multiple of a minute


def shop(*tables: Table, key: str | None = "customer") -> Pipeline:
    return Pipeline("shop", SHOP, key=key, tables=list(tables))


def per_customer(**aggregates: Aggregate) -> Table:
    return Table("t", key="customer", window=tumbling(60), aggregates=aggregates)


# ---------------------------------------------------------------------------------------
# Declarations refused, each naming what and saying why

DECLARATIONS: list[tuple[str, Callable[[], object], str]] = [
    ("zero tumbling", lambda: tumbling(0), r"^tumbling size: must be at least one millisecond"),
    ("negative gap", lambda: session(-1), r"^session gap: must be at least one millisecond"),
    (
        "sub-millisecond",
        lambda: sliding(timedelta(microseconds=10), 1),
        r"^sliding size: must be at least one millisecond",
    ),
    ("slide over size", lambda: sliding(60, 120), r"^sliding: every \(120\) must not exceed size"),
    ("count of 0", lambda: count(0), r"^count window: n must be a positive integer, got 0"),
    ("count of 2.5", lambda: count(2.5), r"^count window: n must be a positive integer"),  # type: ignore[arg-type]
    (
        "table name",
        lambda: Table("sku-sales", key="sku", window=tumbling(60), aggregates={"n": agg.count()}),
        r"^table name 'sku-sales': letters, digits and _ only",
    ),
    (
        "no key",
        lambda: Table("t", key=(), window=tumbling(60), aggregates={"n": agg.count()}),
        r"^t: a table needs a key",
    ),
    (
        "no aggregate",
        lambda: Table("t", key="sku", window=tumbling(60), aggregates={}),
        r"^t: a table needs at least one aggregate",
    ),
    (
        "not an aggregate",
        lambda: Table("t", key="sku", window=tumbling(60), aggregates={"n": len}),  # type: ignore[dict-item]
        r"^t\.n: not an aggregate \(use waxhouse\.agg\)",
    ),
    (
        "aggregate named as the key",
        lambda: Table("t", key="sku", window=tumbling(60), aggregates={"sku": agg.count()}),
        r"^t\.sku: not a free column name",
    ),
    (
        "aggregate named as a window column",
        lambda: per_customer(window_end=agg.max("ts")),
        r"^t\.window_end: not a free column name",
    ),
    (
        "aggregate named version",
        lambda: per_customer(version=agg.count()),
        r"^t\.version: not a free column name",
    ),
    (
        "aggregate named part",
        lambda: per_customer(part=agg.count()),
        r"^t\.part: not a free column name",
    ),
    (
        "aggregate named as a count window's flag",
        lambda: Table("t", key="customer", window=count(3), aggregates={"complete": agg.count()}),
        r"^t\.complete: not a free column name",
    ),
    ("unknown operation", lambda: Aggregate("median", "qty"), r"^unknown aggregate 'median'"),
    ("count of a field", lambda: Aggregate("count", "qty"), r"^count: takes no field"),
    ("sum of nothing", lambda: Aggregate("sum"), r"^sum: takes a field"),
    (
        "by for max",
        lambda: Aggregate("max", "qty", by=("ts",)),
        r"^max: `by` is for first and last",
    ),
    ("where of 3", lambda: agg.count(where=3), r"^where: a mapping \{field: value\} or a callable"),  # type: ignore[arg-type]
    (
        "pipeline name",
        lambda: Pipeline("my shop", SHOP, key="customer", tables=[per_customer(n=agg.count())]),
        r"^pipeline name 'my shop'",
    ),
    ("no tables", lambda: shop(), r"^shop: a pipeline needs at least one table"),
    (
        "two tables of one name",
        lambda: shop(per_customer(n=agg.count()), per_customer(m=agg.count())),
        r"^shop: two tables named 't'",
    ),
    (
        "the dead letters",
        lambda: shop(
            Table("dead_letters", key="sku", window=tumbling(60), aggregates={"n": agg.count()})
        ),
        r"^shop: 'dead_letters' is the pipeline's own table",
    ),
    (
        "unknown Kafka key",
        lambda: Pipeline("shop", SHOP, key="user", tables=[per_customer(n=agg.count())]),
        r"^shop: key 'user' is not a field of the schema",
    ),
]


@pytest.mark.parametrize(
    ("declare", "message"),
    [case[1:] for case in DECLARATIONS],
    ids=[case[0] for case in DECLARATIONS],
)
def test_a_declaration_that_cannot_be_built_is_refused_saying_why(
    declare: Callable[[], object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        declare()


COMPILE_ERRORS: list[tuple[str, Table, str | None, str]] = [
    (
        "unknown aggregate field",
        per_customer(n=agg.sum("price")),
        "customer",
        r"^t: no field 'price' in the schema",
    ),
    (
        "unknown key field",
        Table("t", key=("customer", "shop"), window=tumbling(60), aggregates={"n": agg.count()}),
        "customer",
        r"^t: no field 'shop' in the schema",
    ),
    (
        "unknown where field",
        per_customer(n=agg.count(where={"state": "placed"})),
        "customer",
        r"^t: no field 'state' in the schema",
    ),
    (
        "unknown table where field",
        Table(
            "t",
            key="customer",
            window=tumbling(60),
            aggregates={"n": agg.count()},
            where={"state": "x"},
        ),
        "customer",
        r"^t: no field 'state' in the schema",
    ),
    (
        "unknown tie field",
        per_customer(first=agg.first("sku", by="rank")),
        "customer",
        r"^t: no field 'rank' in the schema",
    ),
    (
        "optional key field",
        Table("t", key="note", window=tumbling(60), aggregates={"n": agg.count()}),
        "customer",
        r"^t: key field 'note' must be required",
    ),
    (
        "sum of text",
        per_customer(total=agg.sum("sku")),
        "customer",
        r"^t\.total: sum needs a number field",
    ),
    (
        "mean of a time",
        per_customer(avg=agg.mean("ts")),
        "customer",
        r"^t\.avg: mean needs a number field",
    ),
    (
        "optional tie",
        per_customer(first=agg.last("sku", by=("ts", "note"))),
        "customer",
        r"^t\.first: tie field 'note' must be required",
    ),
    (
        "session apart from the Kafka key",
        Table("t", key="sku", window=session(60), aggregates={"n": agg.count()}),
        "customer",
        r"^t: a session window needs the Kafka key \('customer'\) in the table's key: a key's "
        r"sessions cannot be put together across source partitions",
    ),
    (
        "count window apart from the Kafka key",
        Table("t", key="sku", window=count(10), aggregates={"n": agg.count()}),
        "customer",
        r"^t: a count window needs the Kafka key \('customer'\) in the table's key: a key's "
        r"offset order cannot be put together",
    ),
    (
        "session of an unkeyed topic",
        Table("t", key="customer", window=session(60), aggregates={"n": agg.count()}),
        None,
        r"^t: a session window needs the Kafka key",
    ),
    (
        "distinct count apart from the Kafka key",
        Table(
            "t",
            key="sku",
            window=tumbling(60),
            aggregates={"orders": agg.count_distinct("order_id")},
        ),
        "customer",
        r"^t\.orders: count_distinct\('order_id'\) cannot be exact: the table's key is not the "
        r"Kafka key \('customer'\), so its rows are combined across source partitions",
    ),
]


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [case[1:] for case in COMPILE_ERRORS],
    ids=[case[0] for case in COMPILE_ERRORS],
)
def test_compiling_refuses_what_cannot_be_exact_naming_the_table(
    table: Table, key: str | None, message: str
) -> None:
    pipeline = shop(table, key=key)
    with pytest.raises(PipelineError, match=message):
        pipeline.compile()


def test_what_stays_exact_compiles() -> None:
    compiled = shop(
        # Distinct customers add up across partitions: the topic is keyed by customer.
        Table(
            "skus", key="sku", window=tumbling(60), aggregates={"c": agg.count_distinct("customer")}
        ),
        # Any table whose key includes the Kafka key keeps each key in one partition.
        Table("visits", key=("sku", "customer"), window=session(60), aggregates={"n": agg.count()}),
        Table(
            "orders",
            key=("customer", "sku"),
            window=count(5),
            aggregates={"o": agg.count_distinct("order_id")},
        ),
    ).compile()
    assert [(t.name, t.combined) for t in compiled.tables.values()] == [
        ("skus", True),
        ("visits", False),
        ("orders", False),
    ]


def test_lateness_must_not_be_negative() -> None:
    with pytest.raises(PipelineError, match=r"^shop: lateness must not be negative"):
        shop(per_customer(n=agg.count())).compile(default_lateness_ms=-1)
    assert shop(per_customer(n=agg.count())).compile(default_lateness_ms=0).lateness_ms == 0
    declared = Pipeline(
        "shop", SHOP, key="customer", tables=[per_customer(n=agg.count())], lateness=minutes(2)
    )
    assert declared.compile(default_lateness_ms=5).lateness_ms == 120_000


# A declaration whose columns would clash makes DDL that ClickHouse refuses (or, for
# table names, DDL that replaces one table's storage with another's view): it must be
# refused when the pipeline is built, naming what clashes, not when the flow first
# writes.
CLASH_SCHEMA = Schema(
    {
        "customer": fields.text(16),
        "part": fields.text(16),
        "batch": fields.text(16),
        "ts": fields.timestamp(),
        "amount": fields.money(),
    },
    event_time="ts",
)


@pytest.mark.parametrize(
    ("tables", "clash"),
    [
        pytest.param(
            [Table("t", key="part", window=tumbling(60), aggregates={"n": agg.count()})],
            "part",
            id="key field named part, in a combined table",
        ),
        pytest.param(
            [Table("t", key=("customer", "batch"), window=count(3), aggregates={"n": agg.count()})],
            "batch",
            id="key field named as the count window's column",
        ),
        pytest.param(
            [
                Table(
                    "t",
                    key="customer",
                    window=tumbling(60),
                    aggregates={"rev": agg.sum("amount"), "rev_cents": agg.count()},
                )
            ],
            "rev_cents",
            id="an aggregate named as another's stored column (sum of cents)",
        ),
        pytest.param(
            [
                Table(
                    "t",
                    key="customer",
                    window=tumbling(60),
                    aggregates={"avg": agg.mean("amount"), "avg_count": agg.count()},
                )
            ],
            "avg_count",
            id="an aggregate named as a mean's count column",
        ),
        pytest.param(
            [
                Table(
                    "t",
                    key="part",
                    window=tumbling(60),
                    aggregates={"f": agg.first("customer"), "f_ts": agg.max("ts")},
                )
            ],
            "f_ts",
            id="an aggregate named as a first's time column",
        ),
        pytest.param(
            [
                Table("a", key="customer", window=tumbling(60), aggregates={"n": agg.count()}),
                Table("a_data", key="customer", window=tumbling(60), aggregates={"n": agg.count()}),
            ],
            "a_data",
            id="a table named as another's physical table",
        ),
        pytest.param(
            [
                Table(
                    "dead_letters_data",
                    key="customer",
                    window=tumbling(60),
                    aggregates={"n": agg.count()},
                )
            ],
            "dead_letters_data",
            id="a table named as the dead letters' physical table",
        ),
    ],
)
def test_clashing_column_and_table_names_are_refused(tables: list[Table], clash: str) -> None:
    with pytest.raises(ValueError, match=re.escape(clash)):
        Pipeline("p", CLASH_SCHEMA, key="customer", tables=tables).compile()


# ---------------------------------------------------------------------------------------
# DDL


def columns(statement: str) -> list[tuple[str, str]]:
    """(name, type) of a CREATE TABLE's columns, `written_at` included."""
    body = statement[statement.index("(\n") + 2 : statement.index("\n)\n")]
    out = []
    for line in body.splitlines():
        name, column_type = line.strip().rstrip(",").split(" ", 1)
        out.append((name, column_type))
    return out


def select_list(view: str) -> list[str]:
    body = view[view.index("SELECT\n") + 7 : view.index("\nFROM ")]
    return [line.strip().rstrip(",") for line in body.splitlines()]


DDL_PIPELINE = shop(
    Table(
        "sku_minutes",
        key="sku",
        window=tumbling(60),
        aggregates={
            "orders": agg.count(),
            "revenue": agg.sum("amount", where={"status": "placed"}),
            "avg_discount": agg.mean("discount"),
            "lowest": agg.min("discount"),
            "first_status": agg.first("status", by="order_id"),
            "last_qty": agg.last("qty"),
            "customers": agg.count_distinct("customer"),
        },
    ),
    Table(
        "visits",
        key="customer",
        window=session(minutes(30)),
        aggregates={
            "orders": agg.count(),
            "revenue": agg.sum("amount"),
            "entry_sku": agg.first("sku", by="order_id"),
            "skus": agg.count_distinct("sku"),
        },
    ),
    Table(
        "batches",
        key="customer",
        window=count(100),
        aggregates={
            "orders": agg.count(),
            "avg_amount": agg.mean("amount"),
            "top": agg.max("amount"),
        },
    ),
    Table(
        "customer_slide",
        key=("customer", "status"),
        window=sliding(minutes(5), seconds(60), columns=("from_ts", "to_ts")),
        aggregates={"orders": agg.count(), "last_sku": agg.last("sku", by="order_id")},
    ),
).compile(default_lateness_ms=10_000)
DDL = dict(DDL_PIPELINE.statements())
DATETIME = "DateTime64(3, 'UTC')"


def test_statements_come_as_each_table_then_its_view() -> None:
    assert [name for name, _ in DDL_PIPELINE.statements()] == [
        "sku_minutes_data",
        "sku_minutes",
        "visits_data",
        "visits",
        "batches_data",
        "batches",
        "customer_slide_data",
        "customer_slide",
    ]
    for name, statement in DDL_PIPELINE.statements():
        kind = "VIEW" if not name.endswith("_data") else "TABLE IF NOT EXISTS"
        assert f"\nCREATE {'OR REPLACE ' if kind == 'VIEW' else ''}{kind} {name}" in statement


def test_a_combined_tumbling_table_keeps_a_row_per_partition_and_its_view_sums_them() -> None:
    table = DDL["sku_minutes_data"]
    assert columns(table) == [
        ("window_start", DATETIME),
        ("window_end", DATETIME),
        ("sku", "String"),
        ("part", "String"),
        ("orders", "UInt64"),
        ("revenue_cents", "Int64"),
        ("avg_discount_sum_e3", "Int64"),
        ("avg_discount_count", "UInt64"),
        ("lowest_e3", "Nullable(Int64)"),
        ("first_status", "String"),
        ("first_status_ts", DATETIME),
        ("first_status_by_order_id", "String"),
        ("last_qty", "Nullable(Int64)"),
        ("last_qty_ts", f"Nullable({DATETIME})"),
        ("customers", "UInt64"),
        ("version", "UInt64"),
        ("written_at", f"{DATETIME} DEFAULT now64(3)"),
    ]
    assert table.endswith(
        "ENGINE = ReplacingMergeTree(version)\nORDER BY (sku, window_start, part)"
    )
    view = DDL["sku_minutes"]
    assert select_list(view) == [
        "window_start",
        "window_end",
        "sku",
        "sum(orders) AS orders",
        "CAST(CAST(sum(revenue_cents) AS Decimal(38, 2)) / 100 AS Decimal(18, 2)) AS revenue",
        "if(sum(avg_discount_count) = 0, NULL, "
        "sum(avg_discount_sum_e3) / sum(avg_discount_count) / 1000) AS avg_discount",
        "CAST(CAST(min(lowest_e3) AS Nullable(Decimal(38, 3))) / 1000 "
        "AS Nullable(Decimal(5, 3))) AS lowest",
        "argMin(first_status, (first_status_ts, first_status_by_order_id, first_status))"
        " AS first_status",
        "argMax(last_qty, (last_qty_ts, last_qty)) AS last_qty",
        "sum(customers) AS customers",
    ]
    assert view.endswith("\nFROM sku_minutes_data FINAL\nGROUP BY window_start, window_end, sku")


def test_a_session_table_has_no_part_and_its_view_no_group_by() -> None:
    assert columns(DDL["visits_data"]) == [
        ("customer", "String"),
        ("session_start", DATETIME),
        ("session_end", DATETIME),
        ("orders", "UInt64"),
        ("revenue_cents", "Int64"),
        ("entry_sku", "String"),  # one partition: no time or tie columns needed
        ("skus", "UInt64"),
        ("version", "UInt64"),
        ("deleted", "UInt8"),  # retracts a row flushed under a start the session lost
        ("written_at", f"{DATETIME} DEFAULT now64(3)"),
    ]
    assert "ENGINE = ReplacingMergeTree(version, deleted)" in DDL["visits_data"]
    assert DDL["visits_data"].endswith("ORDER BY (customer, session_start)")
    view = DDL["visits"]
    assert select_list(view) == [
        "customer",
        "session_start",
        "session_end",
        "orders",
        "CAST(CAST(revenue_cents AS Decimal(38, 2)) / 100 AS Decimal(18, 2)) AS revenue",
        "entry_sku",
        "skus",
    ]
    assert view.endswith("\nFROM visits_data FINAL")
    assert "GROUP BY" not in view


def test_a_count_window_table_has_batch_and_complete_columns() -> None:
    assert columns(DDL["batches_data"]) == [
        ("customer", "String"),
        ("batch", "UInt64"),
        ("orders", "UInt64"),
        ("avg_amount_sum_cents", "Int64"),
        ("avg_amount_count", "UInt64"),
        ("top_cents", "Int64"),  # money is never absent: no Nullable
        ("complete", "UInt8"),
        ("version", "UInt64"),
        ("written_at", f"{DATETIME} DEFAULT now64(3)"),
    ]
    assert DDL["batches_data"].endswith("ORDER BY (customer, batch)")
    assert select_list(DDL["batches"]) == [
        "customer",
        "batch",
        "orders",
        "if(avg_amount_count = 0, NULL, avg_amount_sum_cents / avg_amount_count / 100)"
        " AS avg_amount",
        "CAST(CAST(top_cents AS Decimal(38, 2)) / 100 AS Decimal(13, 2)) AS top",
        "complete",
    ]


def test_a_sliding_table_keyed_by_the_kafka_key_names_its_own_window_columns() -> None:
    assert columns(DDL["customer_slide_data"])[:6] == [
        ("from_ts", DATETIME),
        ("to_ts", DATETIME),
        ("customer", "String"),
        ("status", "String"),
        ("orders", "UInt64"),
        ("last_sku", "String"),
    ]
    assert DDL["customer_slide_data"].endswith("ORDER BY (customer, status, from_ts)")
    assert "GROUP BY" not in DDL["customer_slide"]


# ---------------------------------------------------------------------------------------
# Generated code


def test_each_table_s_generated_source_is_plain_python_it_runs() -> None:
    expected_functions = {
        "sku_minutes": {"add_all", "rows"},
        "visits": {"add_all", "new_session", "merge", "row", "tombstone"},
        "batches": {"add_all", "row"},
        "customer_slide": {"add_all", "rows"},
    }
    for name, table in DDL_PIPELINE.tables.items():
        tree = ast.parse(table.source)
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert defined == expected_functions[name], name
        assert defined <= set(table.functions), name
        compile(table.source, name, "exec")
    # The window's numbers are written into the loop: a tumbling minute and 10 s lateness.
    assert "start = ts - ts % 60000" in DDL_PIPELINE.tables["sku_minutes"].source
    assert "if start + 70000 < marks[i]:" in DDL_PIPELINE.tables["sku_minutes"].source


def test_a_mapping_where_is_inlined_and_a_callable_where_is_one_call() -> None:
    def big(e: Any) -> bool:
        return e.amount >= 10_000

    compiled = shop(
        per_customer(
            placed=agg.count(where={"status": "placed"}),
            cancelled=agg.count(where={"status": "cancelled"}),
            cancelled_units=agg.sum("qty", where={"status": "cancelled"}),
            big=agg.count(where=big),
            big_units=agg.sum("qty", where=big),
        )
    ).compile()
    source = compiled.tables["t"].source
    status = SHOP.index("status")
    # One read of the status and one if/elif chain for the three mapping filters.
    assert source.count(f"w{status} = e[{status}]") == 1
    # Text constants are literals in the loop, not names to look up.
    assert re.search(rf"\n\s+if w{status} == 'placed':\n", source)
    assert re.search(rf"\n\s+elif w{status} == 'cancelled':\n", source)
    # The callable is called once per event, for both aggregates that use it.
    assert len(re.findall(r"if _c\d+\(e\):", source)) == 1


def test_aggregates_filtering_on_equal_values_all_count() -> None:
    # Equal, but not the same object: as when one value is read from a config file.
    cancelled = "".join(["cancel", "led"])
    one = int("1")
    table = per_customer(
        cancelled=agg.count(where={"status": "cancelled"}),
        also_cancelled=agg.count(where={"status": cancelled}),
        single=agg.count(where={"qty": 1}),
        single_too=agg.count(where={"qty": one * 1.0}),
    )
    event = {"order_id": "o1", "customer": "a", "sku": "s", "status": "cancelled", "ts": T}
    (row,) = run(shop(table), [Record({**event, "qty": 1}, timestamp_ms=T)]).rows["t"]
    assert (row["cancelled"], row["also_cancelled"]) == (1, 1)
    assert (row["single"], row["single_too"]) == (1, 1)


# ---------------------------------------------------------------------------------------
# Aggregates, keys and filters on hand-checked events

EVENTS = [
    Record(
        {
            "order_id": "o1",
            "customer": "a",
            "sku": "s1",
            "status": "placed",
            "ts": T + 1000,
            "discount": 1.5,
            "qty": 2,
            "amount": 10,
        },
        timestamp_ms=T,
    ),
    Record(
        {
            "order_id": "o2",
            "customer": "a",
            "sku": "s2",
            "status": "cancelled",
            "ts": T + 2000,
            "discount": None,
            "qty": 3,
            "amount": 250.5,
        },
        timestamp_ms=T,
    ),
    Record(
        {
            "order_id": "o3",
            "customer": "a",
            "sku": "s1",
            "status": "cancelled",
            "ts": T + 3000,
            "discount": 2.25,
        },
        timestamp_ms=T,
    ),
    Record(
        {
            "order_id": "o4",
            "customer": "b",
            "sku": "s3",
            "status": "placed",
            "ts": T + 4000,
            "qty": None,
        },
        timestamp_ms=T,
    ),
]


def big_order(e: Any) -> bool:
    return e.amount > 20_000  # cents


def test_every_aggregate_skips_absent_values_and_honours_where() -> None:
    table = per_customer(
        orders=agg.count(),
        cancelled=agg.count(where={"status": "cancelled"}),
        big=agg.count(where=big_order),
        units=agg.sum("qty"),
        discounts=agg.sum("discount"),
        big_revenue=agg.sum("amount", where=big_order),
        lowest=agg.min("discount"),
        highest=agg.max("discount"),
        avg_discount=agg.mean("discount"),
        avg_qty=agg.mean("qty", where={"status": "cancelled"}),
        first_discount=agg.first("discount", by="order_id"),
        last_discount=agg.last("discount"),
        last_qty=agg.last("qty", by="order_id"),
        discounts_seen=agg.count_distinct("discount"),
        skus=agg.count_distinct("sku", where={"status": "cancelled"}),
    )
    rows = run(shop(table), EVENTS).rows["t"]
    assert rows == [
        {
            "window_start": T,
            "window_end": T + 60_000,
            "customer": "a",
            "orders": 3,
            "cancelled": 2,
            "big": 1,
            "units": 5,
            "discounts": Decimal("3.750"),
            "big_revenue": Decimal("250.50"),
            "lowest": Decimal("1.500"),
            "highest": Decimal("2.250"),
            "avg_discount": 1.875,
            "avg_qty": 3.0,
            "first_discount": Decimal("1.5"),
            "last_discount": Decimal("2.25"),
            "last_qty": 3,
            "discounts_seen": 2,
            "skus": 2,
        },
        {
            "window_start": T,
            "window_end": T + 60_000,
            "customer": "b",
            "orders": 1,
            "cancelled": 0,
            "big": 0,
            "units": 0,
            "discounts": Decimal(0),
            "big_revenue": Decimal(0),
            "lowest": None,
            "highest": None,
            "avg_discount": None,
            "avg_qty": None,
            "first_discount": None,
            "last_discount": None,
            "last_qty": None,
            "discounts_seen": 0,
            "skus": 0,
        },
    ]


def test_first_and_last_break_ties_by_the_by_fields_then_the_value() -> None:
    same_time = [
        Record(
            {"order_id": oid, "customer": "a", "sku": sku, "status": "placed", "ts": T + 5},
            timestamp_ms=T,
        )
        for oid, sku in [("o2", "s1"), ("o3", "s0"), ("o1", "s9"), ("o1", "s2")]
    ]
    table = per_customer(
        first_by_id=agg.first("sku", by="order_id"),
        last_by_id=agg.last("sku", by="order_id"),
        first_by_value=agg.first("sku"),
        last_by_value=agg.last("sku"),
    )
    (row,) = run(shop(table), same_time).rows["t"]
    assert (row["first_by_id"], row["last_by_id"]) == ("s2", "s0")
    assert (row["first_by_value"], row["last_by_value"]) == ("s0", "s9")


def test_a_key_of_several_fields_has_a_row_per_combination() -> None:
    table = Table(
        "t", key=("customer", "status"), window=tumbling(60), aggregates={"n": agg.count()}
    )
    rows = run(shop(table), EVENTS).rows["t"]
    assert [(r["customer"], r["status"], r["n"]) for r in rows] == [
        ("a", "cancelled", 2),
        ("a", "placed", 1),
        ("b", "placed", 1),
    ]
    assert list(rows[0]) == ["window_start", "window_end", "customer", "status", "n"]


@pytest.mark.parametrize(
    "where",
    [{"status": "cancelled"}, lambda e: e.status == "cancelled"],
    ids=["mapping", "callable"],
)
def test_a_table_where_keeps_only_its_events_and_makes_no_row_without_one(where: Any) -> None:
    for window in (tumbling(60), sliding(60, 30), session(60), count(2)):
        table = Table(
            "t", key="customer", window=window, aggregates={"n": agg.count()}, where=where
        )
        rows = run(shop(table), EVENTS).rows["t"]
        assert [(r["customer"], r["n"]) for r in rows] == [("a", 2)] * len(rows), window
        assert rows, window


# ---------------------------------------------------------------------------------------
# Snapshots


def orders_stream(seed: int, n: int, customers: int) -> list[Record]:
    rng = random.Random(seed)
    clock = T
    out = []
    for i in range(n):
        clock += rng.randrange(0, 3_000)
        ts = clock - (rng.randrange(20_000, 90_000) if rng.random() < 0.1 else 0)
        value = {
            "order_id": f"o{i}",
            "customer": f"c{rng.randrange(customers)}",
            "sku": rng.choice(["s1", "s2", "s3"]),
            "status": rng.choice(["placed", "cancelled"]),
            "ts": ts,
            "amount": rng.randrange(0, 5000) / 100,
            "qty": rng.choice([None, 1, 2, 3]),
        }
        out.append(Record(value, timestamp_ms=clock))
    return out


def every_window() -> Pipeline:
    figures = {
        "orders": agg.count(),
        "revenue": agg.sum("amount"),
        "avg_qty": agg.mean("qty"),
        "first_sku": agg.first("sku", by="order_id"),
        "customers": agg.count_distinct("customer"),
    }
    return Pipeline(
        "shop",
        SHOP,
        key="customer",
        lateness=seconds(30),
        tables=[
            Table("per_sku", key="sku", window=tumbling(60), aggregates=figures),
            Table("slide", key="customer", window=sliding(120, 30), aggregates=figures),
            Table("visits", key="customer", window=session(20), aggregates=figures),
            Table("batches", key="customer", window=count(7), aggregates=figures),
        ],
    )


def batches_of(records: list[Record], size: int) -> list[InputBatch]:
    return [
        InputBatch(
            "events/0",
            list(range(start, start + len(chunk))),
            [r.encoded() for r in chunk],
            [r.timestamp_ms for r in chunk],
        )
        for start in range(0, len(records), size)
        for chunk in [records[start : start + size]]
    ]


def drive(compiled: CompiledPipeline, batches: list[InputBatch], resume_at: int | None) -> dict:
    """Rows written by one partition's state over `batches`, flushed at the end; with
    `resume_at`, the state is pickled there and the rest runs on the restored copy."""
    state = compiled.partition_state("events/0")
    written: dict[str, list[tuple]] = {name: [] for name in compiled.tables}
    for i, batch in enumerate(batches):
        if i == resume_at:
            state = every_window().compile().restore(pickle.loads(pickle.dumps(state)))
        events, _ = compiled.schema.parse_batch(batch)
        for name, rows in state.process(events).tables.items():
            written[name].extend(rows)
    for name, rows in state.flush().tables.items():
        written[name].extend(rows)
    return {name: final_rows(compiled.tables[name], rows) for name, rows in written.items()}


def test_a_pickled_partition_state_restored_in_a_new_process_carries_on_exactly() -> None:
    compiled = every_window().compile()
    batches = batches_of(orders_stream(7, 300, 6), 10)
    straight = drive(compiled, batches, None)
    assert all(len(rows) > 3 for rows in straight.values())
    for resume_at in (1, 13, 29):
        # Restored into a pipeline compiled again, as a restarted process does.
        assert drive(compiled, batches, resume_at) == straight


def test_a_table_added_since_the_snapshot_starts_empty() -> None:
    old = Pipeline("shop", SHOP, key="customer", tables=[per_customer(n=agg.count())]).compile()
    new = Pipeline(
        "shop",
        SHOP,
        key="customer",
        tables=[
            per_customer(n=agg.count()),
            Table("added", key="customer", window=count(100), aggregates={"n": agg.count()}),
        ],
    ).compile()
    first, second = batches_of(EVENTS, 2)
    state = old.partition_state("events/0")
    state.process(old.schema.parse_batch(first)[0])
    state = new.restore(pickle.loads(pickle.dumps(state)))
    state.process(new.schema.parse_batch(second)[0])
    out = state.flush()
    assert final_rows(new.tables["added"], out.tables["added"]) == [
        {"customer": "a", "batch": 0, "n": 1, "complete": 0},
        {"customer": "b", "batch": 0, "n": 1, "complete": 0},
    ]
    assert [r["n"] for r in final_rows(new.tables["t"], out.tables["t"])] == [3, 1]


def test_snapshots_of_thousands_of_keys_restore_exactly() -> None:
    # Enough keys, changing between snapshots, for the snapshot log to be compacted.
    records = orders_stream(11, 6_000, 2_500)
    compiled = every_window().compile()
    straight = run(compiled, records, batch_size=400)
    replayed = run(compiled, records, batch_size=400, replay_every=1)
    assert replayed.rows == straight.rows
    assert replayed.dead_letters == straight.dead_letters
    assert len(straight.rows["batches"]) > 2_000
