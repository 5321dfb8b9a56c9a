"""Live latency: how soon after a window may close its row is visible in ClickHouse.

    python -m bench.latency [--seconds 360] [--capacity EVENTS_PER_S] [--load 0.5]

On a throwaway broker (or KAFKA_BOOTSTRAP_SERVERS) and a fresh 4-partition topic:

1. Capacity: `--capacity` events/s, or else measured by a short bounded drain
   (`KAFKA_STOP_AT_END=true`) of `--capacity-events` events shaped like the live ones,
   read from the flow's run summary (records/s), as `bench.peers.waxhouse` does.
2. Live: `python -m bytewax.run dataflows.clickstream` runs live (no stop at end, recovery
   on as the README's commands have it) into a fresh chDB store, while a confluent-kafka
   producer writes events keyed by `user_id` with event time `ts` = now, at a steady
   `--load` x capacity for `--seconds`. Then production stops, the flow gets
   window + lateness + `--settle` seconds to close the last windows on idle time, and is
   stopped (SIGINT, then SIGTERM, then SIGKILL, each bounded).
3. Only then (one process at a time may open a chDB store) the store is read: per
   `(page, window_start)` of `page_stats_data`, visible = max(`written_at`) over its
   source-partition rows - (`window_end` + lateness). `written_at` is ClickHouse's
   `now64(3)` at insert, on the same machine (same clock) as the producer.

Counted: windows that start at or after the first event (earlier ones saw only part of
their events) and whose `window_end` + lateness passed before the flow was told to stop,
split into those closed while events were flowing (by the watermark) and those closed
after the producer stopped (by idle time). Writes `bench/results/latency.md` and
`bench/results/latency.png`.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    EventMaker,
    bootstrap,
    confluent_producer,
    send,
    summary_rate,
    timed_flow,
)
from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, start_flow
from tests.support.kafka_broker import create_topic

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
TARGET_P99_S = 1.0

WINDOWS_SQL = """
    SELECT page, toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end),
           toUnixTimestamp64Milli(max(written_at)), count(), uniqExact(part)
    FROM page_stats_data
    GROUP BY page, window_start, window_end"""


# -- the events ----------------------------------------------------------------------------


def random_users(maker: EventMaker, users: int) -> Callable[[int], tuple[bytes, bytes]]:
    """(key, value) of the next event at a given time, from a user drawn at random."""

    def make(ts_ms: int) -> tuple[bytes, bytes]:
        user = f"user-{maker.rng.randrange(users)}"
        return user.encode(), maker.make(user, ts_ms)

    return make


# -- capacity ------------------------------------------------------------------------------


def measure_capacity(
    servers: str, scratch: Path, events: int, make: Callable[[int], tuple[bytes, bytes]]
) -> float:
    """records/s of a bounded drain of `events` recent events, from the flow's summary."""
    topic = f"latency-capacity-{uuid.uuid4().hex[:8]}"
    create_topic(servers, topic, PARTITIONS)
    create_topic(servers, f"{topic}.dlq", 1)
    out = confluent_producer(servers)
    first = int(time.time() * 1000) - events  # 1 ms apart, ending now
    for i in range(events):
        key, value = make(first + i)
        send(out, topic, key, value, first + i)
        if i % 10_000 == 0:
            out.poll(0)
    out.flush(60)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": f"chdb://{scratch / 'capacity'}",
    }
    stdout, _ = timed_flow(env)
    records, rate = summary_rate(stdout)
    if records != events:
        raise RuntimeError(f"the capacity drain read {records:,} of {events:,} records")
    return rate


# -- the live run --------------------------------------------------------------------------


@dataclass
class Production:
    """What the producer really did."""

    target_rate: float
    first_ts_ms: int = 0
    last_ts_ms: int = 0
    sent: int = 0
    seconds: float = 0.0
    per_second: list[int] = field(default_factory=list)
    max_behind: int = 0  # the most events it was ever behind schedule

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def produce_steadily(
    servers: str,
    topic: str,
    make: Callable[[int], tuple[bytes, bytes]],
    rate: float,
    seconds: float,
) -> Production:
    """`rate` events/s for `seconds`, each event's `ts` the wall clock when it is sent."""
    out = confluent_producer(servers)
    done = Production(target_rate=rate)
    started = time.monotonic()
    second_end, in_second = started + 1.0, 0
    done.first_ts_ms = time.time_ns() // 1_000_000
    while True:
        now = time.monotonic()
        if now >= second_end:
            done.per_second.append(in_second)
            second_end, in_second = second_end + 1.0, 0
        elapsed = now - started
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - done.sent
        done.max_behind = max(done.max_behind, due)
        if due <= 0:
            out.poll(0)
            time.sleep(min(0.002, 1 / rate))
            continue
        for _ in range(min(due, 1_000)):
            ts_ms = time.time_ns() // 1_000_000
            key, value = make(ts_ms)
            send(out, topic, key, value, ts_ms)
            done.last_ts_ms = ts_ms
        done.sent += min(due, 1_000)
        in_second += min(due, 1_000)
        out.poll(0)
    done.seconds = time.monotonic() - started
    left = out.flush(30)
    if left:
        raise RuntimeError(f"{left} events were never delivered")
    return done


def stop(flow: subprocess.Popen[bytes]) -> str:
    """SIGINT, then SIGTERM, then SIGKILL, each given a bounded time; how it ended."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if flow.poll() is not None:
            break
        flow.send_signal(sig)
        try:
            flow.wait(timeout=wait_s)
            return f"{signal.Signals(sig).name}: exit {flow.returncode}"
        except subprocess.TimeoutExpired:
            continue
    return f"exit {flow.returncode}"


# -- the measurement -----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowLatency:
    page: str
    start_ms: int
    end_ms: int
    latency_ms: int
    rows: int  # rows stored for it: one per source partition, unless one was written twice
    parts: int


def window_latencies(store: str, lateness_ms: int) -> list[WindowLatency]:
    return [
        WindowLatency(page, start, end, written - (end + lateness_ms), rows, parts)
        for page, start, end, written, rows, parts in query_rows(store, WINDOWS_SQL)
    ]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted `values`."""
    rank = max(1, -(-len(values) * q // 100))
    return values[int(rank) - 1]


def stats_row(label: str, windows: Sequence[WindowLatency]) -> str:
    if not windows:
        return f"| {label} | 0 | 0 | - | - | - | - | - | - |"
    s = sorted(w.latency_ms / 1000 for w in windows)
    over = sum(1 for v in s if v > TARGET_P99_S)
    starts = len({w.start_ms for w in windows})
    return (
        f"| {label} | {starts:,} | {len(s):,} | {percentile(s, 50):.3f} | "
        f"{percentile(s, 90):.3f} | {percentile(s, 99):.3f} | {s[-1]:.3f} | {over:,} | "
        f"{s[0]:.3f} |"
    )


def chart(latencies_ms: Sequence[int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(v / 1000 for v in latencies_ms)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.hist(values, bins=60, color="tab:blue")
    left.set_xlabel("seconds after window end + lateness")
    left.set_ylabel("windows (page, window)")
    right.plot(values, [(i + 1) / len(values) for i in range(len(values))], color="tab:blue")
    right.axvline(TARGET_P99_S, color="tab:red", linestyle="--", label="target p99 1 s")
    right.axhline(0.99, color="grey", linestyle=":", label="99%")
    right.set_xlabel("seconds after window end + lateness")
    right.set_ylabel("fraction of windows")
    right.legend(loc="lower right")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _iso(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"


def by_window(counted: Sequence[WindowLatency], lateness_ms: int) -> Iterator[str]:
    """One line per window_start: how many pages, and the spread of their latencies."""
    yield "| window start (UTC) | end + lateness | pages | rows | min s | median s | max s |"
    yield "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for start, group in itertools.groupby(
        sorted(counted, key=lambda w: w.start_ms), key=lambda w: w.start_ms
    ):
        windows = list(group)
        lat = sorted(w.latency_ms / 1000 for w in windows)
        yield (
            f"| {_iso(start)} | {_iso(windows[0].end_ms + lateness_ms)} | {len(windows):,} | "
            f"{sum(w.rows for w in windows):,} | {lat[0]:.3f} | {statistics.median(lat):.3f} | "
            f"{lat[-1]:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=360.0, help="how long to produce")
    parser.add_argument("--capacity", type=float, help="events/s; measured if not given")
    parser.add_argument("--capacity-events", type=int, default=200_000)
    parser.add_argument("--load", type=float, default=0.5, help="share of capacity to produce")
    parser.add_argument("--window-seconds", type=int, default=60)
    parser.add_argument("--lateness-seconds", type=int, default=10)
    parser.add_argument("--settle", type=float, default=5.0, help="extra seconds at the end")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    command = " ".join(["python -m bench.latency", *sys.argv[1:]])
    lateness_ms = args.lateness_seconds * 1000

    with bootstrap() as servers, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        make = random_users(EventMaker(args.seed, args.pages, "lat-"), args.users)
        if args.capacity:
            capacity, measured = args.capacity, "given"
        else:
            print(f"measuring capacity: {args.capacity_events:,} events ...", flush=True)
            capacity = measure_capacity(servers, scratch, args.capacity_events, make)
            measured = f"bounded drain of {args.capacity_events:,} events, flow summary"
        rate = capacity * args.load
        print(f"capacity {capacity:,.0f} events/s; producing {rate:,.0f}/s", flush=True)

        topic = f"latency-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic, PARTITIONS)
        create_topic(servers, f"{topic}.dlq", 1)
        store = f"chdb://{scratch / 'live'}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "CLICKHOUSE_URL": store,
            "WINDOW_SECONDS": str(args.window_seconds),
            "ALLOWED_LATENESS_SECONDS": str(args.lateness_seconds),
        }
        log = scratch / "flow.log"
        flow = start_flow(env, log, recovery_args(scratch / "recovery", snapshot_s=5))
        try:
            time.sleep(5.0)  # let it connect; it idles on the empty topic
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited early:\n{log.read_text()[-3000:]}")
            print(f"producing for {args.seconds:.0f} s ...", flush=True)
            made = produce_steadily(servers, topic, make, rate, args.seconds)
            print(
                f"produced {made.sent:,} events in {made.seconds:.1f} s "
                f"({made.rate:,.0f}/s; target {rate:,.0f}/s)",
                flush=True,
            )
            wait_s = args.window_seconds + args.lateness_seconds + args.settle
            print(f"waiting {wait_s:.0f} s for the last windows to close ...", flush=True)
            time.sleep(wait_s)
            stop_ms = time.time_ns() // 1_000_000
            ended = stop(flow)
        finally:
            if flow.poll() is None:
                flow.kill()
                flow.wait()
        print(f"flow stopped ({ended}); reading the store", flush=True)
        flow_log = log.read_text(errors="replace")
        windows = window_latencies(store, lateness_ms)

    counted = [
        w for w in windows if w.start_ms >= made.first_ts_ms and w.end_ms + lateness_ms <= stop_ms
    ]
    flowing = [w for w in counted if w.end_ms + lateness_ms <= made.last_ts_ms]
    idle = [w for w in counted if w.end_ms + lateness_ms > made.last_ts_ms]
    partial_start = sum(1 for w in windows if w.start_ms < made.first_ts_ms)
    unclosed = sum(
        1 for w in windows if w.start_ms >= made.first_ts_ms and w.end_ms + lateness_ms > stop_ms
    )
    rewritten = sum(1 for w in counted if w.rows != w.parts)
    everything = [w.latency_ms for w in counted]
    p99 = percentile(sorted(everything), 99) / 1000 if everything else float("nan")
    verdict = "met" if everything and p99 <= TARGET_P99_S else "**not met**"
    per_second = made.per_second or [0]

    lines = [
        "# Live latency",
        "",
        f"`{command}`",
        "",
        f"Capacity {capacity:,.0f} events/s ({measured}); produced at {args.load:.0%} of it:"
        f" target {rate:,.0f} events/s, achieved {made.rate:,.0f} events/s ({made.sent:,}"
        f" events in {made.seconds:.1f} s; per whole second min {min(per_second):,}, max"
        f" {max(per_second):,}; at most {made.max_behind:,} events behind schedule)."
        f" {PARTITIONS} partitions, {args.users:,} users, {args.pages:,} pages, windows of"
        f" {args.window_seconds} s, allowed lateness {args.lateness_seconds} s; the flow live"
        " with recovery on (`-r <dir> -s 5 -b 0`), one worker, embedded chDB store.",
        "",
        "Latency of a window = the time its last source-partition row became visible in"
        " ClickHouse (max `written_at` of its `page_stats_data` rows) - (window end +"
        " allowed lateness). `written_at` is `now64(3)` evaluated by ClickHouse at insert;"
        " event times are the producer's wall clock when it sent each event; both are"
        " this machine's clock; the insert's own few milliseconds until the rows are visible"
        " are not included. The flow closes a window for all pages at once, so the (page,"
        " window)s of one window start have nearly the same latency: the window starts"
        " column says how many independent closes the percentiles rest on.",
        "",
        "| windows | window starts | (page, window)s | p50 s | p90 s | p99 s | max s | over 1 s"
        " | min s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        stats_row("all counted", counted),
        stats_row("closed while events flowed", flowing),
        stats_row("closed on idle time after the producer stopped", idle),
        "",
        f"Target p99 <= {TARGET_P99_S:g} s: {verdict} (p99 {p99:.3f} s).",
        "",
        f"Left out: {partial_start:,} (page, window)s that started before the first event"
        f" (partial), {unclosed:,} whose end + lateness had not passed when the flow was"
        f" stopped. Rows rewritten or duplicated among the counted: {rewritten:,}. Flow"
        f" stopped by {ended}.",
        "",
        "Per window:",
        "",
        *by_window(counted, lateness_ms),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.md").write_text("\n".join(lines))
    if everything:
        title = (
            f"page_stats visibility after window end + lateness, {made.rate:,.0f} events/s, "
            f"{len(everything):,} (page, window)s"
        )
        chart(everything, title, RESULTS / "latency.png")
    print("\n".join(lines))
    if "rows in ClickHouse" not in flow_log:
        print("the flow did not print its summary:\n" + flow_log[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
