"""The sensors flow beside the clickstream: bounded throughput, and what its state costs.

    python -m bench.sensors [--events 400000] [--repeat 3] [--py-spy]

Throughput: `--events` generated readings (`ReadingsGenerator`, 300 devices, skewed, 1%
malformed, 20% RFC 3339 `ts`) keyed by device into 4 partitions with the registry
(`RegistryGenerator`) in 2, and as many clickstream benchmark events (the generator of
`bench.compare`) in 4 partitions; each drained by its flow, `python -m bytewax.run
dataflows.<flow>` in bounded mode with recovery off into a fresh chDB store, alternated in
`--repeat` rounds. Records/s are the flows' own summaries (readings and registry versions
for the sensors flow); CPU seconds per million records are the command's (`os.wait4`).
With `--py-spy`, one more sensors run under py-spy (not a project dependency) gives the
share of samples per part of the flow.

Memory, in a fresh process each, the state alone (`tracemalloc`, after a full garbage
collection), with the sensors pipeline of `dataflows.sensors`:

- per waiting reading: one partition's state fed 100,000 readings (parsed in the measured
  span: a waiting reading is its parsed event) while the registry has said nothing, so
  every reading waits in the join;
- per open sliding window: the registry read to its end, one partition's state (only
  `device_stats`, 300 s every 60 s) fed one reading from each of 20,000 devices within
  30 s, so each device has 5 open windows and none closes (the devices' names are
  counted: the rows keep them).

Writes `bench/results/sensors.md`.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.common import bootstrap, bounded_env, flow_version, produce, summary_rate
from bench.compare import BENCHMARK_SHAPE
from tests.support.flow import REPO, flow_env
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig
from waxhouse.connectors.sensors_generator import (
    ReadingsGenerator,
    RegistryGenerator,
    SensorsConfig,
)
from waxhouse.records import InputBatch

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "sensors.md"
WAITING = 100_000
WINDOW_DEVICES = 20_000
T0 = 1_767_225_600_000


def fill(servers: str, events: int, seed: int) -> dict[str, str]:
    """The topics of both flows, filled; their names by setting."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "SENSORS_TOPIC": f"readings-{tag}",
        "DEVICES_TOPIC": f"devices-{tag}",
        "SENSORS_DLQ_TOPIC": f"readings-{tag}.dlq",
        "ALERTS_TOPIC": f"alerts-{tag}",
        "KAFKA_TOPIC": f"events-{tag}",
        "KAFKA_DLQ_TOPIC": f"events-{tag}.dlq",
    }
    for setting, partitions in (("SENSORS_TOPIC", 4), ("DEVICES_TOPIC", 2), ("KAFKA_TOPIC", 4)):
        create_topic(servers, names[setting], partitions)
    for setting in ("SENSORS_DLQ_TOPIC", "ALERTS_TOPIC", "KAFKA_DLQ_TOPIC"):
        create_topic(servers, names[setting], 1)
    config = SensorsConfig(seed=seed, events=events)
    # In the order they were made, keyed by device: each partition's in time order.
    produce(servers, names["SENSORS_TOPIC"], ReadingsGenerator(config).take(events))
    produce(servers, names["DEVICES_TOPIC"], RegistryGenerator(config).take(10**9))
    clicks = GeneratorConfig(seed=seed, events=events, **BENCHMARK_SHAPE)
    produce(servers, names["KAFKA_TOPIC"], ClickstreamGenerator(clicks).take(events))
    return names


def drain(flow: str, servers: str, names: dict[str, str]) -> tuple[int, float, float]:
    """(records, records/s, CPU seconds) of one bounded run of `flow`. Its stdout is the
    run summary only (logs go to stderr), so waiting before reading it cannot block."""
    store = Path(tempfile.mkdtemp(prefix=f"bench-{flow}-")) / "store"
    env = {**bounded_env(servers, names["KAFKA_TOPIC"], store), **names}
    child = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", f"dataflows.{flow}"],
        cwd=REPO,
        env=flow_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _, status, usage = os.wait4(child.pid, 0)
    assert child.stdout is not None
    stdout = child.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{flow} failed ({status}):\n{stdout[-3000:]}")
    records, rate = summary_rate(stdout)
    return records, rate, usage.ru_utime + usage.ru_stime


def waiting_bytes() -> float:
    """Bytes per reading waiting in the join (the registry has said nothing)."""
    from dataflows.sensors import declare
    from waxhouse.settings import Settings

    compiled = declare(Settings()).compile(10_000)
    config = SensorsConfig(seed=3, events=WAITING, malformed_ratio=0.0, late_ratio=0.0)
    batches = _batches(ReadingsGenerator(config).take(WAITING))
    gc.collect()
    tracemalloc.start()  # before parsing: the waiting readings are the parsed events
    before = tracemalloc.get_traced_memory()[0]
    parsed = [compiled.schema.parse_batch(b, 10**12)[0] for b in batches]
    state = compiled.partition_state("readings/0", ["devices/0", "devices/1"])
    for events in parsed:
        state.process(events)
    del parsed, batches
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    assert state.join is not None and len(state.join) > 0.9 * WAITING
    return held / len(state.join)


def window_bytes() -> float:
    """Bytes per open (device, window) row of `device_stats`."""
    from dataflows.sensors import declare
    from waxhouse import Pipeline
    from waxhouse.joins import UNBOUNDED, ReferenceUpdate
    from waxhouse.settings import Settings

    full = declare(Settings())
    device_stats = full.tables[0]
    only = Pipeline(
        "sensors_windows", full.schema, key="device_id", join=full.join, tables=[device_stats]
    )
    compiled = only.compile(10_000)
    values = [
        orjson.dumps(
            {"reading_id": f"r{n}", "device_id": f"dev-{n:05d}", "ts": T0 + n, "temperature": 21.5}
        )
        for n in range(WINDOW_DEVICES)
    ]
    batch = InputBatch("readings/0", list(range(len(values))), values, [T0 + 30_000] * len(values))
    gc.collect()
    tracemalloc.start()  # before parsing: the rows keep their devices' names
    before = tracemalloc.get_traced_memory()[0]
    (events, _) = compiled.schema.parse_batch(batch, 10**12)
    state = compiled.partition_state("readings/0", ["devices/0"])
    state.reference(ReferenceUpdate("devices/0", [], UNBOUNDED))
    state.process(events)
    del events, batch, values
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    size, slide = device_stats.window.size_ms, device_stats.window.every_ms
    return held / (WINDOW_DEVICES * (size // slide))


def _batches(records: list[GeneratedRecord], size: int = 500) -> list[InputBatch]:
    return [
        InputBatch(
            "readings/0",
            [r.n for r in records[i : i + size]],
            [r.value for r in records[i : i + size]],
            [r.timestamp_ms for r in records[i : i + size]],
        )
        for i in range(0, len(records), size)
    ]


def in_fresh_process(measure: Callable[[], float]) -> float:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure)


GROUPS = (
    (
        "Kafka: the client, the source, dead letters and alerts produced",
        ("/kafka/", "kafka_reader", "connectors/kafka"),
    ),
    ("parse", ("parse_batch", "fields.py", "Parse.__call__")),
    ("join (waiting, enriching)", ("joins.py",)),
    ("tables", ("engine.py", "<waxhouse table")),
    ("ClickHouse sink", ("clickhouse", "chdb")),
    ("notices", ("views.py", "NoticeEncoder")),
)


def profile(servers: str, names: dict[str, str]) -> list[str]:
    """Shares of py-spy samples of one sensors run by the innermost group they are in."""
    raw = Path(tempfile.mkdtemp()) / "sensors.txt"
    store = Path(tempfile.mkdtemp(prefix="bench-sensors-spy-")) / "store"
    env = {**bounded_env(servers, names["KAFKA_TOPIC"], store), **names}
    command = ["py-spy", "record", "--format", "raw", "--rate", "100", "--nonblocking"]
    command += ["-o", str(raw), "--", sys.executable, "-m", "bytewax.run", "dataflows.sensors"]
    subprocess.run(command, cwd=REPO, env=flow_env(env), capture_output=True, check=True)
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        found = "start-up, Bytewax, the rest"
        for frame in reversed(stack.split(";")):
            hit = next((g for g, marks in GROUPS if any(m in frame for m in marks)), None)
            if hit:
                found = hit
                break
        counts[found] += int(n)
    total = sum(counts.values())
    return [f"| {group} | {100 * n / total:.0f}% |" for group, n in counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--py-spy", action="store_true")
    args = parser.parse_args()
    waiting = in_fresh_process(waiting_bytes)
    window = in_fresh_process(window_bytes)
    print(f"bytes per waiting reading {waiting:.0f}, per open sliding window {window:.0f}")
    runs: dict[str, list[tuple[int, float, float]]] = {"sensors": [], "clickstream": []}
    spy: list[str] = []
    with bootstrap() as servers:
        names = fill(servers, args.events, args.seed)
        for round_ in range(args.repeat):
            order = ("sensors", "clickstream") if round_ % 2 == 0 else ("clickstream", "sensors")
            for flow in order:
                runs[flow].append(drain(flow, servers, names))
                _, rate, cpu = runs[flow][-1]
                print(f"round {round_ + 1}: {flow:12} {rate:9,.0f} records/s  {cpu:6.1f} s CPU")
        if args.py_spy:
            spy = profile(servers, names)
    lines = [
        "# The sensors flow beside the clickstream",
        "",
        f"`python -m bench.sensors --events {args.events} --repeat {args.repeat}"
        + (" --py-spy`" if args.py_spy else "`"),
        "",
        f"Flows at commit {flow_version()}; {os.cpu_count()} CPUs; median of {args.repeat}"
        " alternated bounded runs each, recovery off, kafka-python, into a fresh chDB store.",
        "",
        "| flow | input | records/s | CPU s / M records |",
        "| --- | --- | ---: | ---: |",
    ]
    inputs = {
        "sensors": f"{args.events:,} readings (4 partitions) + the registry (2)",
        "clickstream": f"{args.events:,} benchmark events (4 partitions)",
    }
    for flow, done in runs.items():
        rate = statistics.median(r for _, r, _ in done)
        cpu = statistics.median(c / n * 1e6 for n, _, c in done)
        lines.append(f"| {flow} | {inputs[flow]} | {rate:,.0f} | {cpu:.1f} |")
    lines += [
        "",
        "State, measured alone (`tracemalloc`, fresh process each):",
        "",
        f"- a reading waiting in the join: {waiting:,.0f} bytes ({WAITING:,} waiting);",
        f"- an open sliding window of `device_stats` (one device, one window): {window:,.0f}"
        f" bytes ({WINDOW_DEVICES:,} devices, 5 windows each).",
    ]
    if spy:
        lines += ["", "Where one sensors run's samples are (py-spy, Python threads):", ""]
        lines += ["| part | share |", "| --- | ---: |", *spy]
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
