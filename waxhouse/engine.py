"""Compiled tables: a declared `Table` becomes one source partition's state machine.

A table's windows, key and aggregates are compiled once, when the pipeline is built, into
Python functions whose loops hold every aggregate inline (generated source, as
`collections.namedtuple` does; `CompiledTable.source` shows it). Per event that is a few
comparisons and additions, with no call per aggregate; a `where` given as a callable is the
one per-event call, by the user's choice.

The rules, per source partition (the contract's, for every window kind but `count`):

- The watermark an event arrives at is the largest event time before it in the partition
  (idle ticks advance it while the partition is caught up and quiet).
- A window `[start, end)` is closed for an event when `end + lateness` is behind that
  watermark; a session when its `end + gap + lateness` is. An event is counted in every
  window of a table that is still open for it; if it missed one, the table is named in its
  `late` dead letter.
- Rows are emitted once the watermark passes their close time, and at the end of a
  bounded run (`flush`, which keeps them open). Closing is decided by the watermark alone,
  so batch boundaries and restarts change no result.
- A count window counts every valid event of its key in offset order, late or not.

State is plain data (dicts, lists, sets, ints, strings), pickled by the snapshot; the
compiled functions are not part of it and are attached again on restore (`bind`). What a
snapshot keeps of a large key log (sessions, count windows, episodes) is mostly sealed
`Segment`s, which never change once made: a flow with recovery writes each to a file once
and then snapshots it by name (`waxhouse.snapshots`).
"""

from __future__ import annotations

import heapq
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

from waxhouse import fields
from waxhouse.aggregates import Aggregate, Where
from waxhouse.dedup import DedupState
from waxhouse.errors import WaxhouseError
from waxhouse.joins import JoinState, ReferenceUpdate
from waxhouse.records import record_source
from waxhouse.rows import DeadLetterRow, RowBatch
from waxhouse.segments import Segment, as_segment
from waxhouse.tables import CountWindow, Episodes, Session, Sliding, Table, Tumbling

NO_WATERMARK = -(2**62)
_NEVER = 2**62
_DATETIME = "DateTime64(3, 'UTC')"
# Event tuples end with the record's offset, payload and timestamp.
_OFFSET, _PAYLOAD, _RECEIVED_AT = -3, -2, -1


class PipelineError(WaxhouseError, ValueError):
    """A declaration that cannot be built, or cannot be exact; the message says why."""


@dataclass(frozen=True)
class ValueKind:
    """How a field's values are stored: a ClickHouse type for the stored value, and for
    scaled decimals the digits after the point (the value is kept as `round(v * 10**places)`)."""

    type: str
    nullable: bool = False
    numeric: bool = False
    places: int = 0
    digits: int = 18
    unit: str = ""  # the stored column's suffix for scaled decimals, e.g. `_cents`

    def shown(self, nullable: bool) -> str:
        """The type users see: decimals as Decimal, nullable when values may be absent."""
        base = f"Decimal({min(self.digits + self.places + 1, 38)}, {self.places})"
        shown = base if self.places else self.type
        return f"Nullable({shown})" if nullable else shown


class SchemaLike(Protocol):
    """What the engine needs of an event schema (`waxhouse.fields.Schema`)."""

    time_index: int

    def index(self, name: str) -> int: ...

    def kind(self, name: str) -> fields.Field: ...


def value_kind(field: fields.Field) -> ValueKind:
    """How values of `field` are stored and shown."""
    nullable = field.optional and getattr(field, "default", None) is None
    if isinstance(field, fields.TimestampField):
        return ValueKind(_DATETIME, nullable)
    if isinstance(field, fields.IntegerField):
        return ValueKind("Int64", nullable, numeric=True)
    if isinstance(field, fields.DecimalField):
        digits = len(str(int(max(abs(field.min), abs(field.max)))))
        unit = "_cents" if field.places == 2 and field.min >= 0 else f"_e{field.places}"
        return ValueKind("Int64", nullable, True, field.places, digits, unit)
    return ValueKind("String", nullable)


def _kind(schema: SchemaLike, name: str) -> ValueKind:
    return value_kind(schema.kind(name))


# ---------------------------------------------------------------------------------------
# Code generation


class _Source:
    """Lines of generated Python and the constants they refer to by name."""

    def __init__(self) -> None:
        self.names: dict[str, object] = {}

    def constant(self, value: object) -> str:
        """An expression for `value`: a literal for text and numbers (no name to look up
        per event), else a name bound to it."""
        if type(value) in (str, int) or (type(value) is float and math.isfinite(value)):
            return repr(value)
        for name, held in self.names.items():
            if held is value:
                return name
        name = f"_c{len(self.names)}"
        self.names[name] = value
        return name


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _indent(lines: list[str], depth: int) -> list[str]:
    return ["    " * depth + line for line in lines]


@dataclass
class _Compiled:
    """One aggregate's place in a row's slots and the code that maintains it."""

    name: str
    aggregate: Aggregate
    slot: int  # its first slot, counted from the row's first aggregate slot
    width: int
    kind: ValueKind | None  # of its field; None for count


def _condition(where: Where, schema: SchemaLike, source: _Source) -> str | None:
    """A Python expression over the event `e` that is true for the events kept."""
    if where is None:
        return None
    if callable(where):
        return f"{source.constant(where)}(e)"
    parts = [
        f"e[{schema.index(name)}] == {source.constant(value)}" for name, value in where.items()
    ]
    return " and ".join(parts) if parts else None


class _TableCode:
    """A table's aggregates as slots of a row list, and the code for them.

    A row list holds, from `base`: the number of events counted (the row's version), then
    each aggregate's slots.
    """

    def __init__(
        self, table: Table, schema: SchemaLike, combined: bool, kafka_key: str | None
    ) -> None:
        self.table = table
        self.schema = schema
        self.combined = combined
        self.source = _Source()
        self.time_index = schema.time_index
        self.aggregates: list[_Compiled] = []
        slot = 1
        for name, aggregate in table.aggregates.items():
            kind = None if aggregate.field is None else _kind(schema, aggregate.field)
            self._check(name, aggregate, kind, kafka_key)
            if aggregate.operation == "count" and aggregate.where is None:
                # Every event the table keeps: that is the row's version, slot 0.
                self.aggregates.append(_Compiled(name, aggregate, 0, 0, kind))
                continue
            if aggregate.operation == "mean":
                width = 2  # sum, count
            elif aggregate.operation in ("first", "last"):
                width = 2 + len(aggregate.by)  # time, ties, value: flat, no tuple per row
            else:
                width = 1
            self.aggregates.append(_Compiled(name, aggregate, slot, width, kind))
            slot += width
        self.width = slot

    def _check(
        self, name: str, aggregate: Aggregate, kind: ValueKind | None, kafka_key: str | None
    ) -> None:
        where = f"{self.table.name}.{name}"
        for field_name in aggregate.fields():
            self.schema.index(field_name)  # raises for an unknown field
        if aggregate.operation in ("sum", "mean") and not (kind and kind.numeric):
            raise PipelineError(f"{where}: {aggregate.operation} needs a number field")
        for tie in aggregate.by:
            if _kind(self.schema, tie).nullable:
                raise PipelineError(f"{where}: tie field {tie!r} must be required")
        if (
            aggregate.operation == "count_distinct"
            and self.combined
            and aggregate.field != kafka_key
        ):
            raise PipelineError(
                f"{where}: count_distinct({aggregate.field!r}) cannot be exact: the table's "
                f"key is not the Kafka key ({kafka_key!r}), so its rows are combined across "
                "source partitions, and distinct counts only add up when each value lives in "
                f"one partition. Key the topic by {aggregate.field!r}, or key the table by "
                f"{kafka_key!r}"
            )

    def init(self) -> str:
        """The list literal of a fresh row's slots after `base`, for the row's first event
        `e`, which the update lines then add. `first`/`last` slots hold `e`'s time, ties
        and value already where every event has the value (so the update's test needs no
        None check); elsewhere None until an event has one."""
        values = ["0"]
        for compiled in self.aggregates:
            operation = compiled.aggregate.operation
            if not compiled.width:
                continue  # the version
            if operation in ("count", "sum"):
                values.append("0")
            elif operation == "mean":
                values.extend(("0", "0"))
            elif operation == "count_distinct":
                values.append("set()")
            elif operation in ("first", "last") and not self._maybe_absent(compiled):
                aggregate = compiled.aggregate
                held = (*aggregate.by, aggregate.field or "")  # first/last have a field
                values.append(f"e[{self.time_index}]")
                values.extend(f"e[{self.schema.index(name)}]" for name in held)
            else:
                values.extend(["None"] * compiled.width)
        return ", ".join(values)

    def update(self, row: str, base: int) -> list[str]:
        """Lines adding the event `e` to the row list `row` (its slots from `base`).

        Aggregates with the same `where` share one test, and tests of one field against
        different values become one `if`/`elif` chain on a local: the clickstream's four
        counts by event type cost one read of the type and at most four comparisons.
        """
        plain: list[str] = []
        # field index -> value -> its branch (values equal under == share one: the test
        # `w == value` cannot tell them apart either)
        chains: dict[int, dict[Any, tuple[str, list[str]]]] = {}
        others: dict[str, list[str]] = {}
        for compiled in self.aggregates:
            if not compiled.width:
                continue  # the version, counted by the loop itself
            body = self._update_one(compiled, row, base + compiled.slot)
            where = compiled.aggregate.where
            if where is None:
                plain.extend(body)
            elif isinstance(where, Mapping) and len(where) == 1 and _hashable(*where.values()):
                ((name, value),) = where.items()
                chain = chains.setdefault(self.schema.index(name), {})
                branch = chain.setdefault(value, (self.source.constant(value), []))
                branch[1].extend(body)
            else:
                condition = _condition(where, self.schema, self.source)
                assert condition is not None
                others.setdefault(condition, []).extend(body)
        lines = plain
        for index, chain in chains.items():
            local = f"w{index}"
            lines.append(f"{local} = e[{index}]")
            for n, (constant, body) in enumerate(chain.values()):
                lines.append(f"{'if' if n == 0 else 'elif'} {local} == {constant}:")
                lines.extend(_indent(body, 1))
        for condition, body in others.items():
            lines.append(f"if {condition}:")
            lines.extend(_indent(body, 1))
        return lines

    def _update_one(self, compiled: _Compiled, row: str, at: int) -> list[str]:
        """Lines adding the event `e` to one aggregate, its `where` aside."""
        aggregate, kind = compiled.aggregate, compiled.kind
        slot = f"{row}[{at}]"
        operation = aggregate.operation
        if operation == "count":
            return [f"{slot} += 1"]
        body = [f"v = e[{self.schema.index(aggregate.field)}]"]  # type: ignore[arg-type]
        ops: list[str]
        if operation == "sum":
            ops = [f"{slot} += v"]
        elif operation == "mean":
            ops = [f"{slot} += v", f"{row}[{at + 1}] += 1"]
        elif operation == "count_distinct":
            ops = [f"{slot}.add(v)"]
        elif operation in ("min", "max"):
            better = "<" if operation == "min" else ">"
            ops = [f"if {slot} is None or v {better} {slot}:", f"    {slot} = v"]
        else:
            ops = self._first_last(compiled, row, at)
        if kind is not None and kind.nullable:
            body.append("if v is not None:")
            body.extend(_indent(ops, 1))
        else:
            body.extend(ops)
        return body

    def _first_last(self, compiled: _Compiled, row: str, at: int) -> list[str]:
        """Keep the time, ties and value of the earliest (or latest) event in the slots
        from `at`: the time decides, the rest only on a tie. A row's first event fills
        the slots, so they are None only while its events may lack the value."""
        aggregate = compiled.aggregate
        better = "<" if aggregate.operation == "first" else ">"
        ties = [f"e[{self.schema.index(name)}]" for name in aggregate.by]
        mine = [*ties, "v"]
        held = [f"{row}[{at + 1 + i}]" for i in range(len(mine))]
        on_tie = (
            f"{mine[0]} {better} {held[0]}"
            if len(mine) == 1
            else f"({', '.join(mine)}) {better} ({', '.join(held)})"
        )
        return [
            f"t = e[{self.time_index}]",
            f"best = {row}[{at}]",
            f"if {'best is None or ' if self._maybe_absent(compiled) else ''}"
            f"t {better} best or (t == best and {on_tie}):",
            # One store per slot: cheaper than a slice assignment from a new tuple.
            *(f"    {row}[{at + i}] = {value}" for i, value in enumerate(["t", *mine])),
        ]

    def merge(self, into: str, other: str, base: int) -> list[str]:
        """Lines folding row list `other` into `into` (sessions that an event joins)."""
        lines = [f"{into}[{base}] += {other}[{base}]"]
        for compiled in self.aggregates:
            if not compiled.width:
                continue  # the version, summed above
            at = base + compiled.slot
            a, b = f"{into}[{at}]", f"{other}[{at}]"
            operation = compiled.aggregate.operation
            if operation in ("count", "sum"):
                lines.append(f"{a} += {b}")
            elif operation == "mean":
                lines.extend((f"{a} += {b}", f"{into}[{at + 1}] += {other}[{at + 1}]"))
            elif operation == "count_distinct":
                lines.append(f"{a} |= {b}")
            elif operation in ("min", "max"):
                better = "<" if operation == "min" else ">"
                lines.extend(
                    (f"if {b} is not None and ({a} is None or {b} {better} {a}):", f"    {a} = {b}")
                )
            else:  # first, last: the whole (time, ties, value) decides
                better = "<" if operation == "first" else ">"
                end = at + compiled.width
                lines.extend(
                    (
                        f"if {b} is not None and ({a} is None or "
                        f"{other}[{at}:{end}] {better} {into}[{at}:{end}]):",
                        f"    {into}[{at}:{end}] = {other}[{at}:{end}]",
                    )
                )
        return lines

    def stored(self, row: str, base: int) -> list[tuple[str, str, str]]:
        """(column, ClickHouse type, Python expression) of each stored aggregate column,
        the version last."""
        columns: list[tuple[str, str, str]] = []
        for compiled in self.aggregates:
            columns.extend(self._stored_one(compiled, row, base + compiled.slot))
        columns.append(("version", "UInt64", f"{row}[{base}]"))
        return columns

    def _maybe_absent(self, compiled: _Compiled) -> bool:
        kind = compiled.kind
        return compiled.aggregate.where is not None or (kind is not None and kind.nullable)

    def _stored_one(self, compiled: _Compiled, row: str, at: int) -> list[tuple[str, str, str]]:
        name, kind, operation = compiled.name, compiled.kind, compiled.aggregate.operation
        slot = f"{row}[{at}]"
        if operation in ("count", "count_distinct"):
            value = slot if operation == "count" else f"len({slot})"
            return [(name, "UInt64", value)]
        assert kind is not None
        unit = kind.unit
        if operation == "sum":
            return [(name + unit, "Int64", slot)]
        if operation == "mean":
            return [
                (f"{name}_sum{unit}", "Int64", slot),
                (f"{name}_count", "UInt64", f"{row}[{at + 1}]"),
            ]
        nullable = self._maybe_absent(compiled)
        value_type = f"Nullable({kind.type})" if nullable else kind.type
        if operation in ("min", "max"):
            return [(name + unit, value_type, slot)]
        # first, last: slots time, ties, value (None until an event has one)
        columns = [(name + unit, value_type, f"{row}[{at + compiled.width - 1}]")]
        if self.combined:  # the order key, for argMin / argMax across partitions
            order = [(f"{name}_ts", _DATETIME)] + [
                (f"{name}_by_{tie}", _kind(self.schema, tie).type) for tie in compiled.aggregate.by
            ]
            for i, (column, column_type) in enumerate(order):
                column_type = f"Nullable({column_type})" if nullable else column_type
                columns.append((column, column_type, f"{row}[{at + i}]"))
        return columns

    def shown(self) -> list[tuple[str, str]]:
        """(SQL expression, column name) of each aggregate in the table's view."""
        combined = self.combined
        out: list[tuple[str, str]] = []
        for compiled in self.aggregates:
            name, kind, operation = compiled.name, compiled.kind, compiled.aggregate.operation
            if operation in ("count", "count_distinct"):
                out.append((f"sum({name})" if combined else name, name))
                continue
            assert kind is not None
            stored = name + kind.unit
            scale = 10**kind.places
            if operation == "mean":
                total, n = f"{name}_sum{kind.unit}", f"{name}_count"
                if combined:
                    total, n = f"sum({total})", f"sum({n})"
                divide = f" / {scale}" if kind.places else ""
                out.append((f"if({n} = 0, NULL, {total} / {n}{divide})", name))
                continue
            if operation == "sum":
                value = f"sum({stored})" if combined else stored
                nullable = False
            elif operation in ("min", "max"):
                value = f"{operation}({stored})" if combined else stored
                nullable = self._maybe_absent(compiled)
            else:
                if combined:
                    ties = "".join(f", {name}_by_{tie}" for tie in compiled.aggregate.by)
                    function = "argMin" if operation == "first" else "argMax"
                    value = f"{function}({stored}, ({name}_ts{ties}, {stored}))"
                else:
                    value = stored
                nullable = self._maybe_absent(compiled)
            if kind.places:
                wide = "Nullable(Decimal(38, {p}))" if nullable else "Decimal(38, {p})"
                wide = wide.format(p=kind.places)
                shown_type = (
                    f"Decimal(18, {kind.places})" if operation == "sum" else kind.shown(False)
                )
                if nullable:
                    shown_type = f"Nullable({shown_type})"
                value = f"CAST(CAST({value} AS {wide}) / {scale} AS {shown_type})"
            out.append((value, name))
        return out


# ---------------------------------------------------------------------------------------
# The compiled table


@dataclass
class CompiledTable:
    """A table bound to a schema: its physical layout, its view and its functions."""

    table: Table
    lateness_ms: int
    combined: bool  # its rows are per source partition, combined by the view
    time_index: int = 0  # the event time's place in an event tuple
    columns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    order_by: tuple[str, ...] = ()
    end_column: str | None = None  # where a row's window ends (freshness), if it has one
    source: str = ""
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    # Each aggregate's stored columns, and the view's leading (window and key) columns.
    stored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    leading: tuple[str, ...] = ()
    kinds: dict[str, ValueKind] = field(default_factory=dict)  # of the fields it reads
    deletes: bool = False  # it can retract a row it wrote (sessions: the `deleted` column)
    shown: list[tuple[str, str]] = field(default_factory=list)  # the view's (expression, name)
    trailing: tuple[str, ...] = ()  # the window's flag after the aggregates (complete, closed)

    @property
    def name(self) -> str:
        return self.table.name

    def kind(self, field_name: str) -> ValueKind:
        """How the schema's field `field_name` is stored."""
        return self.kinds[field_name]

    @property
    def physical(self) -> str:
        return f"{self.table.name}_data"

    def new_state(self, part: str) -> TableState:
        window = self.table.window
        state: TableState
        if isinstance(window, Session):
            state = SessionState(self.name, part)
        elif isinstance(window, Episodes):
            state = EpisodeState(self.name, part)
        elif isinstance(window, CountWindow):
            state = CountState(self.name, part)
        else:
            state = WindowState(self.name, part)
        state.bind(self)
        return state

    def create_table_sql(self) -> str:
        columns = ",\n".join(
            f"    {name} {column_type}"
            for name, column_type in zip(self.columns, self.types, strict=True)
        )
        return (
            f"-- {self.name}: one row per {self._row_is()}; a replay writes the identical row\n"
            "-- again, and a row with a higher version (more events counted) wins.\n"
            f"CREATE TABLE IF NOT EXISTS {self.physical}\n(\n{columns},\n"
            "    written_at DateTime64(3, 'UTC') DEFAULT now64(3)\n)\n"
            f"ENGINE = ReplacingMergeTree({'version, deleted' if self.deletes else 'version'})\n"
            f"ORDER BY ({', '.join(self.order_by)})"
        )

    def _row_is(self) -> str:
        return "(" + ", ".join(self.order_by) + ")"

    def create_view_sql(self) -> str:
        leading = list(self.leading)
        select = [
            *leading,
            *(expr if expr == name else f"{expr} AS {name}" for expr, name in self.shown),
        ]
        select.extend(self.trailing)
        body = ",\n    ".join(select)
        group = f"\nGROUP BY {', '.join(leading)}" if self.combined else ""
        summing = ", summing the source partitions" if self.combined else ""
        return (
            f"-- {self.name}: one final row per key and window{summing}.\n"
            f"CREATE OR REPLACE VIEW {self.name} AS\nSELECT\n    {body}\n"
            f"FROM {self.physical} FINAL{group}"
        )


def compile_table(
    table: Table, schema: SchemaLike, *, lateness_ms: int, kafka_key: str | None
) -> CompiledTable:
    """Check `table` against `schema` and compile it; `PipelineError` says what is wrong.

    `kafka_key`: the field the topic is keyed by. A table whose key includes it sees each
    of its keys in one source partition; any other table gets one row per key, window and
    partition, combined by its view.
    """
    for name in table.reads():
        try:
            schema.index(name)
        except KeyError:
            raise PipelineError(f"{table.name}: no field {name!r} in the schema") from None
    for name in table.key_fields:
        if _kind(schema, name).nullable:
            raise PipelineError(f"{table.name}: key field {name!r} must be required")
    combined = kafka_key is None or kafka_key not in table.key_fields
    window = table.window
    if combined and isinstance(window, (Session, CountWindow, Episodes)):
        kind, what = {
            Session: ("session", "sessions"),
            CountWindow: ("count", "offset order"),
            Episodes: ("episodes", "runs of events"),
        }[type(window)]
        raise PipelineError(
            f"{table.name}: a {kind} window needs the Kafka key ({kafka_key!r}) in the table's "
            f"key: a key's {what} cannot be put together across source partitions"
        )
    if isinstance(window, Episodes):
        for tie in window.tie:
            if _kind(schema, tie).nullable:
                raise PipelineError(f"{table.name}: tie field {tie!r} must be required")
    code = _TableCode(table, schema, combined, kafka_key)
    compiled = CompiledTable(table, lateness_ms, combined, schema.time_index)
    _generate(compiled, code, schema)
    compiled.stored = {
        agg.name: tuple(column for column, _, _ in code._stored_one(agg, "a", 0))
        for agg in code.aggregates
    }
    compiled.kinds = {name: _kind(schema, name) for name in table.reads()}
    keys = list(table.key_fields)
    if isinstance(window, (Tumbling, Sliding)):
        compiled.leading = (*window.columns, *keys)
    elif isinstance(window, Session):
        compiled.leading = (*keys, *window.columns)
    elif isinstance(window, Episodes):
        compiled.leading = (*keys, *window.columns[:2])
        compiled.trailing = (window.columns[2],)
    else:
        compiled.leading = (*keys, window.columns[0])
        compiled.trailing = (window.columns[1],)
    return compiled


def _neutral(column_type: str) -> str:
    """A placeholder value of `column_type` (in a deleting row, whose values nobody sees)."""
    if column_type.startswith("Nullable("):
        return "None"
    return "''" if column_type == "String" else "0"


def _key_expr(table: Table, schema: SchemaLike) -> str:
    indexes = [schema.index(name) for name in table.key_fields]
    if len(indexes) == 1:
        return f"e[{indexes[0]}]"
    return "(" + ", ".join(f"e[{i}]" for i in indexes) + ")"


def _key_columns(table: Table, schema: SchemaLike) -> list[tuple[str, str, str]]:
    if len(table.key_fields) == 1:
        name = table.key_fields[0]
        return [(name, _kind(schema, name).type, "k")]
    return [(name, _kind(schema, name).type, f"k[{i}]") for i, name in enumerate(table.key_fields)]


def _generate(compiled: CompiledTable, code: _TableCode, schema: SchemaLike) -> None:
    table, window, lateness = compiled.table, compiled.table.window, compiled.lateness_ms
    source = code.source
    time = schema.time_index
    keep = _condition(table.where, schema, source)
    skip = [f"if not ({keep}):", "    continue"] if keep else []
    key = _key_expr(table, schema)
    keys = _key_columns(table, schema)
    part = [("part", "String", "part")] if compiled.combined else []
    lines: list[str] = []
    if isinstance(window, (Tumbling, Sliding)):
        start_col, end_col = window.columns
        size = window.size_ms
        stored = code.stored("a", 0)
        layout = [
            (start_col, _DATETIME, "start"),
            (end_col, _DATETIME, "end"),
            *keys,
            *part,
            *stored,
        ]
        compiled.order_by = (*table.key_fields, start_col, *(["part"] if part else []))
        compiled.end_column = end_col
        lines += ["def add_all(windows, touched, events, marks, late):"]
        if isinstance(window, Tumbling):
            lines += _indent(
                [
                    "current = None",
                    "keys = None",
                    "for i, e in enumerate(events):",
                    *_indent(skip, 1),
                    f"    ts = e[{time}]",
                    f"    start = ts - ts % {size}",
                    f"    if start + {size + lateness} < marks[i]:",
                    "        late.append(i)",
                    "        continue",
                    "    if start != current:",
                    "        current = start",
                    "        touched.add(start)",
                    "        keys = windows.get(start)",
                    "        if keys is None:",
                    "            keys = windows[start] = {}",
                    f"    k = {key}",
                    "    a = keys.get(k)",
                    "    if a is None:",
                    f"        a = keys[k] = [{code.init()}]",
                ],
                1,
            )
            lines += _indent(["a[0] += 1", *code.update("a", 0)], 2)
        else:
            every = window.every_ms
            lines += _indent(
                [
                    "for i, e in enumerate(events):",
                    *_indent(skip, 1),
                    f"    ts = e[{time}]",
                    "    mark = marks[i]",
                    f"    k = {key}",
                    f"    low = ts - {size}",
                    f"    start = low - low % {every} + {every}",
                    "    missed = False",
                    "    while start <= ts:",
                    f"        if start + {size + lateness} < mark:",
                    "            missed = True",
                    "        else:",
                    "            touched.add(start)",
                    "            keys = windows.get(start)",
                    "            if keys is None:",
                    "                keys = windows[start] = {}",
                    "            a = keys.get(k)",
                    "            if a is None:",
                    f"                a = keys[k] = [{code.init()}]",
                    *_indent(["a[0] += 1", *code.update("a", 0)], 3),
                    f"        start += {every}",
                    "    if missed:",
                    "        late.append(i)",
                ],
                1,
            )
        row = ", ".join(expr for _, _, expr in layout)
        lines += [
            "",
            "def rows(start, keys, part):",
            f"    end = start + {size}",
            f"    return [({row},) for k, a in keys.items()]",
        ]
    elif isinstance(window, Session):
        start_col, end_col = window.columns
        gap, slack = window.gap_ms, window.gap_ms + lateness
        stored = code.stored("s", 2)
        layout = [
            *keys,
            (start_col, _DATETIME, "s[0]"),
            (end_col, _DATETIME, "s[1]"),
            *stored,
            ("deleted", "UInt8", "0"),
        ]
        compiled.order_by = (*table.key_fields, start_col)
        compiled.end_column = end_col
        compiled.deletes = True
        init = code.init()
        # After the aggregates: the flush generation the start was set in, and the
        # (start, version) rows to delete (see SessionState).
        gen_slot = 2 + code.width
        lines += [
            "def new_session(e, gen):",
            f"    ts = e[{time}]",
            f"    s = [ts, ts, {init}, gen, None]",
            *_indent(["s[2] += 1", *code.update("s", 2)], 1),
            "    return s",
            "",
            "def merge(s, o):",
            "    if o[0] < s[0]:",
            "        s[0] = o[0]",
            "    if o[1] > s[1]:",
            "        s[1] = o[1]",
            *_indent(code.merge("s", "o", 2), 1),
            "",
            "def add_all(self, events, marks, late):",
            "    users = self.keys",
            "    dirty = self.dirty",
            "    gen = self.generation",
            "    for i, e in enumerate(events):",
            *_indent(skip, 2),
            f"        ts = e[{time}]",
            f"        k = {key}",
            "        dirty.add(k)",
            "        state = users.get(k)",
            "        if state is None:",
            f"            if ts + {slack} < marks[i]:",
            "                late.append(i)",
            "            else:",
            "                state = users[k] = [None, _NEVER, new_session(e, gen)]",
            f"                self.schedule(k, state, ts + {slack})",
            "            continue",
            "        if len(state) == 3:",
            "            s = state[2]",
            "            start = s[0]",
            "            end = s[1]",
            "            last = state[0]",
            (
                f"            if start - {gap} <= ts <= end + {gap} and end + {slack} >= marks[i] "
                f"and (last is None or min(ts, start) - {gap} > last):"
            ),
            "                if ts > end:",
            "                    s[1] = ts",
            "                elif ts < start:",
            f"                    if s[{gen_slot}] < gen:  # a flush wrote it under `start`",
            f"                        gone = s[{gen_slot + 1}] or []",
            f"                        s[{gen_slot + 1}] = [*gone, (start, s[2])]",
            f"                        s[{gen_slot}] = gen",
            "                    s[0] = ts",
            *_indent(["s[2] += 1", *code.update("s", 2)], 4),
            "                continue",
            "        if not self.add(k, e, marks[i]):",
            "            late.append(i)",
        ]
        row = ", ".join(expr for _, _, expr in layout)
        # A row that deletes the one a bounded run flushed for a session whose start has
        # moved since (an earlier event joined it, or it merged with another).
        gone = {start_col: "start", end_col: "start", "version": "version", "deleted": "1"}
        tombstone = ", ".join(
            expr if name in dict.fromkeys(n for n, _, _ in keys) else gone.get(name, _neutral(kind))
            for name, kind, expr in layout
        )
        lines += [
            "",
            "def row(k, s):",
            f"    return ({row},)",
            "",
            "def tombstone(k, start, version):",
            f"    return ({tombstone},)",
        ]
        source.names["_NEVER"] = _NEVER
    elif isinstance(window, Episodes):
        start_col, end_col, closed_col = window.columns
        stored = code.stored("s", 2)
        stored.pop()  # the version: the events counted, and whether the run has ended
        layout = [
            *keys,
            (start_col, _DATETIME, "s[0]"),
            (end_col, _DATETIME, "s[1]"),
            *stored,
            (closed_col, "UInt8", "closed"),
            ("version", "UInt64", "2 * s[2] + closed"),
        ]
        compiled.order_by = (*table.key_fields, start_col)
        compiled.end_column = end_col
        when = _condition(window.when, schema, source)
        assert when is not None
        order = ", ".join([f"e[{time}]", *(f"e[{schema.index(t)}]" for t in window.tie)])
        lines += [
            "def add_all(pending, events, marks, late):",
            "    for i, e in enumerate(events):",
            *_indent(skip, 2),
            f"        ts = e[{time}]",
            f"        if ts + {lateness} < marks[i]:",
            "            late.append(i)",
            "            continue",
            # The offset last: it tells apart what the time and ties do not.
            f"        _heappush(pending, ({order}, e[{_OFFSET}], e))",
            "",
            "def take(self, e, out):",
            f"    k = {key}",
            "    runs = self.keys",
            "    s = runs.get(k)",
            f"    if {when}:",
            "        self.dirty.add(k)",
            "        if s is None:",
            f"            s = runs[k] = [e[{time}], e[{time}], {code.init()}]",
            "        else:",
            f"            s[1] = e[{time}]",
            *_indent(["s[2] += 1", *code.update("s", 2)], 2),
            f"        if s[2] == {window.at_least}:",
            "            self.notices.append(row(k, s, 0))",
            "    elif s is not None:",
            "        self.dirty.add(k)",
            "        del runs[k]",
            f"        if s[2] >= {window.at_least}:",
            "            out.append(row(k, s, 1))",
        ]
        row = ", ".join(expr for _, _, expr in layout)
        lines += ["", "def row(k, s, closed):", f"    return ({row},)"]
        source.names["_heappush"] = heapq.heappush
    else:
        batch_col, complete_col = window.columns
        size = window.size
        stored = code.stored("a", 0)
        version = stored.pop()
        layout = [
            *keys,
            (batch_col, "UInt64", "batch"),
            *stored,
            (complete_col, "UInt8", "complete"),
            version,
        ]
        compiled.order_by = (*table.key_fields, batch_col)
        lines += [
            "def add_all(keys, dirty, events, out):",
            "    for e in events:",
            *_indent(skip, 2),
            f"        k = {key}",
            "        dirty.add(k)",
            "        st = keys.get(k)",
            "        if st is None:",
            "            st = keys[k] = [0, None]",
            "        a = st[1]",
            "        if a is None:",
            f"            a = st[1] = [{code.init()}]",
            *_indent(["a[0] += 1", *code.update("a", 0)], 2),
            "        st[0] += 1",
            f"        if a[0] == {size}:",
            f"            out.append(row(k, (st[0] - 1) // {size}, a, 1))",
            "            st[1] = None",
        ]
        row = ", ".join(expr for _, _, expr in layout)
        lines += ["", "def row(k, batch, a, complete):", f"    return ({row},)"]
    names = [name for name, _, _ in layout]
    clashes = sorted(
        {name for name in names if names.count(name) > 1} | ({"written_at"} & set(names))
    )
    if clashes:
        raise PipelineError(
            f"{table.name}: column {', '.join(map(repr, clashes))} would appear twice in "
            f"{table.name}_data (columns: {', '.join(names)}, written_at): rename the "
            "aggregate, the window's columns or the key field"
        )
    compiled.columns = tuple(names)
    compiled.types = tuple(column_type for _, column_type, _ in layout)
    compiled.source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = dict(source.names)
    exec(compile(compiled.source, f"<waxhouse table {table.name}>", "exec"), namespace)
    compiled.functions = {
        name: value
        for name, value in namespace.items()
        if callable(value) and not name.startswith("_")
    }
    compiled.shown = code.shown()


# ---------------------------------------------------------------------------------------
# State, one per table and source partition


class TableState:
    """A table's open windows in one source partition. Subclasses per window kind.

    Pickling it (the flow's snapshot, every epoch) costs what changed since the last
    snapshot, not the whole state: see `KeyedState` and `WindowState`.
    """

    def __init__(self, table: str, part: str) -> None:
        self.table = table
        self.part = part
        self._code: CompiledTable | None = None
        # Rows to announce now (an episode reaching its length), taken by PartitionState.
        self.notices: list[tuple] = []

    def bind(self, compiled: CompiledTable) -> None:
        self._code = compiled

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table, "part": self.part, "data": self.encode()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table, self.part, self._code = state["table"], state["part"], None
        self.notices = []
        self.decode(state["data"])

    def encode(self) -> Any:
        """What a snapshot keeps of the state."""
        raise NotImplementedError

    def decode(self, data: Any) -> None:
        """The state again, from what `encode` returned."""
        raise NotImplementedError

    @property
    def code(self) -> CompiledTable:
        assert self._code is not None, "bind() the state to its compiled table first"
        return self._code

    def add_all(
        self, events: list[tuple], marks: list[int], late: list[int], out: list[tuple]
    ) -> None:
        raise NotImplementedError

    def close(self, watermark: int, out: list[tuple]) -> None:
        raise NotImplementedError

    def flush(self, out: list[tuple]) -> None:
        raise NotImplementedError


class WindowState(TableState):
    """Tumbling and sliding windows: start -> key -> row slots.

    A snapshot keeps each open window pickled on its own and pickles again only the
    windows events touched since the last one (`touched`, kept by the generated loop):
    in a backfill, the few windows around the current event time.
    """

    def __init__(self, table: str, part: str) -> None:
        super().__init__(table, part)
        self.windows: dict[int, dict[Any, list]] = {}
        self.touched: set[int] = set()
        self._pickled: dict[int, bytes] = {}
        # Windows touched since `open_rows` last ran (None: the table has no provisional
        # rows), and per open window the versions of the rows it handed over.
        self.recent: set[int] | None = None
        self.sent: dict[int, dict[Any, int]] = {}

    def bind(self, compiled: CompiledTable) -> None:
        super().bind(compiled)
        live = compiled.table.live
        if live is not None and live.provisional and self.recent is None:
            self.recent = set()

    def encode(self) -> dict[int, bytes]:
        pickled, windows = self._pickled, self.windows
        for start in self.touched:
            if start in windows:
                pickled[start] = pickle.dumps(windows[start], protocol=pickle.HIGHEST_PROTOCOL)
        self.touched.clear()
        for start in [start for start in pickled if start not in windows]:
            del pickled[start]  # closed since
        return dict(pickled)

    def decode(self, data: dict[int, bytes]) -> None:
        self._pickled = dict(data)
        self.windows = {start: pickle.loads(blob) for start, blob in data.items()}
        self.touched = set()
        self.recent = None
        self.sent = {}

    def add_all(
        self, events: list[tuple], marks: list[int], late: list[int], out: list[tuple]
    ) -> None:
        self.code.functions["add_all"](self.windows, self.touched, events, marks, late)
        if self.recent is not None:
            self.recent |= self.touched

    def open_rows(self, out: list[tuple], horizon: int) -> None:
        """The rows so far that changed since the last call, of the open windows events
        touched, but not of those closing by `horizon` (a watermark): their final rows
        come first (a table with provisional rows: `windows.live(provisional=True)`)."""
        recent = self.recent
        if not recent:
            return
        window = self.code.table.window
        assert isinstance(window, (Tumbling, Sliding))
        reach = window.size_ms + self.code.lateness_ms
        rows, sent = self.code.functions["rows"], self.sent
        for start in sorted(recent):
            keys = self.windows.get(start)
            if not keys or start + reach <= horizon:
                continue
            seen = sent.setdefault(start, {})
            changed = {k: a for k, a in keys.items() if seen.get(k) != a[0]}
            if changed:
                seen.update((k, a[0]) for k, a in changed.items())
                out.extend(rows(start, changed, self.part))
        recent.clear()
        for start in [start for start in sent if start not in self.windows]:
            del sent[start]  # closed since

    def close(self, watermark: int, out: list[tuple]) -> None:
        window = self.code.table.window
        assert isinstance(window, (Tumbling, Sliding))
        limit = watermark - window.size_ms - self.code.lateness_ms
        rows = self.code.functions["rows"]
        for start in sorted(start for start in self.windows if start < limit):
            out.extend(rows(start, self.windows.pop(start), self.part))

    def flush(self, out: list[tuple]) -> None:
        rows = self.code.functions["rows"]
        for start in sorted(self.windows):
            out.extend(rows(start, self.windows[start], self.part))


class KeyedState(TableState):
    """State per key (`keys`), snapshotted as a log of segments.

    Each snapshot pickles only the keys changed since the previous one (`dirty`, kept by
    the generated loop and by closing), a key gone as None; restoring replays the segments
    in order. Changes go into the log's last segment until it is sealed (`SEGMENT_BYTES`),
    then into a new one; sealed segments are never pickled again, and a flow with recovery
    writes each to a file once. When the segments hold more than twice as many entries as
    there are keys, the next snapshot compacts them into one. So with 400,000 open
    sessions, an epoch in which 4,000 of them changed pickles and writes 4,000.
    """

    def __init__(self, table: str, part: str) -> None:
        super().__init__(table, part)
        self.keys: dict[Any, list] = {}
        self.dirty: set[Any] = set()
        self._segments: list[Segment] = []
        self._entries = 0  # in all segments

    def encode(self) -> list[Segment]:
        keys, dirty, segments = self.keys, self.dirty, self._segments
        if self._entries + len(dirty) > 2 * len(keys) + 1_000:
            self._segments = segments = [Segment.of(keys)]
            self._entries = len(keys)
        elif dirty:
            changed = {key: keys.get(key) for key in dirty}
            if segments and not segments[-1].sealed:
                tail = segments.pop().load()
                self._entries -= len(tail)
                tail.update(changed)
                changed = tail
            segments.append(Segment.of(changed))
            self._entries += len(changed)
        dirty.clear()
        return list(segments)

    def decode(self, data: list[Segment | bytes]) -> None:
        keys: dict[Any, list] = {}
        segments = [as_segment(blob) for blob in data]
        entries = 0
        for blob in segments:
            segment = blob.load()
            entries += len(segment)
            for key, value in segment.items():
                if value is None:
                    keys.pop(key, None)
                else:
                    keys[key] = value
        self.keys, self.dirty = keys, set()
        self._segments, self._entries = segments, entries


# A key's session state: [end of the last closed session or None, scheduled deadline,
# *open sessions]; a session: [start, end, events, *aggregate slots].
_LAST_CLOSED, _DEADLINE, _SESSIONS = range(3)


class SessionState(KeyedState):
    """Session windows per key, with a heap of deadlines so that closing looks only at
    keys that may have something to close.

    Per key it keeps the open sessions (sorted, more than `gap` apart) and, for a while
    after one closes, the end of the last closed one, so that a late event that would
    bridge into an emitted session is late instead of starting a new one. Each key with
    state is scheduled once, no later than its earliest real deadline: extending a session
    only moves that later, so the common case touches no heap; a key popped too early is
    rescheduled.
    """

    def __init__(self, table: str, part: str) -> None:
        super().__init__(table, part)
        self._deadlines: list[tuple[int, Any]] = []
        # How many times a bounded run flushed the open sessions. A session records the
        # generation its start was set in: if a flush came after (its generation is
        # lower), a row was written under that start, and moving the start must delete it.
        self.generation = 0
        # Keys events touched since `open_rows` last ran (None: no provisional rows).
        self.recent: set[Any] | None = None

    def bind(self, compiled: CompiledTable) -> None:
        super().bind(compiled)
        live = compiled.table.live
        if live is not None and live.provisional and self.recent is None:
            self.recent = set()

    def encode(self) -> tuple[list[Segment], int]:  # type: ignore[override]
        return super().encode(), self.generation

    def decode(self, data: tuple[list[Segment | bytes], int]) -> None:  # type: ignore[override]
        """The heap is not in the snapshot: it is rebuilt from the keys' deadlines."""
        segments, self.generation = data
        super().decode(segments)
        self.recent = None
        self._deadlines = [
            (key_state[_DEADLINE], key)
            for key, key_state in self.keys.items()
            if key_state[_DEADLINE] != _NEVER
        ]
        heapq.heapify(self._deadlines)

    @property
    def _gap(self) -> int:
        window = self.code.table.window
        assert isinstance(window, Session)
        return window.gap_ms

    def add_all(
        self, events: list[tuple], marks: list[int], late: list[int], out: list[tuple]
    ) -> None:
        recent = self.recent
        if recent is None:
            self.code.functions["add_all"](self, events, marks, late)
            return
        # The keys of this batch alone: a fresh `dirty` for the call, merged back after.
        dirty, self.dirty = self.dirty, set()
        try:
            self.code.functions["add_all"](self, events, marks, late)
        finally:
            touched, self.dirty = self.dirty, dirty
            dirty |= touched
            recent |= touched

    def open_rows(self, out: list[tuple], horizon: int) -> None:
        """The rows so far of the open sessions of the keys events touched since the last
        call, but not of those closing by `horizon` (a table with provisional rows)."""
        recent = self.recent
        if not recent:
            return
        reach = self._gap + self.code.lateness_ms
        row, keys = self.code.functions["row"], self.keys
        for key in recent:
            state = keys.get(key)
            if state is not None:
                out.extend(row(key, s) for s in state[_SESSIONS:] if s[1] + reach > horizon)
        recent.clear()

    def schedule(self, key: Any, state: list, deadline: int) -> None:
        """Make sure `key` is looked at once the watermark passes `deadline`."""
        if deadline < state[_DEADLINE]:
            state[_DEADLINE] = deadline
            heapq.heappush(self._deadlines, (deadline, key))

    def add(self, key: Any, event: tuple, watermark: int) -> bool:
        """The general case: add `event` to its key's sessions, merging the ones it
        bridges, unless its session has closed."""
        gap, lateness = self._gap, self.code.lateness_ms
        functions = self.code.functions
        ts = event[self.code.time_index]
        self.dirty.add(key)
        state = self.keys.get(key)
        if state is None:
            if ts + gap + lateness < watermark:
                return False
            state = self.keys[key] = [
                None,
                _NEVER,
                functions["new_session"](event, self.generation),
            ]
            self.schedule(key, state, ts + gap + lateness)
            return True
        last_closed, sessions = state[_LAST_CLOSED], state[_SESSIONS:]
        touching = [s for s in sessions if s[0] - gap <= ts <= s[1] + gap]
        if touching:
            if any(s[1] + gap + lateness < watermark for s in touching):
                return False
            start = min(ts, touching[0][0])
        else:
            if ts + gap + lateness < watermark:
                return False
            start = ts
        if last_closed is not None and start - gap <= last_closed:
            return False
        gen = self.generation
        merged = functions["new_session"](event, gen)
        written: list[tuple[int, int]] = []  # rows flushes wrote that must go
        for session in touching:
            functions["merge"](merged, session)
            written.extend(session[-1] or ())
            if session[-2] < gen:
                written.append((session[0], session[2]))
        # The merged session keeps the start of one of them, or the new event's: a row
        # written under that start is its own, and stays (a higher version replaces it).
        own = [version for start, version in written if start == merged[0]]
        merged[-2] = -1 if own else gen
        merged[-1] = [(start, version) for start, version in written if start != merged[0]] or None
        kept = [s for s in sessions if not any(s is t for t in touching)]
        kept.append(merged)
        kept.sort(key=_session_start)
        state[_SESSIONS:] = kept
        self.schedule(key, state, min(s[1] for s in kept) + gap + lateness)
        return True

    def close(self, watermark: int, out: list[tuple]) -> None:
        heap, keys = self._deadlines, self.keys
        while heap and heap[0][0] < watermark:
            deadline, key = heapq.heappop(heap)
            state = keys.get(key)
            if state is None or state[_DEADLINE] != deadline:
                continue  # superseded by an earlier entry, already handled
            state[_DEADLINE] = _NEVER
            self.dirty.add(key)
            self._close_key(key, state, watermark, out)

    def _close_key(self, key: Any, state: list, watermark: int, out: list[tuple]) -> None:
        gap = self._gap
        slack = gap + self.code.lateness_ms
        last_closed, still_open = state[_LAST_CLOSED], []
        for session in state[_SESSIONS:]:
            if session[1] + slack < watermark:
                self._emit(key, session, out)
                if last_closed is None or session[1] > last_closed:
                    last_closed = session[1]
            else:
                still_open.append(session)
        state[_LAST_CLOSED], state[_SESSIONS:] = last_closed, still_open
        if still_open:
            self.schedule(key, state, min(s[1] for s in still_open) + slack)
        elif last_closed is None or last_closed + gap + slack < watermark:
            # No on-time event can reach back to the closed session any more: one that
            # would is late by the plain "its session would have closed" rule.
            del self.keys[key]
        else:
            self.schedule(key, state, last_closed + gap + slack)

    def flush(self, out: list[tuple]) -> None:
        """Every open session's row, the sessions left as they are: the generation counts
        the flush (a flushed session may still change, and its row with it)."""
        for key, state in self.keys.items():
            for session in state[_SESSIONS:]:
                if session[-1]:
                    self.dirty.add(key)
                self._emit(key, session, out)
        self.generation += 1

    def _emit(self, key: Any, session: list, out: list[tuple]) -> None:
        """The session's row; first, rows deleting those that earlier flushes wrote for it
        under a start it no longer has. A flushed session is still open: a later run may
        give it an earlier start (an earlier event joins it) or merge it with another,
        and its old row must not stay beside the new one."""
        functions, gone = self.code.functions, session[-1]
        if gone:
            tombstone = functions["tombstone"]
            out.extend(tombstone(key, start, version + 1) for start, version in gone)
            session[-1] = None
        out.append(functions["row"](key, session))

    def __len__(self) -> int:
        return sum(len(state) - _SESSIONS for state in self.keys.values())


def _session_start(session: list) -> int:
    return session[0]


class CountState(KeyedState):
    """Count windows: per key, the events counted so far and the open window's slots."""

    def add_all(
        self, events: list[tuple], marks: list[int], late: list[int], out: list[tuple]
    ) -> None:
        self.code.functions["add_all"](self.keys, self.dirty, events, out)

    def close(self, watermark: int, out: list[tuple]) -> None:
        pass  # a count window closes when full, in add_all

    def flush(self, out: list[tuple]) -> None:
        window = self.code.table.window
        assert isinstance(window, CountWindow)
        row = self.code.functions["row"]
        out.extend(
            row(key, counted // window.size, slots, 0)
            for key, (counted, slots) in self.keys.items()
            if slots is not None
        )


class EpisodeState(KeyedState):
    """Runs of events per key (`keys`: the open run, [start, end, events, *aggregate
    slots]), fed in event-time order from `pending`, a heap of the events not final yet.

    Its `notices`: the row of each run that has just reached its `at_least`-th event, as
    it is then (with `closed` 0).
    """

    def __init__(self, table: str, part: str) -> None:
        super().__init__(table, part)
        self.pending: list[tuple] = []

    def encode(self) -> tuple[list[Segment], list[tuple]]:  # type: ignore[override]
        return super().encode(), self.pending

    def decode(self, data: tuple[list[Segment | bytes], list[tuple]]) -> None:  # type: ignore[override]
        segments, self.pending = data
        super().decode(segments)

    def add_all(
        self, events: list[tuple], marks: list[int], late: list[int], out: list[tuple]
    ) -> None:
        self.code.functions["add_all"](self.pending, events, marks, late)

    def close(self, watermark: int, out: list[tuple]) -> None:
        """Take every event the watermark has made final, in order."""
        pending, take = self.pending, self.code.functions["take"]
        limit = watermark - self.code.lateness_ms
        while pending and pending[0][0] < limit:
            take(self, heapq.heappop(pending)[-1], out)

    def flush(self, out: list[tuple]) -> None:
        """Every run still going that is long enough, with `closed` 0; kept open."""
        window = self.code.table.window
        assert isinstance(window, Episodes)
        row = self.code.functions["row"]
        out.extend(row(k, s, 0) for k, s in self.keys.items() if s[2] >= window.at_least)


# ---------------------------------------------------------------------------------------
# One source partition: every table, one watermark


class PartitionState:
    """Every table's state for one source partition, driven batch by batch."""

    def __init__(
        self,
        part: str,
        tables: list[CompiledTable],
        time_index: int,
        join: JoinState | None = None,
        dedup: DedupState | None = None,
    ) -> None:
        self.part = part
        self.time_index = time_index
        self.tables = [table.new_state(part) for table in tables]
        self.max_event_ts: int | None = None
        self.watermark = NO_WATERMARK
        self.join = join  # events wait in it for their reference version
        self.dedup = dedup  # the identities counted lately, to tell copies by

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots from before joins and deduplication have neither.
        self.__dict__.update({"join": None, "dedup": None, **state})

    def bind(self, tables: Mapping[str, CompiledTable]) -> None:
        """Attach the compiled tables again after a restore; a table the snapshot lacks
        (added to the pipeline since) starts empty."""
        known = {state.table: state for state in self.tables}
        self.tables = []
        for name, compiled in tables.items():
            state = known.get(name)
            if state is None:
                state = compiled.new_state(self.part)
            else:
                state.bind(compiled)
            self.tables.append(state)

    def process(self, events: list[tuple]) -> RowBatch:
        """Count a batch of events in partition order, then emit what has closed. With a
        join, the events the join releases (enriched), in the same order."""
        if self.join is not None:
            events = self.join.add(events)
        return self._count(events)

    def reference(self, update: ReferenceUpdate) -> RowBatch:
        """A reference partition's versions and watermark: the events it releases."""
        assert self.join is not None
        return self._count(self.join.update(update))

    def reference_ended(self) -> RowBatch:
        """The reference was read to its end (a bounded run): every waiting event."""
        assert self.join is not None
        return self._count(self.join.end())

    def _count(self, events: list[tuple]) -> RowBatch:
        out = RowBatch()
        if self.dedup is not None and events:
            events, copies = self.dedup.split(events, self.watermark)
            error = self.dedup.error
            out.dead_letters.extend(self._dead(event, "duplicate", error) for event in copies)
        if not events:
            return self._close(out)
        time = self.time_index
        times = [event[time] for event in events]
        # marks[i]: the watermark event i arrives at, the largest event time before it.
        marks = list(accumulate(times, max, initial=self.watermark))
        missed: dict[int, list[str]] = {}
        for state in self.tables:
            late: list[int] = []
            rows = out.rows(state.table)
            state.add_all(events, marks, late, rows)
            for i in late:
                missed.setdefault(i, []).append(state.table)
        for i in sorted(missed):
            out.dead_letters.append(self._dead(events[i], "late", f"missed {', '.join(missed[i])}"))
        newest = max(times)
        if self.max_event_ts is None or newest > self.max_event_ts:
            self.max_event_ts = newest
        self.watermark = marks[-1]
        return self._close(out)

    def idle(self, idle_ms: int) -> RowBatch:
        """The partition is caught up and has been quiet for `idle_ms`: let time pass. Not
        while events wait in the join: the tables have not seen them yet, and time passing
        would make them late."""
        if self.join is not None and len(self.join):
            return self._close(RowBatch())
        if self.max_event_ts is not None:
            self.watermark = max(self.watermark, self.max_event_ts + idle_ms)
        return self._close(RowBatch())

    def provisional(self, horizon: int) -> dict[str, list[tuple]]:
        """Per table with provisional rows, the rows so far that changed since the last
        call, of the open windows and sessions that do not close by watermark `horizon`
        (a refresh at the current pace would find them closed: their final rows come
        first)."""
        out: dict[str, list[tuple]] = {}
        for state in self.tables:
            if isinstance(state, (WindowState, SessionState)) and state.recent:
                state.open_rows(out.setdefault(state.table, []), horizon)
        return out

    def flush(self) -> RowBatch:
        """End of bounded input: emit everything still open (and keep it open)."""
        out = RowBatch()
        for state in self.tables:
            state.flush(out.rows(state.table))
        return out

    def _dead(self, event: tuple, reason: str, error: str) -> DeadLetterRow:
        return DeadLetterRow(
            source=record_source(self.part, event[_OFFSET]),
            reason=reason,
            error=error,
            payload=event[_PAYLOAD],
            received_at_ms=event[_RECEIVED_AT],
        )

    def _close(self, out: RowBatch) -> RowBatch:
        for state in self.tables:
            state.close(self.watermark, out.rows(state.table))
            if state.notices:
                out.notices.setdefault(state.table, []).extend(state.notices)
                state.notices = []
        return out
