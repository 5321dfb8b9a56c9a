"""Snapshots that write what changed: sealed segments in files, exact on restore, and the
files no snapshot names any more deleted only after the time a resume may need them."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from waxhouse import Pipeline, Schema, Table, agg, fields
from waxhouse.engine import PartitionState
from waxhouse.pipeline import CompiledPipeline
from waxhouse.records import InputBatch
from waxhouse.rows import RowBatch
from waxhouse.segments import SEGMENT_BYTES
from waxhouse.snapshots import MissingSegmentError, SegmentFiles, folder_name, keep_seconds
from waxhouse.tables import count, minutes, session, sliding, tumbling
from waxhouse.testing import Record, run

VISITS = Schema(
    {"user": fields.text(24), "page": fields.text(64), "ts": fields.timestamp()},
    event_time="ts",
    name="Visit",
)
T = 1_800_000_000_000
PART = "visits/0"


def site() -> CompiledPipeline:
    figures = {"views": agg.count(), "pages": agg.count_distinct("page")}
    pages = {"views": agg.count(), "users": agg.count_distinct("user")}
    return Pipeline(
        "site",
        VISITS,
        key="user",
        tables=[
            Table("per_page", key="page", window=tumbling(minutes(1)), aggregates=pages),
            Table("trend", key="page", window=sliding(minutes(2), 30), aggregates=pages),
            Table("visits", key="user", window=session(minutes(30)), aggregates=figures),
            Table("every_5", key="user", window=count(5), aggregates=figures),
        ],
    ).compile(0)


def visits(seed: int, n: int, users: int) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T + i * 40 - (rng.randrange(0, 5_000) if rng.random() < 0.2 else 0)
        value = {"user": f"user-{rng.randrange(users)}", "page": f"/p/{rng.randrange(50)}"}
        out.append(Record({**value, "ts": ts}, timestamp_ms=T + i * 40))
    return out


def batch(records: list[Record], first: int) -> InputBatch:
    return InputBatch(
        PART,
        list(range(first, first + len(records))),
        [r.encoded() for r in records],
        [r.timestamp_ms for r in records],
    )


def feed(compiled: CompiledPipeline, state: PartitionState, records: list[Record], at: int):
    events, _ = compiled.schema.parse_batch(batch(records, at), 10**12)
    return state.process(events)


def same(one: RowBatch, other: RowBatch) -> bool:
    """The same rows, whatever order the keys are kept in."""
    tables = one.tables.keys() | other.tables.keys()
    return one.dead_letters == other.dead_letters and all(
        sorted(one.tables.get(t, []), key=repr) == sorted(other.tables.get(t, []), key=repr)
        for t in tables
    )


def files_in(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_epoch_s_snapshot_writes_what_changed_and_names_the_rest(tmp_path: Path) -> None:
    compiled, records = site(), visits(1, 30_000, 20_000)
    state = compiled.partition_state(PART)
    files = SegmentFiles(tmp_path, keep_s=60)
    feed(compiled, state, records[:20_000], 0)
    first = files.dumps(state, PART)
    written = files_in(tmp_path)
    assert written, "20,000 open sessions make sealed segments"
    assert sum(path.stat().st_size for path in written) > 10 * len(first)

    feed(compiled, state, records[20_000:20_010], 20_000)
    second = files.dumps(state, PART)
    # Ten events changed a few keys: nothing sealed is written again, and the snapshot
    # holds the names, the small changes and the open windows only.
    assert files_in(tmp_path) == written
    assert len(second) < 2 * SEGMENT_BYTES + len(first)

    restored = compiled.restore(SegmentFiles(tmp_path, keep_s=60).loads(second))
    rest = records[20_010:]
    assert same(feed(compiled, restored, rest, 20_010), feed(compiled, state, rest, 20_010))
    assert same(restored.flush(), state.flush())


def test_a_window_changed_at_every_epoch_is_never_a_file(tmp_path: Path) -> None:
    pages = Schema({"page": fields.text(64), "ts": fields.timestamp()}, event_time="ts")
    hourly = Pipeline(
        "hourly",
        pages,
        key="page",
        tables=[Table("views", key="page", window=tumbling(3_600), aggregates={"n": agg.count()})],
    ).compile(0)
    records = [Record({"page": f"/p/{i}", "ts": T + i}, timestamp_ms=T + i) for i in range(8_000)]
    state = hourly.partition_state(PART)
    files = SegmentFiles(tmp_path, keep_s=60)
    for at in range(0, 8_000, 2_000):
        feed(hourly, state, records[at : at + 2_000], at)
        snapshot = files.dumps(state, PART)
    assert len(snapshot) > SEGMENT_BYTES  # the open hour's window, sealed-sized
    assert not files_in(tmp_path)


@pytest.mark.parametrize("seed", [2, 3])
def test_replays_through_segment_files_give_the_straight_run_s_rows(
    tmp_path: Path, seed: int
) -> None:
    records = visits(seed, 12_000, 3_000)
    compiled = site()
    straight = run(compiled, records, topic="visits", batch_size=700)
    replayed = run(
        compiled, records, topic="visits", batch_size=700, replay_every=2, segments=tmp_path
    )
    assert files_in(tmp_path), "the run's snapshots had sealed segments"
    assert replayed.rows == straight.rows
    assert replayed.dead_letters == straight.dead_letters


def test_a_file_no_snapshot_names_is_deleted_only_after_keep(tmp_path: Path) -> None:
    compiled, records = site(), visits(4, 20_000, 1_500)
    clock = Clock()
    state = compiled.partition_state(PART)
    files = SegmentFiles(tmp_path, keep_s=100, clock=clock)
    feed(compiled, state, records[:3_000], 0)
    files.dumps(state, PART)
    files.dumps(state, PART)
    old = files_in(tmp_path)
    assert old
    # Keys change, snapshot after snapshot, until the log is compacted: the old files are
    # named by no new snapshot, but by the committed one before, so they stay a while.
    at, unnamed = 3_000, set()
    while not unnamed and at < len(records):
        feed(compiled, state, records[at : at + 500], at)
        at += 500
        clock.now += 10
        files.dumps(state, PART)
        unnamed = old - named(files)
    assert unnamed, "the log was compacted"
    assert clock.now < 100
    assert unnamed <= files_in(tmp_path)
    clock.now += 100
    last = files.dumps(state, PART)
    assert not (unnamed & files_in(tmp_path))
    # What the latest snapshot names is all there: it restores.
    restored = compiled.restore(SegmentFiles(tmp_path, keep_s=100).loads(last))
    assert same(restored.flush(), state.flush())


def named(files: SegmentFiles) -> set[Path]:
    return {files.root / name for name in files._named}


def test_files_a_crashed_run_wrote_go_after_keep_and_the_resumed_ones_stay(
    tmp_path: Path,
) -> None:
    compiled, records = site(), visits(5, 8_000, 4_000)
    state = compiled.partition_state(PART)
    feed(compiled, state, records[:4_000], 0)
    first_run = SegmentFiles(tmp_path, keep_s=50)
    first_run.dumps(state, PART)
    committed = first_run.dumps(state, PART)
    kept = files_in(tmp_path)
    # The run goes on, snapshots twice more, and dies before those are committed.
    feed(compiled, state, records[4_000:7_000], 4_000)
    first_run.dumps(state, PART)
    first_run.dumps(state, PART)
    strays = files_in(tmp_path) - kept
    assert strays

    clock = Clock()
    resumed_files = SegmentFiles(tmp_path, keep_s=50, clock=clock)
    resumed = compiled.restore(resumed_files.loads(committed))
    feed(compiled, resumed, records[4_000:4_100], 4_000)
    resumed_files.dumps(resumed, PART)
    assert strays <= files_in(tmp_path)  # kept while a resume might still need them
    clock.now += 50
    last = resumed_files.dumps(resumed, PART)
    assert not (strays & files_in(tmp_path))
    assert kept <= files_in(tmp_path)
    again = compiled.restore(SegmentFiles(tmp_path, keep_s=50).loads(last))
    assert same(again.flush(), resumed.flush())


def test_a_missing_segment_file_is_one_clear_error(tmp_path: Path) -> None:
    compiled, records = site(), visits(6, 4_000, 4_000)
    state = compiled.partition_state(PART)
    feed(compiled, state, records, 0)
    files = SegmentFiles(tmp_path, keep_s=60)
    files.dumps(state, PART)
    snapshot = files.dumps(state, PART)
    victim = sorted(files_in(tmp_path))[0]
    victim.unlink()
    with pytest.raises(MissingSegmentError, match=r"is missing: the recovery directory must"):
        SegmentFiles(tmp_path, keep_s=60).loads(snapshot)


def test_a_snapshot_pickled_plainly_still_holds_everything() -> None:
    # Without recovery files (tests, Bytewax without -r) a segment is its bytes.
    compiled, records = site(), visits(7, 4_000, 4_000)
    state = compiled.partition_state(PART)
    feed(compiled, state, records, 0)
    restored = compiled.restore(pickle.loads(pickle.dumps(state)))
    assert same(restored.flush(), state.flush())


def test_folder_names_are_safe_and_distinct() -> None:
    names = {folder_name(part) for part in ["a/0", "a_0", "a:0", "ü/0", "../x"]}
    assert len(names) == 5
    assert all("/" not in name and not name.startswith(".") for name in names)


def test_files_are_kept_for_the_backup_interval_and_several_snapshots() -> None:
    from datetime import timedelta

    assert keep_seconds(timedelta(seconds=1), timedelta(0)) == 60
    assert keep_seconds(timedelta(seconds=30), timedelta(0)) == 300
    assert keep_seconds(timedelta(seconds=5), timedelta(hours=1)) == 3_660
