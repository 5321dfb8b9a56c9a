"""Memory: peak RSS of the flow with 1,000,000 users in open sessions, and bytes per session.

    python -m bench.memory [--events 1000000] [--control-users 1000] [--span-seconds 1500]

Two topics (4 partitions, keyed by user) get the same `--events` valid events, in the
same order with the same pages, types and event times, spread evenly over `--span-seconds`
of event time (shorter than the 1800 s session gap, so no session closes before the end):

- `sessions`: every event from a different user, so every user has one open session;
- `control`: the same events from only `--control-users` users.

Each is drained by `python -m bytewax.run dataflows.clickstream` in bounded mode
(`KAFKA_STOP_AT_END=true`, recovery on as the README's commands have it) into a fresh
chDB store; peak RSS is the child's `os.wait4` rusage (`ru_maxrss`, its children included).
Bytes per open session = (peak RSS of `sessions` - peak RSS of `control`) / (sessions of
`sessions` - sessions of `control`): what the engine, the Kafka client, the page windows
and ClickHouse cost alike cancels out. The end of input flushes every open session to
ClickHouse, so the peak includes writing them once.

Then, in a fresh process each, the state alone: the clickstream's compiled `PartitionState`
(one per partition) fed the same events in batches, nothing flushed; the bytes of Python
objects it holds afterwards (`tracemalloc`, after a full garbage collection). Writes
`bench/results/memory.md`.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import EventMaker, bootstrap, bounded_env, confluent_producer, send, summary_rate
from tests.support.flow import REPO, flow_command, flow_env, recovery_args
from tests.support.kafka_broker import create_topic

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
TARGET_BYTES = 1.5 * 2**30
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIB = 2**20
_SESSIONS = re.compile(r"user_sessions ([\d,]+)")


@dataclass(frozen=True)
class Shape:
    events: int
    users: int
    span_ms: int
    pages: int = 2_000
    seed: int = 3

    @property
    def open_sessions(self) -> int:
        return min(self.users, self.events)


def records(shape: Shape) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, event time ms) of every event; the same sequence for every user count."""
    maker = EventMaker(shape.seed, shape.pages, "mem-")
    step = shape.span_ms / shape.events
    for i in range(shape.events):
        ts = START_MS + int(i * step)
        user = f"user-{i % shape.users}"
        yield user.encode(), maker.make(user, ts), ts


def produce(servers: str, topic: str, shape: Shape) -> int:
    out = confluent_producer(servers)
    sent = 0
    for key, value, ts in records(shape):
        send(out, topic, key, value, ts)
        sent += 1
        if sent % 10_000 == 0:
            out.poll(0)
    if out.flush(120):
        raise RuntimeError(f"not every record reached {topic}")
    return sent


@dataclass(frozen=True)
class FlowRun:
    name: str
    shape: Shape
    peak_rss: int  # bytes
    seconds: float
    rate: float
    records: int
    samples: list[tuple[float, int]]  # (seconds since start, RSS bytes), every 0.1 s


def sample_rss(pid: int, samples: list[tuple[float, int]], started: float) -> None:
    """Append the process's resident set size every 0.1 s until it is gone."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        found = re.search(r"VmRSS:\s+(\d+) kB", text)
        if found is None:  # a zombie: it has exited
            return
        samples.append((time.monotonic() - started, int(found.group(1)) * 1024))
        time.sleep(0.1)


def drain(
    name: str, shape: Shape, servers: str, topic: str, scratch: Path, recovery: bool
) -> FlowRun:
    env = bounded_env(servers, topic, scratch / name)
    log = scratch / f"{name}.log"
    args = recovery_args(scratch / f"{name}-recovery", snapshot_s=5) if recovery else []
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    with log.open("wb") as out:
        child = subprocess.Popen(
            flow_command(args),
            cwd=REPO,
            env=flow_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        sampler = threading.Thread(target=sample_rss, args=(child.pid, samples, started))
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"the {name} run failed:\n{text[-3000:]}")
    records_in, rate = summary_rate(text)
    sessions = _SESSIONS.search(text)
    stored = int(sessions.group(1).replace(",", "")) if sessions else -1
    if records_in != shape.events or stored != shape.open_sessions:
        raise RuntimeError(
            f"the {name} run read {records_in:,} records and stored {stored:,} sessions; "
            f"expected {shape.events:,} and {shape.open_sessions:,}"
        )
    return FlowRun(name, shape, usage.ru_maxrss * 1024, seconds, rate, records_in, samples)


# -- the state alone, in a fresh process -----------------------------------------------------


def state_bytes(shape: Shape) -> int:
    """Bytes of Python objects held by the clickstream's `PartitionState` fed every event,
    nothing flushed.

    Runs in a child process. Events are parsed the way the flow parses a poll
    (`parse_batch`), in batches of 10,000 per partition; what stays allocated once the
    batches are gone (`tracemalloc`, after a full collection) is the windows' state. (RSS
    is no measure here: memory freed by the parser stays in the process.)
    """
    from dataflows.clickstream import declare, events
    from waxhouse.records import InputBatch

    compiled = declare(60, 1_800).compile(10_000)
    parts = [f"memory/{p}" for p in range(PARTITIONS)]
    batches: dict[str, list[tuple[bytes, int]]] = {part: [] for part in parts}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    windows = {part: compiled.partition_state(part) for part in parts}
    offsets = dict.fromkeys(parts, 0)

    def feed(part: str) -> None:
        pending = batches[part]
        first = offsets[part]
        batch = InputBatch(
            part,
            list(range(first, first + len(pending))),
            [value for value, _ in pending],
            [ts for _, ts in pending],
        )
        parsed, dead = events.parse_batch(batch)
        if dead:
            raise RuntimeError(f"{len(dead)} generated events were rejected: {dead[0]}")
        windows[part].process(parsed)
        offsets[part] += len(pending)
        pending.clear()

    for key, value, ts in records(shape):
        part = parts[zlib.crc32(key) % PARTITIONS]
        batches[part].append((value, ts))
        if len(batches[part]) >= 10_000:
            feed(part)
    for part in parts:
        if batches[part]:
            feed(part)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def in_fresh_process(shape: Shape) -> int | str:
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(state_bytes, (shape,))
    except Exception as e:  # the windows' API is changing under us: say so, keep the rest
        return f"{type(e).__name__}: {e}"


# -- the report ------------------------------------------------------------------------------


def chart(runs: list[FlowRun], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(9, 4.5))
    for run in runs:
        label = f"{run.name}: {run.shape.open_sessions:,} open sessions"
        axis.plot([t for t, _ in run.samples], [rss / MIB for _, rss in run.samples], label=label)
    axis.axhline(TARGET_BYTES / MIB, color="tab:red", linestyle="--", label="target 1.5 GiB")
    axis.set_xlabel("seconds since the flow started")
    axis.set_ylabel("RSS MiB")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--control-users", type=int, default=1_000)
    parser.add_argument("--span-seconds", type=int, default=1_500, help="< the session gap")
    parser.add_argument("--skip-state", action="store_true", help="no in-process measurement")
    parser.add_argument(
        "--recovery",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the flow with recovery on (-r DIR -s 5 -b 0), as the README does",
    )
    args = parser.parse_args()
    if args.span_seconds >= 1_800:
        parser.error("--span-seconds must be shorter than the 1800 s session gap")
    command = " ".join(["python -m bench.memory", *sys.argv[1:]])
    span_ms = args.span_seconds * 1000
    shapes = {
        "sessions": Shape(args.events, args.events, span_ms),
        "control": Shape(args.events, args.control_users, span_ms),
    }

    runs: dict[str, FlowRun] = {}
    with bootstrap() as servers, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name, shape in shapes.items():
            topic = f"memory-{name}-{uuid.uuid4().hex[:8]}"
            create_topic(servers, topic, PARTITIONS)
            create_topic(servers, f"{topic}.dlq", 1)
            print(f"producing {shape.events:,} events from {shape.users:,} users ...", flush=True)
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pool.apply(produce, (servers, topic, shape))
            print(f"draining {topic} ...", flush=True)
            runs[name] = drain(name, shape, servers, topic, scratch, args.recovery)
            run = runs[name]
            print(
                f"{name}: peak RSS {run.peak_rss / MIB:,.0f} MiB, {run.rate:,.0f} records/s",
                flush=True,
            )
    state = {}
    if not args.skip_state:
        for name, shape in shapes.items():
            print(f"state alone, {name} ...", flush=True)
            state[name] = in_fresh_process(shape)

    big, small = runs["sessions"], runs["control"]
    sessions = big.shape.open_sessions - small.shape.open_sessions
    per_session = (big.peak_rss - small.peak_rss) / sessions
    verdict = "met" if big.peak_rss <= TARGET_BYTES else "**not met**"
    recovery = "recovery on with `-s 5`" if args.recovery else "recovery off"
    lines = [
        "# Memory with open sessions",
        "",
        f"`{command}`",
        "",
        f"{args.events:,} valid events per run, evenly over {args.span_seconds:,} s of event"
        f" time (session gap 1,800 s, so every session is still open at the end of the input),"
        f" the same pages, types and times in both runs; {PARTITIONS} partitions keyed by"
        f" user. Bounded runs of the flow (`KAFKA_STOP_AT_END=true`, {recovery}) into a"
        " fresh embedded chDB store; peak RSS from `os.wait4` (`ru_maxrss`)"
        " of the `bytewax.run` process, which hosts the Python engine, the Kafka client and"
        " the chDB engine. At the end of the input every open session is written to"
        " ClickHouse, so the peak includes that write (`memory.png`: RSS every 0.1 s).",
        "",
        "| run | users = open sessions | peak RSS MiB | records/s | wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in (big, small):
        lines.append(
            f"| {run.name} | {run.shape.open_sessions:,} | {run.peak_rss / MIB:,.0f} | "
            f"{run.rate:,.0f} | {run.seconds:.1f} |"
        )
    lines += [
        "",
        f"Peak RSS with {big.shape.open_sessions:,} open sessions: {big.peak_rss / 2**30:.2f}"
        f" GiB; target <= 1.5 GiB: {verdict}.",
        "",
        f"Bytes per open session (whole process): ({big.peak_rss / MIB:,.0f} MiB -"
        f" {small.peak_rss / MIB:,.0f} MiB) / {sessions:,} sessions = **{per_session:,.0f}"
        " bytes**.",
        "",
    ]
    if state:
        lines += [
            "The windowing state alone: `PartitionState` (one per partition) fed the same"
            " events in a fresh process, nothing flushed; Python objects it holds"
            " (`tracemalloc`):",
            "",
        ]
        grown_big, grown_small = state["sessions"], state["control"]
        if isinstance(grown_big, int) and isinstance(grown_small, int):
            open_big, open_small = big.shape.open_sessions, small.shape.open_sessions
            lines += [
                "| run | open sessions | state MiB |",
                "| --- | ---: | ---: |",
                f"| sessions | {open_big:,} | {grown_big / MIB:,.0f} |",
                f"| control | {open_small:,} | {grown_small / MIB:,.0f} |",
                "",
                f"Bytes per open session (state): ({grown_big / MIB:,.0f} MiB -"
                f" {grown_small / MIB:,.0f} MiB) / {open_big - open_small:,} ="
                f" **{(grown_big - grown_small) / (open_big - open_small):,.0f} bytes** (the"
                " user's session, its key, and its share of the page windows' user sets).",
                "",
            ]
        else:
            lines += [f"- not measured: {state}", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.md").write_text("\n".join(lines))
    title = f"flow RSS, {args.events:,} events, recovery {'on' if args.recovery else 'off'}"
    chart([big, small], title, RESULTS / "memory.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
