"""The job in Quix Streams: parse, re-key by page (`group_by`), 60 s tumbling count, `.final()`.

Written as its docs show: windows are per message key, so counting per page re-partitions
through the internal topic `group_by` creates; the timestamp is the event's own
(`set_timestamp`); `tumbling_window(60 s, grace_ms).count().final()` with the default
closing strategy.

How Quix closes windows (quixstreams 3.28.1, `dataframe/windows/time_based.py`,
`FixedTimeWindow.process_window`): only while processing a message, never on a timer and
never at the end of the input. With the default `closing_strategy="key"` a message
raises its key's latest timestamp, and every window of that key whose end is at most
(latest timestamp - grace) is emitted; a message for such a window is dropped as late
(`on_late`). So at the end of the input each page's windows ending after (its newest
timestamp - grace) are still open and never emitted: the report names, per page, that
limit (`closed_until`), so the check compares exactly the windows Quix closed.

The grace must cover the disorder Quix itself creates: one consumer reads the 4 source
partitions in fetch-sized runs of one partition at a time, so the event times written to
the re-partitioned topic jump back and forth by the partitions' drift, which grows with
the backlog in a backfill. The largest lag behind a page's newest timestamp is measured
and the records dropped as late are counted per window, so a grace that is too small
shows as accounted-for loss in the check, not as silent loss.

(`closing_strategy="partition"` closes more windows of rare pages but is slower, and in
3.28.1 judges lateness against the last *expired window end* minus the grace, so records
lagging between one and two graces go into windows already emitted and are neither
emitted nor reported late.)

Quix has no bounded mode: `app.run(timeout=...)` stops once no message arrived for that
long; the drain time reported ends at the last record processed.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter

from quixstreams import Application

from bench.peers._job import WINDOW_MS, Report, arguments, count_key, page_and_ts

# The lag after `group_by`, measured on bench.compare's topic (seed 7): 1.7-1.9 h at 200,000
# events, 9.1 h at 1,000,000 (212,066 records dropped as late with a 2 h grace), 11.4 h at
# 2,000,000. About twice the last, so the default 2,000,000-event run loses nothing; Quix
# then closes the windows ending more than a day before each page's newest event.
GRACE_MS = 24 * 3600_000
IDLE_STOP_S = 5.0


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report = Report()
    counts: dict[str, int] = {}
    last = [time.monotonic()]
    newest: dict[str, int] = {}  # page -> newest event time the window step has seen
    lag = [0]  # the largest lag of an event behind its page's newest event time
    dropped: Counter[str] = Counter()

    def parse(value: bytes) -> dict | None:
        report.records += 1
        last[0] = time.monotonic()
        found = page_and_ts(value)
        return None if found is None else {"page": found[0], "ts": found[1]}

    def observe(_event: dict, page: str, ts: int, _headers: object) -> None:
        """Instrumentation, not part of the job: the times the window step will see."""
        top = newest.get(page)
        if top is None or ts > top:
            newest[page] = ts
        elif top - ts > lag[0]:
            lag[0] = top - ts

    def on_late(_value: object, page: str, _ts: int, _late_by: int, start: int, *_: object) -> bool:
        dropped[count_key(page, start)] += 1
        return False  # counted; no log line per record

    def emit(window: dict) -> None:
        last[0] = time.monotonic()
        counts[count_key(window["page"], window["start"])] = window["value"]

    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
        )
        topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="str")
        sdf = app.dataframe(topic)
        sdf = sdf.apply(parse).filter(lambda event: event is not None)
        sdf = sdf.set_timestamp(lambda event, _key, _ts, _headers: event["ts"])
        sdf = sdf.group_by("page")
        sdf = sdf.update(observe, metadata=True)
        sdf = sdf.tumbling_window(WINDOW_MS, grace_ms=GRACE_MS, on_late=on_late).count().final()
        sdf = sdf.apply(lambda window, key, _ts, _headers: {**window, "page": key}, metadata=True)
        sdf.update(emit)
        app.run(timeout=IDLE_STOP_S)
    report.seconds = last[0] - report.started
    report.counts = counts
    report.closed_until = {page: ts - GRACE_MS for page, ts in newest.items()}
    report.dropped = dict(dropped)
    report.notes.update(grace_ms=GRACE_MS, late=sum(dropped.values()), max_lag_ms=lag[0])
    report.write(args.out)


if __name__ == "__main__":
    main()
