"""An independent oracle for the sensors flow, written from the contract
(`shared/DESIGN.md`, "The sensors flow"), sharing no code with the pipeline: stdlib
`json`, the clickstream oracle's timestamp rule, sorting and dictionaries.

`sensors_oracle(readings, registry, ...)` gives the four tables as a plain `SELECT` on
each view shows them (times in epoch ms, decimals as `Decimal`, averages as floats) and
the dead letters by source. Records are `(partition, offset, timestamp_ms, value)`, each
partition's in offset order; a registry value of None is a tombstone. The run is
bounded: the registry is read to its end, so a reading takes the version of the plain
rule among the versions that were not late. Deduplication is not applied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.support.oracle import Invalid, oracle_object, oracle_ts

Raw = tuple[int, int, int, bytes | None]  # partition, offset, record timestamp, value


@dataclass(frozen=True)
class SensorsSettings:
    lateness_ms: int = 10_000
    max_future_ms: int = 3_600_000
    window_ms: int = 60_000  # site_stats
    sliding_ms: int = 300_000
    slide_ms: int = 60_000
    batch_size: int = 100
    alert_readings: int = 3
    dedup_ms: int = 600_000


@dataclass
class SensorsExpected:
    device_stats: list[dict[str, Any]] = field(default_factory=list)
    site_stats: list[dict[str, Any]] = field(default_factory=list)
    device_batches: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # source -> (reason, error)


def _text(obj: dict, name: str, longest: int = 128) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        raise Invalid("invalid_event", name)
    return value


def _hundredths(obj: dict, name: str, low: float, high: float) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Invalid("invalid_event", name)
    return round(value * 100)


def reading_of(raw: bytes | None) -> dict:
    if raw is None:
        raise Invalid("invalid_json")
    obj = oracle_object(raw)
    reading = {
        "reading_id": _text(obj, "reading_id"),
        "device_id": _text(obj, "device_id"),
        "ts": oracle_ts(obj.get("ts")),
        "temperature": _hundredths(obj, "temperature", -100, 200),
        "humidity": _hundredths(obj, "humidity", 0, 100),
    }
    if reading["temperature"] is None and reading["humidity"] is None:
        raise Invalid("invalid_event", "temperature")
    return reading


def version_of(raw: bytes) -> dict:
    obj = oracle_object(raw)
    return {
        "device_id": _text(obj, "device_id"),
        "site": _text(obj, "site"),
        "temp_max": _hundredths(obj, "temp_max", -100, 200),
        "valid_from": oracle_ts(obj.get("valid_from")),
    }


def _versions(
    registry: Iterable[Raw], topic: str, lateness_ms: int, dead: dict[str, tuple[str, str]]
) -> dict[str, list[tuple[int, int, dict]]]:
    """Per device, its versions that were not late: (valid_from, offset, version)."""
    by_device: dict[str, list[tuple[int, int, dict]]] = defaultdict(list)
    newest: dict[int, int] = {}
    for partition, offset, _, raw in registry:
        if raw is None:
            continue  # a tombstone: ignored
        source = f"{topic}/{partition}/{offset}"
        try:
            version = version_of(raw)
        except Invalid as e:
            dead[source] = (e.reason, e.field)
            continue
        held = newest.get(partition)
        if held is not None and version["valid_from"] < held - lateness_ms:
            dead[source] = ("late", "")
            continue
        newest[partition] = max(held or version["valid_from"], version["valid_from"])
        by_device[version["device_id"]].append((version["valid_from"], offset, version))
    return by_device


def _enrich(reading: dict, versions: dict[str, list[tuple[int, int, dict]]]) -> None:
    applying = [v for v in versions.get(reading["device_id"], []) if v[0] <= reading["ts"]]
    if applying:
        _, _, version = max(applying, key=lambda v: (v[0], v[1]))
        reading["site"], reading["temp_max"] = version["site"], version["temp_max"]
    else:
        reading["site"], reading["temp_max"] = "", None


def _over(reading: dict) -> bool:
    t, limit = reading["temperature"], reading["temp_max"]
    return t is not None and limit is not None and t > limit


def _temps(rows: list[dict], name: str) -> list[int]:
    return [r[name] for r in rows if r[name] is not None]


def _avg(values: list[int]) -> float | None:
    return sum(values) / len(values) / 100 if values else None


def _dec(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value).scaleb(-2)


def sensors_oracle(
    readings: Iterable[Raw],
    registry: Iterable[Raw],
    settings: SensorsSettings = SensorsSettings(),
    *,
    topic: str = "readings",
    registry_topic: str = "devices",
    live: bool = False,
) -> SensorsExpected:
    """`live`: what a live run shows once every partition has idled long enough for all
    its windows to close: every reading final, and only rows a live run writes (complete
    batches, ended episodes)."""
    s = settings
    out = SensorsExpected()
    versions = _versions(registry, registry_topic, s.lateness_ms, out.dead_letters)
    windows: dict[tuple[str, int], list[dict]] = defaultdict(list)  # device_stats
    sites: dict[tuple[str, int], list[dict]] = defaultdict(list)
    in_order: dict[str, list[dict]] = defaultdict(list)  # device_batches: offset order
    for_alerts: dict[str, list[dict]] = defaultdict(list)
    watermark: dict[int, int] = {}
    counted: dict[tuple[int, str, str], int] = {}  # largest ts counted per identity
    for partition, offset, record_ts, raw in readings:
        source = f"{topic}/{partition}/{offset}"
        try:
            reading = reading_of(raw)
        except Invalid as e:
            out.dead_letters[source] = (e.reason, e.field)
            continue
        ts = reading["ts"]
        if ts > record_ts + s.max_future_ms:
            out.dead_letters[source] = ("future", "")
            continue
        mark = watermark.get(partition)
        identity = (partition, reading["device_id"], reading["reading_id"])
        earlier = counted.get(identity)
        if earlier is not None and mark is not None and earlier >= mark - s.dedup_ms:
            out.dead_letters[source] = ("duplicate", "")
            continue
        counted[identity] = ts if earlier is None else max(earlier, ts)
        watermark[partition] = ts if mark is None else max(mark, ts)
        reading["partition"] = partition
        _enrich(reading, versions)
        missed = []
        low = ts - s.sliding_ms
        start = low - low % s.slide_ms + s.slide_ms  # the first window holding ts
        lost = False
        while start <= ts:
            if mark is not None and start + s.sliding_ms + s.lateness_ms < mark:
                lost = True
            else:
                windows[(reading["device_id"], start)].append(reading)
            start += s.slide_ms
        if lost:
            missed.append("device_stats")
        start = ts - ts % s.window_ms
        if mark is not None and start + s.window_ms + s.lateness_ms < mark:
            missed.append("site_stats")
        else:
            sites[(reading["site"], start)].append(reading)
        in_order[reading["device_id"]].append(reading)
        if reading["temperature"] is not None:
            if mark is not None and ts < mark - s.lateness_ms:
                missed.append("alerts")
            else:
                for_alerts[reading["device_id"]].append(reading)
        if missed:
            out.dead_letters[source] = ("late", ", ".join(missed))
    out.device_stats = [
        {
            "window_start": start,
            "window_end": start + s.sliding_ms,
            "device_id": device,
            "readings": len(rows),
            "temp_min": _dec(min(_temps(rows, "temperature"), default=None)),
            "temp_max": _dec(max(_temps(rows, "temperature"), default=None)),
            "temp_avg": _avg(_temps(rows, "temperature")),
            "humidity_avg": _avg(_temps(rows, "humidity")),
            "over_limit": sum(map(_over, rows)),
        }
        for (device, start), rows in sorted(windows.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    out.site_stats = [
        {
            "window_start": start,
            "window_end": start + s.window_ms,
            "site": site,
            "readings": len(rows),
            "devices": len({r["device_id"] for r in rows}),
            "temp_avg": _avg(_temps(rows, "temperature")),
            "over_limit": sum(map(_over, rows)),
        }
        for (site, start), rows in sorted(sites.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    for device, rows in sorted(in_order.items()):
        for batch in range(0, len(rows), s.batch_size):
            chunk = rows[batch : batch + s.batch_size]
            out.device_batches.append(
                {
                    "device_id": device,
                    "batch": batch // s.batch_size,
                    "first_ts": min(r["ts"] for r in chunk),
                    "last_ts": max(r["ts"] for r in chunk),
                    "readings": len(chunk),
                    "temp_avg": _avg(_temps(chunk, "temperature")),
                    "complete": int(len(chunk) == s.batch_size),
                }
            )
    if live:
        out.device_batches = [row for row in out.device_batches if row["complete"]]
    for device, rows in sorted(for_alerts.items()):
        final_until = watermark[rows[0]["partition"]] - s.lateness_ms
        if live:
            final_until = 2**62  # idle time passes: every reading becomes final
        final = sorted(
            (r for r in rows if r["ts"] < final_until), key=lambda r: (r["ts"], r["reading_id"])
        )
        run: list[dict] = []
        for reading in [*final, None]:
            if reading is not None and _over(reading):
                run.append(reading)
                continue
            if len(run) >= s.alert_readings and not (live and reading is None):
                out.alerts.append(
                    {
                        "device_id": device,
                        "alert_start": run[0]["ts"],
                        "alert_end": run[-1]["ts"],
                        "site": run[0]["site"],
                        "readings": len(run),
                        "peak_temp": _dec(max(r["temperature"] for r in run)),
                        "closed": int(reading is not None),
                    }
                )
            run = []
    return out
