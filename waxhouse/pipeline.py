"""A pipeline: an event schema, the field the topic is keyed by, and the tables to keep.

    orders = Pipeline(
        "orders",
        Schema({...}, event_time="ts"),
        key="customer",
        tables=[Table(...), Table(...)],
    )

Declaring checks names; `compile()` checks the tables against the schema and refuses
what cannot be exact, with a message saying why (`PipelineError`), before any record is
read. `waxhouse.flow(pipeline)` turns it into a Bytewax dataflow; `waxhouse.testing` runs
it over records in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from waxhouse.dedup import DEFAULT_HORIZON_MS, DedupState
from waxhouse.engine import CompiledTable, PartitionState, PipelineError, compile_table
from waxhouse.fields import ChoiceField, Schema, TextField
from waxhouse.joins import Enriched, JoinError, JoinState, TemporalJoin
from waxhouse.tables import Duration, Table, to_ms

__all__ = ["CompiledPipeline", "Pipeline", "PipelineError"]

RESERVED_TABLES = frozenset({"dead_letters"})


class Pipeline:
    """What a team declares: `name` (labels its logs), the event `schema`, the Kafka `key`
    field (records with equal values share a partition: what sessions, count windows and
    exact distinct counts rely on) and the `tables`.

    `lateness`: how far behind a partition's newest event time an event may be and still
    count everywhere; None takes `ALLOWED_LATENESS_SECONDS` when the flow is built.

    `join`: a `TemporalJoin` whose fields every event gains, from the reference version
    valid at its time, before the tables see it (`waxhouse.joins`); the tables can then
    key by and aggregate those fields too.

    `dedup`: the fields that identify an event (`("user_id", "event_id")`): a later copy
    of an event counted within `dedup_horizon` of the partition's watermark is a dead
    letter `duplicate` and counts nowhere (`waxhouse.dedup`). None takes `DEDUP_SECONDS`
    as the horizon when the flow is built. Without `dedup`, every valid record counts.
    """

    def __init__(
        self,
        name: str,
        schema: Schema,
        *,
        key: str | None,
        tables: Sequence[Table],
        lateness: Duration | None = None,
        join: TemporalJoin | None = None,
        dedup: Sequence[str] = (),
        dedup_horizon: Duration | None = None,
    ) -> None:
        if not name.isidentifier():
            raise PipelineError(f"pipeline name {name!r}: letters, digits and _ only")
        if not tables:
            raise PipelineError(f"{name}: a pipeline needs at least one table")
        names = [table.name for table in tables]
        for table_name in names:
            if names.count(table_name) > 1:
                raise PipelineError(f"{name}: two tables named {table_name!r}")
        # Every table is a view `name` over a table `name_data`; the dead letters too.
        objects = [*RESERVED_TABLES, *(f"{reserved}_data" for reserved in RESERVED_TABLES)]
        for table_name in names:
            if table_name in RESERVED_TABLES:
                raise PipelineError(f"{name}: {table_name!r} is the pipeline's own table")
            for object_name in (table_name, f"{table_name}_data"):
                if object_name in objects:
                    raise PipelineError(
                        f"{name}: table {table_name!r} needs the name {object_name!r}, which "
                        f"another table or the dead letters have (a table {table_name} is "
                        f"stored in {table_name}_data)"
                    )
                objects.append(object_name)
        if key is not None:
            try:
                schema.index(key)
            except KeyError:
                raise PipelineError(f"{name}: key {key!r} is not a field of the schema") from None
        self.name = name
        self.schema = schema
        self.join = join
        self.enriched: Enriched | None = None
        if join is not None:
            try:
                schema.index(join.on)
                self.enriched = Enriched(schema, join, owner=name)
            except (KeyError, JoinError) as e:
                raise PipelineError(f"{name}: {e.args[0]}") from None
        self.key = key
        self.tables = tuple(tables)
        self.lateness_ms = None if lateness is None else to_ms(lateness, "lateness", zero=True)
        if isinstance(dedup, str):
            raise PipelineError(f"{name}: dedup is a list of field names, got {dedup!r}")
        for field_name in dedup:
            if field_name not in schema.names:
                raise PipelineError(f"{name}: dedup: {field_name!r} is not a field of the schema")
            field = schema.kind(field_name)
            if not isinstance(field, (TextField, ChoiceField)) or field.optional:
                raise PipelineError(
                    f"{name}: dedup: {field_name!r} must be a required text() or one_of() field"
                )
        if len(set(dedup)) != len(dedup):
            raise PipelineError(f"{name}: dedup: a field is named twice in {list(dedup)}")
        if dedup_horizon is not None and not dedup:
            raise PipelineError(f"{name}: dedup_horizon without dedup fields")
        self.dedup = tuple(dedup)
        self.dedup_ms = (
            None if dedup_horizon is None else to_ms(dedup_horizon, "dedup_horizon", zero=True)
        )

    def compile(
        self, default_lateness_ms: int = 0, default_dedup_ms: int = DEFAULT_HORIZON_MS
    ) -> CompiledPipeline:
        """Every table compiled against the schema; `PipelineError` on the first problem.
        The defaults are `ALLOWED_LATENESS_SECONDS` and `DEDUP_SECONDS` in milliseconds."""
        lateness_ms = self.lateness_ms if self.lateness_ms is not None else default_lateness_ms
        if lateness_ms < 0:
            raise PipelineError(f"{self.name}: lateness must not be negative")
        dedup_ms = self.dedup_ms if self.dedup_ms is not None else default_dedup_ms
        if dedup_ms < 0:
            raise PipelineError(f"{self.name}: the deduplication horizon must not be negative")
        read = self.enriched if self.enriched is not None else self.schema
        tables = {
            table.name: compile_table(table, read, lateness_ms=lateness_ms, kafka_key=self.key)
            for table in self.tables
        }
        return CompiledPipeline(self, lateness_ms, tables, dedup_ms)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, tables={[t.name for t in self.tables]})"


@dataclass(frozen=True)
class CompiledPipeline:
    """A pipeline ready to run: its tables compiled with one lateness."""

    pipeline: Pipeline
    lateness_ms: int
    tables: dict[str, CompiledTable]
    dedup_ms: int = DEFAULT_HORIZON_MS

    @property
    def schema(self) -> Schema:
        return self.pipeline.schema

    def partition_state(self, part: str, reference_parts: Sequence[str] = ()) -> PartitionState:
        """A new source partition's state; with a join, `reference_parts` are every
        partition of its reference."""
        join = None
        pipeline = self.pipeline
        if pipeline.join is not None and pipeline.enriched is not None:
            join = JoinState(
                pipeline.join,
                list(reference_parts),
                self.schema.time_index,
                self.schema.index(pipeline.join.on),
                pipeline.enriched.event_type,
            )
        dedup = None
        if pipeline.dedup:
            identity = [self.schema.index(name) for name in pipeline.dedup]
            dedup = DedupState(identity, pipeline.dedup, self.schema.time_index, self.dedup_ms)
        return PartitionState(part, list(self.tables.values()), self.schema.time_index, join, dedup)

    def restore(self, state: PartitionState) -> PartitionState:
        """A snapshot's state, its compiled tables attached again."""
        state.bind(self.tables)
        enriched = self.pipeline.enriched
        if state.join is not None and enriched is not None:
            state.join.bind(enriched.event_type)
        return state

    def statements(self) -> list[tuple[str, str]]:
        """The DDL of the pipeline's tables and views, as (name, statement), in order."""
        out: list[tuple[str, str]] = []
        for table in self.tables.values():
            out.append((table.physical, table.create_table_sql()))
            out.append((table.name, table.create_view_sql()))
        return out
