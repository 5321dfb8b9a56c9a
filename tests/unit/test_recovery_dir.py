"""Recovery partitions: each process creates its own, and never touches existing state;
the free space a running flow keeps for its snapshots."""

from __future__ import annotations

import sqlite3
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
    has_committed_state,
    init_recovery_dir,
    own_partition,
    partition_counts,
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
