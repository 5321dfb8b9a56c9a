"""Recovery partitions: each process creates its own, and never touches existing state
but the snapshots of an epoch the last run did not complete; the free space a running
flow keeps for its snapshots."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

from waxhouse.recovery import (
    GROWTH_MARGIN,
    MIN_FREE_BYTES,
    RecoveryPartition,
    RecoverySpace,
    disk_space,
    drop_unfinished_snapshots,
    has_committed_state,
    init_recovery_dir,
    own_partition,
    partition_counts,
    resume_epoch,
)


def parts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("part-*.sqlite3"))


def recorded(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        (row,) = db.execute("SELECT part_index, part_count FROM parts").fetchall()
    return row


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"process_id": None, "addresses": None}, RecoveryPartition(0, 1)),
        ({"process_id": 0, "addresses": "a:1;b:1;c:1"}, RecoveryPartition(0, 3)),
        ({"process_id": 2, "addresses": "a:1;b:1;c:1"}, RecoveryPartition(2, 3)),
    ],
)
def test_own_partition_is_the_process_id_of_the_process_count(
    args: dict[str, object], expected: RecoveryPartition
) -> None:
    assert own_partition(args) == expected


def test_a_process_creates_only_its_own_partition(tmp_path: Path) -> None:
    assert init_recovery_dir(tmp_path / "r", RecoveryPartition(1, 3))
    assert parts(tmp_path / "r") == ["part-1.sqlite3"]
    assert recorded(tmp_path / "r" / "part-1.sqlite3") == (1, 3)
    assert not list((tmp_path / "r").glob(".init-*")), "the scratch set is removed"


def test_processes_sharing_a_directory_fill_it_together(tmp_path: Path) -> None:
    for index in (0, 1):
        assert init_recovery_dir(tmp_path, RecoveryPartition(index, 2))
    assert parts(tmp_path) == ["part-0.sqlite3", "part-1.sqlite3"]
    assert partition_counts(tmp_path) == {2}


def test_an_existing_partition_is_resumed_from_not_recreated(tmp_path: Path) -> None:
    assert init_recovery_dir(tmp_path, RecoveryPartition(0, 1))
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as db:
        db.execute("CREATE TABLE marker (x)")
    assert not init_recovery_dir(tmp_path, RecoveryPartition(0, 1))
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'marker'").fetchone()


def test_partitions_of_another_count_get_nothing_new(tmp_path: Path) -> None:
    # A single-process directory resumed by a 2-process cluster sharing it: Bytewax resumes
    # from the one partition; a second set beside it would be inconsistent.
    assert init_recovery_dir(tmp_path, RecoveryPartition(0, 1))
    assert not init_recovery_dir(tmp_path, RecoveryPartition(1, 2))
    assert parts(tmp_path) == ["part-0.sqlite3"]
    assert partition_counts(tmp_path) == {1}


class Disk:
    """A file system for `RecoverySpace`: what the directory takes and what is free."""

    def __init__(self, *samples: tuple[int, int]) -> None:
        self.samples = list(samples)

    def __call__(self, directory: Path) -> tuple[int, int]:
        return self.samples.pop(0)


MIB = 1 << 20


def test_room_for_the_next_snapshots_is_no_failure() -> None:
    space = RecoverySpace(Path("/r"), usage=Disk((5 * MIB, 100 * MIB)))
    assert space.check() is None
    assert space.needed == MIN_FREE_BYTES


@pytest.mark.parametrize(
    ("free", "said"),
    [
        (3 * MIB, "3.0 MiB free, 8.0 MiB needed for the next snapshots"),
        (0, "no space left on device"),
    ],
)
def test_less_free_than_the_reserve_is_one_line_naming_the_directory(free: int, said: str) -> None:
    space = RecoverySpace(Path("/data/recovery"), usage=Disk((5 * MIB, free)))
    assert space.check() == (
        f"recovery directory /data/recovery is full ({said}): free space and restart; "
        "state up to the last complete snapshot is kept"
    )


def test_the_reserve_grows_with_the_snapshots_seen() -> None:
    disk = Disk((1 * MIB, 100 * MIB), (31 * MIB, 70 * MIB), (31 * MIB, 70 * MIB))
    space = RecoverySpace(Path("/r"), usage=disk)
    assert space.check() is None
    # 30 MiB written between two looks: the look that sees it still passes (what just
    # filled the disk is not held against it), the reserve is now 4 x 30 MiB.
    assert space.check() is None
    assert space.needed == GROWTH_MARGIN * 30 * MIB
    message = space.check()
    assert message is not None and "70.0 MiB free, 120.0 MiB needed" in message


def test_the_space_the_partitions_take_and_their_file_system_has_free(tmp_path: Path) -> None:
    (tmp_path / "part-0.sqlite3").write_bytes(b"x" * 100_000)
    (tmp_path / "part-0.sqlite3-wal").write_bytes(b"x" * 200_000)
    (tmp_path / "other").write_bytes(b"x" * 400_000)
    taken, free = disk_space(tmp_path)
    assert 300_000 <= taken < 700_000
    assert free > 0


def test_a_directory_it_cannot_look_at_is_no_failure(tmp_path: Path) -> None:
    assert RecoverySpace(tmp_path / "gone").check() is None


def test_committed_state_is_what_a_run_with_recovery_leaves(tmp_path: Path) -> None:
    """A fresh partition records no epoch; a run that snapshotted does (a resumed flow)."""
    directory = tmp_path / "recovery"
    assert not has_committed_state(directory)  # not even there
    init_recovery_dir(directory)
    assert not has_committed_state(directory)
    flow = Dataflow("committed")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(["a", "b", "a"])), str)
    counts = op.stateful_map("count", keyed, lambda n, _: ((n or 0) + 1, (n or 0) + 1))
    out: list[tuple[str, int]] = []
    op.output("out", counts, TestingSink(out))
    run_main(flow, recovery_config=RecoveryConfig(str(directory)))
    assert sorted(out) == [("a", 1), ("a", 2), ("b", 1)]
    assert has_committed_state(directory)


def recovery_set(directory: Path, count: int) -> list[Path]:
    """A set of `count` fresh partitions in `directory`."""
    for index in range(count):
        init_recovery_dir(directory, RecoveryPartition(index, count))
    return [directory / f"part-{index}.sqlite3" for index in range(count)]


INSERTS = {
    "exs": "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)",
    "fronts": "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)",
    "snaps": "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
}


def insert(path: Path, table: str, *rows: tuple) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(INSERTS[table], rows)


def snapshot_epochs(paths: list[Path]) -> list[tuple[str, int]]:
    found = []
    for path in paths:
        with sqlite3.connect(path) as db:
            found += db.execute("SELECT state_key, snap_epoch FROM snaps").fetchall()
    return sorted(found)


def test_the_resume_epoch_is_the_least_frontier_of_the_last_execution(tmp_path: Path) -> None:
    """Executions and frontiers are spread over the partitions; a worker of the last
    execution that recorded no frontier counts as at its resume epoch."""
    first, second = recovery_set(tmp_path, 2)
    assert resume_epoch(tmp_path) == 1  # nothing ran yet
    insert(first, "exs", (0, 2, 1))
    insert(second, "exs", (1, 2, 5))
    insert(first, "fronts", (0, 0, 7), (0, 1, 6), (1, 0, 9))
    assert resume_epoch(tmp_path) == 5
    insert(second, "fronts", (1, 1, 8))
    assert resume_epoch(tmp_path) == 8


def test_without_every_partition_there_is_no_resume_epoch(tmp_path: Path) -> None:
    init_recovery_dir(tmp_path, RecoveryPartition(0, 2))
    assert resume_epoch(tmp_path) is None


def test_snapshots_of_the_resume_epoch_and_after_are_dropped_in_every_partition(
    tmp_path: Path,
) -> None:
    first, second = recovery_set(tmp_path, 2)
    insert(first, "exs", (0, 1, 1))
    insert(second, "fronts", (0, 0, 3))
    insert(first, "snaps", ("windows", "p0", 2, b"kept"), ("windows", "p0", 3, b"stale"))
    insert(second, "snaps", ("input", "p0", 2, b"kept"), ("input", "p0", 3, b"stale"))
    insert(second, "snaps", ("windows", "p1", 4, None))
    assert drop_unfinished_snapshots(tmp_path) == 3
    assert snapshot_epochs([first, second]) == [("p0", 2), ("p0", 2)]


def test_nothing_is_dropped_without_every_partition(tmp_path: Path) -> None:
    (first,) = recovery_set(tmp_path, 1)
    insert(first, "exs", (0, 1, 1))
    insert(first, "snaps", ("windows", "p0", 1, b"unfinished"))
    init_recovery_dir(tmp_path / "other", RecoveryPartition(0, 2))
    (partial,) = (tmp_path / "other").glob("part-*.sqlite3")
    insert(partial, "exs", (0, 1, 1))
    insert(partial, "snaps", ("windows", "p0", 1, b"unfinished"))
    assert drop_unfinished_snapshots(tmp_path / "other") == 0
    assert snapshot_epochs([partial]) == [("p0", 1)]
    assert drop_unfinished_snapshots(tmp_path) == 1


def test_the_resume_epoch_is_the_one_bytewax_resumes_from(tmp_path: Path) -> None:
    """A run that fails part way, then another: the execution Bytewax records for the
    second resumes from the epoch `resume_epoch` computed between the two."""
    directory = tmp_path / "recovery"
    init_recovery_dir(directory)
    items: list[object] = [*"abcdef", TestingSource.ABORT(), *"ghij"]

    def run() -> None:
        flow = Dataflow("resume")
        keyed = op.key_on("key", op.input("in", flow, TestingSource(items, 2)), str)
        counts = op.stateful_map("count", keyed, lambda n, _: ((n or 0) + 1, (n or 0) + 1))
        op.output("out", counts, TestingSink([]))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(directory)))

    run()
    expected = resume_epoch(directory)
    assert expected is not None and expected > 1
    run()
    with sqlite3.connect(directory / "part-0.sqlite3") as db:
        (resumed,) = db.execute("SELECT resume_epoch FROM exs WHERE ex_num = 1").fetchone()
    assert resumed == expected
