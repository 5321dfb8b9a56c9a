"""Bytewax recovery, ready before the first run: initialise an empty recovery directory.

`python -m bytewax.run FLOW -r DIR -s SECONDS -b SECONDS` (or the `BYTEWAX_RECOVERY_*`
variables) turns recovery on; Bytewax then needs `DIR` to hold initialised partitions.
Called from a flow module while `bytewax.run` imports it (before the dataflow starts),
`prepare_recovery()` creates and initialises `DIR` when it holds none, so the first run
needs no separate `python -m bytewax.recovery` step. A directory that already holds
partitions is left alone: that is the state a restart resumes from.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

from bytewax.recovery import init_db_dir

from waxhouse.runargs import bytewax_run_args

logger = logging.getLogger(__name__)

PARTITION_GLOB = "part-*.sqlite3"


def init_recovery_dir(directory: Path, partitions: int = 1) -> bool:
    """Create and initialise `directory` unless it already holds partitions.

    Safe when several processes of one cluster start at once on a shared directory: the
    first initialises it under a lock, the others find it done. Returns whether it did.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".init.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(directory.glob(PARTITION_GLOB)):
            return False
        init_db_dir(directory, partitions)
        return True


def prepare_recovery() -> None:
    """Under `python -m bytewax.run`, make its recovery directory ready, or say it is off."""
    args = bytewax_run_args()
    if args is None:
        return
    directory = args["recovery_directory"]
    if directory is None:
        logger.warning(
            "recovery is off: a crash loses open windows and replays from %s; "
            "run with -r DIR -s SECONDS -b SECONDS to turn it on",
            "KAFKA_STARTING_OFFSET",
        )
        return
    if init_recovery_dir(Path(str(directory))):
        logger.info("recovery: initialised %s (no earlier state: a fresh start)", directory)
    else:
        logger.info(
            "recovery: resuming from %s (snapshot every %s, backups kept %s)",
            directory,
            args["snapshot_interval"],
            args["backup_interval"],
        )
