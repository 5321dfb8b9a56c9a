"""Recovery partitions: each process creates its own, and never touches existing state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from waxhouse.recovery import (
    RecoveryPartition,
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
