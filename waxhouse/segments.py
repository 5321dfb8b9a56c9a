"""Sealed pieces of state that never change once made, so snapshots can keep them by name.

A large state (a key log of `waxhouse.engine`, the remembered identities of
`waxhouse.dedup`) is kept as a list of `Segment`s; a flow with recovery writes each sealed
one to a file once (`waxhouse.snapshots`) and from then on snapshots only its name.
"""

from __future__ import annotations

import pickle
from typing import Any

SEGMENT_BYTES = 64 * 1024
"""A segment this large is sealed: never changed again, so it can be kept by reference.
Changes smaller than this are merged into the log's last segment instead."""


class Segment:
    """Part of a large state (a key log, `waxhouse.engine.KeyedState`; remembered
    identities, `waxhouse.dedup`): pickled data that never changes once the segment is
    sealed (`SEGMENT_BYTES` or more; a new one is started then).

    Pickled plainly, it is its bytes. A flow with recovery pickles snapshots with
    `waxhouse.snapshots`, which writes each sealed segment to a file once and from then on
    puts only its `name` in the snapshot. Windows (`WindowState`) are kept as plain bytes:
    an open window changes in every epoch whose events reach it, and would be a new file
    each time.
    """

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str | None = None) -> None:
        self.data = data
        self.name = name

    @classmethod
    def of(cls, value: object) -> Segment:
        return cls(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def sealed(self) -> bool:
        return len(self.data) >= SEGMENT_BYTES

    def load(self) -> Any:
        return pickle.loads(self.data)

    def __reduce__(self) -> tuple[type[Segment], tuple[bytes]]:
        return Segment, (self.data,)


def as_segment(blob: Segment | bytes) -> Segment:
    """A segment from a snapshot, also from one written before segments (plain bytes)."""
    return blob if isinstance(blob, Segment) else Segment(blob)
