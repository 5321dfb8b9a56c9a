"""The job in Quix Streams: parse, re-key by page (`group_by`), 60 s tumbling count, `.final()`.

Quix windows are per message key, so counting per page re-partitions through the internal
topic `group_by` creates, as its docs show. The timestamp is the event's own
(`set_timestamp`); `grace_ms` allows for the same cross-partition disorder as the Bytewax
peer. Quix has no bounded mode: `app.run(timeout=...)` stops once no message arrived for
that long, and the drain time reported ends at the last record processed. Windows still
open at that point are never emitted (Quix closes a window only when a later timestamp
arrives), so the last minutes of the topic are missing from its counts.
"""

from __future__ import annotations

import tempfile
import time
import uuid

from quixstreams import Application

from bench.peers._job import Report, arguments, count_key, page_and_ts

GRACE_MS = 2 * 3600_000
IDLE_STOP_S = 5.0


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report = Report()
    counts: dict[str, int] = {}
    last = [time.monotonic()]

    def parse(value: bytes) -> dict | None:
        report.records += 1
        last[0] = time.monotonic()
        found = page_and_ts(value)
        return None if found is None else {"page": found[0], "ts": found[1]}

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
        sdf = sdf.tumbling_window(60_000, grace_ms=GRACE_MS).count().final()
        sdf = sdf.apply(lambda window, key, _ts, _headers: {**window, "page": key}, metadata=True)
        sdf.update(emit)
        app.run(timeout=IDLE_STOP_S)
    report.seconds = last[0] - report.started
    report.counts = counts
    report.write(args.out)


if __name__ == "__main__":
    main()
