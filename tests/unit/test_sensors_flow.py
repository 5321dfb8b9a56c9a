"""The sensors flow's pipeline against the contract's oracle, in memory: all four tables
and the dead letters, with replays from snapshots, registry versions arriving after the
readings they apply to, and the edge cases the contract names."""

from __future__ import annotations

import importlib
from decimal import Decimal
from typing import Any

import pytest

from tests.support.sensors import generated, oracle_settings
from tests.support.sensors_oracle import SensorsExpected, sensors_oracle
from waxhouse import Pipeline
from waxhouse.connectors.sensors_generator import SensorsConfig
from waxhouse.settings import Settings
from waxhouse.testing import Record, Result, run

# A horizon the generated minutes of readings outlast: some readings sent again count again.
SETTINGS = Settings(dedup_seconds=60)


def pipeline() -> Pipeline:
    """Declared from the flow module as imported now: other tests may import it afresh,
    and events pickle by the module's current classes."""
    return importlib.import_module("dataflows.sensors").declare(SETTINGS)


TABLES = ("device_stats", "site_stats", "device_batches", "alerts")


def run_sensors(readings: list[Record], registry: list[Record], **options: Any) -> Result:
    return run(
        pipeline(),
        readings,
        topic="readings",
        reference=registry,
        reference_topic="devices",
        lateness_ms=SETTINGS.lateness_ms,
        dedup_ms=SETTINGS.dedup_ms,
        **options,
    )


def assert_matches(result: Result, expected: SensorsExpected) -> None:
    for table in TABLES:
        want = getattr(expected, table)
        got = result.rows[table]
        assert len(got) == len(want), table
        assert sorted(map(_comparable, got), key=repr) == sorted(
            map(_comparable, want), key=repr
        ), table
    dead = {row.source: (row.reason, row.error) for row in result.dead_letters}
    assert set(dead) == set(expected.dead_letters)
    for source, (reason, detail) in expected.dead_letters.items():
        assert dead[source][0] == reason, source
        for output in detail.split(", ") if reason == "late" else ():
            assert output in dead[source][1], (source, dead[source][1])


def _comparable(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in row.items()))


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_readings_match_the_oracle(seed: int) -> None:
    """With readings sent again, soon (duplicates) and long after (counted again)."""
    config = SensorsConfig(seed=seed, events=12_000, devices=40, sites=5)
    readings, registry = generated(config, retries_ms=SETTINGS.dedup_ms)
    expected = sensors_oracle(readings.raw, registry.raw, oracle_settings(SETTINGS))
    assert expected.alerts and expected.device_batches  # the input exercises every table
    assert {"late", "invalid_event", "invalid_json", "duplicate"} <= {
        r for r, _ in expected.dead_letters.values()
    }
    result = run_sensors(readings.records, registry.records)
    assert_matches(result, expected)


def test_replays_from_snapshots_change_nothing() -> None:
    config = SensorsConfig(seed=3, events=6_000, devices=20, sites=4)
    readings, registry = generated(config, retries_ms=SETTINGS.dedup_ms)
    expected = sensors_oracle(readings.raw, registry.raw, oracle_settings(SETTINGS))
    result = run_sensors(readings.records, registry.records, replay_every=3, batch_size=200)
    assert_matches(result, expected)


def test_registry_versions_after_the_readings_they_apply_to() -> None:
    """The registry arrives late in wall time (record timestamps after every reading):
    readings wait for it, and take the versions valid at their time."""
    config = SensorsConfig(seed=4, events=5_000, devices=20, sites=4)
    readings, registry = generated(config)
    last = max(r.timestamp_ms for r in readings.records)
    delayed = [
        Record(r.value, r.partition, last + 1 + i, r.offset) for i, r in enumerate(registry.records)
    ]
    expected = sensors_oracle(readings.raw, registry.raw, oracle_settings(SETTINGS))
    assert_matches(run_sensors(readings.records, delayed), expected)


def test_every_alert_row_has_its_notice() -> None:
    config = SensorsConfig(seed=5, events=8_000, devices=20, sites=4)
    readings, registry = generated(config)
    result = run_sensors(readings.records, registry.records)
    alerts = {(a["device_id"], a["alert_start"]) for a in result.rows["alerts"]}
    notices = result.notices["alerts"]
    assert alerts == {(n["device_id"], n["alert_start"]) for n in notices}
    assert all(n["readings"] == SETTINGS.alert_readings and n["closed"] == 0 for n in notices)


# --- the edge cases the contract names, by hand ----------------------------------------

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a multiple of every window


def reading(n: int, ts: int, temperature: float | None, device: str = "d1", **extra: Any) -> Record:
    value: dict[str, Any] = {"reading_id": f"r{n:03d}", "device_id": device, "ts": ts, **extra}
    if temperature is not None:
        value["temperature"] = temperature
    else:
        value.setdefault("humidity", 50)
    return Record(value, timestamp_ms=ts, offset=n)


def version(
    n: int, valid_from: int, temp_max: float | None, site: str = "s1", device: str = "d1"
) -> Record:
    value = {"device_id": device, "site": site, "temp_max": temp_max, "valid_from": valid_from}
    return Record(value, timestamp_ms=T0 - 1, offset=n)


def test_a_reading_at_a_window_edge_is_in_exactly_size_over_slide_windows() -> None:
    result = run_sensors([reading(0, T0, 20.0)], [version(0, T0 - 1, 50.0)])
    starts = [row["window_start"] for row in result.rows["device_stats"]]
    size, slide = SETTINGS.sensor_window_seconds * 1000, SETTINGS.sensor_slide_seconds * 1000
    assert len(starts) == size // slide
    assert starts == [T0 - size + slide * (i + 1) for i in range(size // slide)]


def test_equal_valid_froms_take_the_later_record_and_late_versions_change_nothing() -> None:
    registry = [
        version(0, T0, 30.0, site="first"),
        version(1, T0, 30.0, site="second"),  # same valid_from: the later record wins
        version(2, T0 + 60_000, 30.0, site="third"),
        version(3, T0 + 1_000, 30.0, site="stale"),  # > lateness behind T0 + 60 s: late
    ]
    result = run_sensors([reading(0, T0 + 5_000, 20.0), reading(1, T0 + 61_000, 20.0)], registry)
    sites = {row["site"] for row in result.rows["site_stats"]}
    assert sites == {"second", "third"}
    assert [(d.source, d.reason) for d in result.dead_letters] == [("devices/0/3", "late")]


def test_a_device_with_no_version_has_no_site_and_no_limit() -> None:
    result = run_sensors(
        [reading(i, T0 + i * 1000, 150.0, device="ghost") for i in range(5)],
        [version(0, T0, 30.0)],
    )
    (site,) = result.rows["site_stats"]
    assert site["site"] == "" and site["over_limit"] == 0
    assert result.rows["alerts"] == []


def test_readings_without_temperature_neither_extend_nor_end_an_episode() -> None:
    temps = [40.0, None, 41.0, None, None, 42.0, 20.0]  # 3 over the limit, then one below
    readings = [reading(i, T0 + i * 1000, t) for i, t in enumerate(temps)]
    readings.append(reading(99, T0 + 60_000, 20.0))  # moves the watermark: all final
    result = run_sensors(readings, [version(0, T0 - 1, 30.0)])
    (alert,) = result.rows["alerts"]
    assert (alert["alert_start"], alert["alert_end"]) == (T0, T0 + 5_000)
    assert (alert["readings"], alert["closed"], alert["peak_temp"]) == (3, 1, Decimal("42.00"))
