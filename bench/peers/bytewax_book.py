"""The job written by the book: Bytewax's own Kafka connector and windowing operators.

Bytewax's `KafkaSource` with `tail=False` stops each partition at its end (librdkafka's
partition EOF). Items are parsed one by one with `op.map`, then `count_window` with an
`EventClock` and an epoch-aligned `TumblingWindower` counts per page. The clock is set for
a backfill: event time only (a fixed `now_getter`, so wall time never moves the
watermark), no wake-ups from the system clock (`to_system_utc` returns None; the default
busy-loops when event time lags wall time), and `wait_for_system_duration` wide enough
for the disorder of one worker reading 4 partitions in batches (late items are counted
in the report, so a too-small wait shows up as a mismatch).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, count_window
from bytewax.testing import TestingSink

from bench.peers._job import Report, arguments, count_key, page_and_ts

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WINDOW = timedelta(seconds=60)
WAIT = timedelta(hours=2)


def event_time(item: tuple[str, int]) -> datetime:
    return EPOCH + timedelta(milliseconds=item[1])


def build(servers: str, topic: str, windows: list, late: list, seen: list[int]) -> Dataflow:
    flow = Dataflow("bytewax_book")
    kafka = kop.input("in", flow, brokers=servers.split(","), topics=[topic], tail=False)

    def parse(msg: KafkaSourceMessage) -> tuple[str, int] | None:
        seen[0] += 1  # records drained, for the report
        return page_and_ts(msg.value)

    events = op.filter_map("parse", kafka.oks, parse)
    clock = EventClock(
        event_time,
        wait_for_system_duration=WAIT,
        now_getter=lambda: EPOCH,
        to_system_utc=lambda _at: None,
    )
    windower = TumblingWindower(length=WINDOW, align_to=EPOCH)
    counts = count_window("count", events, clock, windower, key=lambda item: item[0])
    op.output("windows", counts.down, TestingSink(windows))
    op.output("late", counts.late, TestingSink(late))
    return flow


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report = Report()
    windows: list = []
    late: list = []
    seen = [0]
    cli_main(build(args.bootstrap, args.topic, windows, late, seen), workers_per_process=1)
    report.stop()
    report.records = seen[0]
    report.notes["late"] = len(late)
    width = int(WINDOW.total_seconds() * 1000)
    report.counts = {count_key(page, wid * width): n for page, (wid, n) in windows}
    report.write(args.out)


if __name__ == "__main__":
    main()
