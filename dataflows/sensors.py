"""Device telemetry: readings enriched from a device registry -> device_stats, site_stats,
device_batches, alerts, dead_letters; alerts as they open to the alerts topic.

    python -m bytewax.run dataflows.sensors

With `KAFKA_BOOTSTRAP_SERVERS` unset it runs embedded: generated readings and registry
versions feed it and results land in the chDB store at ./data/clickhouse. docs/reference.md
describes its tables and settings; docs/joins.md the join and the alerts.
"""

from __future__ import annotations

from typing import Any

import waxhouse
from waxhouse import Pipeline, Schema, Table, agg, fields, windows
from waxhouse.connectors.sensors_generator import readings_source, registry_source
from waxhouse.joins import TemporalJoin

readings = Schema(
    {
        "reading_id": fields.text(128),
        "device_id": fields.text(128),
        "ts": fields.timestamp(),
        "temperature": fields.decimal(2, min=-100, max=200, optional=True),  # hundredths
        "humidity": fields.decimal(2, min=0, max=100, optional=True),
    },
    event_time="ts",
    require_any=[("temperature", "humidity")],
    name="Reading",
)
Reading = readings.event_type  # bound here, so readings pickle

devices = Schema(
    {
        "device_id": fields.text(128),
        "site": fields.text(128, intern=True),
        "temp_max": fields.decimal(2, min=-100, max=200, optional=True),
        "valid_from": fields.timestamp(),
    },
    event_time="valid_from",
    name="Device",
)
Device = devices.event_type


def over_limit(r: Any) -> bool:
    """Above the enriched limit (a device without one is never over it)."""
    return r.temperature is not None and r.temp_max is not None and r.temperature > r.temp_max


def has_temperature(r: Any) -> bool:
    return r.temperature is not None


def declare(settings: waxhouse.Settings) -> Pipeline:
    """The sensors flow with its windows and topics from the settings."""
    window = windows.sliding(settings.sensor_window_seconds, every=settings.sensor_slide_seconds)
    device_stats = Table(
        "device_stats",
        key="device_id",
        window=window,
        aggregates={
            "readings": agg.count(),
            "temp_min": agg.min("temperature"),
            "temp_max": agg.max("temperature"),
            "temp_avg": agg.mean("temperature"),
            "humidity_avg": agg.mean("humidity"),
            "over_limit": agg.count(where=over_limit),
        },
        live=windows.live(provisional=True),  # each device's latest window, and so far
    )
    site_stats = Table(
        "site_stats",
        key="site",
        window=windows.tumbling(settings.window_seconds),
        aggregates={
            "readings": agg.count(),
            "devices": agg.count_distinct("device_id"),  # exact: the topic is keyed by device
            "temp_avg": agg.mean("temperature"),
            "over_limit": agg.count(where=over_limit),
        },
        live=windows.live(top_by="readings"),  # the busiest sites of each window
    )
    device_batches = Table(
        "device_batches",
        key="device_id",
        window=windows.count(settings.sensor_batch_size),
        aggregates={
            "first_ts": agg.min("ts"),
            "last_ts": agg.max("ts"),
            "readings": agg.count(),
            "temp_avg": agg.mean("temperature"),
        },
    )
    alerts = Table(
        "alerts",
        key="device_id",
        window=windows.episodes(
            over_limit,
            at_least=settings.alert_readings,
            tie="reading_id",
            columns=("alert_start", "alert_end", "closed"),
        ),
        where=has_temperature,  # readings without one neither extend nor end an episode
        aggregates={
            "site": agg.first("site", by="reading_id"),
            "readings": agg.count(),
            "peak_temp": agg.max("temperature"),
        },
        live=windows.live(),  # each device's latest alert, pushed as it is written
    )
    registry = TemporalJoin(
        "devices",
        devices,
        on="device_id",
        take={"site": "", "temp_max": None},  # no version: site '' and no limit
        topic=settings.devices_topic,
    )
    return Pipeline(
        "sensors",
        readings,
        key="device_id",
        join=registry,
        tables=[device_stats, site_stats, device_batches, alerts],
        dedup=("device_id", "reading_id"),  # a device's resent reading counts once
    )


settings = waxhouse.load_settings()
pipeline = declare(settings)
flow = waxhouse.flow(
    pipeline,
    embedded=readings_source,
    reference=registry_source,
    settings=settings,
    topic=settings.sensors_topic,
    dead_letter_topic=settings.sensors_dlq_topic,
    notify={"alerts": settings.alerts_topic},
)
