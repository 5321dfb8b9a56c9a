"""Live tables: what a `live` declaration refuses, each row's identity in Redis, the
provisional rows the tables' step hands over, and how stored rows are shown."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from waxhouse import Pipeline, PipelineError, Schema, Table, agg, fields, windows
from waxhouse.livetables import KEY_SEPARATOR, LiveTable, live_tables
from waxhouse.records import InputBatch

SHOP = Schema(
    {
        "customer": fields.text(16),
        "sku": fields.text(8),
        "ts": fields.timestamp(),
        "amount": fields.money(),
    },
    event_time="ts",
)
T = 1_800_000_000_000  # a multiple of a minute


def compiled(*tables: Table, lateness_ms: int = 0) -> dict[str, LiveTable]:
    pipeline = Pipeline("shop", SHOP, key="customer", tables=list(tables))
    return live_tables(pipeline.compile(lateness_ms))


def table(**live: object) -> Table:
    return Table(
        "sales",
        key="sku",
        window=windows.tumbling(60),
        aggregates={"orders": agg.count(), "revenue": agg.sum("amount"), "top": agg.max("amount")},
        live=windows.live(**live),  # type: ignore[arg-type]
    )


REFUSED: list[tuple[str, Callable[[], object], str]] = [
    ("no such aggregate", lambda: compiled(table(top_by="nope")), "top_by 'nope' is no aggregate"),
    ("not additive", lambda: compiled(table(top_by="top")), "must be a count or sum"),
    (
        "top of sessions",
        lambda: compiled(
            Table(
                "visits",
                key="customer",
                window=windows.session(60),
                aggregates={"orders": agg.count()},
                live=windows.live(top_by="orders"),
            )
        ),
        "top_by needs a tumbling or sliding window",
    ),
    (
        "provisional count windows",
        lambda: compiled(
            Table(
                "batches",
                key="customer",
                window=windows.count(10),
                aggregates={"orders": agg.count()},
                live=windows.live(provisional=True),
            )
        ),
        "provisional rows need a tumbling, sliding or session window",
    ),
    ("top of none", lambda: windows.live(top=0), "top must be a positive integer"),
    ("no ttl", lambda: windows.live(ttl=0), "live ttl: must be at least one millisecond"),
]


@pytest.mark.parametrize(
    ("declared", "message"), [(d, m) for _, d, m in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_a_live_declaration_that_cannot_be_kept_is_refused_saying_why(
    declared: Callable[[], object], message: str
) -> None:
    with pytest.raises((PipelineError, ValueError), match=message):
        declared()


def test_a_table_without_live_is_not_kept_and_rows_find_their_place() -> None:
    plain = Table("plain", key="sku", window=windows.tumbling(60), aggregates={"n": agg.count()})
    live = compiled(table(top_by="revenue"), plain, lateness_ms=5_000)
    assert list(live) == ["sales"]
    sales = live["sales"]
    assert sales.namespace == "wh:shop:sales"
    # window_start, window_end, sku, part, orders, revenue_cents, top_cents, version
    assert sales.compiled.columns[:4] == ("window_start", "window_end", "sku", "part")
    row = (T, T + 60_000, "sk/u", "events/3", 2, 1999, 1500, 2)
    ident = sales.identify(row)
    assert (ident.kid, ident.wid, ident.order, ident.part, ident.version) == (
        "sk/u", str(T), T, "events/3", 2
    )  # fmt: skip
    assert sales.score_of(row) == 1999
    assert sales.close_at(row) == T + 60_000 + 5_000
    top = sales.render_top(str(T), [("sk/u", 1999.0), ("b", 5.0)])
    assert top["top"] == [{"key": "sk/u", "revenue": 19.99}, {"key": "b", "revenue": 0.05}]
    assert top["window_end"] == "2027-01-15T08:01:00.000Z"


def test_stored_parts_are_combined_and_provisional_ones_marked() -> None:
    sales = compiled(table(provisional=True))["sales"]
    final = (T, T + 60_000, "a", "events/0", 2, 300, 200, 2)
    so_far = (T, T + 60_000, "a", "events/1", 1, 50, 50, 1)
    fields_ = {b"v:events/0": b"2", b"p:events/0": orjson.dumps(final)}
    got = sales.render_row("a", fields_)
    assert got is not None and got["final"] is True
    assert got["row"]["orders"] == 2 and got["row"]["revenue"] == 3.0
    fields_[b"q:events/1"] = orjson.dumps(so_far)
    got = sales.render_row("a", fields_)
    assert got is not None and got["final"] is False
    assert (got["row"]["orders"], got["row"]["revenue"], got["row"]["top"]) == (3, 3.5, 2.0)
    assert sales.render_row("a", {}) is None


def test_composite_keys_are_named_by_their_values_joined_with_slashes() -> None:
    both = Table(
        "pairs",
        key=("customer", "sku"),
        window=windows.tumbling(60),
        aggregates={"orders": agg.count()},
        live=windows.live(),
    )
    pairs = compiled(both)["pairs"]
    ident = pairs.identify(_pair_row(pairs, "c1", "a/b"))
    assert ident.kid == f"c1{KEY_SEPARATOR}a/b"
    assert pairs.key_of(ident.kid) == "c1/a/b"
    assert pairs.kid_of("c1/a/b") == ident.kid


def _pair_row(table: LiveTable, customer: str, sku: str) -> tuple:
    values = {"window_start": T, "window_end": T + 60_000, "customer": customer, "sku": sku}
    return tuple(values.get(name, 1) for name in table.compiled.columns)


def events(*records: tuple[str, str, int]) -> InputBatch:
    values = [
        orjson.dumps({"customer": c, "sku": s, "ts": ts, "amount": 1}) for c, s, ts in records
    ]
    n = len(values)
    return InputBatch("events/0", list(range(n)), values, [ts for _, _, ts in records])  # type: ignore[arg-type]


def test_the_tables_step_hands_over_only_what_changed_since_it_last_did() -> None:
    visits = Table(
        "visits",
        key="customer",
        window=windows.session(60),
        aggregates={"orders": agg.count()},
        live=windows.live(provisional=True),
    )
    per_sku = table(provisional=True)
    pipeline = Pipeline("shop", SHOP, key="customer", tables=[per_sku, visits]).compile(0)
    state = pipeline.partition_state("events/0")
    parsed, dead = SHOP.parse_batch(events(("c1", "a", T), ("c2", "a", T + 1), ("c1", "b", T + 2)))
    assert not dead
    state.process(parsed)
    first = state.provisional(T)
    assert sorted(row[2] for row in first["sales"]) == ["a", "b"]
    assert sorted((row[0], row[3]) for row in first["visits"]) == [("c1", 2), ("c2", 1)]
    assert state.provisional(T) == {}  # nothing new since
    state.process(SHOP.parse_batch(events(("c2", "b", T + 3)))[0])
    again = state.provisional(T)
    assert [(row[0], row[3]) for row in again["visits"]] == [("c2", 2)]
    assert [(row[2], row[4]) for row in again["sales"]] == [("b", 2)]  # only what changed
    # A refresh that the next one, at this pace, would find closed hands nothing over:
    # the window and the session close by then, and their final rows come first.
    state.process(SHOP.parse_batch(events(("c1", "a", T + 4)))[0])
    assert state.provisional(T + 60_004) == {"sales": [], "visits": []}
    state.process(SHOP.parse_batch(events(("c1", "a", T + 5)))[0])
    closing = state.provisional(T + 60_000)
    assert closing["sales"] == []  # the window [T, T + 60 s) closes by then
    assert [(row[0], row[2], row[3]) for row in closing["visits"]] == [("c1", T + 5, 4)]
