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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic

from waxhouse.connectors.clickhouse import ClickHouseSink, RetryPolicy, TableSpec
from waxhouse.connectors.kafka import (
    DLQ_PART,
    NOTICES_PART,
    KafkaSource,
    KafkaTopicSink,
    Message,
    dead_letter_sink,
)
from waxhouse.connectors.metrics import (
    DEAD_LETTERS,
    EVENTS_PARSED,
    JOIN_WAITING,
    LATE_EVENTS,
    NOTICES,
    REFERENCE_VERSIONS,
    REFERENCE_WATERMARK,
    WATERMARK,
    WATERMARK_LAG,
    WINDOW_FRESHNESS,
    WINDOW_ROWS,
)
from waxhouse.engine import CompiledTable, PartitionState, SessionState, WindowState
from waxhouse.errors import SettingsError
from waxhouse.fields import DEFAULT_MAX_FUTURE_MS, MAX_TS_MS, Schema
from waxhouse.joins import ReferencePartition, ReferenceUpdate, TemporalJoin
from waxhouse.livetables import LiveTable, live_tables
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
from waxhouse.tables import Episodes
from waxhouse.views import notice, time_columns

__all__ = ["EmbeddedSource", "build_dataflow", "flow", "load", "table_specs"]

logger = logging.getLogger(__name__)

Source = FixedPartitionedSource[tuple[str, SourceItem], Any]
EmbeddedSource = Callable[[Settings], Source]
In = TypeVar("In")
Out = TypeVar("Out")


def load() -> Settings:
    """The settings from the environment; an invalid one exits with one clear line."""
    try:
        return load_settings()
    except SettingsError as e:
        raise SystemExit(f"waxhouse: invalid configuration: {e}") from None


def flow(
    pipeline: Pipeline,
    *,
    embedded: EmbeddedSource | None = None,
    reference: EmbeddedSource | None = None,
    settings: Settings | None = None,
    topic: str | None = None,
    dead_letter_topic: str | None = None,
    notify: Mapping[str, str] | None = None,
) -> Dataflow:
    """The pipeline's dataflow, configured from the environment.

    `embedded`: the source to read without Kafka (`KAFKA_BOOTSTRAP_SERVERS` unset), given
    the settings; without one, a pipeline needs Kafka. `reference`: likewise for the
    reference of a pipeline with a join. `topic` and `dead_letter_topic`: the topics it
    reads and sends rejected records to (default `KAFKA_TOPIC`, `KAFKA_DLQ_TOPIC`).
    `notify`: per table with notices (`windows.episodes`), the topic they go to, each at
    least once; without Kafka they are logged.
    """
    settings = settings or load()
    resumed, on_failure, segments = False, None, None
    args = bytewax_run_args()
    running = args is not None
    try:
        compiled = pipeline.compile(settings.lateness_ms, settings.dedup_ms)
    except PipelineError as e:
        if not running:
            raise
        # Running it: a pipeline that cannot run says why in one line, before anything.
        raise SystemExit(f"waxhouse: {pipeline.name} cannot be built: {e}") from None
    if running:
        if settings.embedded and (embedded is None or (pipeline.join and reference is None)):
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
        reference=reference,
        resumed=resumed,
        on_failure=on_failure,
        segments=segments,
        topic=topic,
        dead_letter_topic=dead_letter_topic,
        notify=notify,
    )


def build_dataflow(
    pipeline: Pipeline | CompiledPipeline,
    settings: Settings,
    *,
    embedded: EmbeddedSource | None = None,
    reference: EmbeddedSource | None = None,
    resumed: bool = False,
    on_failure: Callable[[str], None] | None = None,
    segments: Callable[[], SegmentFiles] | None = None,
    topic: str | None = None,
    dead_letter_topic: str | None = None,
    notify: Mapping[str, str] | None = None,
) -> Dataflow:
    """The dataflow alone, of `pipeline` (or of it already compiled). `resumed`: it
    resumes from committed recovery state (a Kafka partition without state is then new,
    and read from its beginning). `on_failure`: how a source stops the flow when it cannot
    go on (default: it raises). `segments`: where snapshots keep their sealed segments
    (`waxhouse.snapshots.segment_files`; default: inside the snapshots). `topic`,
    `dead_letter_topic`, `notify`: as for `flow`."""
    if isinstance(pipeline, CompiledPipeline):
        compiled, pipeline = pipeline, pipeline.pipeline
    else:
        compiled = pipeline.compile(settings.lateness_ms, settings.dedup_ms)
    notify = dict(notify or {})
    for name in notify:
        table = compiled.tables.get(name)
        if table is None or not isinstance(table.table.window, Episodes):
            raise PipelineError(f"notify: {name!r} is not a table with notices (episodes)")
    for name, table in compiled.tables.items():
        LATE_EVENTS.labels(output=name)  # every table's series exists, at 0, from the start
        if table.end_column is not None:
            WINDOW_FRESHNESS.labels(table=name)
    dataflow = Dataflow(pipeline.name)
    # (source partition, batch of raw records | idle tick)
    source = _source(pipeline, settings, embedded, resumed, on_failure, topic=topic)
    batches = op.input("input", dataflow, source)
    parsed: Stream[tuple[str, Any]] = op.map_value(
        "parse", batches, Parse(compiled.schema, settings.max_future_ms)
    )
    reference_parts = None
    reference_dead: Stream[tuple[str, RowBatch]] | None = None
    join = pipeline.join
    if join is not None:
        # Every reference partition's versions, not late, to every event partition.
        ref_source = _source(
            pipeline, settings, reference, resumed, on_failure, topic=join.topic_name, start=True
        )
        ref_batches = op.input("reference", dataflow, ref_source)
        ref_parsed = op.map_value(
            "parse_reference", ref_batches, Parse(join.schema, reference=join)
        )
        ref_out = op.stateful_batch(
            "reference_partitions", ref_parsed, ReferenceLogic.builder(join, compiled.lateness_ms)
        )
        reference_parts = _Parts(ref_source)
        updates = op.flat_map("broadcast", ref_out, _Broadcast(_Parts(source)))
        reference_dead = op.map_value(
            "reference_dead_letters", ref_out, lambda out: RowBatch(dead_letters=out.dead_letters)
        )
        parsed = op.merge("events_and_reference", parsed, updates)
    live = live_tables(compiled)
    feed = _live_feed(live, settings)
    # (source partition, closed rows of every table + dead letters)
    rows = op.stateful_batch(
        "windows", parsed, PartitionLogic.builder(compiled, segments, reference_parts, feed)
    )
    if reference_dead is not None:
        rows = op.merge("rows", rows, reference_dead)

    to_clickhouse = op.filter_map(
        "route", rows, lambda kv: ("clickhouse", kv[1]) if kv[1].stored() else None
    )
    retry = RetryPolicy(max_attempts=1_000, max_elapsed_seconds=settings.clickhouse_retry_seconds)
    sink = ClickHouseSink(
        settings.clickhouse_url,
        tables=table_specs(compiled),
        statements=compiled.statements(),
        retry=retry,
        on_close=RunReport(
            settings,
            pipeline.name,
            list(compiled.tables),
            join=pipeline.join.name if pipeline.join else None,
        ),
        create_schema=settings.clickhouse_create_schema,
    )
    op.output("clickhouse", to_clickhouse, sink)
    if feed is not None:
        _live_output(pipeline.name, live, settings, rows)

    if not settings.embedded:
        dead = op.flat_map(
            "dead_letters", rows, lambda kv: [(DLQ_PART, row) for row in kv[1].dead_letters]
        )
        dlq = dead_letter_sink(
            settings.kafka_bootstrap_servers or "",
            dead_letter_topic or settings.kafka_dlq_topic,
            setting="KAFKA_DLQ_TOPIC" if dead_letter_topic is None else None,
            client_options=settings.kafka_security.client_options(),
        )
        op.output("dlq", dead, dlq)
    for name, notice_topic in notify.items():
        _notices(name, notice_topic, compiled, rows, settings)
    return dataflow


@dataclass(frozen=True)
class LiveFeed:
    """What the tables' step sends the live store besides final rows: provisional rows
    at most every `provisional_seconds` (0: none) and, with `marks`, each partition's
    watermark (which closes windows' tops) at most every `MARK_SECONDS` or with rows."""

    provisional_seconds: float
    marks: bool


MARK_SECONDS = 0.1


def _live_feed(live: Mapping[str, LiveTable], settings: Settings) -> LiveFeed | None:
    """The feed when live tables go somewhere: Redis (`REDIS_URL`), or the flow's own
    process serving them (`SERVE_LISTEN` set, no Redis)."""
    if not live or (settings.redis_url is None and not settings.serve_in_flow):
        return None
    provisional = any(table.live.provisional for table in live.values())
    return LiveFeed(
        settings.redis_provisional_seconds if provisional else 0.0,
        any(table.live.top_by is not None for table in live.values()),
    )


def _live_output(
    name: str,
    live: Mapping[str, LiveTable],
    settings: Settings,
    rows: Stream[tuple[str, RowBatch]],
) -> None:
    """The live tables' rows to Redis, or to the in-process store `waxhouse serve` reads
    inside the flow."""
    names = set(live)

    def for_live(kv: tuple[str, RowBatch]) -> tuple[str, RowBatch] | None:
        batch = kv[1]
        if batch.marks or batch.provisional or any(t in names for t in batch.tables):
            return ("live", batch)
        return None

    to_live = op.filter_map("live_rows", rows, for_live)
    if settings.redis_url is not None:
        from waxhouse.connectors.redis_store import RedisSink

        sink: Any = RedisSink(
            settings.redis_url,
            name,
            live,
            stream_length=settings.redis_stream_length,
            budget_seconds=settings.redis_retry_seconds,
        )
    else:
        from waxhouse.serve.embedded import serving_sink

        sink = serving_sink(name, live, settings)
    op.output("live", to_live, sink)


def _notices(
    name: str,
    topic: str,
    compiled: CompiledPipeline,
    rows: Stream[tuple[str, RowBatch]],
    settings: Settings,
) -> None:
    """Table `name`'s notices to `topic` (at least once), or logged without Kafka."""
    encode = NoticeEncoder(compiled.tables[name])
    sent = op.flat_map(
        f"{name}_notices",
        rows,
        lambda kv: [(NOTICES_PART, row) for row in kv[1].notices.get(name, ())],
    )
    if settings.embedded:
        op.inspect(f"{name}_notices_logged", sent, lambda _step, item: encode.log(item[1]))
        return
    sink: KafkaTopicSink[tuple] = KafkaTopicSink(
        settings.kafka_bootstrap_servers or "",
        topic,
        part=NOTICES_PART,
        what=f"{name} notice topic",
        setting=None,
        encode=encode,
        acknowledged=encode.sent,
        client_options=settings.kafka_security.client_options(),
    )
    op.output(f"{name}_notify", sent, sink)


class NoticeEncoder:
    """A table's notice rows as Kafka records: key the row's key (its fields joined by
    `/` when several), value the JSON of `waxhouse.views.notice`, header `table`."""

    def __init__(self, table: CompiledTable) -> None:
        self.table = table
        self.times = time_columns(table)
        self.keys = [table.columns.index(name) for name in table.table.key_fields]
        self.header = [("table", table.name.encode())]

    def __call__(self, row: tuple) -> Message:
        key = "/".join(str(row[i]) for i in self.keys).encode()
        return Message(key, notice(self.table, row, self.times), self.header)

    def sent(self, row: tuple) -> None:
        NOTICES.labels(table=self.table.name).inc()

    def log(self, row: tuple) -> None:
        logger.info("notice: %s", notice(self.table, row, self.times).decode())
        NOTICES.labels(table=self.table.name).inc()


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
    topic: str | None = None,
    start: bool = False,
) -> Source:
    """The events' source from `topic` (default `KAFKA_TOPIC`); with `start`, a join's
    reference, read from its beginning."""
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
        topic or settings.kafka_topic,
        starting_offset="earliest" if start else settings.kafka_starting_offset,
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


@dataclass(frozen=True, slots=True)
class ForPartition:
    """A reference update on its way to one event partition (`part`)."""

    part: str
    update: ReferenceUpdate


WindowInput = ParsedBatch | IdleTick | ForPartition


class _Parts:
    """A source's partitions, listed on first use (at run time, not when the dataflow is
    built: `waxhouse schema` builds it with no source to ask)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._parts: list[str] | None = None

    def __call__(self) -> list[str]:
        if self._parts is None:
            self._parts = list(self._source.list_parts())
        return self._parts


@dataclass(frozen=True)
class _Broadcast:
    event_parts: _Parts

    def __call__(self, item: tuple[str, ReferenceOut]) -> list[tuple[str, ForPartition]]:
        update = item[1].update
        if update is None:
            return []
        return [(part, ForPartition(part, update)) for part in self.event_parts()]


@dataclass(frozen=True, slots=True)
class ReferenceOut:
    update: ReferenceUpdate | None
    dead_letters: list[DeadLetterRow]


class _RestoredLogic(StatefulBatchLogic[In, Out, bytes]):
    """A stateful step's logic that, restored from a snapshot, asks to be woken once at
    once, so that Bytewax snapshots it again in the run's first epoch.

    Bytewax snapshots a key only in the epochs that wake it. A run killed before
    completing an epoch can leave a snapshot of that epoch behind, and the next run
    resumes from that same epoch; if it did not wake the key in it, the stale snapshot
    would stay, newer than the key's true one, and a later resume would load it beside its
    source's older offsets. Where every recovery partition is in reach, `prepare_recovery`
    removes such snapshots before the run (`waxhouse.recovery.drop_unfinished_snapshots`);
    this covers processes that each hold their own.
    """

    _wake = False

    def notify_at(self) -> datetime | None:
        return datetime.now(timezone.utc) if self._wake else None

    def on_notify(self) -> tuple[list[Out], bool]:
        self._wake = False
        return [], StatefulBatchLogic.RETAIN


class ReferenceLogic(_RestoredLogic[WindowInput, ReferenceOut]):
    """One reference partition: late versions refused, its watermark (`ReferencePartition`)."""

    def __init__(self, join: TemporalJoin, lateness_ms: int, state: ReferencePartition | None):
        self._join = join
        self._lateness_ms = lateness_ms
        self._state = state

    @classmethod
    def builder(
        cls, join: TemporalJoin, lateness_ms: int
    ) -> Callable[[bytes | None], ReferenceLogic]:
        def build(resume_state: bytes | None) -> ReferenceLogic:
            if resume_state is None:
                return cls(join, lateness_ms, None)
            state = pickle.loads(resume_state)
            state.bind(join)
            logic = cls(join, lateness_ms, state)
            logic._wake = True
            return logic

        return build

    def on_batch(self, values: list[WindowInput]) -> tuple[list[ReferenceOut], bool]:
        out = []
        for value in values:
            if isinstance(value, ForPartition):
                continue  # not sent here
            if self._state is None:
                self._state = ReferencePartition(value.part, self._join, self._lateness_ms)
            if isinstance(value, IdleTick):
                out.append(ReferenceOut(self._state.idle(value.idle_ms), []))
                continue
            update, late = self._state.process(value.events)
            REFERENCE_VERSIONS.labels(join=self._join.name).inc(len(update.versions))
            dead = [*value.dead_letters, *late]
            for row in late:
                DEAD_LETTERS.labels(reason=row.reason).inc()
            out.append(ReferenceOut(update, dead))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[ReferenceOut], bool]:
        """This reference partition was read to its end (a bounded run, or an embedded
        source that ran out): events stop waiting for it while the others go on."""
        if self._state is None:
            return [], StatefulBatchLogic.RETAIN
        return [ReferenceOut(self._state.end(), [])], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self._state, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class Parse:
    """The parse step: raw batch -> events and dead letters; idle ticks pass through.

    `max_future_ms`: how far an event's time may be ahead of its record's timestamp.
    `reference`: parse a join's reference versions instead (`TemporalJoin.parse`; not
    counted as parsed events).
    """

    schema: Schema
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    reference: TemporalJoin | None = None

    def __call__(self, item: SourceItem) -> WindowInput:
        if isinstance(item, IdleTick):
            return item
        if self.reference is not None:
            events, dead = self.reference.parse(item)
        else:
            events, dead = self.schema.parse_batch(item, self.max_future_ms)
            EVENTS_PARSED.inc(len(events))
        for row in dead:
            DEAD_LETTERS.labels(reason=row.reason).inc()
        return ParsedBatch(item.part, events, dead)


class PartitionLogic(_RestoredLogic[WindowInput, RowBatch]):
    """One source partition's tables and watermark as Bytewax state.

    The snapshot is the pickled `PartitionState`, taken at the same epoch as the source's
    offset, so a resumed flow replays exactly the records after it.
    """

    def __init__(
        self,
        compiled: CompiledPipeline,
        state: PartitionState | None,
        files: SegmentFiles | None = None,
        reference_parts: Callable[[], list[str]] | None = None,
        feed: LiveFeed | None = None,
    ) -> None:
        self._compiled = compiled
        self._files = files
        self._reference_parts = reference_parts
        self._feed = feed
        self._provisional_at = self._mark_at = time.monotonic()
        self._mark = self._provisional_mark = -1
        self._state = None if state is None else self._fed(state)

    @classmethod
    def builder(
        cls,
        compiled: CompiledPipeline,
        segments: Callable[[], SegmentFiles] | None = None,
        reference_parts: Callable[[], list[str]] | None = None,
        feed: LiveFeed | None = None,
    ) -> Callable[[bytes | None], PartitionLogic]:
        """`segments`: with recovery, where the snapshots' sealed segments are kept
        (`waxhouse.snapshots`); without, a snapshot is the state pickled whole.
        `reference_parts`: with a join, its reference's partitions. `feed`: what live
        tables get besides final rows (`LiveFeed`)."""

        def build(resume_state: bytes | None) -> PartitionLogic:
            files = segments() if segments is not None else None
            if resume_state is None:
                return cls(compiled, None, files, reference_parts, feed)
            state = files.loads(resume_state) if files else pickle.loads(resume_state)
            logic = cls(compiled, compiled.restore(state), files, reference_parts, feed)
            logic._wake = True
            return logic

        return build

    def _fed(self, state: PartitionState) -> PartitionState:
        """`state`, its windows tracked for provisional rows only if someone takes them."""
        if self._feed is None or not self._feed.provisional_seconds:
            for table in state.tables:
                if isinstance(table, (WindowState, SessionState)):
                    table.recent = None
        return state

    def on_batch(self, values: list[WindowInput]) -> tuple[list[RowBatch], bool]:
        out = RowBatch()
        for value in values:
            if self._state is None:
                parts = self._reference_parts() if self._reference_parts else []
                self._state = self._fed(self._compiled.partition_state(value.part, parts))
            if isinstance(value, IdleTick):
                out.extend(self._state.idle(value.idle_ms))
            elif isinstance(value, ForPartition):
                out.extend(self._state.reference(value.update))
            else:
                out.dead_letters.extend(value.dead_letters)
                out.extend(self._state.process(value.events))
        return self._emit(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[RowBatch], bool]:
        """End of a bounded run: the reference was read to its end, so every waiting
        event is released; then every open window is written."""
        state = self._state
        if state is None:
            return [], StatefulBatchLogic.RETAIN
        out = RowBatch()
        if state.join is not None:
            out.extend(state.reference_ended())
        out.extend(state.flush())
        return self._emit(out), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self._files is None or self._state is None:
            return pickle.dumps(self._state, protocol=pickle.HIGHEST_PROTOCOL)
        return self._files.dumps(self._state, self._state.part)

    def _emit(self, out: RowBatch) -> list[RowBatch]:
        state = self._state
        if state is not None and self._feed is not None:
            self._live(state, out)
        if state is not None:
            WATERMARK.labels(partition=state.part).set(max(state.watermark, 0) / 1000)
            if state.join is not None:
                JOIN_WAITING.labels(partition=state.part).set(len(state.join))
                reference = min(max(state.join.watermark, 0), MAX_TS_MS)
                REFERENCE_WATERMARK.labels(partition=state.part).set(reference / 1000)
            if state.watermark >= 0:  # the partition has seen an event
                WATERMARK_LAG.publish(state.part, state.watermark / 1000)
        if out.dead_letters:
            _count_dead(out.dead_letters)
        for table, rows in out.tables.items():
            if rows:
                WINDOW_ROWS.labels(table=table).inc(len(rows))
        return [out] if out else []

    def _live(self, state: PartitionState, out: RowBatch) -> None:
        """Provisional rows and this partition's watermark for the live store, when due."""
        feed = self._feed
        assert feed is not None
        now = time.monotonic()
        every = feed.provisional_seconds
        if every and now - self._provisional_at >= every:
            # Windows that the next refresh would find closed at this pace are left out:
            # live, that is almost none; replaying, almost all.
            advance = max(state.watermark - self._provisional_mark, 0)
            self._provisional_at, self._provisional_mark = now, state.watermark
            for table, rows in state.provisional(state.watermark + advance).items():
                if rows:
                    out.provisional.setdefault(table, []).extend(rows)
        mark = state.watermark
        moved = feed.marks and mark >= 0 and mark != self._mark
        if moved and (any(out.tables.values()) or now - self._mark_at >= MARK_SECONDS):
            out.marks[state.part] = self._mark = mark
            self._mark_at = now


def _count_dead(dead_letters: list[DeadLetterRow]) -> None:
    """The dead letters the tables' step decides (duplicates and late events), and per
    table the late events that missed it (one batch's worth; their `error` names the
    tables: `missed page_stats, user_sessions`)."""
    duplicates = sum(row.reason == "duplicate" for row in dead_letters)
    if duplicates:
        DEAD_LETTERS.labels(reason="duplicate").inc(duplicates)
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
