"""The sensors flow's inputs for tests: generated readings and registry versions as
`waxhouse.testing.Record`s and as the oracle's raw records, spread over partitions by key
as a producer keyed by device would; and the flow's settings as the oracle reads them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from tests.support.retries import with_retries
from tests.support.sensors_oracle import Raw, SensorsSettings
from waxhouse.connectors.generator import GeneratedRecord
from waxhouse.connectors.sensors_generator import (
    ReadingsGenerator,
    RegistryGenerator,
    SensorsConfig,
)
from waxhouse.settings import Settings
from waxhouse.testing import Record


@dataclass(frozen=True)
class Stream:
    records: list[Record]
    raw: list[Raw]  # each partition's in offset order


def spread(generated: list[GeneratedRecord], partitions: int) -> Stream:
    """Records keyed by device, into `partitions` by a hash of the key."""
    offsets = [0] * partitions
    records, raw = [], []
    for record in generated:
        partition = zlib.crc32(record.key or b"") % partitions
        offset = offsets[partition]
        offsets[partition] += 1
        records.append(Record(record.value, partition, record.timestamp_ms, offset))
        raw.append((partition, offset, record.timestamp_ms, record.value))
    raw.sort(key=lambda r: (r[0], r[1]))
    return Stream(records, raw)


def generated(
    config: SensorsConfig,
    partitions: int = 3,
    registry_partitions: int = 2,
    *,
    retries_ms: int | None = None,
) -> tuple[Stream, Stream]:
    """`retries_ms`: with readings sent again, as devices do, around a deduplication
    horizon of that many milliseconds (`tests.support.retries`)."""
    readings = ReadingsGenerator(config).take(config.events)
    if retries_ms is not None:
        readings = with_retries(readings, horizon_ms=retries_ms, seed=config.seed)
    registry = RegistryGenerator(config)
    versions = registry.take(10**9)
    return spread(readings, partitions), spread(versions, registry_partitions)


def oracle_settings(settings: Settings) -> SensorsSettings:
    return SensorsSettings(
        lateness_ms=settings.lateness_ms,
        max_future_ms=settings.max_future_ms,
        window_ms=settings.window_ms,
        sliding_ms=settings.sensor_window_seconds * 1000,
        slide_ms=settings.sensor_slide_seconds * 1000,
        batch_size=settings.sensor_batch_size,
        alert_readings=settings.alert_readings,
        dedup_ms=settings.dedup_ms,
    )
