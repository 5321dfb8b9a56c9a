"""Live results against their targets: the flow's Redis sink, `waxhouse serve`'s lookups and
its Server-Sent Events fan-out.

    python -m bench.serving [--rounds 3] [--events 200000] [--seconds 8] [--sse-clients 10000]

On one broker (a throwaway one, or KAFKA_BOOTSTRAP_SERVERS) and one redis-server started
here with the compose stack's settings (append-only, `appendfsync everysec`), in three parts:

1. **The flow with its Redis sink on and off** (`bench.serving_flow`): the clickstream
   flow drains the same topic in bounded mode with and without `REDIS_URL`, alternated in
   `--rounds` rounds, on the benchmark input and on the realistic one. Records/s are the
   flow's own summaries and the whole command's; the Redis rows are the row hashes per
   live table it left.
2. **Key lookups**: the last benchmark run's Redis, served by one `waxhouse serve --flow
   clickstream` process; `GET /v1/page_stats/{page}` and `/v1/user_sessions/{user_id}`
   alternated over every key in Redis, from a load client in a process of its own
   (`bench.serving_load`): closed loop (full load) for `--seconds`, then open loop at
   half that rate, in each round; the client's and serve's CPU over each window.
3. **SSE fan-out**: another serve process over an empty database; watchers in processes
   of 2,500 connections each hold `GET /v1/page_stats/stream` open, then one window per
   second is closed through `RedisWriter` (ten pages' final rows and the watermark that
   closes their window, in one write, as the flow writes them); each top event's delay
   runs from just before that write to its receipt at each client (wall clock, one
   machine). 100 clients and `--sse-clients`, alternated, `--sse-rounds` each.

Writes `bench/results/serving.md` and `bench/results/serving.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import redis

from bench.common import bootstrap, flow_version
from bench.serving_flow import INPUTS, LIVE_TABLES, FlowRun, cpu_of, drain, fill
from bench.serving_load import (
    LookupResult,
    Lookups,
    Watch,
    WatchResult,
    run_lookups,
    run_watchers,
)
from tests.support.flow import REPO, flow_env
from tests.support.redis_server import RedisServer
from tests.support.scrape import free_port

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "serving.md"
CHART = RESULTS / "serving.png"
TOKEN = "bench-" + "s" * 26
PER_WATCHER = 2_500  # SSE connections per watcher process
SSE_DB = 15
PAGES_PER_WINDOW = 10

TARGETS = {
    "redis_ratio": 0.90,  # flow records/s with Redis over without
    "lookups": 20_000.0,  # requests/s per serve process
    "lookup_p99_ms": 5.0,
    "sse_clients": 10_000,
    "sse_p99_ms": 250.0,
}


# --- a serve process ----------------------------------------------------------------------


@contextlib.contextmanager
def serve(redis_url: str, store: Path) -> Iterator[tuple[int, int]]:
    """`waxhouse serve --flow clickstream` over `redis_url`: (port, pid) once it answers."""
    port = free_port()
    env = flow_env(
        {
            "REDIS_URL": redis_url,
            "SERVE_LISTEN": f"127.0.0.1:{port}",
            "SERVE_TOKENS": TOKEN,
            "CLICKHOUSE_URL": f"chdb://{store}",
        }
    )
    log = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "waxhouse.cli", "serve", "--flow", "clickstream"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- part 2: key lookups ---------------------------------------------------------------------


def lookup_paths(redis_url: str) -> list[str]:
    """Every key in Redis of both live tables, as API paths, the two tables alternated."""
    by_table: dict[str, list[str]] = {}
    with redis.Redis.from_url(redis_url) as client:
        for table in LIVE_TABLES:
            prefix = f"wh:clickstream:{table}:k:"
            keys = [k.decode()[len(prefix) :] for k in client.scan_iter(f"{prefix}*", count=10_000)]
            keys.sort()
            by_table[table] = [f"/v1/{table}/{urllib.parse.quote(key, safe='')}" for key in keys]
    pages, users = by_table["page_stats"], by_table["user_sessions"]
    n = max(len(pages), len(users))
    return [p for i in range(n) for p in (pages[i % len(pages)], users[i % len(users)])]


@dataclass
class LookupRun:
    mode: str
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    serve_cpu: float  # share of one core
    client_cpu: float
    redis_cpu: float
    machine_busy: float  # share of all cores
    late_ms: float = 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / ticks, sum(values) / ticks


def lookup_run(pool: Pool, load: Lookups, serve_pid: int, redis_pid: int) -> LookupRun:
    load = replace(load, start_at=time.time() + 1.0)
    pending = pool.apply_async(run_lookups, (load,))
    time.sleep(max(0.0, load.start_at + load.warmup - time.time()))
    serve0, redis0, (busy0, total0) = cpu_of(serve_pid), cpu_of(redis_pid), machine_cpu()
    time.sleep(max(0.0, load.start_at + load.warmup + load.seconds - time.time()))
    serve1, redis1, (busy1, total1) = cpu_of(serve_pid), cpu_of(redis_pid), machine_cpu()
    result: LookupResult = pending.get(timeout=load.warmup + load.seconds + 120)
    if result.errors:
        print(f"lookup client errors: {result.errors[:3]}")
    q = quantiles(result.latencies_ms)
    return LookupRun(
        load.mode,
        result.answers / load.seconds,
        q[49],
        q[98],
        dict(result.statuses),
        (serve1 - serve0) / load.seconds,
        result.cpu_s / load.seconds,
        (redis1 - redis0) / load.seconds,
        (busy1 - busy0) / max(1e-9, total1 - total0),
        result.late_s * 1000.0,
    )


def quantiles(values: Sequence[float]) -> list[float]:
    if len(values) < 2:
        return [math.nan] * 99
    return statistics.quantiles(values, n=100)


# --- part 3: SSE fan-out ---------------------------------------------------------------------


@dataclass
class SseRun:
    clients: int  # asked for
    opened: int = 0
    stayed: int = 0  # answered, not lost, and received every top event
    lost: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    events: int = 0  # top events written
    missing: int = 0  # (client, event) pairs never received
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    serve_cpu: float = 0.0
    client_cpu: float = 0.0
    open_s: float = 0.0


class Closer:
    """Closes one window of `page_stats` per call, as the flow would: the window's final
    rows (ten pages) and the watermark past its close, in one `RedisWriter.write`."""

    def __init__(self, redis_url: str) -> None:
        from dataflows.clickstream import pipeline, settings
        from waxhouse.connectors.redis_store import RedisWriter
        from waxhouse.livetables import live_tables

        compiled = pipeline.compile(settings.lateness_ms, settings.dedup_ms)
        self.table = live_tables(compiled)["page_stats"]
        self.client = redis.Redis.from_url(redis_url)
        self.writer = RedisWriter(self.client, "clickstream", {"page_stats": self.table})
        self.columns = compiled.tables["page_stats"].columns
        self.window = 0
        self.size = self.table.size_ms

    def close_next(self) -> tuple[str, float]:
        """Close the next window: (the top event's stream id, time.time() before the write)."""
        from waxhouse.rows import RowBatch

        start = 1_767_225_600_000 + self.window * self.size
        self.window += 1
        batch = RowBatch()
        rows = batch.rows("page_stats")
        for rank in range(PAGES_PER_WINDOW):
            values = {
                "window_start": start,
                "window_end": start + self.size,
                "page": f"/products/{rank}",
                "part": "0",
                "views": 1000 - 10 * rank + self.window % 7,
                "clicks": 100,
                "add_to_carts": 10,
                "purchases": 1,
                "revenue_cents": 4999,
                "unique_users": 50,
                "version": 1,
            }
            rows.append(tuple(values[c] for c in self.columns))
        batch.marks["0"] = self.table.close_at(rows[0]) + 1
        written = time.time()
        self.writer.write(batch)
        newest: Any = self.client.xrevrange(f"{self.table.namespace}:s", count=1)
        ((entry, fields),) = newest
        if fields.get(b"k") != b"top":
            raise RuntimeError(f"the stream's newest entry is no top event: {fields}")
        return str(entry.decode()), written


def sse_run(clients: int, port: int, serve_pid: int, closer: Closer, events: int) -> SseRun:
    ctx = multiprocessing.get_context("spawn")
    stop, connected, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    shares = [PER_WATCHER] * (clients // PER_WATCHER)
    if clients % PER_WATCHER:
        shares.append(clients % PER_WATCHER)
    watch = Watch("127.0.0.1", port, "/v1/page_stats/stream", TOKEN, 0)
    processes = [
        ctx.Process(
            target=run_watchers, args=(replace(watch, connections=n), stop, connected, results)
        )
        for n in shares
    ]
    run = SseRun(clients)
    started = time.monotonic()
    for process in processes:
        process.start()
    run.opened = sum(connected.get(timeout=300) for _ in processes)
    run.open_s = time.monotonic() - started
    time.sleep(1.0)
    serve0 = cpu_of(serve_pid)
    written: dict[str, float] = {}
    for _ in range(events):
        tick = time.monotonic()
        entry, at = closer.close_next()
        written[entry] = at
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    # Until serve is idle (under 5% of a core over half a second), at most 30 s: what is
    # missing then was never sent, not late.
    for _ in range(60):
        before = cpu_of(serve_pid)
        time.sleep(0.5)
        if cpu_of(serve_pid) - before < 0.025:
            break
    run.serve_cpu = (cpu_of(serve_pid) - serve0) / (events + 1)
    stop.set()
    done: list[WatchResult] = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    delays = []
    for result in done:
        run.lost += result.lost
        run.client_cpu += result.cpu_s / (events + 1)
        for status, n in result.refused.items():
            run.refused[status] = run.refused.get(status, 0) + n
        for seen in result.seen:
            got = {entry: at for entry, at in seen if entry in written}
            run.missing += len(written) - len(got)
            if len(got) == len(written):
                run.stayed += 1
            delays += [(got[e] - written[e]) * 1000.0 for e in got]
    run.events = len(written)
    q = quantiles(delays)
    run.p50_ms, run.p99_ms = q[49], q[98]
    run.max_ms = max(delays) if delays else math.nan
    return run


# --- the report -------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass
class Results:
    flow: dict[str, dict[str, list[FlowRun]]]  # input -> "on"/"off" -> runs
    lookups: list[dict[str, LookupRun]]  # per round: "full", "half"
    sse: dict[int, list[SseRun]]  # clients -> runs
    keys: int = 0


def flow_ratios(results: Results, name: str) -> tuple[float, float, list[float]]:
    """(median records/s with Redis over without, of the summaries; the same of the whole
    commands; each round's summary ratio)."""
    on, off = results.flow[name]["on"], results.flow[name]["off"]
    per_round = [a.rate / b.rate for a, b in zip(on, off, strict=True)]
    rate = med([r.rate for r in on]) / med([r.rate for r in off])
    command = med([r.command_rate for r in on]) / med([r.command_rate for r in off])
    return rate, command, per_round


def report(results: Results, command: str, args: argparse.Namespace) -> str:
    lines = [
        "# Live results: the Redis sink, key lookups, SSE fan-out",
        "",
        f"`{command}`",
        "",
        f"Flow and serve at commit {flow_version()}; {os.cpu_count()} CPUs shared by the"
        " broker, redis-server (7.0, append-only, `appendfsync everysec` as in the compose"
        " stack), the flow or one serve process, and the load clients; other agents' tests"
        " ran on the machine too. Medians of rounds, each measure side by side with its"
        " reference in the same run.",
        "",
        "| measure | target | measured (median) | met? |",
        "| --- | ---: | ---: | :---: |",
    ]
    verdicts: dict[str, float] = {}
    for name in INPUTS:
        if not results.flow.get(name):
            continue
        rate, cmd, _ = flow_ratios(results, name)
        worst = min(rate, cmd)
        verdicts[f"flow {name}"] = worst
        lines.append(
            f"| flow with Redis / without, {name} input (run summary; whole command) | ≥ 90% |"
            f" {rate:.0%}; {cmd:.0%} | {yes(worst >= TARGETS['redis_ratio'])} |"
        )
    if results.lookups:
        full = med([r["full"].rate for r in results.lookups])
        p99 = med([r["full"].p99_ms for r in results.lookups])
        half_p99 = med([r["half"].p99_ms for r in results.lookups])
        verdicts["lookups"] = full
        lines += [
            f"| key lookups, one serve process, full load | ≥ 20,000 requests/s | {full:,.0f}"
            f" requests/s | {yes(full >= TARGETS['lookups'])} |",
            f"| lookup p99 at full load | ≤ 5 ms | {p99:.1f} ms |"
            f" {yes(p99 <= TARGETS['lookup_p99_ms'])} |",
            f"| lookup p99 at half load (open loop) | ≤ 5 ms | {half_p99:.1f} ms |"
            f" {yes(half_p99 <= TARGETS['lookup_p99_ms'])} |",
        ]
    for clients, runs in sorted(results.sse.items()):
        if not runs:
            continue
        stayed = min(r.stayed for r in runs)
        p99 = med([r.p99_ms for r in runs])
        target = "≥ 10,000 clients" if clients >= TARGETS["sse_clients"] else ""
        lines += [
            f"| SSE clients connected and kept every event, of {clients:,} (fewest of the"
            f" rounds) | {target} | {stayed:,} |"
            + (f" {yes(stayed >= TARGETS['sse_clients'])} |" if target else " |"),
            f"| window close → SSE client p99, {clients:,} clients | ≤ 250 ms | {p99:.0f} ms |"
            f" {yes(p99 <= TARGETS['sse_p99_ms'])} |",
        ]

    if results.flow:
        lines += [
            "",
            "## 1. The flow with its Redis sink on and off",
            "",
            f"`{args.events:,}` records per input in 4 partitions (`bench.compare`'s benchmark"
            " shape: 10,000 pages, 100,000 users; `bench.realistic`'s mix), drained in bounded"
            " mode into a fresh chDB store each run, recovery off, with `REDIS_URL` (a fresh"
            " database; `REDIS_PROVISIONAL_SECONDS` 1, the default) and without, the order"
            " alternating by round. Records/s: the flow's run summary (start to the ClickHouse"
            " sink's close) and the whole command (interpreter start-up to exit, the Redis"
            " sink's last write included).",
            "",
            "| input | round | records/s without | records/s with Redis | ratio | whole command"
            " without / with | flow CPU s without / with | redis-server CPU s | row hashes"
            " page_stats / user_sessions | stream entries page_stats / user_sessions |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in INPUTS:
            pair = results.flow.get(name)
            if not pair:
                continue
            for i, (off, on) in enumerate(zip(pair["off"], pair["on"], strict=True), 1):
                lines.append(
                    f"| {name} | {i} | {off.rate:,.0f} | {on.rate:,.0f} |"
                    f" {on.rate / off.rate:.0%} | {off.command_rate:,.0f} /"
                    f" {on.command_rate:,.0f} | {off.cpu:.1f} / {on.cpu:.1f} |"
                    f" {on.redis_cpu:.1f} | {on.keys['page_stats']:,} /"
                    f" {on.keys['user_sessions']:,} | {on.stream['page_stats']:,} /"
                    f" {on.stream['user_sessions']:,} |"
                )
            rate, cmd, per_round = flow_ratios(results, name)
            lines.append(
                f"| {name} | median | {med([r.rate for r in pair['off']]):,.0f} |"
                f" {med([r.rate for r in pair['on']]):,.0f} | {rate:.0%} (rounds"
                f" {min(per_round):.0%} to {max(per_round):.0%}) |"
                f" {med([r.command_rate for r in pair['off']]):,.0f} /"
                f" {med([r.command_rate for r in pair['on']]):,.0f} ({cmd:.0%}) | | | | |"
            )
    if results.lookups:
        lines += [
            "",
            "## 2. Key lookups on one serve process",
            "",
            f"{results.keys:,} paths: every key Redis held after the last benchmark-input run"
            " with Redis, `/v1/page_stats/{page}` (URL-encoded) and"
            " `/v1/user_sessions/{user_id}` alternated, each with the bearer token. One load"
            f" client process (`bench.serving_load`), {args.connections} keep-alive"
            f" connections; {args.seconds:g} s measured after {args.warmup:g} s of warm-up."
            " Full load: closed loop (each connection's next request as soon as its answer"
            " is read). Half load: open loop at half that round's full-load rate, latency"
            " from when each request was due. CPU as a share of one core over the measured"
            " window; machine: busy share of both cores.",
            "",
            "| round | load | requests/s | p50 ms | p99 ms | serve CPU | client CPU |"
            " redis CPU | machine busy | answers by status |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for i, measured in enumerate(results.lookups, 1):
            for label, r in measured.items():
                lines.append(
                    f"| {i} | {label} | {r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
                    f" {r.serve_cpu:.0%} | {r.client_cpu:.0%} | {r.redis_cpu:.0%} |"
                    f" {r.machine_busy:.0%} | {r.statuses} |"
                )
    if results.sse:
        lines += [
            "",
            "## 3. Server-Sent Events fan-out on one serve process",
            "",
            f"`GET /v1/page_stats/stream` held open by the clients (watcher processes of up"
            f" to {PER_WATCHER:,} connections each, `bench.serving_load`); then"
            f" {args.sse_events} windows closed, one a second, each by one"
            " `RedisWriter.write` of its ten pages' final rows and the watermark past its"
            " close (the flow's own write). Delay: from just before that write to the top"
            " event's `id:` read at a client, over every (client, event) pair, read until serve"
            " is idle again (at most 30 s after the last write). Serve CPU: over the writes"
            " and that wait, per second of writing. Stayed:"
            " answered 200, not closed by the server, and read every top event.",
            "",
            "| clients | round | opened | stayed | lost | refused | events | missing pairs |"
            " p50 ms | p99 ms | max ms | serve CPU | watchers CPU | seconds to open |",
            "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            " ---: | ---: |",
        ]
        for clients, runs in sorted(results.sse.items()):
            for i, w in enumerate(runs, 1):
                lines.append(
                    f"| {clients:,} | {i} | {w.opened:,} | {w.stayed:,} | {w.lost:,} |"
                    f" {w.refused or ''} | {w.events} | {w.missing:,} | {w.p50_ms:.0f} |"
                    f" {w.p99_ms:.0f} | {w.max_ms:.0f} | {w.serve_cpu:.0%} |"
                    f" {w.client_cpu:.0%} | {w.open_s:.0f} |"
                )
    lines += ["", "![against the targets](serving.png)", ""]
    return "\n".join(lines)


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[str], list[float], list[float] | None, float, bool]] = []
    if results.flow:
        names = [n for n in INPUTS if results.flow.get(n)]
        values = [100 * flow_ratios(results, n)[0] for n in names]
        commands = [100 * flow_ratios(results, n)[1] for n in names]
        panels.append(("flow with Redis / without, %", names, values, commands, 90.0, True))
    if results.lookups:
        full = med([r["full"].rate for r in results.lookups]) / 1000
        panels.append(("lookups, thousand requests/s", ["full load"], [full], None, 20.0, True))
        p99s = [
            med([r["full"].p99_ms for r in results.lookups]),
            med([r["half"].p99_ms for r in results.lookups]),
        ]
        panels.append(("lookup p99, ms", ["full", "half"], p99s, None, 5.0, False))
    if results.sse:
        labels = [f"{c:,} clients" for c in sorted(results.sse)]
        p99s = [med([r.p99_ms for r in results.sse[c]]) for c in sorted(results.sse)]
        panels.append(("window close → SSE client p99, ms", labels, p99s, None, 250.0, False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, labels, values, second, target, higher) in zip(axes, panels, strict=True):
        x = range(len(labels))
        width = 0.38 if second else 0.6
        ok = [(v >= target) if higher else (v <= target) for v in values]
        ax.bar(
            [i - (width / 2 if second else 0) for i in x],
            values,
            width,
            color=["tab:green" if o else "tab:red" for o in ok],
            label="run summary" if second else None,
        )
        if second:
            ax.bar([i + width / 2 for i in x], second, width, color="tab:gray", label="command")
            ax.legend(loc="lower right", fontsize=8)
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.text(len(labels) - 0.5, target, f" target {target:g}", va="bottom", ha="right")
        ax.set_xticks(list(x), labels)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i - (width / 2 if second else 0), v, f"{v:,.1f}", ha="center", va="bottom")
    fig.suptitle("waxhouse live results against their targets (green: met)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000, help="records per input")
    parser.add_argument("--seconds", type=float, default=8.0, help="a lookup window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32, help="lookup connections")
    parser.add_argument("--sse-clients", type=int, default=10_000)
    parser.add_argument("--sse-rounds", type=int, default=2)
    parser.add_argument("--sse-events", type=int, default=10, help="windows closed per run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parts", default="flow,lookups,sse")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    command = (
        f"python -m bench.serving --rounds {args.rounds} --events {args.events}"
        f" --seconds {args.seconds:g} --sse-clients {args.sse_clients}"
        f" --sse-rounds {args.sse_rounds}"
        + (f" --parts {args.parts}" if parts != {"flow", "lookups", "sse"} else "")
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # serve inherits it
    results = Results({}, [], {})
    with bootstrap() as servers, RedisServer(appendfsync="everysec") as server:
        redis_pid = server.pid
        fill_db = 1
        if parts & {"flow", "lookups"}:
            topics = fill(servers, args.events, args.seed)
            rounds = args.rounds if "flow" in parts else 1
            for name in INPUTS if "flow" in parts else ("benchmark",):
                results.flow[name] = {"on": [], "off": []}
            for number in range(rounds):
                for name in results.flow:
                    modes: tuple[str, ...] = ("off", "on") if number % 2 == 0 else ("on", "off")
                    if "flow" not in parts:
                        modes = ("on",)
                    for mode in modes:
                        db = 1 if name == "benchmark" else 2
                        url = server.url_of(db) if mode == "on" else None
                        run = drain(servers, topics[name], url, redis_pid)
                        results.flow[name][mode].append(run)
                        print(
                            f"round {number + 1}: {name:9} redis {mode:3} {run.rate:8,.0f}"
                            f" records/s (command {run.command_rate:,.0f}) keys {run.keys}",
                            flush=True,
                        )
            if "flow" not in parts:
                results.flow = {}
        if "lookups" in parts:
            paths = lookup_paths(server.url_of(fill_db))
            results.keys = len(paths)
            store = Path(tempfile.mkdtemp(prefix="bench-serve-store-")) / "store"
            ctx = multiprocessing.get_context("spawn")
            with serve(server.url_of(fill_db), store) as (port, pid), ctx.Pool(1) as pool:
                check_lookup(port, paths)
                load = Lookups(
                    "closed",
                    "127.0.0.1",
                    port,
                    paths,
                    TOKEN,
                    connections=args.connections,
                    warmup=args.warmup,
                    seconds=args.seconds,
                )
                for number in range(args.rounds):
                    full = lookup_run(pool, load, pid, redis_pid)
                    half_load = replace(load, mode="open", rate=full.rate / 2)
                    half = lookup_run(pool, half_load, pid, redis_pid)
                    results.lookups.append({"full": full, "half": half})
                    for r in (full, half):
                        print(
                            f"round {number + 1}: lookups {r.mode:6} {r.rate:9,.0f} requests/s"
                            f" p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms serve {r.serve_cpu:.0%}"
                            f" client {r.client_cpu:.0%} {r.statuses}",
                            flush=True,
                        )
        if "sse" in parts:
            url = server.url_of(SSE_DB)
            with redis.Redis.from_url(url) as client:
                client.flushdb()
            store = Path(tempfile.mkdtemp(prefix="bench-serve-store-")) / "store"
            closer = Closer(url)
            sizes = [100, args.sse_clients]
            with serve(url, store) as (port, pid):
                for number in range(args.sse_rounds):
                    for clients in sizes if number % 2 == 0 else sizes[::-1]:
                        sse = sse_run(clients, port, pid, closer, args.sse_events)
                        results.sse.setdefault(clients, []).append(sse)
                        print(
                            f"round {number + 1}: sse {clients:6,} clients opened {sse.opened:,}"
                            f" stayed {sse.stayed:,} p50 {sse.p50_ms:.0f} p99 {sse.p99_ms:.0f}"
                            f" max {sse.max_ms:.0f} ms missing {sse.missing:,} refused"
                            f" {sse.refused} serve {sse.serve_cpu:.0%} watchers"
                            f" {sse.client_cpu:.0%} (opened in {sse.open_s:.0f} s)",
                            flush=True,
                        )
    text = report(results, command, args)
    REPORT.write_text(text, encoding="utf-8")
    chart(results, CHART)
    print(text)


def check_lookup(port: int, paths: list[str]) -> None:
    """The first paths answer 200 with a row: the URLs name keys serve finds."""
    for path in paths[:4]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            if answer.status != 200:
                raise RuntimeError(f"{path}: {answer.status}")


if __name__ == "__main__":
    main()
