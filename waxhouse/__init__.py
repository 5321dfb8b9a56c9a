"""waxhouse: exact, recoverable event-time pipelines from Kafka into ClickHouse.

    import waxhouse
    from waxhouse import Pipeline, Schema, Table, agg, fields, windows

    orders = Pipeline("orders", Schema({...}, event_time="ts"), key="customer", tables=[...])
    flow = waxhouse.flow(orders)     # run: python -m bytewax.run dataflows.orders

The guide is docs/guide.md. `waxhouse.flow` and the settings load Bytewax and the
connectors, so they are imported when first used: declaring a pipeline, or testing it
with `waxhouse.testing`, needs neither.
"""

from __future__ import annotations

from typing import Any

from waxhouse import aggregates as agg
from waxhouse import fields, windows
from waxhouse.fields import Schema
from waxhouse.pipeline import Pipeline, PipelineError
from waxhouse.tables import Table

__all__ = [
    "Pipeline",
    "PipelineError",
    "Schema",
    "Settings",
    "Table",
    "agg",
    "fields",
    "flow",
    "load_settings",
    "windows",
]


def __getattr__(name: str) -> Any:
    """`flow`, `load_settings` (which exits with one clear line on invalid settings) and
    `Settings`, imported on first use."""
    if name == "flow":
        from waxhouse.dataflow import flow

        return flow
    if name == "load_settings":
        from waxhouse.dataflow import load

        return load
    if name == "Settings":
        from waxhouse.settings import Settings

        return Settings
    raise AttributeError(f"module 'waxhouse' has no attribute {name!r}")
