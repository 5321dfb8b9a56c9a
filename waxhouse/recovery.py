"""Bytewax recovery, ready before the first run: each process initialises its own partition.

`python -m bytewax.run FLOW -r DIR -s SECONDS -b SECONDS` (or the `BYTEWAX_RECOVERY_*`
variables) turns recovery on; Bytewax then needs the cluster's recovery partitions (SQLite
files `part-<i>.sqlite3`) to exist, each reachable by some process. Called from a flow
module while `bytewax.run` imports it (before the dataflow starts), `prepare_recovery()`
creates this process's partition when missing: index = process id, count = number of
processes (`-i`/`-a`, or the `BYTEWAX_POD_NAME`/`BYTEWAX_STATEFULSET_NAME` and
`BYTEWAX_ADDRESSES` variables), `part-0` of 1 for a single process. So processes sharing one
directory fill it together, and processes with a volume each (a Kubernetes StatefulSet)
each hold their own partition, with no separate `python -m bytewax.recovery` step.

Partitions already there are the state a restart resumes from; the only thing removed
from them is what the last run wrote of an epoch it never completed, when this process can
see every partition (`drop_unfinished_snapshots`). A directory holding partitions of
another count (the cluster was resized) gets nothing new:
Bytewax resumes from those partitions when every one of them is reachable, and refuses to
start, naming the missing or inconsistent partitions, when they are not.

While the flow runs, `prepare_recovery()` also keeps an eye on the free space of the
directory's file system (`RecoverySpace`): Bytewax writes each snapshot into SQLite from its
Rust code, and a write that finds the disk full ends the run in a panic. Before that can
happen the flow stops in order (`waxhouse.stopping`) and exits 1 with one line naming the
directory; the partitions keep every snapshot completed so far, so once there is room again
the next start resumes exactly.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bytewax.recovery import init_db_dir

from waxhouse.runargs import bytewax_run_args
from waxhouse.stopping import flow_stopper

logger = logging.getLogger(__name__)

PARTITION_GLOB = "part-*.sqlite3"

MIN_FREE_BYTES = 8 * 1024 * 1024
"""Free space below which the flow stops: room for the snapshots in flight while it does."""
GROWTH_MARGIN = 4
"""...or this many times the largest growth seen between two looks, if that is more."""


@dataclass(frozen=True)
class RecoveryPartition:
    """Which recovery partition a process owns: `index` of `count`."""

    index: int = 0
    count: int = 1

    @property
    def file_name(self) -> str:
        return f"part-{self.index}.sqlite3"


def own_partition(args: dict[str, object]) -> RecoveryPartition:
    """The partition of the process `bytewax.run` was started as (parsed `args`)."""
    process_id = args.get("process_id")
    if process_id is None:
        return RecoveryPartition()
    addresses = str(args.get("addresses") or "").split(";")
    return RecoveryPartition(index=int(str(process_id)), count=len(addresses))


def partition_counts(directory: Path) -> set[int]:
    """The partition counts recorded in `directory`'s partitions (empty: none there)."""
    counts: set[int] = set()
    for path in directory.glob(PARTITION_GLOB):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            counts.update(count for (count,) in db.execute("SELECT part_count FROM parts"))
    return counts


def has_committed_state(directory: Path) -> bool:
    """Whether a partition in `directory` records a committed epoch: the flow resumes from
    it, and every source partition that existed then has its own state in it."""
    for path in directory.glob(PARTITION_GLOB):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            if db.execute("SELECT 1 FROM commits LIMIT 1").fetchone() is not None:
                return True
    return False


def resume_epoch(directory: Path) -> int | None:
    """The epoch Bytewax resumes from with the partitions in `directory`, computed as it
    does: the least frontier the workers of the last execution recorded (a worker that
    recorded none counts as at that execution's own resume epoch); 1 with no execution
    recorded. None unless `directory` holds every partition of one set: the executions
    and frontiers may be in any of them.
    """
    paths = {path.name: path for path in directory.glob(PARTITION_GLOB)}
    counts = partition_counts(directory)
    if len(counts) != 1:
        return None
    (count,) = counts
    if set(paths) != {RecoveryPartition(i, count).file_name for i in range(count)}:
        return None
    executions: dict[int, tuple[int, int]] = {}  # number: (workers, resume epoch)
    frontiers: list[tuple[int, int, int]] = []  # (execution, worker, frontier)
    for path in paths.values():
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for number, workers, epoch in db.execute(
                "SELECT ex_num, worker_count, resume_epoch FROM exs"
            ):
                executions[number] = (workers, epoch)
            frontiers += db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts")
    if not executions:
        return 1
    last = max(executions)
    workers, epoch = executions[last]
    progress = dict.fromkeys(range(workers), epoch)
    for number, worker, frontier in frontiers:
        if number == last:
            progress[worker] = max(progress.get(worker, frontier), frontier)
    return min(progress.values())


def drop_unfinished_snapshots(directory: Path) -> int:
    """Delete the snapshots of epochs the last run never completed; returns how many.

    A run writes each step's snapshots as each epoch ends for that step, and the epoch
    completes once every step's are written. A run killed in between leaves snapshots of
    an epoch at or after the one the next run resumes from. Bytewax never loads those
    (it loads each key's latest snapshot before the resume epoch), but the next run
    overwrites only those of the keys it touches again in that epoch: a partition's
    state that is not touched keeps its stale snapshot, and a later resume would load it
    beside its source's newer offsets, counting the replayed records twice. So before the
    run starts, every snapshot of the resume epoch or later goes. Does nothing (returns
    0) unless `directory` holds every partition (`resume_epoch`).
    """
    epoch = resume_epoch(directory)
    if epoch is None:
        return 0
    dropped = 0
    for path in directory.glob(PARTITION_GLOB):
        with closing(sqlite3.connect(path)) as db, db:
            dropped += db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
    return dropped


def init_recovery_dir(directory: Path, partition: RecoveryPartition | None = None) -> bool:
    """Create `directory` and `partition` in it unless it is there, or the directory holds
    partitions of another count. Returns whether it created the partition.

    Safe when several processes of one cluster start at once on a shared directory: each
    creates its own partition under a lock.
    """
    partition = partition or RecoveryPartition()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        if (directory / partition.file_name).exists():
            return False
        counts = partition_counts(directory)
        if counts and counts != {partition.count}:
            logger.warning(
                "recovery: %s holds partitions of a %s-partition set, not %d: resuming from "
                "them (Bytewax needs every one of them reachable by some process)",
                directory,
                "/".join(str(c) for c in sorted(counts)),
                partition.count,
            )
            return False
        # Bytewax initialises a whole set; keep only our own. Same file system: the rename
        # is atomic, so a crash leaves no half-made partition behind.
        with tempfile.TemporaryDirectory(dir=directory, prefix=".init-") as scratch:
            init_db_dir(Path(scratch), partition.count)
            shutil.move(Path(scratch) / partition.file_name, directory / partition.file_name)
        return True


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Held by one process of those sharing `directory` at a time."""
    with (directory / ".init.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def disk_space(directory: Path) -> tuple[int, int]:
    """(bytes the recovery partitions in `directory` take with their SQLite journals,
    bytes free on its file system for unprivileged writers)."""
    taken = sum(p.stat().st_blocks * 512 for p in directory.glob(f"{PARTITION_GLOB}*"))
    return taken, shutil.disk_usage(directory).free


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class RecoverySpace:
    """Whether the file system of a recovery directory has room for the next snapshots.

    It needs `min_free` bytes free, or `margin` times the largest growth of the partitions
    seen between two calls of `check()` if that is more (about a snapshot's size: Bytewax
    writes every key changed in an epoch).

    >>> space = RecoverySpace(Path("/r"), usage=lambda _: (1_000, 100 << 20))
    >>> space.check() is None
    True
    """

    def __init__(
        self,
        directory: Path,
        *,
        min_free: int = MIN_FREE_BYTES,
        margin: int = GROWTH_MARGIN,
        usage: Callable[[Path], tuple[int, int]] = disk_space,
    ) -> None:
        self.directory = directory
        self._min_free = min_free
        self._margin = margin
        self._usage = usage
        self._last_used: int | None = None
        self._largest_growth = 0

    @property
    def needed(self) -> int:
        """The free space the flow keeps for its next snapshots."""
        return max(self._min_free, self._margin * self._largest_growth)

    def check(self) -> str | None:
        """None while there is room (or it cannot tell); else the one line that says so
        and what to do."""
        try:
            used, free = self._usage(self.directory)
        except OSError as e:
            logger.debug("recovery: cannot tell the free space of %s: %s", self.directory, e)
            return None
        needed = self.needed  # from the growth seen before: not what just filled the disk
        if self._last_used is not None:
            self._largest_growth = max(self._largest_growth, used - self._last_used)
        self._last_used = used
        if free >= needed:
            return None
        space = (
            "no space left on device"
            if free == 0
            else f"{_size(free)} free, {_size(needed)} needed for the next snapshots"
        )
        return (
            f"recovery directory {self.directory} is full ({space}): free space and "
            "restart; state up to the last complete snapshot is kept"
        )


def prepare_recovery() -> bool:
    """Under `python -m bytewax.run`, make its recovery partition ready, or say it is off.

    Returns whether the flow resumes from committed recovery state (`has_committed_state`).
    """
    args = bytewax_run_args()
    if args is None:
        return False
    directory = args["recovery_directory"]
    if directory is None:
        logger.warning(
            "recovery is off: a crash loses open windows and replays from %s; "
            "run with -r DIR -s SECONDS -b SECONDS to turn it on",
            "KAFKA_STARTING_OFFSET",
        )
        return False
    partition = own_partition(args)
    if init_recovery_dir(Path(str(directory)), partition):
        logger.info(
            "recovery: created partition %d of %d in %s (no earlier state: a fresh start)",
            partition.index,
            partition.count,
            directory,
        )
    else:
        logger.info(
            "recovery: resuming from %s (snapshot every %s, backups kept %s)",
            directory,
            args["snapshot_interval"],
            args["backup_interval"],
        )
        with _locked(Path(str(directory))):
            dropped = drop_unfinished_snapshots(Path(str(directory)))
        if dropped:
            logger.info(
                "recovery: dropped %d snapshots of the epoch the last run did not complete",
                dropped,
            )
    stopper = flow_stopper()
    if stopper is not None:
        stopper.install()
        stopper.watch(RecoverySpace(Path(str(directory))).check)
    return has_committed_state(Path(str(directory)))
