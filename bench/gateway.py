"""The ingestion gateway's speed: one `waxhouse gateway` process against its targets and the
bare producer loop of its own Kafka client.

    python -m bench.gateway [--rounds 3] [--seconds 10] [--warmup 2] [--clients 1] [--py-spy]

Each round starts a fresh gateway (`tests.support.gateway.start_gateway`, the clickstream
endpoint, one token) on a fresh 4-partition topic of one broker (a throwaway one, or
KAFKA_BOOTSTRAP_SERVERS), and measures, in an order that rotates between rounds:

- **batched HTTP**: `POST /v1/events`, a JSON array of 100 events per request, 16
  keep-alive connections each with one request outstanding; events acknowledged per
  second (`accepted` of the `200` answers);
- **single-event HTTP**: one JSON object per request, 64 connections; answers per second;
- **WebSocket**: `/v1/events/ws`, 4 connections, 16 frames of 100 events in flight each;
  events acknowledged per second;
- **latency**: `POST /v1/events` of 100 events at a fixed rate, half that round's batched
  capacity (open loop, `bench.gateway_load`), from when each request was due to its
  answer; beside it the gateway's own `waxhouse_gateway_ack_seconds` over the same window;
- **the ceiling** (after the gateway stops): the gateway's Kafka client with the
  gateway's producer settings (`acks=all`, idempotent) in a bare loop producing the same
  event bytes, keyed by `user_id`, then flushing; events per second.

The events are `bench.realistic`'s clickstream (unknown fields, non-ASCII and long pages,
RFC 3339 and integer `ts`, 0.5% malformed): batches hold the records that are JSON (a
malformed one that is not JSON would make its whole batch a `400`), single events all of
them. Every `event_id` is unique (a per-use prefix). The load client
(`bench.gateway_load`) runs in `--clients` processes of its own; its CPU time, the
gateway's, the broker's and the machine's are measured over each window. With `--py-spy`,
one more batched and one more single-event run under `py-spy record --pid` say where the
gateway's samples are.

Writes `bench/results/gateway.md` and `bench/results/gateway.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.pool import Pool
from pathlib import Path

import orjson

from bench.common import bootstrap, flow_version
from bench.gateway_load import Load, Result, run_load
from bench.realistic import RealisticConfig, RealisticGenerator
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.kafka_broker import create_topic
from tests.support.scrape import sample_total

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "gateway.md"
CHART = RESULTS / "gateway.png"
TOKEN = "bench-" + "t" * 26
BATCH = 100
PARTITIONS = 4
CEILING_EVENTS = 400_000
POLL_EVERY = 100
TICKS = os.sysconf("SC_CLK_TCK")


TARGETS = {
    "batched": 20_000.0,  # events/s
    "single": 3_000.0,  # requests/s
    "ws": 30_000.0,  # events/s
    "p99_ms": 50.0,
    "ceiling_ratio": 0.5,
}


# --- the input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Payloads:
    """Request bodies (batches and single events) and the ceiling's keyed values."""

    batches: list[bytes]
    batch_events: list[int]
    singles: list[bytes]
    keyed: list[tuple[bytes, bytes]]  # (user_id, value) of the valid events


def payloads(events: int, seed: int) -> Payloads:
    records = list(RealisticGenerator(RealisticConfig(seed=seed, events=events)))
    json_values = []
    for record in records:
        if record.value is None:
            continue
        try:
            orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        json_values.append(record.value)
    batches = [
        b"[" + b",".join(json_values[i : i + BATCH]) + b"]"
        for i in range(0, len(json_values) - BATCH + 1, BATCH)
    ]
    return Payloads(
        batches=batches,
        batch_events=[BATCH] * len(batches),
        singles=[r.value for r in records if r.value],
        keyed=[(r.key, r.value) for r in records if r.expected is None and r.value is not None],
    )


# --- measuring -----------------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:`port` (the broker), from /proc; None if unseen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


@dataclass
class Run:
    """One measured window of one scenario."""

    scenario: str
    rate: float  # events/s (batched, ws, ceiling) or requests/s (single, latency)
    answers: int = 0
    accepted: int = 0
    rejected: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    gateway_cpu: float = 0.0  # share of one core
    client_cpu: float = 0.0
    broker_cpu: float = 0.0
    machine_busy: float = 0.0  # share of all cores
    server_accepted: int = 0  # the gateway's own count over the window
    ack_p50_ms: float | None = None  # the gateway's histogram, bucket upper bounds
    ack_p99_ms: float | None = None
    late_ms: float = 0.0
    errors: list[str] = field(default_factory=list)


class Gateway:
    """A started gateway: where it listens, its pid, its metrics."""

    def __init__(self, process: GatewayProcess, servers: str) -> None:
        assert process.process is not None
        self.broker_pid = listener_pid(int(servers.split(",")[0].rpartition(":")[2]))
        self.url = process.url
        self.host = "127.0.0.1"
        self.port = process.port
        self.pid = process.process.pid

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            return str(answer.read().decode())


ACK = "waxhouse_gateway_ack_seconds"
EVENTS = "waxhouse_gateway_events_total"


def ack_buckets(text: str, path: str) -> dict[float, float]:
    """Cumulative counts of the ack histogram of `path`, by upper bound."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{ACK}_bucket") and f'path="{path}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rpartition(" ")[2])
    return buckets


def quantile_bound(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound holding the `q` quantile of what was observed between two
    scrapes, in ms; None if nothing was."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return bound * 1000.0
    return None


def measure(
    pool: Pool,
    gateway: Gateway,
    load: Load,
    clients: int,
    scenario: str,
    *,
    metrics_path: str | None = None,
) -> Run:
    """Run `load` in `clients` processes (each a share of the connections and of the rate)
    and sample the gateway's, the broker's and the machine's CPU over the measured window."""
    start_at = time.time() + 1.5
    loads = [
        replace(
            load,
            start_at=start_at,
            connections=max(1, load.connections // clients),
            rate=load.rate / clients,
            tag=f"{load.tag}{k}.",
        )
        for k in range(clients)
    ]
    pending = pool.map_async(run_load, loads)
    time.sleep(max(0.0, start_at + load.warmup - time.time()))
    gw0, (busy0, total0) = cpu_of(gateway.pid), machine_cpu()
    broker0 = cpu_of(gateway.broker_pid) if gateway.broker_pid else 0.0
    text0 = gateway.metrics() if metrics_path else ""
    time.sleep(max(0.0, start_at + load.warmup + load.seconds - time.time()))
    gw1, (busy1, total1) = cpu_of(gateway.pid), machine_cpu()
    broker1 = cpu_of(gateway.broker_pid) if gateway.broker_pid else float("nan")
    text1 = gateway.metrics() if metrics_path else ""
    results: list[Result] = pending.get(timeout=load.warmup + load.seconds + 120)
    run = Run(scenario, 0.0)
    for result in results:
        run.answers += result.answers
        run.accepted += result.accepted
        run.rejected += result.rejected
        run.statuses.update(result.statuses)
        run.latencies_ms += result.latencies_ms
        run.client_cpu += result.cpu_s / load.seconds
        run.late_ms = max(run.late_ms, result.late_s * 1000.0)
        run.errors += result.errors
    per_request = scenario in ("single", "latency")
    run.rate = (run.answers if per_request else run.accepted) / load.seconds
    run.gateway_cpu = (gw1 - gw0) / load.seconds
    run.broker_cpu = (broker1 - broker0) / load.seconds
    run.machine_busy = (busy1 - busy0) / max(1e-9, total1 - total0)
    if metrics_path:
        hist0, hist1 = ack_buckets(text0, metrics_path), ack_buckets(text1, metrics_path)
        run.ack_p50_ms = quantile_bound(hist0, hist1, 0.50)
        run.ack_p99_ms = quantile_bound(hist0, hist1, 0.99)
        accepted = [
            sample_total(
                text, "waxhouse_gateway_events_total", path=metrics_path, outcome="accepted"
            )
            for text in (text0, text1)
        ]
        run.server_accepted = int(accepted[1] - accepted[0])
    return run


# --- the ceiling ---------------------------------------------------------------------------


def bare_producer(
    servers: str, topic: str, keyed: list[tuple[bytes, bytes]], n: int
) -> tuple[float, float]:
    """(events/s, CPU share of one core) of the gateway's Kafka client with the gateway's
    producer settings (`GatewayProducer`'s librdkafka configuration) in a bare loop on one
    thread: `n` of the events (ids made unique) produced, each with a delivery callback
    counting its acknowledgement, delivery reports served by `poll(0)` every `POLL_EVERY`
    events (and while the queue is full), then a flush; timed from the first `produce` to
    the end of the flush, after a metadata fetch has connected it."""
    import resource

    from confluent_kafka import KafkaError, Producer

    from waxhouse.gateway.producer import GatewayProducer
    from waxhouse.settings import GatewaySettings

    values = []
    for i in range(n):
        key, value = keyed[i % len(keyed)]
        prefix = b'"event_id":"c%x-' % (i // len(keyed))
        values.append((key, value.replace(b'"event_id":"', prefix, 1)))
    defaults = GatewaySettings()
    settings = GatewayProducer(
        servers,
        {},
        max_inflight_events=defaults.max_inflight_events,
        ack_timeout_s=defaults.ack_timeout_seconds,
    )._config  # its configuration, built without I/O; the gateway's own callbacks left out
    producer = Producer({k: v for k, v in settings.items() if k not in ("logger", "error_cb")})
    producer.list_topics(topic, timeout=30)
    acked = 0

    def count(error: KafkaError | None, _message: object) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    produce, poll = producer.produce, producer.poll
    for i, (key, value) in enumerate(values):
        while True:
            try:
                produce(topic, value, key, on_delivery=count, timestamp=now_ms)
                break
            except BufferError:
                poll(0.001)
        if i % POLL_EVERY == 0:
            poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    if acked != n:
        raise RuntimeError(f"the bare producer had {acked} of {n} events acknowledged")
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return n / elapsed, cpu / elapsed


# --- the profile ---------------------------------------------------------------------------

GROUPS = (
    ("Kafka: produce calls (librdkafka's enqueue)", ("GatewayProducer.send ",)),
    (
        "Kafka: delivery reports (poll, callbacks)",
        ("GatewayProducer.pump ", "GatewayProducer._poll ", "Delivery."),
    ),
    ("Kafka: readiness checks", ("GatewayProducer._check ", "GatewayProducer._watch ")),
    ("JSON decoding (decode_body: orjson)", ("decode_body ", "gunzip ")),
    (
        "validation (each event re-encoded, the flow's batch parser)",
        ("validate (waxhouse/gateway/body.py", "fields.py", "parse_batch"),
    ),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("HTTP and WebSocket (aiohttp)", ("aiohttp/",)),
    ("asyncio: the loop, socket reads and writes", ("asyncio/", "selectors.py")),
    ("the gateway's handler (server.py)", ("gateway/server.py",)),
)


@dataclass(frozen=True)
class Profile:
    shares: list[tuple[str, float]]  # by the innermost frame's group
    threads: list[tuple[str, float]]
    samples: int
    run: Run  # the batched run it was taken during


def profile(gateway: Gateway, seconds: float, raw: Path) -> tuple[Counter[str], Counter[str]]:
    """py-spy samples of the gateway's non-idle threads over `seconds`: counts by the
    group of the innermost frame that has one, and by thread."""
    command = ["py-spy", "record", "--pid", str(gateway.pid), "--format", "raw", "--rate", "100"]
    command += ["--duration", str(int(seconds)), "--nonblocking", "--threads", "-o", str(raw)]
    subprocess.run(command, capture_output=True, check=True)
    groups: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        threads[frames[0].partition("): ")[2] or frames[0]] += int(n)
        found = "other"
        for frame in reversed(frames[1:]):
            hit = next((g for g, marks in GROUPS if any(m in frame for m in marks)), None)
            if hit:
                found = hit
                break
        groups[found] += int(n)
    return groups, threads


# --- one benchmark -------------------------------------------------------------------------


@dataclass
class Round:
    runs: dict[str, Run] = field(default_factory=dict)
    ceiling: float = 0.0
    ceiling_cpu: float = 0.0
    stored: int = 0  # records in the round's topic once its gateway stopped


def topic_records(servers: str, topic: str) -> int:
    """How many records `topic` holds (the sum of its partitions' end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)
        ]
    finally:
        consumer.close()
    return sum(ends)


def loads_for(
    gateway: Gateway, data: Payloads, args: argparse.Namespace, tag: str
) -> dict[str, Load]:
    common = {
        "host": gateway.host,
        "port": gateway.port,
        "token": TOKEN,
        "warmup": args.warmup,
        "seconds": args.seconds,
    }
    return {
        "batched": Load(
            "closed",
            path="/v1/events",
            bodies=data.batches,
            events=data.batch_events,
            connections=16,
            tag=f"{tag}b",
            **common,
        ),
        "single": Load(
            "closed",
            path="/v1/events",
            bodies=data.singles,
            events=[1] * len(data.singles),
            connections=64,
            tag=f"{tag}s",
            **common,
        ),
        "ws": Load(
            "ws",
            path="/v1/events/ws",
            bodies=data.batches,
            events=data.batch_events,
            connections=4,
            in_flight=16,
            tag=f"{tag}w",
            **common,
        ),
    }


def one_round(
    pool: Pool,
    servers: str,
    data: Payloads,
    args: argparse.Namespace,
    number: int,
    log: Callable[[int, Run], None],
) -> Round:
    topic = f"gateway-bench-{uuid.uuid4().hex[:8]}"
    create_topic(servers, topic, PARTITIONS)
    env = {"KAFKA_TOPIC": topic, "GATEWAY_TOKENS": TOKEN}
    done = Round()
    tag = f"r{number}"
    with start_gateway(servers, env=env, flow="clickstream") as process:
        gateway = Gateway(process, servers)
        loads = loads_for(gateway, data, args, tag)
        order = list(loads)
        order = order[number % 3 :] + order[: number % 3]
        for scenario in order:
            path = "/v1/events/ws" if scenario == "ws" else "/v1/events"
            run = measure(pool, gateway, loads[scenario], args.clients, scenario, metrics_path=path)
            done.runs[scenario] = run
            log(number, run)
        rate = 0.5 * done.runs["batched"].rate / BATCH
        latency = replace(loads["batched"], mode="open", rate=rate, connections=64, tag=f"{tag}l")
        run = measure(pool, gateway, latency, args.clients, "latency", metrics_path="/v1/events")
        done.runs["latency"] = run
        log(number, run)
    done.stored = topic_records(servers, topic)
    accepted = sum(r.accepted for r in done.runs.values())
    if done.stored < accepted:
        raise RuntimeError(f"{accepted:,} events acknowledged, {done.stored:,} in {topic}")
    n = max(CEILING_EVENTS, int(done.runs["batched"].rate * args.seconds))
    with multiprocessing.get_context("spawn").Pool(1) as alone:
        done.ceiling, done.ceiling_cpu = alone.apply(bare_producer, (servers, topic, data.keyed, n))
    print(f"round {number}: ceiling {done.ceiling:,.0f} events/s ({done.ceiling_cpu:.0%} CPU)")
    return done


def print_run(number: int, run: Run) -> None:
    unit = "requests/s" if run.scenario in ("single", "latency") else "events/s"
    latency = ""
    if run.latencies_ms:
        q = statistics.quantiles(run.latencies_ms, n=100)
        latency = f" p50 {q[49]:.1f} ms p99 {q[98]:.1f} ms"
    print(
        f"round {number}: {run.scenario:8} {run.rate:10,.0f} {unit}{latency}"
        f"  gateway {run.gateway_cpu:.0%} client {run.client_cpu:.0%} broker"
        f" {run.broker_cpu:.0%} machine"
        f" {run.machine_busy:.0%}  {dict(run.statuses)}"
        + (f" errors {run.errors[:2]}" if run.errors else ""),
        flush=True,
    )


# --- the report ----------------------------------------------------------------------------


def others(rounds: list[Round]) -> float:
    """Cores busy with anything but the gateway, the broker and the load client (median
    over every measured window)."""
    cores = os.cpu_count() or 1
    return median(
        [
            max(0.0, run.machine_busy * cores - run.gateway_cpu - run.client_cpu - run.broker_cpu)
            for r in rounds
            for run in r.runs.values()
        ]
    )


def quantile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(
    rounds: list[Round], spy: dict[str, Profile], command: str, args: argparse.Namespace
) -> str:
    def med(scenario: str) -> float:
        return median([r.runs[scenario].rate for r in rounds])

    def med_q(scenario: str, q: int) -> float:
        return median([quantile(r.runs[scenario].latencies_ms, q) for r in rounds])

    batched, single, ws = med("batched"), med("single"), med("ws")
    ceiling = median([r.ceiling for r in rounds])
    p50, p99 = med_q("latency", 50), med_q("latency", 99)
    ratio = batched / ceiling

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines = [
        "# The ingestion gateway's speed",
        "",
        f"`{command}`",
        "",
        f"Gateway at commit {flow_version()}; {os.cpu_count()} CPUs, the broker, the gateway"
        " (one process) and the load client on the same machine. **The machine was shared**"
        " with other agents' tests: in the measured windows, processes other than the"
        f" gateway, the broker and the load client took a median {others(rounds):.2f} of the"
        f" {os.cpu_count()} cores. Medians of {len(rounds)} rounds; each round a fresh gateway"
        " and topic"
        f" ({PARTITIONS} partitions), one measured window of {args.seconds:g} s per scenario"
        f" after {args.warmup:g} s of warm-up, the scenarios' order rotating; the load client"
        f" in {args.clients} process(es) of its own (`bench.gateway_load`).",
        "",
        "| measure | target | measured (median) | met? |",
        "| --- | ---: | ---: | :---: |",
        f"| batched HTTP, 100 events/request | ≥ 20,000 events/s | {batched:,.0f} events/s |"
        f" {met(batched >= TARGETS['batched'])} |",
        f"| single-event HTTP | ≥ 3,000 requests/s | {single:,.0f} requests/s |"
        f" {met(single >= TARGETS['single'])} |",
        f"| WebSocket, 100-event frames, 16 in flight on each of 4 connections |"
        f" ≥ 30,000 events/s |"
        f" {ws:,.0f} events/s |"
        f" {met(ws >= TARGETS['ws'])} |",
        f"| ack latency at 50% of batched capacity, p50 | | {p50:.1f} ms | |",
        f"| ack latency at 50% of batched capacity, p99 | ≤ 50 ms | {p99:.1f} ms |"
        f" {met(p99 <= TARGETS['p99_ms'])} |",
        f"| ceiling: bare producer loop, same client and settings | | {ceiling:,.0f} events/s | |",
        f"| batched / ceiling | ≥ 50% | {ratio:.0%} | {met(ratio >= TARGETS['ceiling_ratio'])} |",
        "",
        "Every round, side by side:",
        "",
        "| round | batched events/s | single requests/s | WebSocket events/s | ceiling events/s"
        " | latency p50 / p99 ms (at requests/s; the client's worst lag behind its schedule) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, r in enumerate(rounds, 1):
        lat = r.runs["latency"]
        lines.append(
            f"| {k} | {r.runs['batched'].rate:,.0f} | {r.runs['single'].rate:,.0f} |"
            f" {r.runs['ws'].rate:,.0f} | {r.ceiling:,.0f} |"
            f" {quantile(lat.latencies_ms, 50):.1f} / {quantile(lat.latencies_ms, 99):.1f}"
            f" ({lat.rate:,.0f}; {lat.late_ms:.1f} ms) |"
        )
    lines += [
        "",
        "CPU over the measured windows (medians; a share of one core; the machine's busy share"
        " of all its cores, the broker and other agents included), the gateway's own ack"
        " histogram (`waxhouse_gateway_ack_seconds`, bucket bounds), and the answers:",
        "",
        "| scenario | gateway CPU | load client CPU | broker CPU | machine busy |"
        " server ack p50 / p99 | answers by status (all rounds) | accepted / rejected events"
        " (the gateway's own count of accepted) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for scenario in ("batched", "single", "ws", "latency"):
        runs = [r.runs[scenario] for r in rounds]
        statuses: Counter[str] = Counter()
        for run in runs:
            statuses.update(run.statuses)
        p50s = [r.ack_p50_ms for r in runs if r.ack_p50_ms is not None]
        p99s = [r.ack_p99_ms for r in runs if r.ack_p99_ms is not None]
        server = f"≤ {median(p50s):g} / ≤ {median(p99s):g} ms" if p50s and p99s else "n/a"
        lines.append(
            f"| {scenario} | {median([r.gateway_cpu for r in runs]):.0%} |"
            f" {median([r.client_cpu for r in runs]):.0%} |"
            f" {median([r.broker_cpu for r in runs]):.0%} |"
            f" {median([r.machine_busy for r in runs]):.0%} | {server} |"
            f" {', '.join(f'{s}: {n:,}' for s, n in sorted(statuses.items()))} |"
            f" {sum(r.accepted for r in runs):,} / {sum(r.rejected for r in runs):,}"
            f" ({sum(r.server_accepted for r in runs):,}) |"
        )
    lines.append(
        f"| ceiling | | | | | | | {median([r.ceiling_cpu for r in rounds]):.0%} CPU of the"
        " producer process |"
    )
    stored = sum(r.stored for r in rounds)
    acked = sum(run.accepted for r in rounds for run in r.runs.values())
    lines += [
        "",
        f"Acknowledged means stored: the rounds' topics held {stored:,} records once each"
        f" gateway stopped, for {acked:,} events acknowledged inside the measured windows"
        " (the rest were acknowledged during warm-ups and window ends).",
    ]
    if spy:
        on_batched, on_single = spy["batched"], spy["single"]
        lines += [
            "",
            "Where the gateway's time goes: one more batched run and one more single-event run"
            " under `py-spy record --pid --threads` (100 Hz, samples of non-idle threads). Each"
            " sample counts for the group of its innermost frame that has one:",
            "",
            "| part | batched HTTP | single-event HTTP |",
            "| --- | ---: | ---: |",
        ]
        singles = dict(on_single.shares)
        for group, share in on_batched.shares:
            lines.append(f"| {group} | {share:.0%} | {singles.pop(group, 0.0):.0%} |")
        lines += [f"| {group} | 0% | {share:.0%} |" for group, share in singles.items()]
        for name, spied_run in (("batched", on_batched), ("single-event", on_single)):
            run = spied_run.run
            unit = "requests/s" if name == "single-event" else "events/s"
            lines += [
                "",
                f"The {name} run under py-spy: {run.rate:,.0f} {unit}, {spied_run.samples:,}"
                f" samples, gateway {run.gateway_cpu:.0%} of a core, load client"
                f" {run.client_cpu:.0%}, broker {run.broker_cpu:.0%}, machine"
                f" {run.machine_busy:.0%} busy; by thread: "
                + ", ".join(f"{thread} {share:.0%}" for thread, share in spied_run.threads)
                + ".",
            ]
        lines += [
            "",
            "librdkafka's own threads are native: their CPU is in the gateway's CPU, not in"
            " these samples.",
        ]
    lines += ["", "## What bounds it", "", *bound(rounds, spy)]
    lines += ["", "![throughput and latency](gateway.png)"]
    return "\n".join(lines) + "\n"


NAMES = {"batched": "Batched HTTP", "single": "Single-event HTTP", "ws": "WebSocket"}
IN_FLIGHT = {"batched": "16 requests", "single": "64 requests", "ws": "64 frames"}


def bound(rounds: list[Round], spy: dict[str, Profile]) -> list[str]:
    """A reading of each scenario's CPU shares (and profile, if any): what limits it."""
    lines = []
    for scenario, name in NAMES.items():
        runs = [r.runs[scenario] for r in rounds]
        gateway = median([r.gateway_cpu for r in runs])
        client = median([r.client_cpu for r in runs])
        machine = median([r.machine_busy for r in runs])
        broker = median([r.broker_cpu for r in runs])
        parts = ""
        if scenario in spy:
            top = [f"{group} {share:.0%}" for group, share in spy[scenario].shares[:3]]
            parts = f" The largest parts of its samples: {', '.join(top)}."
        if client >= 0.5:
            verdict = f"possibly the load client, at {client:.0%} of a core (run more `--clients`)"
        elif gateway >= 0.85:
            verdict = (
                f"the gateway's CPU: {gateway:.0%} of a core, its one Python thread saturated"
                " (one process, one event loop, the GIL)"
            )
        elif machine >= 0.9:
            verdict = (
                f"the machine: the gateway had {gateway:.0%} of a core while both cores were"
                f" {machine:.0%} busy (the broker {broker:.0%} of a core, the load client"
                f" {client:.0%}, the rest other agents' processes), so it waited for a CPU"
                " more than for Kafka"
            )
        else:
            verdict = (
                f"waiting: the gateway used {gateway:.0%} of a core and the machine was"
                f" {machine:.0%} busy, so the {IN_FLIGHT[scenario]} in flight waited for"
                " Kafka's acknowledgements"
            )
        lines.append(
            f"- {name}: {verdict}. Not the load client ({client:.0%} of a core)." + parts
            if client < 0.5
            else f"- {name}: {verdict}." + parts
        )
    return lines


def chart(rounds: list[Round], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [
        "batched HTTP\n(events/s)",
        "WebSocket\n(events/s)",
        "single-event\n(requests/s)",
        "bare producer\n(events/s)",
    ]
    values = [
        median([r.runs["batched"].rate for r in rounds]),
        median([r.runs["ws"].rate for r in rounds]),
        median([r.runs["single"].rate for r in rounds]),
        median([r.ceiling for r in rounds]),
    ]
    targets = [TARGETS["batched"], TARGETS["ws"], TARGETS["single"], None]
    colors = ["tab:blue", "tab:blue", "tab:blue", "tab:gray"]
    xs = range(len(names))
    bars = left.bar(xs, [v / 1000 for v in values], color=colors)
    left.bar_label(bars, [f"{v:,.0f}" for v in values], padding=2)
    for x, target in zip(xs, targets, strict=True):
        if target is not None:
            left.hlines(target / 1000, x - 0.4, x + 0.4, colors="tab:red", linestyles="--")
    left.hlines(values[-1] * 0.5 / 1000, -0.4, 0.4, colors="tab:gray", linestyles=":")
    left.set_xticks(list(xs), names)
    left.set_ylabel("thousands per second (median)")
    left.set_title("throughput (red: target; dotted: 50% of the ceiling)")
    left.grid(axis="y", alpha=0.3)
    for k, r in enumerate(rounds, 1):
        ms = sorted(r.runs["latency"].latencies_ms)
        if ms:
            right.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=f"round {k}")
    right.axvline(TARGETS["p99_ms"], color="tab:red", linestyle="--", label="p99 target")
    right.axhline(0.99, color="tab:gray", linestyle=":")
    right.set_xscale("log")
    right.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    right.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("ms from due to answered (open loop, 50% of batched capacity)")
    right.set_ylabel("share of requests")
    right.set_title("acknowledgement latency, CDF")
    right.legend(loc="lower right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=1, help="load client processes")
    parser.add_argument("--events", type=int, default=100_000, help="distinct events made")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--py-spy", action="store_true")
    args = parser.parse_args()
    command = f"python -m bench.gateway --rounds {args.rounds} --seconds {args.seconds:g}"
    command += f" --warmup {args.warmup:g} --clients {args.clients}"
    command += " --py-spy" if args.py_spy else ""
    data = payloads(args.events, args.seed)
    rounds = []
    spy: dict[str, Profile] = {}
    with bootstrap() as servers, multiprocessing.get_context("spawn").Pool(args.clients) as pool:
        for number in range(1, args.rounds + 1):
            rounds.append(one_round(pool, servers, data, args, number, print_run))
        if args.py_spy:
            spy = spied(pool, servers, data, args)
    text = report(rounds, spy, command, args)
    REPORT.write_text(text, encoding="utf-8")
    chart(rounds, CHART)
    print(text)


def spied(pool: Pool, servers: str, data: Payloads, args: argparse.Namespace) -> dict[str, Profile]:
    """One more batched run and one more single-event run, each under py-spy."""
    topic = f"gateway-bench-{uuid.uuid4().hex[:8]}"
    create_topic(servers, topic, PARTITIONS)
    env = {"KAFKA_TOPIC": topic, "GATEWAY_TOKENS": TOKEN}
    found = {}
    with start_gateway(servers, env=env, flow="clickstream") as process:
        gateway = Gateway(process, servers)
        loads = loads_for(gateway, data, args, "p")
        for scenario in ("batched", "single"):
            raw = Path(tempfile.mkdtemp(prefix="bench-gateway-spy-")) / f"{scenario}.txt"
            box: dict[str, Run] = {}

            def measured(scenario: str = scenario, box: dict[str, Run] = box) -> None:
                box["run"] = measure(pool, gateway, loads[scenario], args.clients, scenario)

            worker = threading.Thread(target=measured)
            worker.start()
            time.sleep(1.5 + args.warmup)
            groups, threads = profile(gateway, args.seconds, raw)
            worker.join()
            total = sum(groups.values())
            found[scenario] = Profile(
                shares=[(group, n / total) for group, n in groups.most_common()],
                threads=[(thread, n / total) for thread, n in threads.most_common()],
                samples=total,
                run=box["run"],
            )
    return found


if __name__ == "__main__":
    main()
