"""Clickstream analytics: events -> validation -> page_stats, user_sessions, dead_letters.

    python -m bytewax.run dataflows.clickstream

With `KAFKA_BOOTSTRAP_SERVERS` unset it runs embedded: the built-in generator feeds it
and results land in the chDB store at ./data/clickhouse. See README.md for the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource

from waxhouse.connectors.clickhouse import ClickHouseSink, RetryPolicy
from waxhouse.connectors.generator import GeneratorConfig, GeneratorSource
from waxhouse.connectors.kafka import DLQ_PART, KafkaDeadLetterSink, KafkaSource
from waxhouse.errors import SettingsError
from waxhouse.logs import configure_logging
from waxhouse.records import SourceItem
from waxhouse.recovery import prepare_recovery
from waxhouse.report import RunReport
from waxhouse.runtime import stop_on_sigterm, tune_garbage_collector
from waxhouse.settings import Settings, load_settings
from waxhouse.steps import Parse, PartitionWindowLogic
from waxhouse.stopping import flow_stopper
from waxhouse.windows import WindowConfig

logger = logging.getLogger(__name__)


def _kafka_source_class(
    settings: Settings,
) -> Callable[..., FixedPartitionedSource[tuple[str, SourceItem], Any]]:
    """`KafkaSource`, or the confluent-kafka one (an optional dependency: imported if chosen)."""
    if settings.kafka_client == "confluent":
        from waxhouse.connectors.kafka_confluent import ConfluentKafkaSource

        return ConfluentKafkaSource
    return KafkaSource


def build_flow(
    settings: Settings, resumed: bool = False, on_failure: Callable[[str], None] | None = None
) -> Dataflow:
    """The flow. `resumed`: it resumes from committed recovery state (a Kafka partition
    without state is then new, and read from its beginning). `on_failure`: how a source
    stops the flow when it cannot go on (default: it raises)."""
    flow = Dataflow("clickstream")
    source: FixedPartitionedSource[tuple[str, SourceItem], Any]
    if settings.embedded:
        generator = GeneratorConfig(seed=settings.generator_seed, events=settings.generator_events)
        source = GeneratorSource(generator, rate=settings.generator_rate)
    else:
        source = _kafka_source_class(settings)(
            settings.kafka_bootstrap_servers or "",
            settings.kafka_topic,
            starting_offset=settings.kafka_starting_offset,
            stop_at_end=settings.kafka_stop_at_end,
            client_options=settings.kafka_security.client_options(),
            resumed=resumed,
            on_failure=on_failure,
        )
    # (source partition, batch of raw records | idle tick)
    batches = op.input("input", flow, source)
    parsed = op.map_value("parse", batches, Parse(settings.max_future_ms))
    windows = WindowConfig(
        window_ms=settings.window_ms,
        lateness_ms=settings.lateness_ms,
        session_gap_ms=settings.session_gap_ms,
    )
    # (source partition, closed windows + sessions + dead letters)
    rows = op.stateful_batch("windows", parsed, PartitionWindowLogic.builder(windows))

    to_clickhouse = op.map("route", rows, lambda kv: ("clickhouse", kv[1]))
    report = RunReport(settings)
    retry = RetryPolicy(max_attempts=1_000, max_elapsed_seconds=settings.clickhouse_retry_seconds)
    sink = ClickHouseSink(
        settings.clickhouse_url,
        retry=retry,
        on_close=report,
        create_schema=settings.clickhouse_create_schema,
    )
    op.output("clickhouse", to_clickhouse, sink)

    if not settings.embedded:
        dead = op.flat_map(
            "dead_letters", rows, lambda kv: [(DLQ_PART, row) for row in kv[1].dead_letters]
        )
        dlq = KafkaDeadLetterSink(
            settings.kafka_bootstrap_servers or "",
            settings.kafka_dlq_topic,
            client_options=settings.kafka_security.client_options(),
        )
        op.output("dlq", dead, dlq)
    return flow


def _load() -> Settings:
    try:
        return load_settings()
    except SettingsError as e:
        raise SystemExit(f"waxhouse: invalid configuration: {e}") from None


settings = _load()
configure_logging(settings.log_level)
logger.info("clickstream starting: %s", settings.describe())
resumed = prepare_recovery()
tune_garbage_collector()
stop_on_sigterm()
stopper = flow_stopper()
flow = build_flow(settings, resumed, stopper.fail if stopper is not None else None)
