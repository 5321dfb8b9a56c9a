"""Tables kept live in Redis: where each row goes, and how a stored row is shown again.

A table declared with `live=windows.live(...)` is written to Redis as well as ClickHouse
(`waxhouse.connectors.redis_store`), and `waxhouse serve` reads it back. This module is
the pure part both share: the key layout, each row's identity, and rendering.

The layout, per table, under `N = "wh:{pipeline}:{table}"`; `wid` is the window's id (its
start in epoch ms, a session's start, a count window's number, an episode's start) and
`kid` the key's values joined by `KEY_SEPARATOR`:

- `N:r:{wid}:{kid}`, a hash: one key in one window. Per source partition `part`:
  `v:{part}` the final row's version, `p:{part}` the final row (JSON array in the table's
  physical column order), `s:{part}` its score (with `top_by`), `qv:{part}`/`q:{part}` a
  provisional row's version and row, removed when the final row comes. A table keyed
  apart from the Kafka key has one part per source partition, combined when read (as its
  ClickHouse view combines them); any other has one.
- `N:k:{kid}`, a sorted set: the key's windows by order (newest last), a few kept.
- `N:t:{wid}`, a sorted set: a window's keys by the `top_by` column, all partitions summed.
- `N:closed`: the id of the newest window closed in every partition, whose top was sent.
- `N:s`, a stream of `row` entries (`w`, `i`, `p`, `r`: a final row as written) for tables
  without `top_by`, and of `top` entries (`w`, `t`: `[[kid, score], ...]`) for those with.
- `wh:{pipeline}:marks`, a hash: each source partition's watermark.

Every write is a compare-and-set on the row's version (the number of events it counts),
so a replay never moves a value back and a partial row never replaces a fuller one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from waxhouse.engine import CompiledTable, PipelineError
from waxhouse.fields import format_rfc3339
from waxhouse.pipeline import CompiledPipeline
from waxhouse.tables import Live, Session, Sliding, Tumbling
from waxhouse.views import final_rows, time_columns

__all__ = ["KEY_SEPARATOR", "LiveTable", "live_tables", "marks_key"]

KEY_SEPARATOR = "\x1f"
ADDITIVE = frozenset({"count", "sum", "count_distinct"})


def marks_key(pipeline: str) -> str:
    """The hash of each source partition's watermark."""
    return f"wh:{pipeline}:marks"


def live_tables(compiled: CompiledPipeline) -> dict[str, LiveTable]:
    """The live tables of a `CompiledPipeline`, by name."""
    name = compiled.pipeline.name
    return {
        table.name: LiveTable(name, table)
        for table in compiled.tables.values()
        if table.table.live is not None
    }


@dataclass(frozen=True, slots=True)
class RowId:
    """Where one physical row goes: key, window, order, source partition, version."""

    kid: str
    wid: str
    order: int
    part: str
    version: int
    deleted: bool


class LiveTable:
    """One live table of a compiled pipeline: identities, scores and rendering."""

    def __init__(self, pipeline: str, compiled: CompiledTable) -> None:
        live = compiled.table.live
        if live is None:
            raise PipelineError(f"{compiled.name}: not a live table")
        self.compiled = compiled
        self.live: Live = live
        self.name = compiled.name
        self.namespace = f"wh:{pipeline}:{compiled.name}"
        columns = compiled.columns
        table, window = compiled.table, compiled.table.window
        self.keys = [columns.index(name) for name in table.key_fields]
        self.window = columns.index(window.columns[0])
        self.part = columns.index("part") if compiled.combined else None
        self.version = columns.index("version")
        self.deleted = columns.index("deleted") if "deleted" in columns else None
        self.windowed = isinstance(window, (Tumbling, Sliding))
        self.size_ms = window.size_ms if isinstance(window, (Tumbling, Sliding)) else 0
        self.score: int | None = None
        self.places = 0
        if live.top_by is not None:
            aggregate = table.aggregates.get(live.top_by)
            if aggregate is None:
                raise PipelineError(f"{self.name}: live top_by {live.top_by!r} is no aggregate")
            if aggregate.operation not in ADDITIVE:
                raise PipelineError(
                    f"{self.name}: live top_by {live.top_by!r} must be a count or sum (its "
                    "partitions' parts add up), not a "
                    f"{aggregate.operation}"
                )
            if not self.windowed:
                raise PipelineError(
                    f"{self.name}: live top_by needs a tumbling or sliding window (the top "
                    "keys of each window)"
                )
            self.score = columns.index(compiled.stored[live.top_by][0])
            if aggregate.operation == "sum" and aggregate.field is not None:
                self.places = getattr(compiled.kind(aggregate.field), "places", 0)
        self.sessions = isinstance(window, Session)
        if live.provisional and not (self.windowed or self.sessions):
            raise PipelineError(
                f"{self.name}: live provisional rows need a tumbling, sliding or session "
                "window (count windows and episodes have no row until one is complete)"
            )
        # A session's span: a provisional row of the key that starts inside it is an
        # earlier state of the same session (its start moved, or it merged), and goes.
        self.end = columns.index(window.columns[1]) if self.sessions else None
        self.times = time_columns(compiled)
        self.lateness_ms = compiled.lateness_ms
        self.streams_rows = live.top_by is None

    # --- writing ----------------------------------------------------------------------

    def identify(self, row: tuple) -> RowId:
        keys = self.keys
        kid = str(row[keys[0]]) if len(keys) == 1 else KEY_SEPARATOR.join(str(row[i]) for i in keys)
        order = row[self.window]
        return RowId(
            kid,
            str(order),
            int(order),
            "" if self.part is None else row[self.part],
            row[self.version],
            self.deleted is not None and bool(row[self.deleted]),
        )

    def score_of(self, row: tuple) -> int:
        return 0 if self.score is None else int(row[self.score])

    def close_at(self, row: tuple) -> int:
        """When the row's window closes: its end plus the lateness (a watermark past it)."""
        return int(row[self.window]) + self.size_ms + self.lateness_ms

    def span_end(self, row: tuple) -> int:
        """A session row's end (0 for other windows): provisional rows of the key that
        start within the session are replaced by this row."""
        return 0 if self.end is None else int(row[self.end])

    # --- reading ----------------------------------------------------------------------

    def key_of(self, kid: str) -> str:
        """The key as the API names it: its values joined by `/`."""
        return kid.replace(KEY_SEPARATOR, "/")

    def kid_of(self, key: str) -> str:
        """The stored key of the API's `key` (values joined by `/` when several)."""
        if len(self.keys) == 1:
            return key
        return KEY_SEPARATOR.join(key.split("/", len(self.keys) - 1))

    def render_row(self, kid: str, fields: Mapping[Any, Any]) -> dict[str, Any] | None:
        """A row hash (`N:r:{wid}:{kid}`) as the API shows it: the final parts, and a
        provisional part where a partition has no final row yet; None if there is none
        (or the row was retracted)."""
        final: dict[str, tuple] = {}
        provisional: dict[str, tuple] = {}
        for name, value in fields.items():
            field = name.decode() if isinstance(name, bytes) else name
            kind, _, part = field.partition(":")
            if kind == "p":
                final[part] = tuple(orjson.loads(value))
            elif kind == "q":
                provisional[part] = tuple(orjson.loads(value))
        rows = list(final.values())
        used = [row for part, row in provisional.items() if part not in final]
        rows.extend(used)
        if not rows:
            return None
        shown = final_rows(self.compiled, rows)
        if not shown:
            return None
        return {
            "table": self.name,
            "key": self.key_of(kid),
            "final": not used,
            "row": self._present(shown[0]),
        }

    def render_top(self, wid: str, pairs: list[tuple[str, float]]) -> dict[str, Any]:
        """A window's top keys: `[(kid, raw score), ...]`, highest first."""
        start = int(wid)
        by = self.live.top_by or ""
        start_column, end_column = self.compiled.table.window.columns[:2]
        return {
            "table": self.name,
            start_column: format_rfc3339(start),
            end_column: format_rfc3339(start + self.size_ms),
            "by": by,
            "top": [{"key": self.key_of(kid), by: self._scaled(score)} for kid, score in pairs],
        }

    def render_entry(self, fields: Mapping[Any, Any]) -> tuple[str, bytes]:
        """A stream entry as an event: its name (`row` or `top`) and its JSON."""
        got = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        if got.get("k") == "top":
            pairs = [(str(kid), float(score)) for kid, score in orjson.loads(got["t"])]
            return "top", orjson.dumps(self.render_top(got["w"], pairs))
        row = tuple(orjson.loads(got["r"]))
        shown = final_rows(self.compiled, [row])
        event: dict[str, Any] = {
            "table": self.name,
            "key": self.key_of(got["i"]),
            "final": True,
            "row": self._present(shown[0]) if shown else None,
        }
        if self.part is not None:
            event["part"] = got.get("p", "")
        return "row", orjson.dumps(event)

    def _present(self, shown: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in shown.items():
            if value is not None:
                if name in self.times:
                    value = format_rfc3339(value)
                elif isinstance(value, Decimal):
                    value = float(value)
            out[name] = value
        return out

    def _scaled(self, score: float) -> float | int:
        if self.places:
            return round(score / 10**self.places, self.places)
        return int(score)

    def window_of(self, wid: str) -> tuple[int, int] | None:
        """A window id's start and end (epoch ms), for tumbling and sliding tables."""
        if not self.windowed:
            return None
        start = int(wid)
        return start, start + self.size_ms
