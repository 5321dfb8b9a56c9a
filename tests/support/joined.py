"""A pipeline with a temporal join (readings enriched from a device registry), and
streams of readings and registry versions to feed it: shared by the unit and integration
tests of joins. `flow` is the dataflow, for `python -m bytewax.run tests.support.joined`;
the registry topic is `JOINED_REFERENCE_TOPIC` (default `devices`)."""

from __future__ import annotations

import os
import random
from typing import Any

import waxhouse
from waxhouse import Pipeline, Schema, Table, agg, fields
from waxhouse.joins import TemporalJoin
from waxhouse.tables import episodes, sliding, tumbling
from waxhouse.testing import Record

READINGS = Schema(
    {
        "reading_id": fields.text(32),
        "device_id": fields.text(32),
        "ts": fields.timestamp(),
        "temperature": fields.decimal(2, min=-100, max=200, optional=True),
    },
    event_time="ts",
    name="Reading",
)
Reading = READINGS.event_type
DEVICES = Schema(
    {
        "device_id": fields.text(32),
        "site": fields.text(32),
        "temp_max": fields.decimal(2, min=-100, max=200, optional=True),
        "valid_from": fields.timestamp(),
    },
    event_time="valid_from",
    name="Device",
)
Device = DEVICES.event_type
T = 1_780_000_020_000  # a minute boundary in the past: brokers refuse future timestamps
LATENESS_S = 10


def over_limit(r: Any) -> bool:
    return r.temperature is not None and r.temp_max is not None and r.temperature > r.temp_max


def with_temperature(r: Any) -> bool:
    return r.temperature is not None


def sensors() -> Pipeline:
    return Pipeline(
        "sensors",
        READINGS,
        key="device_id",
        lateness=LATENESS_S,
        join=TemporalJoin(
            "devices",
            DEVICES,
            on="device_id",
            take={"site": "", "temp_max": None},
            topic=os.environ.get("JOINED_REFERENCE_TOPIC", "devices"),
        ),
        tables=[
            Table(
                "device_stats",
                key="device_id",
                window=sliding(300, 60),
                aggregates={
                    "readings": agg.count(),
                    "temp_max": agg.max("temperature"),
                    "over_limit": agg.count(where=over_limit),
                },
            ),
            Table(
                "site_stats",
                key="site",
                window=tumbling(60),
                aggregates={"readings": agg.count(), "devices": agg.count_distinct("device_id")},
            ),
            Table(
                "alerts",
                key="device_id",
                window=episodes(over_limit, at_least=3, tie="reading_id"),
                where=with_temperature,
                aggregates={"readings": agg.count(), "site": agg.first("site", by="reading_id")},
            ),
        ],
    )


def streams(seed: int) -> tuple[list[Record], list[Record]]:
    rng = random.Random(seed)
    versions, clock = [], T
    for _ in range(120):
        clock += rng.randrange(0, 20_000)
        valid_from = clock - (rng.randrange(0, 60_000) if rng.random() < 0.2 else 0)
        value = {
            "device_id": f"d{rng.randrange(8)}",
            "site": f"site-{rng.randrange(3)}",
            "temp_max": rng.choice([None, 30.0, 35.0]),
            "valid_from": valid_from,
        }
        # Keyed by device: a device's versions are all in one partition.
        versions.append(
            Record(value, partition=int(value["device_id"][1:]) % 2, timestamp_ms=clock)
        )
    readings, clock = [], T
    for i in range(3_000):
        clock += rng.randrange(0, 900)
        device = rng.randrange(10)  # d8, d9 never get a version
        value = {
            "reading_id": f"r{i:05d}",
            "device_id": f"d{device}",
            "ts": clock - (rng.randrange(0, 20_000) if rng.random() < 0.1 else 0),
            "temperature": rng.choice([None, 20.0, 33.0, 36.0, 40.0]),
        }
        readings.append(Record(value, partition=device % 3, timestamp_ms=clock))
    return readings, versions


def site_of(versions: list[Record], device: str, ts: int) -> str:
    """The plain rule, from the contract: the version with the largest valid_from <= ts
    (equal: the later record of its partition), among versions that were not late."""
    best: tuple[int, int] | None = None
    site = ""
    for partition in {0, 1}:
        newest = None
        for n, record in enumerate(v for v in versions if v.partition == partition):
            value = record.value
            if newest is not None and value["valid_from"] < newest - LATENESS_S * 1000:
                continue  # late: a dead letter that changes nothing
            newest = value["valid_from"] if newest is None else max(newest, value["valid_from"])
            applies = value["device_id"] == device and value["valid_from"] <= ts
            if applies and (best is None or (value["valid_from"], n) > best):
                best, site = (value["valid_from"], n), value["site"]
    return site


pipeline = sensors()


def __getattr__(name: str) -> Any:
    if name == "flow":  # built when bytewax.run asks for it, not on import
        return waxhouse.flow(pipeline)
    raise AttributeError(name)
