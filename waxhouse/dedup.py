"""Deduplication: a copy of an event that a partition already counted counts once.

The contract's rule, per source partition: a valid event whose identity (a pipeline's
`dedup` fields, e.g. `user_id` and `event_id`) equals that of an earlier counted event of
the partition is a dead letter `duplicate` when the earlier one's event time is at least
the partition's watermark when the copy arrives minus the horizon (`DEDUP_SECONDS`). So a
client that retries a batch it already sent, within the horizon, counts its events once.

Counted means on time or late: late events are remembered too. Copies are not: they are
dead letters, not events. Copies, like every dead letter, do not move the watermark.

What is remembered is compact: per identity, a 64-bit hash (xxh3, stable across
processes and platforms, so a snapshot restores anywhere) and the largest event time
counted with it; never the strings. In a snapshot that is 16 bytes per event, in chunks
of `CHUNK_EVENTS` in arrival order: a full chunk is a sealed `Segment`, which a flow with
recovery writes to a file once. A chunk is dropped once the watermark minus the horizon
has passed every event time in it. Two different identities with equal hashes would make
the later a duplicate: with n identities remembered, the chance that a new one collides is
n / 2**64 (a partition remembering ten million: one in 1.8 trillion events).
"""

from __future__ import annotations

import operator
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from typing import Any

import orjson
import xxhash

from waxhouse.segments import Segment

__all__ = ["CHUNK_EVENTS", "DEFAULT_HORIZON_MS", "DedupState", "identity_hashes"]

DEFAULT_HORIZON_MS = 600_000
"""`DEDUP_SECONDS`' default, in milliseconds."""

CHUNK_EVENTS = 4096
"""Remembered events per chunk: 16 bytes each, so a full chunk is a sealed `Segment`."""

_digest = xxhash.xxh3_64_intdigest


def identity_hashes(indexes: Sequence[int]) -> Callable[[list[tuple]], list[int]]:
    """The 64-bit hashes of a batch of events' identities, the strings at `indexes`.

    Never two identities of one arity to the same input: one field hashes its UTF-8; two
    fields hash their concatenation, seeded with the first one's length (`("ab", "c")` and
    `("a", "bc")` are `abc` under seeds 2 and 1); more hash their JSON (`["a","b","c"]`).
    """
    if not indexes:
        raise ValueError("an identity needs at least one field")
    digest = _digest
    if len(indexes) == 1:
        (only,) = indexes
        return lambda events: [digest(e[only].encode()) for e in events]
    if len(indexes) == 2:
        first, second = indexes
        return lambda events: [
            digest((e[first] + e[second]).encode(), len(e[first])) for e in events
        ]
    values = operator.itemgetter(*indexes)
    return lambda events: list(map(digest, map(orjson.dumps, map(values, events))))


class DedupState:
    """One source partition's remembered identities; see the module docstring.

    `identity`: the positions of the identity fields in an event, `names` their names;
    `time_index`: the event time's; `horizon_ms`: how far behind the watermark an earlier
    event may be and still make a copy a duplicate.
    """

    def __init__(
        self, identity: Sequence[int], names: Sequence[str], time_index: int, horizon_ms: int
    ) -> None:
        self.identity = tuple(identity)
        self.names = tuple(names)
        self.time_index = time_index
        self.horizon_ms = horizon_ms
        self.seen: dict[int, int] = {}  # identity hash -> largest event time counted
        self._hashes: list[int] = []  # the open chunk, in arrival order
        self._times: list[int] = []
        self._chunks: deque[tuple[int, Segment]] = deque()  # (largest time, sealed chunk)
        self._hash_all = identity_hashes(self.identity)

    def __len__(self) -> int:
        return len(self.seen)

    @property
    def error(self) -> str:
        """A duplicate's dead-letter error."""
        return (
            f"{', '.join(self.names)}: as an earlier record of this partition, within"
            f" {self.horizon_ms / 1000:g} s of its watermark"
        )

    def split(self, events: list[tuple], watermark: int) -> tuple[list[tuple], list[tuple]]:
        """`events` (in partition order, arriving at `watermark`) -> (the events to count,
        the duplicates). Remembers the events to count."""
        hashes = self._hash_all(events)
        seen = self.seen
        time = self.time_index
        copies: list[tuple] = []
        if not any(map(seen.__contains__, hashes)) and len(set(hashes)) == len(hashes):
            # Every identity new to the partition (the usual batch): all of it counts.
            times = list(map(operator.itemgetter(time), events))
            seen.update(zip(hashes, times, strict=True))
            self._hashes.extend(hashes)
            self._times.extend(times)
            kept = events
            watermark = max(watermark, max(times))
        else:
            kept, copies, watermark = self._split_one_by_one(events, hashes, watermark)
        self._seal()
        self.forget(watermark)
        return kept, copies

    def _split_one_by_one(
        self, events: list[tuple], hashes: list[int], watermark: int
    ) -> tuple[list[tuple], list[tuple], int]:
        seen, get = self.seen, self.seen.get
        time, horizon = self.time_index, self.horizon_ms
        remember_hash, remember_time = self._hashes.append, self._times.append
        kept: list[tuple] = []
        copies: list[tuple] = []
        for event, h in zip(events, hashes, strict=True):
            earlier = get(h)
            if earlier is not None and earlier >= watermark - horizon:
                copies.append(event)
                continue
            ts = event[time]
            seen[h] = ts if earlier is None or ts > earlier else earlier
            remember_hash(h)
            remember_time(ts)
            if ts > watermark:
                watermark = ts
            kept.append(event)
        return kept, copies, watermark

    def forget(self, watermark: int) -> None:
        """Drop the chunks whose every event time is behind `watermark` minus the horizon:
        no copy arriving from now on can be a duplicate of them."""
        limit = watermark - self.horizon_ms
        chunks, seen = self._chunks, self.seen
        while chunks and chunks[0][0] < limit:
            _, chunk = chunks.popleft()
            hashes, _times = _unpack(chunk.load())
            # Each hash whose largest time is behind the limit (a later copy may be newer).
            stale = compress(hashes, map(limit.__gt__, map(seen.get, hashes, repeat(limit))))
            deque(map(seen.pop, stale, repeat(None)), maxlen=0)

    def _seal(self) -> None:
        hashes, times = self._hashes, self._times
        if len(hashes) < CHUNK_EVENTS:
            return
        for start in range(0, len(hashes) - CHUNK_EVENTS + 1, CHUNK_EVENTS):
            end = start + CHUNK_EVENTS
            chunk = (
                array("Q", hashes[start:end]).tobytes(),
                array("q", times[start:end]).tobytes(),
            )
            self._chunks.append((max(times[start:end]), Segment.of(chunk)))
        rest = len(hashes) - len(hashes) % CHUNK_EVENTS
        del hashes[:rest]
        del times[:rest]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "names": self.names,
            "time_index": self.time_index,
            "horizon_ms": self.horizon_ms,
            "chunks": list(self._chunks),
            "open": (_bytes("Q", self._hashes), _bytes("q", self._times)),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["identity"], state["names"], state["time_index"], state["horizon_ms"]
        )
        self._chunks = deque(state["chunks"])
        open_hashes, open_times = _unpack(state["open"])
        self._hashes, self._times = open_hashes.tolist(), open_times.tolist()
        seen = self.seen
        chunks = [_unpack(chunk.load()) for _, chunk in self._chunks]
        for hashes, times in [*chunks, (open_hashes, open_times)]:
            for h, ts in zip(hashes, times, strict=True):
                earlier = seen.get(h)
                if earlier is None or ts > earlier:
                    seen[h] = ts


def _bytes(typecode: str, values: list[int]) -> bytes:
    return array(typecode, values).tobytes()


def _unpack(chunk: tuple[bytes, bytes]) -> tuple[array[int], array[int]]:
    hashes, times = array("Q"), array("q")
    hashes.frombytes(chunk[0])
    times.frombytes(chunk[1])
    return hashes, times
