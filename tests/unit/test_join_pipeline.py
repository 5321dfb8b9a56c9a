"""A pipeline with a temporal join: tables keyed and filtered by joined fields, the same
results whatever the interleaving of the two topics, batch sizes and replays."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest

from tests.support.joined import DEVICES, READINGS, T, sensors, site_of, streams
from waxhouse import Pipeline, PipelineError, Schema, Table, agg
from waxhouse.joins import ReferencePartition, TemporalJoin
from waxhouse.records import InputBatch
from waxhouse.tables import tumbling
from waxhouse.testing import Record, run


@pytest.mark.parametrize("seed", [1, 2])
def test_the_join_gives_the_same_rows_whatever_the_interleaving(seed: int) -> None:
    readings, versions = streams(seed)
    pipeline = sensors()
    results = [
        run(pipeline, readings, topic="readings", reference=versions, batch_size=size)
        for size in (13, 200)
    ]
    results.append(
        run(
            pipeline,
            readings,
            topic="readings",
            reference=versions,
            batch_size=40,
            replay_every=3,
        )
    )
    first = results[0]
    assert all(result.rows == first.rows for result in results[1:])
    assert all(result.dead_letters == first.dead_letters for result in results[1:])
    assert first.rows["alerts"], "some devices overheat for three readings in a row"
    assert any(row["over_limit"] for row in first.rows["device_stats"])
    late_versions = [d for d in first.dead_letters if d.source.startswith("devices/")]
    assert late_versions and all(d.reason == "late" for d in late_versions)

    # site_stats against the plain rule: each on-time reading counted under its site.
    expected: dict[tuple[int, str], int] = {}
    late_readings = {
        d.source for d in first.dead_letters if d.reason == "late" and "site_stats" in d.error
    }
    for partition in range(3):
        offset = 0
        for record in readings:
            if record.partition != partition:
                continue
            if f"readings/{partition}/{offset}" not in late_readings:
                value = record.value
                start = value["ts"] - value["ts"] % 60_000
                site = site_of(versions, value["device_id"], value["ts"])
                expected[(start, site)] = expected.get((start, site), 0) + 1
            offset += 1
    got = {(row["window_start"], row["site"]): row["readings"] for row in first.rows["site_stats"]}
    assert got == expected
    assert any(site == "" for _, site in got), "devices without a version count under ''"


def test_a_join_must_name_an_event_field_and_must_not_shadow_one() -> None:
    tables = [Table("t", key="device_id", window=tumbling(60), aggregates={"n": agg.count()})]
    devices = TemporalJoin("devices", DEVICES, on="device", key="device_id", take={"site": ""})
    with pytest.raises(PipelineError, match="no field 'device'"):
        Pipeline("p", READINGS, key="device_id", join=devices, tables=tables)
    shadow = TemporalJoin("devices", DEVICES, on="device_id", take={"device_id": ""})
    with pytest.raises(PipelineError, match="already have 'device_id'"):
        Pipeline("p", READINGS, key="device_id", join=shadow, tables=tables)


def test_an_idle_partition_lets_no_time_pass_while_its_events_wait_in_the_join() -> None:
    compiled = sensors().compile()
    join = compiled.pipeline.join
    assert join is not None
    state = compiled.partition_state("readings/0", ["devices/0"])
    reference = ReferencePartition("devices/0", join, compiled.lateness_ms)

    def parsed(schema: Schema, part: str, values: list[dict]) -> list[tuple]:
        records = [Record(value, timestamp_ms=T) for value in values]
        batch = InputBatch(
            part, list(range(len(records))), [r.encoded() for r in records], [T] * len(records)
        )
        return schema.parse_batch(batch, 10**12)[0]

    version = {"device_id": "d1", "site": "north", "temp_max": 30.0, "valid_from": T + 100_000}
    update, _ = reference.process(parsed(DEVICES, "devices/0", [version]))
    state.reference(update)  # the registry's watermark: 90 s
    early = {"reading_id": "a", "device_id": "d1", "ts": T + 1_000, "temperature": 20.0}
    state.process(parsed(READINGS, "readings/0", [early]))  # released at once
    waiting = {"reading_id": "b", "device_id": "d1", "ts": T + 95_000, "temperature": 40.0}
    state.process(parsed(READINGS, "readings/0", [waiting]))  # waits for the registry
    state.idle(3_600_000)  # an hour without readings: no time passes for the waiting one
    out = state.reference(reference.idle(20_000))  # the registry moves on: released
    assert [d for d in out.dead_letters if d.reason == "late"] == []
    columns = compiled.tables["device_stats"].columns
    start, end = columns.index("window_start"), columns.index("window_end")
    rows = state.flush().tables["device_stats"]
    # The waiting reading is in its 5 sliding windows (300 s every 60 s), on time.
    assert len([row for row in rows if row[start] <= T + 95_000 < row[end]]) == 5


def test_the_flow_step_reports_waiting_events_and_the_reference_watermark() -> None:
    from waxhouse.connectors.metrics import JOIN_WAITING, REFERENCE_WATERMARK
    from waxhouse.dataflow import ForPartition, ParsedBatch, PartitionLogic

    compiled = sensors().compile()
    join = compiled.pipeline.join
    assert join is not None
    logic = PartitionLogic.builder(compiled, reference_parts=lambda: ["devices/0"])(None)
    readings, _ = streams(5)
    mine = [r for r in readings if r.partition == 0][:20]
    batch = InputBatch("readings/0", list(range(20)), [r.encoded() for r in mine], [T] * 20)
    events, dead = compiled.schema.parse_batch(batch, 10**12)
    logic.on_batch([ParsedBatch("readings/0", events, dead)])
    assert JOIN_WAITING.labels(partition="readings/0")._value.get() == len(events)
    assert REFERENCE_WATERMARK.labels(partition="readings/0")._value.get() == 0
    reference = ReferencePartition("devices/0", join, compiled.lateness_ms)
    version = Record(
        {"device_id": "d1", "site": "s", "temp_max": None, "valid_from": T + 10**7},
        timestamp_ms=T,
    )
    update, _ = reference.process(
        compiled.pipeline.join.schema.parse_batch(
            InputBatch("devices/0", [0], [version.encoded()], [T]), 10**12
        )[0]
    )
    logic.on_batch([ForPartition("readings/0", update)])
    assert JOIN_WAITING.labels(partition="readings/0")._value.get() == 0
    watermark = REFERENCE_WATERMARK.labels(partition="readings/0")._value.get()
    assert watermark == (T + 10**7 - compiled.lateness_ms) / 1000


def test_a_restored_step_asks_once_to_be_woken_so_its_first_epoch_snapshots_it() -> None:
    """Bytewax snapshots a key only in the epochs that wake it: a restored logic asks to
    be woken at once, then no more; a new one never asks."""
    from bytewax.operators import StatefulBatchLogic

    from waxhouse.dataflow import PartitionLogic, ReferenceLogic

    compiled = sensors().compile()
    join = compiled.pipeline.join
    assert join is not None
    windows = PartitionLogic.builder(compiled, reference_parts=lambda: ["devices/0"])
    reference = ReferenceLogic.builder(join, compiled.lateness_ms)
    state = compiled.partition_state("readings/0", ["devices/0"])
    versions = ReferencePartition("devices/0", join, compiled.lateness_ms)
    for build, snapshot in ((windows, state), (reference, versions)):
        assert build(None).notify_at() is None
        restored = build(pickle.dumps(snapshot))
        due = restored.notify_at()
        assert due is not None and due <= datetime.now(timezone.utc)
        assert restored.on_notify() == ([], StatefulBatchLogic.RETAIN)
        assert restored.notify_at() is None
