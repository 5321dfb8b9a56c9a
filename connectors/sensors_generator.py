"""Built-in synthetic device telemetry: the sensors flow's embedded sources and test input.

Two pure, deterministic generators over one model of devices (the same config gives the
same records, and a pickled generator resumes where it stopped):

- `ReadingsGenerator`: readings from `devices` devices with skewed rates (a few devices
  send most), temperatures around each device's baseline, devices that overheat for a
  while (runs of readings far above any limit), humidity, readings with only one of the
  two, times that trail the record time by up to `max_disorder_ms` (within the default
  lateness) and about `late_ratio` of them far behind (late for some windows), some
  times as RFC 3339 strings, unknown fields, and about `malformed_ratio` broken records
  (bad JSON, wrong types, out-of-range values, a boolean, neither measurement).
- `RegistryGenerator`: the device registry: a first version of every registered device
  (`unregistered_ratio` of them never get one) an hour before the first reading, then
  changes of limit or site spread over the readings' time (some corrected at once by a
  second version with the same `valid_from`), a few versions more than the lateness
  behind (late dead letters), tombstones and malformed records.

`readings_source(settings)` and `registry_source(settings)` are the embedded sources:
partitions `generator-readings` and `generator-devices` (dead letters' sources
`generator-readings/<n>`, apart from the clickstream's `generator/<n>` when both flows
write into one embedded store). With `GENERATOR_EVENTS=0` the readings
never end and the registry's changes cover the first 200,000 readings' time, after which
it ends (read to its end, it holds no reading back).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from waxhouse.connectors.generator import GeneratedRecord, GeneratorSource
from waxhouse.fields import format_rfc3339
from waxhouse.settings import Settings

READINGS_PART = "generator-readings"
REGISTRY_PART = "generator-devices"
_UNBOUNDED_SPAN_READINGS = 200_000  # the registry's horizon when the readings never end


@dataclass(frozen=True)
class SensorsConfig:
    seed: int = 42
    events: int = 200_000  # readings; 0 = endless
    devices: int = 300
    sites: int = 12
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    mean_interval_ms: float = 20.0
    max_disorder_ms: int = 5_000
    late_ratio: float = 0.002
    malformed_ratio: float = 0.01
    unregistered_ratio: float = 0.03
    lateness_ms: int = 10_000  # how far behind a registry version is made late

    def __post_init__(self) -> None:
        if self.events < 0 or self.devices <= 0 or self.sites <= 0:
            raise ValueError(f"invalid sensors generator configuration: {self}")

    @property
    def span_ms(self) -> int:
        """How much event time the readings cover."""
        readings = self.events or _UNBOUNDED_SPAN_READINGS
        return int(readings * self.mean_interval_ms)


def device_name(i: int) -> str:
    return f"dev-{i:04d}"


def site_name(i: int) -> str:
    return f"site-{i:02d}" if i % 5 else f"Süd-Halle {i:02d}"  # some non-ASCII names


class _Devices:
    """The model both generators share: which devices are registered, their baselines."""

    def __init__(self, config: SensorsConfig) -> None:
        rng = random.Random(config.seed * 7919 + 1)
        self.registered = [rng.random() >= config.unregistered_ratio for _ in range(config.devices)]
        self.baseline = [rng.uniform(15.0, 30.0) for _ in range(config.devices)]
        # Skewed: device i is picked with weight 1/(i+1)^0.8.
        total, self.cum_weights = 0.0, []
        for i in range(config.devices):
            total += 1.0 / (i + 1) ** 0.8
            self.cum_weights.append(total)


class ReadingsGenerator:
    def __init__(self, config: SensorsConfig) -> None:
        self.config = config
        self.n = 0
        self._rng = random.Random(config.seed)
        self._clock = float(config.start_ms)
        self._devices = _Devices(config)
        self._overheat: dict[int, int] = {}  # device -> readings left in its overheat

    @property
    def exhausted(self) -> bool:
        return 0 < self.config.events <= self.n

    def take(self, count: int) -> list[GeneratedRecord]:
        if self.config.events:
            count = min(count, self.config.events - self.n)
        return [self._next() for _ in range(max(0, count))]

    def _next(self) -> GeneratedRecord:
        rng, config = self._rng, self.config
        n = self.n
        self.n += 1
        self._clock += rng.expovariate(1 / config.mean_interval_ms)
        received = int(self._clock)
        device = rng.choices(range(config.devices), cum_weights=self._devices.cum_weights)[0]
        ts = received
        roll = rng.random()
        if roll < config.late_ratio:
            ts -= rng.randrange(60_000, 600_000)  # behind the lateness: late somewhere
        elif roll < 0.3:
            ts -= rng.randrange(config.max_disorder_ms + 1)
        reading: dict[str, object] = {
            "reading_id": f"r-{config.seed}-{n}",
            "device_id": device_name(device),
            "ts": format_rfc3339(ts) if rng.random() < 0.2 else ts,
        }
        temperature = self._temperature(device)
        kind = rng.random()
        if kind < 0.05:
            reading["humidity"] = round(rng.uniform(20, 90), 2)  # no temperature
        elif kind < 0.10:
            reading["temperature"] = temperature  # no humidity
        elif kind < 0.12:
            reading["temperature"], reading["humidity"] = temperature, None
        else:
            reading["temperature"] = temperature
            reading["humidity"] = round(rng.uniform(20, 90), 2)
        if rng.random() < 0.05:
            reading["firmware"] = "v2.1-β"  # unknown fields are ignored
        value = orjson.dumps(reading)
        if rng.random() < config.malformed_ratio:
            value = self._break(reading)
        return GeneratedRecord(n, device_name(device).encode(), value, received)

    def _temperature(self, device: int) -> float:
        rng = self._rng
        left = self._overheat.get(device, 0)
        if left == 0 and rng.random() < 0.01:
            left = rng.randrange(2, 12)  # some runs are too short to alert
        if left:
            self._overheat[device] = left - 1
            return round(rng.uniform(70.0, 95.0), 2)
        self._overheat.pop(device, None)
        return round(self._devices.baseline[device] + rng.gauss(0, 2), 2)

    def _break(self, reading: dict[str, object]) -> bytes:
        rng = self._rng
        kind = rng.randrange(7)
        broken = dict(reading)
        if kind == 0:
            return orjson.dumps(reading)[:-7]  # cut short: invalid JSON
        if kind == 1:
            broken["temperature"] = "hot"
        elif kind == 2:
            broken["temperature"] = 250.0  # out of range
        elif kind == 3:
            broken["humidity"] = True  # booleans are not numbers
        elif kind == 4:
            broken.pop("temperature", None)
            broken.pop("humidity", None)  # neither measurement
        elif kind == 5:
            broken["ts"] = "2026-01-01T10:00:00"  # no offset
        else:
            broken.pop("device_id")
        return orjson.dumps(broken)


class RegistryGenerator:
    def __init__(self, config: SensorsConfig) -> None:
        self.config = config
        self.n = 0
        self._records = _registry(config)

    @property
    def exhausted(self) -> bool:
        return self.n >= len(self._records)

    def take(self, count: int) -> list[GeneratedRecord]:
        out = self._records[self.n : self.n + count]
        self.n += len(out)
        return out

    def __getstate__(self) -> dict[str, object]:
        return {"config": self.config, "n": self.n}  # the records are made again

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]
        self.n = state["n"]  # type: ignore[assignment]


def _registry(config: SensorsConfig) -> list[GeneratedRecord]:
    rng = random.Random(config.seed * 31 + 7)
    devices = _Devices(config)
    limits = [45.0, 50.0, 55.0, 60.0, None]
    made: list[tuple[int, bytes, bytes | None]] = []  # (record time, key, value)
    first = config.start_ms - 3_600_000
    registered = []
    for device in range(config.devices):
        if not devices.registered[device]:
            continue
        version = {
            "device_id": device_name(device),
            "site": site_name(device % config.sites),
            "temp_max": rng.choice(limits),
            "valid_from": first,
        }
        registered.append(device)
        made.append((first, device_name(device).encode(), orjson.dumps(version)))
    changes = max(10, config.devices // 2)
    for k in range(changes):
        at = config.start_ms + config.span_ms * (k + 1) // (changes + 1)
        device = rng.choice(registered)
        key = device_name(device).encode()
        roll = rng.random()
        version = {
            "device_id": device_name(device),
            "site": site_name(rng.randrange(config.sites)),
            "temp_max": rng.choice(limits),
            "valid_from": format_rfc3339(at) if rng.random() < 0.3 else at,
        }
        made.append((at, key, orjson.dumps(version)))
        if roll < 0.1:  # a correction at the same valid_from: the later record wins
            made.append((at, key, orjson.dumps(dict(version, temp_max=rng.choice(limits)))))
        elif roll > 0.97:  # far behind the newest: a late dead letter, changes nothing
            stale = dict(version, valid_from=at - config.lateness_ms - 60_000)
            made.append((at + 1, key, orjson.dumps(stale)))
        elif roll > 0.95:
            made.append((at + 1, key, None))  # a compaction tombstone: ignored
        elif roll > 0.93:
            made.append((at + 1, key, orjson.dumps(dict(version, temp_max=False))))
        elif roll > 0.91:
            made.append((at + 1, key, b'{"device_id": "dev-'))
    made.sort(key=lambda record: record[0])  # stable: a device's own versions keep order
    return [GeneratedRecord(n, key, value, at) for n, (at, key, value) in enumerate(made)]


def _config(settings: Settings) -> SensorsConfig:
    return SensorsConfig(
        seed=settings.generator_seed,
        events=settings.generator_events,
        lateness_ms=settings.lateness_ms,
    )


def readings_source(settings: Settings) -> GeneratorSource:
    """Embedded mode's readings (`GENERATOR_EVENTS`, `GENERATOR_RATE`, `GENERATOR_SEED`)."""
    config = _config(settings)
    return GeneratorSource(
        rate=settings.generator_rate,
        make=lambda: ReadingsGenerator(config),
        part=READINGS_PART,
    )


def registry_source(settings: Settings) -> GeneratorSource:
    """Embedded mode's device registry, for the same devices and time span."""
    config = _config(settings)
    return GeneratorSource(make=lambda: RegistryGenerator(config), part=REGISTRY_PART)
