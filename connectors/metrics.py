"""Prometheus metrics, one module-level object per measurement.

Labels are fixed and low-cardinality (`topic`, `partition`, `reason`, `table`); never a
page or a user. Bytewax's API server (`BYTEWAX_DATAFLOW_API_ENABLED`) serves the default
registry these register in.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_CONSUMED = Counter(
    "waxhouse_records_consumed_total",
    "Records read from the source.",
    ["topic", "partition"],
)
CONSUMER_LAG = Gauge(
    "waxhouse_consumer_lag_records",
    "End offset minus position, per source partition.",
    ["topic", "partition"],
)
EVENTS_PARSED = Counter(
    "waxhouse_events_parsed_total",
    "Valid events accepted by the parser.",
)
DEAD_LETTERS = Counter(
    "waxhouse_dead_letters_total",
    "Records rejected, by reason.",
    ["reason"],
)
WINDOW_ROWS = Counter(
    "waxhouse_window_rows_emitted_total",
    "Rows emitted by the windowing step, by table.",
    ["table"],
)
WATERMARK = Gauge(
    "waxhouse_watermark_seconds",
    "Event-time watermark of a source partition (epoch seconds).",
    ["partition"],
)
SINK_ROWS = Counter(
    "waxhouse_sink_rows_total",
    "Rows written to ClickHouse, by table.",
    ["table"],
)
SINK_BATCHES = Counter(
    "waxhouse_sink_batches_total",
    "Insert batches written to ClickHouse, by table.",
    ["table"],
)
SINK_ERRORS = Counter(
    "waxhouse_sink_errors_total",
    "Failed ClickHouse inserts (each failed attempt), by table.",
    ["table"],
)
SINK_RETRIES = Counter(
    "waxhouse_sink_retries_total",
    "ClickHouse insert attempts that were retried, by table.",
    ["table"],
)
SINK_BATCH_SECONDS = Histogram(
    "waxhouse_sink_batch_seconds",
    "Time to write one insert batch to ClickHouse, retries included.",
    ["table"],
)
DLQ_RECORDS = Counter(
    "waxhouse_dlq_records_total",
    "Dead letters produced to the DLQ topic.",
    ["reason"],
)
