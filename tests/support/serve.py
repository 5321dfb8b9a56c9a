"""Run `waxhouse serve` as users do, and write the rows it serves: a test pipeline whose
live tables cover each case, a writer that puts rows in Redis as a flow does (the lead's
`RedisWriter`), and a small Server-Sent Events client.

    live = LiveRows(redis_url)                 # the tables of `pipeline` below, in Redis
    live.visit(0, "u1", "/a/b", views=3)       # a final row of `visits` (and its event)
    live.trending(0, {"/a": 5, "/b": 7})       # rows of `trending`, then the window closes
    with start_serve(redis_url) as serve:
        request("GET", serve.url + "/v1/visits/u1//a/b")
        with SseClient(serve.url + "/v1/visits/stream", last_event_id="0") as sse:
            sse.read(3)

`pipeline` (name `servetest`) declares, on the clickstream's events:
- `visits`, keyed by (user_id, page): a composite key whose last value holds `/`; one row
  event per final row.
- `trending`, keyed by page, top 3 by views: one top event per closed window.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis

from dataflows.clickstream import events
from tests.support.flow import flow_env
from tests.support.http_process import HttpProcess
from tests.support.scrape import free_port
from waxhouse import Pipeline, Table, agg, windows
from waxhouse.connectors.redis_store import RedisWriter
from waxhouse.livetables import LiveTable, live_tables
from waxhouse.rows import RowBatch

WINDOW_MS = 60_000
LATENESS_MS = 10_000  # ALLOWED_LATENESS_SECONDS' default, as serve compiles it

pipeline = Pipeline(
    "servetest",
    events,
    key="user_id",
    tables=[
        Table(
            "visits",
            key=("user_id", "page"),
            window=windows.tumbling(WINDOW_MS / 1000),
            aggregates={"views": agg.count(where={"type": "page_view"})},
            live=windows.live(),
        ),
        Table(
            "trending",
            key="page",
            window=windows.tumbling(WINDOW_MS / 1000),
            aggregates={"views": agg.count(where={"type": "page_view"})},
            live=windows.live(top_by="views", top=3),
        ),
    ],
)
PIPELINE_SPEC = "tests.support.serve:pipeline"


def tables() -> dict[str, LiveTable]:
    return live_tables(pipeline.compile(LATENESS_MS))


class LiveRows:
    """Writes a pipeline's rows into Redis through the flow's writer (by default the
    live tables of `pipeline` above; `of=` another pipeline's, such as the clickstream)."""

    def __init__(
        self, url: str, *, stream_length: int = 10_000, of: Pipeline | None = None
    ) -> None:
        self.client = redis.Redis.from_url(url)
        self.name = "servetest" if of is None else of.name
        self.tables = tables() if of is None else live_tables(of.compile(LATENESS_MS))
        self.writer = RedisWriter(self.client, self.name, self.tables, stream_length=stream_length)

    def write(
        self, table: str, rows: Sequence[Mapping[str, Any]], marks: Mapping[str, int]
    ) -> None:
        """Physical rows of `table` (by column, 0 for the rest), then watermarks by part."""
        batch = RowBatch()
        batch.rows(table).extend(self.row(table, **row) for row in rows)
        batch.marks.update(marks)
        self.writer.write(batch)

    def row(self, table: str, **values: Any) -> tuple[Any, ...]:
        """A physical row of `table`: `values` by column, 0 for the rest."""
        columns = self.tables[table].compiled.columns
        return tuple(values.get(name, 0) for name in columns)

    def visit(self, window: int, user: str, page: str, views: int, version: int = 0) -> None:
        """The final row of (user, page) in window number `window`."""
        start = window * WINDOW_MS
        row = self.row(
            "visits",
            window_start=start,
            window_end=start + WINDOW_MS,
            user_id=user,
            page=page,
            views=views,
            version=version or views,
        )
        batch = RowBatch()
        batch.rows("visits").append(row)
        self.writer.write(batch)

    def trending(self, window: int, views: Mapping[str, int], *, close: bool = True) -> None:
        """Each page's final row of `trending` in window `window` (one source partition);
        with `close`, the partition's watermark passes the window's close."""
        start = window * WINDOW_MS
        batch = RowBatch()
        for page, count in views.items():
            batch.rows("trending").append(
                self.row(
                    "trending",
                    window_start=start,
                    window_end=start + WINDOW_MS,
                    page=page,
                    part="0",
                    views=count,
                    version=count,
                )
            )
        if close:
            batch.marks["0"] = start + WINDOW_MS + LATENESS_MS + 1  # past its close
        self.writer.write(batch)

    def stream(self, table: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """Every entry of `table`'s stream (XRANGE), ids as text."""
        return [
            (entry_id.decode(), fields)
            for entry_id, fields in self.client.xrange(f"wh:{self.name}:{table}:s")
        ]

    def close(self) -> None:
        self.client.close()


# --- the process ------------------------------------------------------------------------


class ServeProcess(HttpProcess):
    """A running `waxhouse serve` (`start_serve`); its output goes to `log_path`."""

    def __init__(self, env: Mapping[str, str], args: Sequence[str], ready: bool) -> None:
        port = free_port()
        environment = flow_env({})
        environment.update({"SERVE_LISTEN": f"127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"})
        environment.update(env)
        command = [sys.executable, "-m", "waxhouse.cli", "serve", *args]
        super().__init__("serve", command, environment, port, ready=ready)


def start_serve(
    redis_url: str,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = ("--flow", "none", "--pipeline", PIPELINE_SPEC),
    ready: bool = True,
) -> ServeProcess:
    """`waxhouse serve [args]` on `redis_url` and a free port, once healthy (and ready)."""
    return ServeProcess({"REDIS_URL": redis_url, **(env or {})}, args, ready).start()


# --- a Server-Sent Events client -----------------------------------------------------------


class SseEvent:
    """One event: `id` (None if it had none), `event`, `data` (parsed JSON)."""

    def __init__(self, event_id: str | None, event: str, data: str) -> None:
        self.id = event_id
        self.event = event
        self.data: Any = orjson.loads(data)

    def __repr__(self) -> str:
        return f"SseEvent({self.id!r}, {self.event!r})"


class SseClient:
    """A `GET` of an event stream read line by line (`read(n)`); `close()` drops it."""

    def __init__(
        self,
        url: str,
        *,
        last_event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s
        )
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            sent["Last-Event-ID"] = last_event_id
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.connection.request("GET", path, headers=sent)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.comments: list[str] = []

    def read(self, count: int) -> list[SseEvent]:
        """The next `count` events (raises on timeout or end of stream)."""
        got: list[SseEvent] = []
        fields: dict[str, str] = {}
        while len(got) < count:
            line = self.response.readline()
            if not line:
                raise EOFError(f"the stream ended after {len(got)} of {count} events")
            text = line.decode().rstrip("\n")
            if not text:
                if "data" in fields:
                    got.append(
                        SseEvent(fields.get("id"), fields.get("event", "message"), fields["data"])
                    )
                fields = {}
            elif text.startswith(":"):
                self.comments.append(text[1:].strip())
            else:
                name, _, value = text.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        return got

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
