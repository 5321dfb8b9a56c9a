"""docs/guide.md's example pipeline, run over its own embedded orders, against results
computed here in plain Python from the same records; the guide's test example; the
README's pipeline; and every relative link in README.md and docs/."""

from __future__ import annotations

import json
import math
import pickle
import re
import sys
import types
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import waxhouse
from tests.support.guide import GUIDE, import_guide_module
from waxhouse.records import InputBatch
from waxhouse.testing import Record, Result, run

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MINUTE = 60_000
TABLES = {"sku_sales", "customer_sessions", "customer_batches"}


@pytest.fixture(scope="module")
def guide() -> types.ModuleType:
    return import_guide_module()


@pytest.fixture(scope="module")
def records(guide: types.ModuleType) -> list[Record]:
    return [record for p in range(guide.PARTITIONS) for record in guide.orders(p)]


@pytest.fixture(scope="module")
def result(guide: types.ModuleType, records: list[Record]) -> Result:
    return run(guide.pipeline, records)


@pytest.fixture(scope="module")
def valid(records: list[Record]) -> list[dict[str, Any]]:
    """The orders that should count, decoded with json, in partition order, each with its
    partition and offset; the only defect the guide's source makes is a negative amount."""
    out = []
    offsets: dict[int, int] = defaultdict(int)
    for record in records:
        order = json.loads(record.encoded() or b"null")
        order |= {"partition": record.partition, "offset": offsets[record.partition]}
        offsets[record.partition] += 1
        if 0 <= order["amount"] <= 1e9:
            out.append(order)
    return out


def cents(amount: float) -> int:
    return round(amount * 100)


def money(total_cents: int) -> Decimal:
    return Decimal(total_cents).scaleb(-2)


def test_the_example_is_a_flow_file_with_three_tables(guide: types.ModuleType) -> None:
    assert isinstance(guide.pipeline, waxhouse.Pipeline)
    compiled = guide.pipeline.compile()
    assert set(compiled.tables) == TABLES
    # Only sku_sales is keyed apart from the Kafka key: stored per partition, combined.
    assert {name for name, table in compiled.tables.items() if table.combined} == {"sku_sales"}
    assert compiled.lateness_ms == 2 * MINUTE
    assert type(guide.flow).__name__ == "Dataflow"
    source = guide.embedded(waxhouse.Settings())
    assert source.list_parts() == ["orders/0", "orders/1"]


def test_the_embedded_orders_are_deterministic_and_keyed_by_customer(
    guide: types.ModuleType, records: list[Record]
) -> None:
    assert list(guide.orders(1)) == [r for r in records if r.partition == 1]
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        partitions[json.loads(record.encoded() or b"null")["customer"]].add(record.partition)
    assert len(partitions) > 50
    assert all(len(p) == 1 for p in partitions.values())


def test_an_order_event_pickles(guide: types.ModuleType, records: list[Record]) -> None:
    """The guide binds the schema's event type at module level, so events pickle."""
    batch = InputBatch("orders/0", [0], [records[0].encoded()], [records[0].timestamp_ms])
    [event], _ = guide.schema.parse_batch(batch)
    assert type(event) is guide.Order
    assert pickle.loads(pickle.dumps(event)) == event


def test_the_broken_orders_are_dead_letters_and_none_is_late(
    result: Result, records: list[Record], valid: list[dict[str, Any]]
) -> None:
    assert len(valid) == len(records) - 8
    good = {(o["partition"], o["offset"]) for o in valid}
    expected = [
        f"events/{p}/{n}"
        for p in (0, 1)
        for n in range(sum(1 for r in records if r.partition == p))
        if (p, n) not in good
    ]
    assert [d.source for d in result.dead_letters] == expected
    assert {(d.reason, d.error) for d in result.dead_letters} == {
        ("invalid_event", "amount: must be between 0 and 1e9")
    }


def test_sku_sales_counts_every_order_in_the_ten_windows_containing_it(
    result: Result, valid: list[dict[str, Any]]
) -> None:
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for order in valid:
        ts = order["ts"]
        first = (ts - 10 * MINUTE) // MINUTE * MINUTE + MINUTE  # the earliest start <= ts
        for start in range(first, ts + 1, MINUTE):
            row = rows.setdefault(
                (start, order["sku"]),
                {"orders": 0, "cancelled": 0, "units": 0, "cents": 0, "customers": set()},
            )
            if order["status"] == "cancelled":
                row["cancelled"] += 1
                continue
            row["orders"] += 1
            row["units"] += order.get("qty", 1)
            row["cents"] += cents(order["amount"])
            row["customers"].add(order["customer"])
    got = {(r["window_start"], r["sku"]): r for r in result.rows["sku_sales"]}
    assert got.keys() == rows.keys()
    for key, want in rows.items():
        row = got[key]
        assert row["window_end"] == key[0] + 10 * MINUTE
        assert (row["orders"], row["cancelled"], row["units"]) == (
            want["orders"],
            want["cancelled"],
            want["units"],
        ), key
        assert row["revenue"] == money(want["cents"]), key
        assert row["customers"] == len(want["customers"]), key
    # Each placed order is in exactly ten windows.
    placed = sum(1 for o in valid if o["status"] == "placed")
    assert sum(r["orders"] for r in got.values()) == 10 * placed


def test_customer_sessions_split_at_gaps_over_thirty_minutes(
    result: Result, valid: list[dict[str, Any]]
) -> None:
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in valid:
        by_customer[order["customer"]].append(order)
    expected = []
    for customer, orders in sorted(by_customer.items()):
        orders.sort(key=lambda o: (o["ts"], o["order_id"]))
        sessions = [[orders[0]]]
        for order in orders[1:]:
            if order["ts"] - sessions[-1][-1]["ts"] > 30 * MINUTE:
                sessions.append([])
            sessions[-1].append(order)
        for session in sessions:
            expected.append(
                {
                    "customer": customer,
                    "session_start": session[0]["ts"],
                    "session_end": session[-1]["ts"],
                    "orders": len(session),
                    "cancelled": sum(o["status"] == "cancelled" for o in session),
                    "spent": money(
                        sum(cents(o["amount"]) for o in session if o["status"] == "placed")
                    ),
                    "skus": len({o["sku"] for o in session}),
                    "first_sku": session[0]["sku"],
                    "last_sku": session[-1]["sku"],
                }
            )
    got = result.rows["customer_sessions"]
    assert len(got) == len(expected)
    assert sorted(got, key=_session_key) == sorted(expected, key=_session_key)
    assert any(s["orders"] >= 5 for s in got), "the example should have real sessions"


def _session_key(row: dict[str, Any]) -> tuple[str, int]:
    return row["customer"], row["session_start"]


def test_customer_batches_are_threes_in_partition_order(
    result: Result, valid: list[dict[str, Any]]
) -> None:
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in valid:  # already in partition (offset) order
        by_customer[order["customer"]].append(order)
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in result.rows["customer_batches"]:
        got[row["customer"]].append(row)
    assert got.keys() == by_customer.keys()
    for customer, orders in by_customer.items():
        batches = got[customer]
        assert [b["batch"] for b in batches] == list(range(math.ceil(len(orders) / 3)))
        for b in batches:
            chunk = orders[3 * b["batch"] : 3 * b["batch"] + 3]
            assert b["orders"] == len(chunk)
            assert b["complete"] == (1 if len(chunk) == 3 else 0)
            assert b["first_ts"] == min(o["ts"] for o in chunk)
            assert b["last_ts"] == max(o["ts"] for o in chunk)
            assert b["amount"] == money(sum(cents(o["amount"]) for o in chunk))
    assert any(b["complete"] == 0 for rows in got.values() for b in rows)


# --- the guide's test example --------------------------------------------------------

TEST_MARK = "# test_orders.py"


def guide_test_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    parts = [b.split("\n", 1)[1] for b in blocks if b.startswith(TEST_MARK + "\n")]
    assert parts, f"docs/guide.md has no ```python block starting with {TEST_MARK!r}"
    return "\n".join(parts)


GUIDE_TESTS = re.findall(r"^def (test_\w+)", guide_test_source(), re.M)


def test_the_guide_has_a_test_example() -> None:
    assert len(GUIDE_TESTS) >= 2


@pytest.mark.parametrize("name", GUIDE_TESTS)
def test_the_guide_test_example_passes(
    name: str, guide: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "orders", guide)  # `from orders import ...`
    namespace: dict[str, Any] = {"__name__": "test_orders"}
    exec(compile(guide_test_source(), str(GUIDE), "exec"), namespace)
    test: Callable[[], None] = namespace[name]
    test()


# --- the README's pipeline -------------------------------------------------------------


def test_the_readme_pipeline_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (source,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    # It reads Kafka (it has no embedded source); building the flow connects to nothing.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    module = types.ModuleType("readme_orders")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "README.md", "exec"), module.__dict__)
    compiled = module.pipeline.compile()
    assert set(compiled.tables) == {"sku_sales", "customer_sessions"}
    assert type(module.flow).__name__ == "Dataflow"
    assert len(source.strip().splitlines()) <= 30


# --- links -----------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The file's text without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the file's headings."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(doc: Path) -> None:
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name} links to {target}: no such heading"
