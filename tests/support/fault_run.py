"""`python -m tests.support.fault_run FLOW [bytewax.run args]`: the flow, with faults.

Test-only. Installs the faults the environment asks for, then runs `bytewax.run` exactly
as `python -m bytewax.run` would. The production code has no fault hooks.

- `FAULT_KILL_MID_FLUSH=N`: on the N-th (or first later) ClickHouse write that has rows
  for more than one table (dead letters count as one), insert the first table's rows only
  (the clickstream's `page_stats`), then SIGKILL this process: a crash in the middle of a
  sink flush.
- `FAULT_KILL_MID_REDIS=N`: on the N-th (or first later) Redis write of more than one
  script call, send the first call only (its rows are in Redis), then SIGKILL this
  process: a crash in the middle of a live write.
- `FAULT_KILL_IN_SNAPSHOT=N`: on the N-th snapshot of the ClickHouse sink (the end of an
  epoch for it, after the steps before it have snapshotted that epoch), SIGKILL this
  process: a crash between the snapshots of one epoch.
- `FAULT_INSERT_FAILURES=N`: N insert attempts fail with a transient (network) error
  before reaching ClickHouse; with `FAULT_INSERTS_BEFORE_OUTAGE=M`, after M inserts
  went through.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from waxhouse.connectors import clickhouse
from waxhouse.rows import RowBatch


def _kill_mid_flush(at_write: int) -> None:
    write = clickhouse.ClickHouseWriter.write
    writes = 0

    def faulty_write(self: clickhouse.ClickHouseWriter, batch: RowBatch) -> None:
        nonlocal writes
        writes += 1
        filled = [name for name, rows in batch.tables.items() if rows]
        if writes >= at_write and filled and (len(filled) > 1 or batch.dead_letters):
            (table,) = (t for t in self._tables if t.label == filled[0])
            self._insert(table, batch.tables[filled[0]])
            sys.stderr.write("fault_run: SIGKILL in the middle of a sink flush\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, batch)

    clickhouse.ClickHouseWriter.write = faulty_write  # type: ignore[method-assign]


def _kill_mid_redis(at_write: int) -> None:
    from waxhouse.connectors import redis_store

    send = redis_store.RedisWriter._send
    writes = 0

    def faulty_send(self: redis_store.RedisWriter, calls: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes >= at_write and len(calls) > 1:
            send(self, calls[:1])
            sys.stderr.write("fault_run: SIGKILL in the middle of a Redis write\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return send(self, calls)

    redis_store.RedisWriter._send = faulty_send  # type: ignore[method-assign]


def _kill_in_snapshot(at_snapshot: int) -> None:
    snapshot = clickhouse._ClickHousePartition.snapshot
    snapshots = 0

    def faulty_snapshot(self: clickhouse._ClickHousePartition) -> None:
        nonlocal snapshots
        snapshots += 1
        if snapshots >= at_snapshot:
            sys.stderr.write("fault_run: SIGKILL in the sink's snapshot\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        snapshot(self)

    clickhouse._ClickHousePartition.snapshot = faulty_snapshot  # type: ignore[method-assign]


def _failing_inserts(count: int, after: int) -> None:
    init = clickhouse.ClickHouseWriter.__init__
    failures, healthy = count, after

    def faulty_init(self: clickhouse.ClickHouseWriter, client: Any, *args: Any) -> None:
        real_insert = client.insert

        def insert(*a: Any, **kw: Any) -> Any:
            nonlocal failures, healthy
            if healthy > 0:
                healthy -= 1
            elif failures > 0:
                failures -= 1
                raise OperationalError("fault_run: injected network failure")
            return real_insert(*a, **kw)

        client.insert = insert
        init(self, client, *args)

    clickhouse.ClickHouseWriter.__init__ = faulty_init  # type: ignore[method-assign]


def main() -> None:
    if os.environ.get("FAULT_KILL_MID_FLUSH"):
        _kill_mid_flush(int(os.environ["FAULT_KILL_MID_FLUSH"]))
    if os.environ.get("FAULT_KILL_MID_REDIS"):
        _kill_mid_redis(int(os.environ["FAULT_KILL_MID_REDIS"]))
    if os.environ.get("FAULT_KILL_IN_SNAPSHOT"):
        _kill_in_snapshot(int(os.environ["FAULT_KILL_IN_SNAPSHOT"]))
    if os.environ.get("FAULT_INSERT_FAILURES"):
        after = int(os.environ.get("FAULT_INSERTS_BEFORE_OUTAGE", "0"))
        _failing_inserts(int(os.environ["FAULT_INSERT_FAILURES"]), after)
    sys.argv = ["bytewax.run", *sys.argv[1:]]
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
