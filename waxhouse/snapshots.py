"""Snapshots that write what changed: sealed segments as files in the recovery directory.

Bytewax stores a stateful step's snapshot whole, every epoch, in its SQLite partitions. A
large source partition state is mostly the sealed `Segment`s of its key logs (see
`waxhouse.engine`), which never change once made; `SegmentFiles.dumps` writes each of
them once, to `<recovery dir>/segments/<partition>/<name>`, and puts only its name in the
snapshot. So an epoch's snapshot costs the keys that changed in it and the open windows,
not the whole state.
`SegmentFiles.loads` reads them back on resume.

A file is written completely (to a temporary name, flushed to disk, renamed) before the
snapshot naming it is returned to Bytewax, so a committed snapshot only names files that
exist. A file the latest snapshot no longer names (its segment was compacted away or its
window closed) is deleted once that has been so for `keep_s`: Bytewax keeps superseded
snapshots for the backup interval after the epoch that replaced them is committed, and a
resume may go back that far. Files from a run that crashed before committing the snapshot
that named them are found and deleted in the same way on the first snapshot after a
resume.

The recovery directory is therefore the SQLite partitions and the `segments/` folder
together: back up, move or delete them together.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from waxhouse.errors import WaxhouseError
from waxhouse.segments import Segment

logger = logging.getLogger(__name__)

SEGMENTS_FOLDER = "segments"
MIN_KEEP_SECONDS = 60.0
"""Least time an unnamed file is kept: several epochs for the snapshot naming its
replacement to be committed."""
_TEMPORARY = ".tmp"


class MissingSegmentError(WaxhouseError):
    """A snapshot names a segment file that is not in the recovery directory."""


def keep_seconds(snapshot_interval: timedelta, backup_interval: timedelta) -> float:
    """How long a file no snapshot names any more is kept: the backup interval, and
    ten snapshot intervals (at least `MIN_KEEP_SECONDS`) for the commit."""
    commit = max(MIN_KEEP_SECONDS, 10 * snapshot_interval.total_seconds())
    return backup_interval.total_seconds() + commit


def folder_name(part: str) -> str:
    """A file-system-safe folder name, one per source partition and never shared."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", part)[:80].lstrip(".")
    return f"{readable}-{hashlib.sha256(part.encode()).hexdigest()[:12]}"


class _Pickler(pickle.Pickler):
    def __init__(self, file: Any, files: SegmentFiles, folder: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._files = files
        self._folder = folder
        self.named: set[str] = set()

    def persistent_id(self, obj: Any) -> str | None:
        if type(obj) is not Segment or not obj.sealed:
            return None
        if obj.name is None:
            obj.name = self._files.write(self._folder, obj.data)
        self.named.add(obj.name)
        return obj.name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, files: SegmentFiles) -> None:
        super().__init__(file)
        self._files = files
        self.named: set[str] = set()

    def persistent_load(self, pid: Any) -> Segment:
        name = str(pid)
        self.named.add(name)
        return Segment(self._files.read(name), name)


class SegmentFiles:
    """One source partition's segment files, for one stateful step's snapshots.

    `root`: the recovery directory's `segments/` folder. `keep_s`: see `keep_seconds`.
    """

    def __init__(self, root: Path, keep_s: float, clock: Any = time.monotonic) -> None:
        self.root = root
        self.keep_s = keep_s
        self._clock = clock
        self._named: set[str] = set()  # by the latest snapshot, as folder/file
        self._unnamed_since: dict[str, float] = {}
        self._swept: set[str] = set()  # folders looked through for strays

    def dumps(self, state: Any, part: str) -> bytes:
        """`state` pickled, its sealed segments written once and named."""
        folder = folder_name(part)
        buffer = io.BytesIO()
        pickler = _Pickler(buffer, self, folder)
        pickler.dump(state)
        self._after_snapshot(pickler.named, folder)
        return buffer.getvalue()

    def loads(self, data: bytes) -> Any:
        """A snapshot's state, its segments read from their files."""
        unpickler = _Unpickler(io.BytesIO(data), self)
        state = unpickler.load()
        self._named = set(unpickler.named)
        return state

    def write(self, folder: str, data: bytes) -> str:
        """Write a segment, completely, and return its name (`folder/file`)."""
        directory = self.root / folder
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{folder}/{uuid.uuid4().hex}"
        path = self.root / name
        temporary = path.with_name(path.name + _TEMPORARY)
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        return name

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingSegmentError(
                f"recovery snapshot names {path}, which is missing: the recovery directory "
                f"must be kept whole (its part-*.sqlite3 files and {SEGMENTS_FOLDER}/ together)"
            ) from None

    def _after_snapshot(self, named: set[str], folder: str) -> None:
        now = self._clock()
        for name in self._named - named:
            self._unnamed_since.setdefault(name, now)
        for name in named:
            self._unnamed_since.pop(name, None)
        self._named = named
        if folder not in self._swept:
            self._swept.add(folder)
            self._find_strays(folder, now)
        self._delete_expired(now)

    def _find_strays(self, folder: str, now: float) -> None:
        """Files in the folder that no snapshot of this run named: from a run that was
        stopped before committing them, or from older snapshots. Kept `keep_s` from now."""
        directory = self.root / folder
        if not directory.is_dir():
            return
        for path in directory.iterdir():
            name = f"{folder}/{path.name}"
            if name not in self._named:
                self._unnamed_since.setdefault(name, now)

    def _delete_expired(self, now: float) -> None:
        expired = [n for n, since in self._unnamed_since.items() if now - since >= self.keep_s]
        for name in expired:
            del self._unnamed_since[name]
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                logger.warning("recovery: could not delete %s: %s", self.root / name, e)


def segment_files(args: dict[str, object] | None) -> Callable[[], SegmentFiles] | None:
    """For a flow started by `bytewax.run` with recovery, what makes each stateful
    step's `SegmentFiles`; else None."""
    if args is None or args.get("recovery_directory") is None:
        return None
    snapshot = args.get("snapshot_interval")
    backup = args.get("backup_interval")
    keep = keep_seconds(
        snapshot if isinstance(snapshot, timedelta) else timedelta(seconds=10),
        backup if isinstance(backup, timedelta) else timedelta(0),
    )
    root = Path(str(args["recovery_directory"])) / SEGMENTS_FOLDER
    return lambda: SegmentFiles(root, keep)
