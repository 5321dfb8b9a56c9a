"""Every window kind against a brute-force reference, on random out-of-order streams.

Streams: a few devices (the Kafka key), each in its own one of 1-3 partitions; event times
jitter around an increasing clock and now and then fall far behind it, so that with
windows, gaps and lateness of a few milliseconds windows close mid-stream and some events
are late; now and then an invalid or `future` record. `testing.run` must give the rows and
dead letters of `tests.support.reference`, for any batch size, and with replays from
pickled snapshots.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.reference import DeadLetter, expected
from waxhouse import aggregates as agg
from waxhouse.fields import Schema, decimal, integer, one_of, text, timestamp
from waxhouse.pipeline import CompiledPipeline, Pipeline
from waxhouse.records import InputBatch
from waxhouse.tables import Table, count, session, sliding, tumbling
from waxhouse.testing import Record, Result, run
from waxhouse.views import final_rows

SCHEMA = Schema(
    {
        "id": text(16),
        "dev": text(8),
        "site": one_of("a", "b", "c"),
        "kind": one_of("x", "y"),
        "ts": timestamp(),
        "temp": decimal(2, min=-100, max=200, optional=True),
        "n": integer(min=0, max=1000, optional=True),
    },
    event_time="ts",
    name="Reading",
)
Reading = SCHEMA.event_type

T0 = 1_700_000_000_000
MAX_FUTURE_MS = 3_600_000
PROPERTY = settings(max_examples=100, deadline=None)


def ms(n: int) -> timedelta:
    return timedelta(milliseconds=n)


def warm(e: Any) -> bool:
    return e.temp is not None and e.temp > 0


def has_temp(e: Any) -> bool:
    return e.temp is not None


def aggregates(*, combined: bool = False) -> dict[str, agg.Aggregate]:
    """One of every aggregate, with mapping and callable `where`s, optional fields,
    decimals, timestamps and text; count_distinct of a non-Kafka-key field only where the
    table's rows stay in one partition."""
    out = {
        "events": agg.count(),
        "xs": agg.count(where={"kind": "x"}),
        "warm": agg.count(where=warm),
        "n_sum": agg.sum("n"),
        "y_temp_sum": agg.sum("temp", where={"kind": "y"}),
        "temp_min": agg.min("temp"),
        "temp_max": agg.max("temp", where=warm),
        "temp_avg": agg.mean("temp"),
        "n_avg": agg.mean("n", where={"kind": "y"}),
        "last_ts": agg.max("ts"),
        "first_kind": agg.first("kind", by="id"),
        "last_temp": agg.last("temp", by="id"),
        "first_n": agg.first("n"),
        "last_site": agg.last("site", by=("kind", "id"), where={"kind": "x"}),
        "devices": agg.count_distinct("dev"),
    }
    if not combined:
        out["sites"] = agg.count_distinct("site")
        out["kinds"] = agg.count_distinct("kind", where=warm)
    return out


# ---------------------------------------------------------------------------------------
# Streams

# Each event is read from 10 bytes, one per field (mod its range): one draw of bytes is far
# cheaper than a tuple of strategies per event, and zero bytes shrink to the plainest event.
_FIELDS = ("device", "step", "jitter", "behind", "far", "kind", "site", "temp", "n", "record")


@st.composite
def streams(draw: st.DrawFn, max_events: int = 40) -> list[Record]:
    """Records keyed correctly: every event of a device in that device's partition.

    The clock moves 0..6 ms per event; an event is within -5..+4 ms of it, or (one in
    four) 10..129 ms behind; one record in five is not JSON, not an object, lacks its
    event time, has a boolean for a number, or is a `future` one.
    """
    partitions = draw(st.integers(1, 3))
    home = draw(st.lists(st.integers(0, partitions - 1), min_size=5, max_size=5))
    clock = T0 + draw(st.integers(0, 999))
    size = draw(st.integers(0, max_events))
    data = draw(st.binary(min_size=size * len(_FIELDS), max_size=size * len(_FIELDS)))
    records = []
    for i in range(size):
        d = dict(zip(_FIELDS, data[i * len(_FIELDS) : (i + 1) * len(_FIELDS)], strict=True))
        device = d["device"] % 5
        clock += d["step"] % 7
        jitter = (d["jitter"] % 10 + 1) // 2 * (-1 if d["jitter"] % 2 else 1)
        ts = clock + jitter - (10 + d["far"] % 120 if d["behind"] % 4 == 3 else 0)
        value: dict[str, Any] = {"id": f"e{i}", "dev": f"d{device}", "site": "abc"[d["site"] % 3]}
        value.update(kind="xy"[d["kind"] % 2], ts=ts)
        if d["temp"]:  # absent, null, or -1.28 .. 1.25 (ties are likely)
            value["temp"] = None if d["temp"] == 1 else (d["temp"] - 130) / 100
        if d["n"] % 8:
            value["n"] = None if d["n"] % 8 == 1 else d["n"] % 8 - 2
        stamp = ts
        raw: Any = value
        special = d["record"] % 25 - 20
        if special == 0:
            raw = b'{"id": "e' + str(i).encode() + b'", '  # not JSON
        elif special == 1:
            raw = [value]  # JSON, not an object
        elif special == 2:
            del value["ts"]  # invalid_event
        elif special == 3:
            value["temp"] = True  # a boolean is no number
        elif special == 4:
            value["ts"] = ts + 10_000  # future: it must not move the watermark
            stamp = value["ts"] - MAX_FUTURE_MS - 1
        records.append(Record(raw, partition=home[device], timestamp_ms=stamp))
    return records


def at(*events: tuple[str, int]) -> list[Record]:
    """Valid records in one partition, `(device, ms after T0)` each: explicit examples at
    the boundaries of the rules, where random times rarely land."""
    return [
        Record(
            {"id": f"e{i}", "dev": dev, "site": "a", "kind": "x", "ts": T0 + t, "temp": 1.5},
            timestamp_ms=T0 + t,
        )
        for i, (dev, t) in enumerate(events)
    ]


def dead_letters(result: Result) -> list[DeadLetter]:
    return [
        (d.source, d.reason, d.error if d.reason == "late" else None, d.payload, d.received_at_ms)
        for d in result.dead_letters
    ]


def check(
    pipeline: Pipeline,
    records: list[Record],
    lateness: int,
    batch_size: int,
    replay_every: int | None = None,
) -> Result:
    result = run(
        pipeline, records, batch_size=batch_size, lateness_ms=lateness, replay_every=replay_every
    )
    want = expected(pipeline, records, lateness_ms=lateness)
    assert dead_letters(result) == want.dead_letters
    for name, rows in want.rows.items():
        assert result.rows[name] == rows, name
    assert set(result.rows) == set(want.rows)
    return result


BATCH = st.integers(1, 50)
REPLAY = st.sampled_from([None, 1, 2, 3])
LATENESS = st.integers(0, 25)


# ---------------------------------------------------------------------------------------
# One window kind at a time


@PROPERTY
@given(streams(), st.integers(1, 40), LATENESS, BATCH, REPLAY)
# [T0, T0 + 10) closes once the watermark is past T0 + 15: at T0 + 15 it is still open.
@example(at(("d0", 15), ("d0", 9)), 10, 5, 1, None)
@example(at(("d0", 16), ("d0", 9), ("d1", 0)), 10, 5, 50, None)
def test_tumbling_windows_match_the_reference(
    records: list[Record], size: int, lateness: int, batch_size: int, replay: int | None
) -> None:
    table = Table("per_dev", key="dev", window=tumbling(ms(size)), aggregates=aggregates())
    pipeline = Pipeline("p", SCHEMA, key="dev", tables=[table])
    check(pipeline, records, lateness, batch_size, replay)


@PROPERTY
@given(
    streams(), st.integers(1, 12), st.integers(1, 4), st.integers(0, 11), LATENESS, BATCH, REPLAY
)
# T0 + 9 is in [T0, T0 + 10), closed at T0 + 16, and in [T0 + 5, T0 + 15), still open.
@example(at(("d0", 16), ("d0", 9)), 5, 2, 0, 5, 1, None)
@example(at(("d0", 15), ("d0", 9), ("d0", 4)), 5, 2, 0, 5, 2, 1)
def test_sliding_windows_match_the_reference(
    records: list[Record],
    every: int,
    times: int,
    extra: int,
    lateness: int,
    batch_size: int,
    replay: int | None,
) -> None:
    size = every * times + extra % every  # sizes that are and are not multiples of `every`
    window = sliding(ms(size), ms(every))
    table = Table("per_dev", key="dev", window=window, aggregates=aggregates())
    pipeline = Pipeline("p", SCHEMA, key="dev", tables=[table])
    check(pipeline, records, lateness, batch_size, replay)


@PROPERTY
@given(streams(), st.integers(1, 12), st.integers(0, 10), BATCH, REPLAY)
# Gap 10: d0's session [T0, T0] closes when the watermark passes T0 + 10 + lateness ...
@example(at(("d0", 0), ("d1", 15), ("d0", 10)), 10, 5, 1, None)  # ... so at T0 + 15 it is open
@example(at(("d0", 0), ("d1", 16), ("d0", 10)), 10, 5, 1, None)  # ... at T0 + 16 closed
@example(at(("d1", 15), ("d0", 0)), 10, 5, 1, None)  # a new session at the last moment
@example(at(("d1", 16), ("d0", 0)), 10, 5, 3, None)  # one moment too late
# Once [T0, T0] is emitted, T0 + 10 would bridge into it (late); T0 + 11 would not.
@example(at(("d0", 0), ("d1", 11), ("d0", 10)), 10, 0, 1, None)
@example(at(("d0", 0), ("d1", 11), ("d0", 10)), 10, 0, 50, None)
@example(at(("d0", 0), ("d1", 11), ("d0", 11), ("d0", 21)), 10, 0, 1, 1)
# Behind the watermark by more than gap + lateness, yet on time: it reaches back exactly
# `gap` from the start of a long session that is still open.
@example(at(("d0", 0), ("d0", 10), ("d0", 20), ("d0", 30), ("d0", -10)), 10, 0, 1, None)
@example(at(("d0", 0), ("d0", 10), ("d0", 20), ("d0", 30), ("d0", -11)), 10, 0, 2, None)
def test_sessions_match_the_reference(
    records: list[Record], gap: int, lateness: int, batch_size: int, replay: int | None
) -> None:
    table = Table("visits", key="dev", window=session(ms(gap)), aggregates=aggregates())
    pipeline = Pipeline("p", SCHEMA, key="dev", tables=[table])
    check(pipeline, records, lateness, batch_size, replay)


@PROPERTY
@given(streams(), st.integers(1, 6), LATENESS, BATCH, REPLAY)
def test_count_windows_match_the_reference(
    records: list[Record], n: int, lateness: int, batch_size: int, replay: int | None
) -> None:
    table = Table("batches", key="dev", window=count(n), aggregates=aggregates())
    pipeline = Pipeline("p", SCHEMA, key="dev", tables=[table])
    result = check(pipeline, records, lateness, batch_size, replay)
    # Lateness plays no part: no count table is ever missed.
    assert all(d.reason != "late" for d in result.dead_letters)


# ---------------------------------------------------------------------------------------
# Every kind in one pipeline, with tables keyed apart from the Kafka key


def everything(size: int, every: int, gap: int, n: int) -> Pipeline:
    return Pipeline(
        "everything",
        SCHEMA,
        key="dev",
        tables=[
            Table("tumble", key="dev", window=tumbling(ms(size)), aggregates=aggregates()),
            Table(
                "by_site",  # one row per partition, combined by the view
                key="site",
                window=tumbling(ms(size)),
                aggregates=aggregates(combined=True),
            ),
            Table(
                "slide",
                key=("dev", "kind"),
                window=sliding(ms(size + every), ms(every)),
                aggregates=aggregates(),
            ),
            Table(
                "site_kind",
                key=("kind", "site"),
                window=sliding(ms(every * 3), ms(every)),
                aggregates=aggregates(combined=True),
                where={"kind": "y"},
            ),
            Table(
                "visits",
                key=("kind", "dev"),
                window=session(ms(gap)),
                aggregates=aggregates(),
                where=has_temp,
            ),
            Table("batches", key="dev", window=count(n), aggregates=aggregates()),
        ],
    )


@settings(max_examples=120, deadline=None)
@given(
    streams(),
    st.integers(1, 30),
    st.integers(1, 10),
    st.integers(1, 25),
    st.integers(1, 4),
    LATENESS,
    BATCH,
    REPLAY,
)
def test_every_kind_in_one_pipeline_matches_the_reference(
    records: list[Record],
    size: int,
    every: int,
    gap: int,
    n: int,
    lateness: int,
    batch_size: int,
    replay: int | None,
) -> None:
    check(everything(size, every, gap, n), records, lateness, batch_size, replay)


@settings(max_examples=40, deadline=None)
@given(streams(), st.integers(1, 30), st.integers(1, 10), st.integers(1, 25), LATENESS, BATCH)
def test_batch_sizes_and_replays_change_nothing(
    records: list[Record], size: int, every: int, gap: int, lateness: int, batch_size: int
) -> None:
    compiled = everything(size, every, gap, 3).compile(lateness)
    first = run(compiled, records, batch_size=1)
    for batch in (batch_size, 50):
        for replay in (None, 1, 2, 3):
            again = run(compiled, records, batch_size=batch, replay_every=replay)
            assert again.rows == first.rows, (batch, replay)
            assert again.dead_letters == first.dead_letters, (batch, replay)


# ---------------------------------------------------------------------------------------
# A bounded run, then a later run resuming from its state


def run_in_two(compiled: CompiledPipeline, records: list[Record], split: int) -> dict:
    """The views' rows after a bounded run over each partition's first `split` records
    (flushed at its end) and a later run that resumes from its pickled state, reads the
    rest and flushes again: every row both runs wrote is stored."""
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record)
    written: dict[str, list[tuple]] = defaultdict(list)
    for partition, part_records in by_partition.items():
        part = f"events/{partition}"
        state = compiled.partition_state(part)
        for first, chunk in ((0, part_records[:split]), (split, part_records[split:])):
            if first:
                state = compiled.restore(pickle.loads(pickle.dumps(state)))
            batch = InputBatch(
                part,
                list(range(first, first + len(chunk))),
                [record.encoded() for record in chunk],
                [record.timestamp_ms for record in chunk],
            )
            events, _ = compiled.schema.parse_batch(batch)
            for out in (state.process(events), state.flush()):
                for name, rows in out.tables.items():
                    written[name].extend(rows)
    return {name: final_rows(table, written[name]) for name, table in compiled.tables.items()}


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(1, 30), st.integers(1, 10), st.integers(1, 4), LATENESS, st.data())
def test_a_later_run_completes_what_a_bounded_run_flushed(
    records: list[Record], size: int, every: int, n: int, lateness: int, data: st.DataObject
) -> None:
    pipeline = everything(size, every, 5, n)
    # Sessions aside: see the test below.
    pipeline = Pipeline(
        "windows", SCHEMA, key="dev", tables=[t for t in pipeline.tables if t.name != "visits"]
    )
    compiled = pipeline.compile(lateness)
    split = data.draw(st.integers(0, len(records)), label="split")
    assert run_in_two(compiled, records, split) == run(compiled, records).rows


@pytest.mark.parametrize(
    ("first_run", "later_run", "expected_session"),
    [
        pytest.param([5], [0], (0, 5, 2), id="an earlier event extends it back"),
        pytest.param([0, 20], [10], (0, 20, 3), id="an event joins two flushed sessions"),
    ],
)
def test_a_later_run_that_changes_a_flushed_session_s_start_replaces_its_row(
    first_run: list[int], later_run: list[int], expected_session: tuple[int, int, int]
) -> None:
    """Bounded mode writes every open session at the end and keeps it open: a later run
    that resumes from that state and adds to the session must leave one row for it, not
    the new one beside the flushed one (which would count the flushed events twice)."""
    window = session(ms(10))
    table = Table("visits", key="dev", window=window, aggregates={"n": agg.count()})
    compiled = Pipeline("p", SCHEMA, key="dev", tables=[table]).compile(30)
    records = at(*(("d0", t) for t in [*first_run, *later_run]))
    start, end, n = expected_session
    one_run = [{"dev": "d0", "session_start": T0 + start, "session_end": T0 + end, "n": n}]
    assert run(compiled, records).rows["visits"] == one_run
    assert run_in_two(compiled, records, len(first_run))["visits"] == one_run
