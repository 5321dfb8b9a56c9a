"""The temporal join's rule: an event takes the version valid at its time, whatever order
the two topics were read in."""

from __future__ import annotations

import pickle
import random

import pytest

from tests.support.joined import DEVICES, READINGS
from waxhouse import Schema
from waxhouse.joins import (
    EMPTY,
    JoinError,
    JoinState,
    ReferencePartition,
    TemporalJoin,
)
from waxhouse.records import InputBatch
from waxhouse.testing import Record

REGISTRY = TemporalJoin("devices", DEVICES, on="device_id", take={"site": "", "temp_max": None})
T = 1_800_000_000_000
LATENESS = 10_000


def parsed(schema: Schema, part: str, values: list[dict], first: int = 0) -> list[tuple]:
    records = [Record(value, timestamp_ms=T) for value in values]
    batch = InputBatch(
        part,
        list(range(first, first + len(records))),
        [r.encoded() for r in records],
        [T] * len(records),
    )
    events, dead = schema.parse_batch(batch, 10**12)
    assert not dead, dead
    return events


def version(device: str, site: str, at: int, temp_max: float | None = None) -> dict:
    return {"device_id": device, "site": site, "temp_max": temp_max, "valid_from": T + at}


def reading(n: int, device: str, at: int) -> dict:
    return {"reading_id": f"r{n}", "device_id": device, "ts": T + at, "temperature": 20.5}


def join_state(parts: list[str]) -> JoinState:
    return JoinState(REGISTRY, parts, READINGS.time_index, READINGS.index(REGISTRY.on))


def taken(events: list[tuple]) -> list[tuple[str, str, int | None]]:
    """(reading_id, site, temp_max) of enriched events."""
    n = len(READINGS.names)
    return [(e[0], e[n], e[n + 1]) for e in events]


def test_a_reading_waits_for_the_reference_watermark_then_takes_its_version() -> None:
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    assert state.add(parsed(READINGS, "readings/0", [reading(1, "d1", 5_000)])) == []
    update, late = reference.process(parsed(DEVICES, "devices/0", [version("d1", "north", 0)]))
    assert not late
    assert state.update(update) == []  # watermark 0 - lateness: not past 5 s yet
    update, _ = reference.process(
        parsed(DEVICES, "devices/0", [version("d2", "east", 15_001)], first=1)
    )
    released = state.update(update)
    assert taken(released) == [("r1", "north", None)]
    assert len(state) == 0


def test_equal_valid_from_takes_the_later_record_and_no_version_takes_the_defaults() -> None:
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    versions = [
        version("d1", "first", 1_000, 30.0),
        version("d1", "second", 1_000, 40.0),
        version("d1", "before", 500),
    ]
    update, _ = reference.process(parsed(DEVICES, "devices/0", versions))
    state.update(update)
    readings = [reading(1, "d1", 999), reading(2, "d1", 1_000), reading(3, "nobody", 1_000)]
    state.add(parsed(READINGS, "readings/0", readings))
    released = state.end()
    assert taken(released) == [
        ("r1", "before", None),
        ("r2", "second", 4_000),  # hundredths
        ("r3", "", None),
    ]


def test_a_version_more_than_the_lateness_behind_is_a_dead_letter_and_changes_nothing() -> None:
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    update, late = reference.process(
        parsed(DEVICES, "devices/0", [version("d1", "new", 60_000), version("d1", "old", 0)])
    )
    assert [d.source for d in late] == ["devices/0/1"]
    assert late[0].reason == "late"
    assert "devices" in late[0].error
    state.update(update)
    # Behind the watermark (50 s) already: released at once, without the late version.
    released = state.add(parsed(READINGS, "readings/0", [reading(1, "d1", 40_000)]))
    assert taken(released) == [("r1", "", None)]


def test_readings_are_released_in_arrival_order_a_waiting_one_holds_back_the_rest() -> None:
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    update, _ = reference.process(parsed(DEVICES, "devices/0", [version("d1", "x", 30_000)]))
    state.update(update)  # watermark 20 s
    out = state.add(
        parsed(
            READINGS,
            "readings/0",
            [reading(1, "d1", 1_000), reading(2, "d1", 25_000), reading(3, "d1", 2_000)],
        )
    )
    assert taken(out) == [("r1", "", None)]
    update, _ = reference.process(parsed(DEVICES, "devices/0", [version("d9", "y", 40_000)], 1))
    assert taken(state.update(update)) == [("r2", "", None), ("r3", "", None)]


def test_the_reference_watermark_is_the_smallest_over_its_partitions() -> None:
    parts = ["devices/0", "devices/1"]
    references = {part: ReferencePartition(part, REGISTRY, LATENESS) for part in parts}
    state = join_state(parts)
    state.add(parsed(READINGS, "readings/0", [reading(1, "d1", 1_000)]))
    update, _ = references["devices/0"].process(
        parsed(DEVICES, "devices/0", [version("d1", "a", 0), version("d1", "b", 50_000)])
    )
    assert state.update(update) == []  # devices/1 has said nothing yet
    # Caught up and never a version: it holds nothing back, until its first version.
    assert references["devices/1"].idle(1_000).watermark == EMPTY
    assert taken(state.update(references["devices/1"].idle(1_000))) == [("r1", "a", None)]
    update, _ = references["devices/1"].process(
        parsed(DEVICES, "devices/1", [version("d2", "b", 5_000)])
    )
    state.update(update)
    assert state.watermark == 5_000 - LATENESS + T


def test_idle_moves_a_quiet_reference_partition_on() -> None:
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    update, _ = reference.process(parsed(DEVICES, "devices/0", [version("d1", "a", 0)]))
    state.update(update)
    state.add(parsed(READINGS, "readings/0", [reading(1, "d1", 3_000)]))
    assert state.update(reference.idle(2_000)) == []
    assert taken(state.update(reference.idle(4_000))) == [("r1", "a", None)]


def test_a_join_must_take_fields_the_reference_has() -> None:
    with pytest.raises(KeyError, match="no field 'colour'"):
        TemporalJoin("devices", DEVICES, on="device_id", take={"colour": ""})
    with pytest.raises(JoinError, match="take at least one field"):
        TemporalJoin("devices", DEVICES, on="device_id", take={})


def run_interleaved(seed: int, versions: list[dict], readings: list[dict]) -> list[tuple]:
    """The two topics read in a random interleaving, in random batch sizes, with a
    snapshot and restore now and then; the released readings."""
    rng = random.Random(seed)
    reference = ReferencePartition("devices/0", REGISTRY, LATENESS)
    state = join_state(["devices/0"])
    out: list[tuple] = []
    v = r = 0
    while v < len(versions) or r < len(readings):
        if r >= len(readings) or (v < len(versions) and rng.random() < 0.5):
            n = rng.randrange(1, 20)
            update, _ = reference.process(parsed(DEVICES, "devices/0", versions[v : v + n], v))
            out += state.update(update)
            v += n
        else:
            n = rng.randrange(1, 40)
            out += state.add(parsed(READINGS, "readings/0", readings[r : r + n], r))
            r += n
        if rng.random() < 0.1:
            state = pickle.loads(pickle.dumps(state))
            reference = pickle.loads(pickle.dumps(reference))
            reference.bind(REGISTRY)
    return out + state.end()


def test_any_interleaving_of_the_two_topics_gives_the_same_enrichment() -> None:
    rng = random.Random(7)
    versions, readings = [], []
    clock = 0
    for _ in range(400):
        clock += rng.randrange(0, 2_000)
        device = f"d{rng.randrange(20)}"
        at = clock - rng.randrange(0, 12_000)  # a few versions late
        versions.append(version(device, f"site{rng.randrange(5)}", at, rng.choice([None, 30.0])))
    clock = 0
    for i in range(1_500):
        clock += rng.randrange(0, 600)
        readings.append(reading(i, f"d{rng.randrange(22)}", clock - rng.randrange(0, 5_000)))
    results = [taken(run_interleaved(seed, versions, readings)) for seed in range(6)]
    assert [r[0] for r in results[0]] == [f"r{i}" for i in range(1_500)]
    assert all(result == results[0] for result in results)
    assert len({site for _, site, _ in results[0]}) > 3


def test_a_tombstone_in_the_reference_is_no_version_and_no_dead_letter() -> None:
    from waxhouse.joins import without_tombstones

    batch = InputBatch(
        "devices/0",
        [7, 8],
        [None, Record(version("d1", "x", 0)).encoded()],
        [T, T],
    )
    versions, dead = DEVICES.parse_batch(without_tombstones(batch), 10**12)
    assert dead == []
    assert [(v.device_id, v.offset) for v in versions] == [("d1", 8)]
