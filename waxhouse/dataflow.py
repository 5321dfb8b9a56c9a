"""From a declared pipeline to a Bytewax dataflow, with everything a flow needs to run.

    flow = waxhouse.flow(pipeline)        # at the end of dataflows/<name>.py

    python -m bytewax.run dataflows.<name> -r data/recovery -s 5 -b 0

The dataflow: the source (Kafka, or the pipeline's embedded source when
`KAFKA_BOOTSTRAP_SERVERS` is unset), the parse step (the schema's parser), one stateful
step per source partition holding every table's windows (`waxhouse.engine`), the
ClickHouse sink (the tables, views and dead letters the declaration derives) and, with
Kafka, the dead-letter topic. Under `python -m bytewax.run`, `flow()` also configures
logging, makes the recovery partition ready, tunes the garbage collector and installs the
orderly stop on SIGTERM/SIGINT; imported elsewhere (tests, `waxhouse schema`), it only
builds the dataflow.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic

from waxhouse.connectors.clickhouse import ClickHouseSink, RetryPolicy, TableSpec
from waxhouse.connectors.kafka import DLQ_PART, KafkaDeadLetterSink, KafkaSource
from waxhouse.connectors.metrics import (
    DEAD_LETTERS,
    EVENTS_PARSED,
    LATE_EVENTS,
    WATERMARK,
    WATERMARK_LAG,
    WINDOW_FRESHNESS,
    WINDOW_ROWS,
)
from waxhouse.engine import PartitionState
from waxhouse.errors import SettingsError
from waxhouse.fields import DEFAULT_MAX_FUTURE_MS, Schema
from waxhouse.logs import configure_logging
from waxhouse.pipeline import CompiledPipeline, Pipeline, PipelineError
from waxhouse.records import IdleTick, SourceItem
from waxhouse.recovery import prepare_recovery
from waxhouse.report import RunReport
from waxhouse.rows import DeadLetterRow, RowBatch
from waxhouse.runargs import bytewax_run_args
from waxhouse.runtime import stop_on_sigterm, tune_garbage_collector
from waxhouse.settings import Settings, load_settings
from waxhouse.snapshots import SegmentFiles, segment_files
from waxhouse.stopping import flow_stopper

__all__ = ["EmbeddedSource", "build_dataflow", "flow", "load", "table_specs"]

logger = logging.getLogger(__name__)

Source = FixedPartitionedSource[tuple[str, SourceItem], Any]
EmbeddedSource = Callable[[Settings], Source]


def load() -> Settings:
    """The settings from the environment; an invalid one exits with one clear line."""
    try:
        return load_settings()
    except SettingsError as e:
        raise SystemExit(f"waxhouse: invalid configuration: {e}") from None


def flow(
    pipeline: Pipeline, *, embedded: EmbeddedSource | None = None, settings: Settings | None = None
) -> Dataflow:
    """The pipeline's dataflow, configured from the environment.

    `embedded`: the source to read without Kafka (`KAFKA_BOOTSTRAP_SERVERS` unset), given
    the settings; without one, a pipeline needs Kafka.
    """
    settings = settings or load()
    resumed, on_failure, segments = False, None, None
    args = bytewax_run_args()
    running = args is not None
    try:
        compiled = pipeline.compile(settings.lateness_ms)
    except PipelineError as e:
        if not running:
            raise
        # Running it: a pipeline that cannot run says why in one line, before anything.
        raise SystemExit(f"waxhouse: {pipeline.name} cannot be built: {e}") from None
    if running:
        if settings.embedded and embedded is None:
            raise SystemExit(_NO_SOURCE.format(name=pipeline.name))
        configure_logging(settings.log_level)
        logger.info("%s starting: %s", pipeline.name, settings.describe())
        resumed = prepare_recovery()
        segments = segment_files(args)
        tune_garbage_collector()
        stop_on_sigterm()
        stopper = flow_stopper()
        on_failure = stopper.fail if stopper is not None else None
    return build_dataflow(
        compiled,
        settings,
        embedded=embedded,
        resumed=resumed,
        on_failure=on_failure,
        segments=segments,
    )


def build_dataflow(
    pipeline: Pipeline | CompiledPipeline,
    settings: Settings,
    *,
    embedded: EmbeddedSource | None = None,
    resumed: bool = False,
    on_failure: Callable[[str], None] | None = None,
    segments: Callable[[], SegmentFiles] | None = None,
) -> Dataflow:
    """The dataflow alone, of `pipeline` (or of it already compiled). `resumed`: it
    resumes from committed recovery state (a Kafka partition without state is then new,
    and read from its beginning). `on_failure`: how a source stops the flow when it cannot
    go on (default: it raises). `segments`: where snapshots keep their sealed segments
    (`waxhouse.snapshots.segment_files`; default: inside the snapshots)."""
    if isinstance(pipeline, CompiledPipeline):
        compiled, pipeline = pipeline, pipeline.pipeline
    else:
        compiled = pipeline.compile(settings.lateness_ms)
    for name, table in compiled.tables.items():
        LATE_EVENTS.labels(output=name)  # every table's series exists, at 0, from the start
        if table.end_column is not None:
            WINDOW_FRESHNESS.labels(table=name)
    dataflow = Dataflow(pipeline.name)
    # (source partition, batch of raw records | idle tick)
    source = _source(pipeline, settings, embedded, resumed, on_failure)
    batches = op.input("input", dataflow, source)
    parsed = op.map_value("parse", batches, Parse(compiled.schema, settings.max_future_ms))
    # (source partition, closed rows of every table + dead letters)
    rows = op.stateful_batch("windows", parsed, PartitionLogic.builder(compiled, segments))

    to_clickhouse = op.map("route", rows, lambda kv: ("clickhouse", kv[1]))
    retry = RetryPolicy(max_attempts=1_000, max_elapsed_seconds=settings.clickhouse_retry_seconds)
    sink = ClickHouseSink(
        settings.clickhouse_url,
        tables=table_specs(compiled),
        statements=compiled.statements(),
        retry=retry,
        on_close=RunReport(settings, pipeline.name, list(compiled.tables)),
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
    return dataflow


def table_specs(compiled: CompiledPipeline) -> list[TableSpec]:
    """The physical tables the sink writes, in declaration order."""
    return [
        TableSpec(
            name=table.physical,
            label=table.name,
            columns=table.columns,
            types=table.types,
            end_column=None if table.end_column is None else table.columns.index(table.end_column),
        )
        for table in compiled.tables.values()
    ]


def _source(
    pipeline: Pipeline,
    settings: Settings,
    embedded: EmbeddedSource | None,
    resumed: bool,
    on_failure: Callable[[str], None] | None,
) -> Source:
    if settings.embedded:
        if embedded is None:
            return _NoSource(_NO_SOURCE.format(name=pipeline.name))
        return embedded(settings)
    source_class: Callable[..., Source] = KafkaSource
    if settings.kafka_client == "confluent":
        # An optional dependency: imported only when chosen.
        from waxhouse.connectors.kafka_confluent import ConfluentKafkaSource

        source_class = ConfluentKafkaSource
    return source_class(
        settings.kafka_bootstrap_servers or "",
        settings.kafka_topic,
        starting_offset=settings.kafka_starting_offset,
        stop_at_end=settings.kafka_stop_at_end,
        client_options=settings.kafka_security.client_options(),
        resumed=resumed,
        on_failure=on_failure,
    )


_NO_SOURCE = "waxhouse: {name} reads Kafka: set KAFKA_BOOTSTRAP_SERVERS (it has no embedded source)"


class _NoSource(FixedPartitionedSource[tuple[str, SourceItem], Any]):
    """Stands in for a missing source where the dataflow is built but not run (tests,
    `waxhouse schema`); running it fails with `message`."""

    def __init__(self, message: str) -> None:
        self._message = message

    def list_parts(self) -> list[str]:
        raise SettingsError(self._message)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        raise SettingsError(self._message)


# --- the steps: thin Bytewax glue around the pure logic --------------------------------


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    part: str
    events: list[tuple]
    dead_letters: list[DeadLetterRow]


WindowInput = ParsedBatch | IdleTick


@dataclass(frozen=True)
class Parse:
    """The parse step: raw batch -> events and dead letters; idle ticks pass through.

    `max_future_ms`: how far an event's time may be ahead of its record's timestamp.
    """

    schema: Schema
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS

    def __call__(self, item: SourceItem) -> WindowInput:
        if isinstance(item, IdleTick):
            return item
        events, dead = self.schema.parse_batch(item, self.max_future_ms)
        EVENTS_PARSED.inc(len(events))
        for row in dead:
            DEAD_LETTERS.labels(reason=row.reason).inc()
        return ParsedBatch(item.part, events, dead)


class PartitionLogic(StatefulBatchLogic[WindowInput, RowBatch, bytes]):
    """One source partition's tables and watermark as Bytewax state.

    The snapshot is the pickled `PartitionState`, taken at the same epoch as the source's
    offset, so a resumed flow replays exactly the records after it.
    """

    def __init__(
        self,
        compiled: CompiledPipeline,
        state: PartitionState | None,
        files: SegmentFiles | None = None,
    ) -> None:
        self._compiled = compiled
        self._state = state
        self._files = files

    @classmethod
    def builder(
        cls, compiled: CompiledPipeline, segments: Callable[[], SegmentFiles] | None = None
    ) -> Callable[[bytes | None], PartitionLogic]:
        """`segments`: with recovery, where the snapshots' sealed segments are kept
        (`waxhouse.snapshots`); without, a snapshot is the state pickled whole."""

        def build(resume_state: bytes | None) -> PartitionLogic:
            files = segments() if segments is not None else None
            if resume_state is None:
                return cls(compiled, None, files)
            state = files.loads(resume_state) if files else pickle.loads(resume_state)
            return cls(compiled, compiled.restore(state), files)

        return build

    def on_batch(self, values: list[WindowInput]) -> tuple[list[RowBatch], bool]:
        out = RowBatch()
        for value in values:
            if self._state is None:
                self._state = self._compiled.partition_state(value.part)
            if isinstance(value, IdleTick):
                out.extend(self._state.idle(value.idle_ms))
            else:
                out.dead_letters.extend(value.dead_letters)
                out.extend(self._state.process(value.events))
        return self._emit(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[RowBatch], bool]:
        if self._state is None:
            return [], StatefulBatchLogic.RETAIN
        return self._emit(self._state.flush()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self._files is None or self._state is None:
            return pickle.dumps(self._state, protocol=pickle.HIGHEST_PROTOCOL)
        return self._files.dumps(self._state, self._state.part)

    def _emit(self, out: RowBatch) -> list[RowBatch]:
        state = self._state
        if state is not None:
            WATERMARK.labels(partition=state.part).set(max(state.watermark, 0) / 1000)
            if state.watermark >= 0:  # the partition has seen an event
                WATERMARK_LAG.publish(state.part, state.watermark / 1000)
        if out.dead_letters:
            _count_late(out.dead_letters)
        for table, rows in out.tables.items():
            if rows:
                WINDOW_ROWS.labels(table=table).inc(len(rows))
        return [out] if out else []


def _count_late(dead_letters: list[DeadLetterRow]) -> None:
    """Late dead letters, and per table the late events that missed it (one batch's
    worth; their `error` names the tables: `missed page_stats, user_sessions`)."""
    late = [row.error for row in dead_letters if row.reason == "late"]
    if not late:
        return
    DEAD_LETTERS.labels(reason="late").inc(len(late))
    missed: dict[str, int] = {}
    for error in late:
        for table in error.removeprefix("missed ").split(", "):
            missed[table] = missed.get(table, 0) + 1
    for table, n in missed.items():
        LATE_EVENTS.labels(output=table).inc(n)
