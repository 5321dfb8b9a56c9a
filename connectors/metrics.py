"""Prometheus metrics, one module-level object per measurement.

Labels are fixed and low-cardinality (`topic`, `partition`, `reason`, `table`, `output`);
never a page or a user. Bytewax's API server (`BYTEWAX_DATAFLOW_API_ENABLED`) serves the
default registry these register in. No metric is updated per valid event: the steps and
sinks update them once per batch (per dead letter at most).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

RECORDS_CONSUMED = Counter(
    "waxhouse_records_consumed_total",
    "Records read from the source.",
    ["topic", "partition"],
)
CONSUMER_LAG = Gauge(
    "waxhouse_consumer_lag_records",
    "Last stable offset minus position, per source partition.",
    ["topic", "partition"],
)
END_OFFSET = Gauge(
    "waxhouse_source_end_offset",
    "Last stable offset per source partition, as last fetched: its growth is the rate "
    "records arrive (waxhouse autoscale reads it). Absent until the first fetch answers.",
    ["topic", "partition"],
)
UNREAD_PARTITIONS = Gauge(
    "waxhouse_source_partitions_unread",
    "Partitions a topic gained while the flow ran, which it does not read; the flow stops "
    "shortly after this becomes non-zero, and its restart reads them.",
    ["topic"],
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
LATE_EVENTS = Counter(
    "waxhouse_late_events_total",
    "Valid events that arrived after their window or session of a table was emitted, by the "
    "table (output) they missed; one event can count for several.",
    ["output"],
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

JOIN_WAITING = Gauge(
    "waxhouse_join_waiting_events",
    "Events of a source partition waiting in the join for the reference watermark.",
    ["partition"],
)

REFERENCE_VERSIONS = Counter(
    "waxhouse_reference_versions_total",
    "Versions of a join's reference taken (valid and not late), by join.",
    ["join"],
)
REFERENCE_WATERMARK = Gauge(
    "waxhouse_reference_watermark_seconds",
    "The join's reference watermark as a source partition sees it (epoch seconds; "
    "0 until every reference partition has said something).",
    ["partition"],
)


class WatermarkLag:
    """`waxhouse_watermark_lag_seconds{partition}`: wall-clock now minus a partition's
    event-time watermark, computed when scraped from the watermark last published.

    Only partitions that have a watermark (that have seen an event) have a series.
    `clock` (epoch seconds) is injectable for tests.
    """

    NAME = "waxhouse_watermark_lag_seconds"
    HELP = (
        "Wall-clock now minus the event-time watermark of a source partition, at scrape "
        "time (seconds); only partitions that have seen an event."
    )

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watermarks: dict[str, float] = {}

    def publish(self, partition: str, watermark_seconds: float) -> None:
        """Record `partition`'s current watermark (epoch seconds)."""
        with self._lock:
            self._watermarks[partition] = watermark_seconds

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["partition"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            watermarks = sorted(self._watermarks.items())
        now = self._clock()
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["partition"])
        for partition, watermark in watermarks:
            family.add_metric([partition], now - watermark)
        yield family


WATERMARK_LAG = WatermarkLag()
REGISTRY.register(WATERMARK_LAG)

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
# Live rows arrive about lateness + 1 s after a window ends (sessions: gap + lateness
# + 1 s after their last event); a backfill writes rows hours or days old.
FRESHNESS_BUCKETS = (
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    2400.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
WINDOW_FRESHNESS = Histogram(
    "waxhouse_window_freshness_seconds",
    "Wall-clock time from a window's end (its end column, e.g. window_end or session_end) "
    "to its row being written to ClickHouse, after the insert succeeded; one observation "
    "per distinct end per insert, not per row; clamped at 0.",
    ["table"],
    buckets=FRESHNESS_BUCKETS,
)


def observe_freshness(table: str, ends_ms: Iterable[int], now: float | None = None) -> None:
    """Observe `now - end` once for each distinct end time (epoch ms) among `ends_ms`."""
    now = time.time() if now is None else now
    histogram = WINDOW_FRESHNESS.labels(table=table)
    for end_ms in set(ends_ms):
        histogram.observe(max(0.0, now - end_ms / 1000))


NOTICES = Counter(
    "waxhouse_notices_total",
    "Notices sent (an episode table's run reaching `at_least` events): to Kafka, counted"
    " once acknowledged, or logged without Kafka. Replays after a crash count again.",
    ["table"],
)
DLQ_RECORDS = Counter(
    "waxhouse_dlq_records_total",
    "Dead letters produced to the DLQ topic.",
    ["reason"],
)

REDIS_ROWS = Counter(
    "waxhouse_redis_rows_total",
    "Live tables' rows sent to Redis, by result: written, refused (an equal or older "
    "version: a replay), provisional (an open window's row so far) or dropped (Redis "
    "unreachable past REDIS_RETRY_SECONDS).",
    ["table", "result"],
)
REDIS_WRITE_SECONDS = Histogram(
    "waxhouse_redis_write_seconds",
    "Seconds per pipelined write of live rows and watermarks to Redis, retries included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
REDIS_ERRORS = Counter(
    "waxhouse_redis_errors_total",
    "Failed attempts to write to Redis (each retried until REDIS_RETRY_SECONDS is spent).",
)
REDIS_UP = Gauge(
    "waxhouse_redis_up",
    "1 while live rows reach Redis, 0 while they are dropped (Redis unreachable past "
    "REDIS_RETRY_SECONDS).",
)
