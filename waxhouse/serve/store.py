"""Where `waxhouse serve` reads live tables: the `LiveReader` contract and Redis's.

`LiveReader` is the small contract the server needs; `RedisReader` answers it from the
layout `waxhouse.livetables` describes (written by `waxhouse.connectors.redis_store`),
and a flow serving its own tables in process answers it from its state (embedded mode).
Rows and tops come back rendered (`LiveTable.render_row`, `render_top`); stream entries
raw, `(id, fields)`, for the server to render once (`LiveTable.render_entry`) and send
to every client. Entry ids are Redis stream ids, `"<ms>-<seq>"`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from waxhouse.livetables import LiveTable

__all__ = ["NEWEST_WINDOWS", "LiveReader", "RedisReader", "parse_id"]

logger = logging.getLogger(__name__)

NEWEST_WINDOWS = 3  # a key's newest windows tried, newest first, for a row to show
WAIT_COUNT = 1000  # entries one blocking read returns at most

StreamEntries = list[tuple[str, dict[Any, Any]]]


class LiveReader(Protocol):
    """What the server reads; every method is a coroutine on the server's event loop."""

    async def newest_row(self, table: LiveTable, kid: str) -> dict[str, Any] | None:
        """The key's row in its newest window that has one, rendered; None if none."""
        ...

    async def top(self, table: LiveTable, limit: int) -> dict[str, Any] | None:
        """The newest closed window's `limit` top keys, rendered; None before any closed."""
        ...

    async def stream_after(
        self, table: LiveTable, after: str | None, count: int
    ) -> tuple[StreamEntries, str | None]:
        """At most `count` entries after id `after` (None or "0": from the start), oldest
        first, and the first id the stream still holds (None when it is empty)."""
        ...

    async def wait_stream(self, table: LiveTable, after: str, block_ms: int) -> StreamEntries:
        """Entries after `after`, waiting up to `block_ms` for one (empty if none came)."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id `"<ms>-<seq>"` (or `"<ms>"`) as a comparable pair; ValueError if not one."""
    ms, sep, seq = entry_id.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(ms), int(seq) if sep else 0


# One round trip each: the reads depend on each other, so a script does them in Redis.
NEWEST_ROWS = """
local ns, kid, n, skip = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local wids = redis.call('ZREVRANGE', ns .. ':k:' .. kid, skip, skip + n - 1)
for i, wid in ipairs(wids) do
  local flat = redis.call('HGETALL', ns .. ':r:' .. wid .. ':' .. kid)
  local rows = {}
  for j = 1, #flat, 2 do
    local kind = string.sub(flat[j], 1, 2)
    if kind == 'p:' or kind == 'q:' then
      rows[#rows + 1] = flat[j]
      rows[#rows + 1] = flat[j + 1]
    end
  end
  if #rows > 0 then return {skip + i, rows} end
end
return false
"""
"""The rows (`p:`/`q:` fields) of the newest of `n` windows from `skip` that has any, and
how many windows down it is; false if none."""


CLOSED_TOP = """
local ns, n = ARGV[1], tonumber(ARGV[2])
local wid = redis.call('GET', ns .. ':closed')
if not wid then return false end
return {wid, redis.call('ZREVRANGE', ns .. ':t:' .. wid, 0, n - 1, 'WITHSCORES')}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Batched:
    """Script calls made in one turn of the event loop go to Redis as one pipeline: many
    concurrent lookups cost one round trip (and one write and read of the socket)."""

    def __init__(self, client: aioredis.Redis, scripts: list[str]) -> None:
        self.client = client
        self.scripts = [client.register_script(script) for script in scripts]
        self._pending: list[tuple[str, list[Any], asyncio.Future[Any]]] = []

    async def call(self, script: str, args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(_settled)

    async def _send(self, batch: list[tuple[str, list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                for script in self.scripts:  # Redis restarted or flushed its scripts
                    await self.client.script_load(script.script)
                results = await self._execute(batch)
        except Exception as e:  # every caller gets the error (redis's, or a cancellation)
            results = [e] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller went away
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[tuple[str, list[Any], asyncio.Future[Any]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for sha, args, _ in batch:
                pipe.execute_command("EVALSHA", sha, 0, *args)
            return list(await pipe.execute(raise_on_error=False))


def _settled(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a batch of reads failed: %r", task.exception())


class RedisReader:
    """`LiveReader` over Redis (`redis.asyncio`); `url` is REDIS_URL. Connects lazily,
    on the running loop; `close()` releases the connections."""

    def __init__(self, url: str) -> None:
        # No socket timeout: a blocking XREAD waits longer than any sensible one.
        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0)
        self._batched = _Batched(self.client, [NEWEST_ROWS, CLOSED_TOP])
        self._newest_sha, self._top_sha = (script.sha for script in self._batched.scripts)

    async def newest_row(self, table: LiveTable, kid: str) -> dict[str, Any] | None:
        skip = 0
        while skip < NEWEST_WINDOWS:
            args = [table.namespace, kid, NEWEST_WINDOWS - skip, skip]
            found = await self._batched.call(self._newest_sha, args)
            if not found:
                return None
            skip, pairs = int(found[0]), found[1]
            row = table.render_row(kid, dict(zip(pairs[::2], pairs[1::2], strict=True)))
            if row is not None:
                return row  # else retracted: the window before it
        return None

    async def top(self, table: LiveTable, limit: int) -> dict[str, Any] | None:
        found = await self._batched.call(self._top_sha, [table.namespace, limit])
        if not found:
            return None
        wid, flat = _text(found[0]), found[1]
        pairs = [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        return table.render_top(wid, pairs)

    async def stream_after(
        self, table: LiveTable, after: str | None, count: int
    ) -> tuple[StreamEntries, str | None]:
        stream = table.namespace + ":s"
        start = "-" if after in (None, "0", "0-0") else f"({after}"
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, "-", "+", count=1)
            pipe.xrange(stream, start, "+", count=count)
            first, entries = await pipe.execute()
        return _entries(entries), _text(first[0][0]) if first else None

    async def wait_stream(self, table: LiveTable, after: str, block_ms: int) -> StreamEntries:
        got: Any = await self.client.xread(
            {table.namespace + ":s": after}, count=WAIT_COUNT, block=block_ms
        )
        return _entries(got[0][1]) if got else []  # RESP2: [[stream, entries]]

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()


def _entries(entries: list[Any]) -> StreamEntries:
    return [(_text(entry_id), fields) for entry_id, fields in entries]
