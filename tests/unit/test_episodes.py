"""Episode windows: a key's runs of consecutive final events for which a condition holds,
against a brute-force reading of the rule, with replays."""

from __future__ import annotations

import random
from itertools import accumulate
from typing import Any

import pytest

from tests.support.joined import READINGS
from waxhouse import Pipeline, PipelineError, Table, agg
from waxhouse.tables import episodes
from waxhouse.testing import Record, run

T = 1_800_000_000_000
LATENESS = 10_000
LIMIT = 3_000  # hundredths: 30.00 °C


def hot(r: Any) -> bool:
    return bool(r.temperature > LIMIT)


def has_temperature(r: Any) -> bool:
    return r.temperature is not None


def alerts_pipeline(at_least: int = 3) -> Pipeline:
    return Pipeline(
        "sensors",
        READINGS,
        key="device_id",
        lateness=LATENESS / 1000,
        tables=[
            Table(
                "alerts",
                key="device_id",
                window=episodes(
                    hot,
                    at_least=at_least,
                    tie="reading_id",
                    columns=("alert_start", "alert_end", "closed"),
                ),
                where=has_temperature,
                aggregates={"readings": agg.count(), "peak_temp": agg.max("temperature")},
            )
        ],
    )


def stream(seed: int, n: int) -> list[Record]:
    rng = random.Random(seed)
    out, clock = [], T
    hot_devices: set[str] = set()
    for i in range(n):
        clock += rng.randrange(0, 1_500)
        device = f"d{rng.randrange(6)}"
        if rng.random() < 0.05:
            hot_devices ^= {device}  # a device overheats for a while, then cools
        temperature: float | None = 35.0 if device in hot_devices else 20.0
        if rng.random() < 0.1:
            temperature = None
        elif rng.random() < 0.1:
            temperature = rng.choice([25.0, 40.0])
        ts = clock - (rng.randrange(0, 25_000) if rng.random() < 0.15 else 0)
        value = {"reading_id": f"r{i:05d}", "device_id": device, "ts": ts}
        value["temperature"] = temperature
        out.append(Record(value, partition=rng.randrange(2), timestamp_ms=clock))
    return out


def reference(records: list[Record], at_least: int) -> list[dict[str, Any]]:
    """The rule read plainly: per partition, the events on time when they arrived and final
    by the end, sorted by (ts, reading_id); per device, the runs of hot ones."""
    rows: list[dict[str, Any]] = []
    for partition in sorted({r.partition for r in records}):
        mine = [r.value for r in records if r.partition == partition]
        marks = list(accumulate((v["ts"] for v in mine), max, initial=-(2**62)))
        end = marks[-1]
        taken = [
            v
            for i, v in enumerate(mine)
            if v["temperature"] is not None
            and v["ts"] + LATENESS >= marks[i]
            and v["ts"] + LATENESS < end
        ]
        taken.sort(key=lambda v: (v["ts"], v["reading_id"]))
        runs: dict[str, list[dict]] = {}

        def emit(device: str, run: list[dict], closed: int) -> None:
            if len(run) >= at_least:
                rows.append(
                    {
                        "device_id": device,
                        "alert_start": run[0]["ts"],
                        "alert_end": run[-1]["ts"],
                        "readings": len(run),
                        "peak_temp": max(round(v["temperature"] * 100) for v in run),
                        "closed": closed,
                    }
                )

        for v in taken:
            device = v["device_id"]
            if round(v["temperature"] * 100) > LIMIT:
                runs.setdefault(device, []).append(v)
            elif device in runs:
                emit(device, runs.pop(device), 1)
        for device, still_open in runs.items():
            emit(device, still_open, 0)
    return sorted(rows, key=lambda r: (r["device_id"], r["alert_start"]))


def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("device_id", "alert_start", "alert_end", "readings", "peak_temp", "closed")
    out = []
    for row in rows:
        picked = {k: row[k] for k in keep}
        picked["peak_temp"] = round(picked["peak_temp"] * 100)
        out.append(picked)
    return sorted(out, key=lambda r: (r["device_id"], r["alert_start"]))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("at_least", [1, 3])
def test_episodes_match_the_rule_read_plainly_also_through_replays(
    seed: int, at_least: int
) -> None:
    records = stream(seed, 3_000)
    pipeline = alerts_pipeline(at_least)
    expected = reference(records, at_least)
    assert any(r["closed"] for r in expected) and len(expected) > 5
    straight = run(pipeline, records, topic="readings", batch_size=97)
    assert shown(straight.rows["alerts"]) == expected
    replayed = run(pipeline, records, topic="readings", batch_size=97, replay_every=3)
    assert replayed.rows == straight.rows


def test_an_alert_is_announced_when_it_reaches_its_length_once() -> None:
    records = stream(4, 2_000)
    result = run(alerts_pipeline(3), records, topic="readings", batch_size=50)
    emitted = result.emitted["alerts"]
    rows = result.rows["alerts"]
    assert rows
    # Every alert row, closed or not, started as a run that reached 3 readings.
    assert all(row["readings"] >= 3 for row in rows)
    assert {row[1] for row in emitted} >= {r["alert_start"] for r in rows}


def test_a_run_open_at_the_end_is_written_open_and_closed_by_the_next_run() -> None:
    hot_then_cool = [
        Record(
            {"reading_id": f"r{i}", "device_id": "d1", "ts": T + i * 1_000, "temperature": t},
            timestamp_ms=T + i * 1_000,
        )
        for i, t in enumerate([35.0, 36.0, None, 37.0, 38.0, 20.0])
    ]
    # Up to the fifth reading, plus one 20 s later to make them final: the run is open.
    first = [*hot_then_cool[:5]]
    late_mark = Record(
        {"reading_id": "z", "device_id": "d2", "ts": T + 30_000, "temperature": 1.0},
        timestamp_ms=T + 30_000,
    )
    open_rows = run(alerts_pipeline(3), [*first, late_mark], topic="readings").rows["alerts"]
    assert [(r["readings"], r["closed"]) for r in open_rows] == [(4, 0)]
    whole = [*hot_then_cool, late_mark]
    closed_rows = run(alerts_pipeline(3), whole, topic="readings").rows["alerts"]
    assert [(r["readings"], r["closed"], r["alert_end"]) for r in closed_rows] == [
        (4, 1, T + 4_000)
    ]


def test_an_episodes_table_must_be_keyed_by_the_kafka_key() -> None:
    table = Table(
        "alerts",
        key="reading_id",
        window=episodes(hot, at_least=3),
        aggregates={"n": agg.count()},
    )
    with pytest.raises(PipelineError, match="episodes window needs the Kafka key"):
        Pipeline("p", READINGS, key="device_id", tables=[table]).compile(0)
