"""Where the flow's time goes on the realistic input, with the default client (kafka-python).

    python -m bench.profile_realistic [--events 400000] [--repeat 3] [--py-spy-runs 3]

Fills a 4-partition topic with `bench.realistic` records, then, in `--repeat` rounds with
the stages alternated, runs each of these as its own process and takes its CPU seconds
(`getrusage` of the timed part, every thread of the process) and wall seconds:

- `flow`: the whole flow, `python -m bytewax.run dataflows.clickstream` in bounded mode into
  a fresh chDB store, as `bench.compare` runs it (CPU and wall of the whole command);
- `flow_small`: the same on a topic of the first 1,000 of those records: start-up, opening
  the store, the summary and shutdown, the fixed cost every run pays (an empty topic would
  not open the store);
- `consume_one`: one kafka-python consumer, with the flow's consumer settings, assigned
  every partition, blocking polls: the client's own cost (record decoding, I/O thread);
- `consume_each`: one such consumer per partition, each polled in turn without waiting
  and a 5 ms pause when none had records, as the flow's source is driven;
- `source`: the flow's `KafkaSource` partitions driven the same way (adds its offsets,
  fetch answers and metrics);
- `parse`, `windows`, `sink`: over the same records held in memory, batched as the source
  delivered them, with the flow's own pipeline (`dataflows.clickstream.declare`): the
  schema's `parse_batch` (also on a copy of the records with every RFC 3339 `ts` written
  as epoch ms, for what the strings cost), then each partition's `PartitionState` (every
  table), then the `ClickHouseSink` partition (its client thread and chDB's own threads
  included) writing the rows into a fresh chDB store.

Every stage process tunes the garbage collector as the flow does
(`waxhouse.runtime.tune_garbage_collector`).

The shares: (a) kafka-python = `consume_one`; (b) one consumer per partition =
`consume_each` - `consume_one`, and the source around them = `source` - `consume_each`;
(c) parse; (d) windows; (e) sink; (f) start-up and shutdown (`flow_small`) and the rest.
Stages measured apart do not add up to the flow exactly (each pays its own cache misses and
GIL hand-offs; the table shows their sum), so `--py-spy-runs` also samples the flow under
py-spy (`pip install py-spy`; not a project dependency) and sorts its samples into the
same groups by the code they are in, per thread: the in-situ shares, and (f)'s rest
(Bytewax, the steps' glue, metrics, dead letters to Kafka). py-spy sees Python threads
only, so chDB's own threads are missing from (e) there.

Writes the measured sections of `bench/results/profile-realistic.md` (between the
`measured` markers; the text around them is kept) and prints them.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from bench.common import bootstrap, flow_version, produce, summary_rate
from bench.realistic import RealisticConfig, RealisticGenerator
from tests.support.flow import REPO, flow_command, flow_env
from tests.support.kafka_broker import create_topic
from waxhouse.connectors import kafka as flow_kafka
from waxhouse.fields import InvalidField, parse_timestamp
from waxhouse.records import InputBatch

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "profile-realistic.md"
BEGIN, END = "<!-- measured: begin -->", "<!-- measured: end -->"
PARTITIONS = 4
IDLE_PAUSE_S = 0.005  # the source's FETCH_WAIT: how soon Bytewax asks a partition again
SMALL = 1_000  # records in the topic of `flow_small`
STAGES = ("flow", "flow_small", "consume_one", "consume_each", "source", "in_memory")
PY_SPY_RATE = 200
# The flow's defaults (WINDOW_SECONDS, SESSION_GAP_SECONDS, ALLOWED_LATENESS_SECONDS).
WINDOW_SECONDS, SESSION_GAP_SECONDS, LATENESS_MS = 60, 1_800, 10_000


# --- the stages, each run in its own process -----------------------------------------------


class Clock:
    """CPU seconds (every thread of this process) and wall seconds of a timed part."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Clock:
        self._cpu, self._wall = _cpu_now(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += _cpu_now() - self._cpu
        self.wall += time.perf_counter() - self._wall


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _consumer(servers: str) -> KafkaConsumer:
    """A kafka-python consumer with the flow's settings (read committed, fetch sizes)."""
    return flow_kafka._consumer(servers, {})


def _ends(consumer: KafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    return consumer.end_offsets(partitions)


def consume_one(servers: str, topic: str) -> dict[str, float]:
    consumer = _consumer(servers)
    ends = _ends(consumer, topic)
    consumer.assign(list(ends))
    consumer.seek_to_beginning(*ends)
    left = {tp for tp, end in ends.items() if end > 0}
    records = 0
    with Clock() as clock:
        while left:
            for tp, batch in consumer.poll(timeout_ms=500, max_records=10_000).items():
                records += len(batch)
                if batch[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
    consumer.close()
    return {"records": records, "cpu": clock.cpu, "wall": clock.wall}


def consume_each(servers: str, topic: str) -> dict[str, float]:
    first = _consumer(servers)
    ends = _ends(first, topic)
    first.close()
    consumers = {}
    for tp in ends:
        consumers[tp] = _consumer(servers)
        consumers[tp].assign([tp])
        consumers[tp].seek_to_beginning(tp)
    left = {tp for tp, end in ends.items() if end > 0}
    records = 0
    with Clock() as clock:
        while left:
            got = 0
            for tp in list(left):
                batch = consumers[tp].poll(timeout_ms=0, max_records=10_000).get(tp)
                if batch:
                    got += len(batch)
                    if batch[-1].offset + 1 >= ends[tp]:
                        left.discard(tp)
            records += got
            if not got:
                time.sleep(IDLE_PAUSE_S)
    for consumer in consumers.values():
        consumer.close()
    return {"records": records, "cpu": clock.cpu, "wall": clock.wall}


def source_batches(servers: str, topic: str, clock: Clock) -> Iterator[InputBatch]:
    """The flow's `KafkaSource` (kafka-python, bounded), its partitions driven as Bytewax
    does with one worker: each asked in turn, a pause when none had anything. Yields its
    batches of records; `clock` times only the source's own work."""
    source = flow_kafka.KafkaSource(servers, topic, stop_at_end=True)
    parts = [source.build_part("input", part, None) for part in source.list_parts()]
    while parts:
        got: list[InputBatch] = []
        with clock:
            for part in list(parts):
                try:
                    got += [b for _, b in part.next_batch() if isinstance(b, InputBatch)]
                except StopIteration:
                    part.close()
                    parts.remove(part)
        yield from got
        if not got and parts:
            time.sleep(IDLE_PAUSE_S)


def source(servers: str, topic: str) -> dict[str, float]:
    clock = Clock()
    records = sum(len(item) for item in source_batches(servers, topic, clock))
    return {"records": records, "cpu": clock.cpu, "wall": clock.wall}


def in_memory(servers: str, topic: str) -> dict[str, float]:
    """Parse, windows and sink, each timed on its own over the records the source read,
    with the clickstream flow's own pipeline (run from the repository root)."""
    from dataflows.clickstream import declare
    from waxhouse.connectors.clickhouse import ClickHouseSink
    from waxhouse.dataflow import table_specs
    from waxhouse.engine import PartitionState
    from waxhouse.rows import RowBatch

    compiled = declare(WINDOW_SECONDS, SESSION_GAP_SECONDS).compile(LATENESS_MS)
    schema = compiled.schema
    batches = list(source_batches(servers, topic, Clock()))
    records = sum(len(b) for b in batches)
    integer_ts = [_with_integer_ts(b) for b in batches]
    parse, parse_int, windows, sink, closing = Clock(), Clock(), Clock(), Clock(), Clock()
    for _ in range(2):  # the same records with and without RFC 3339 `ts`, alternated
        with parse:
            parsed = [(b.part, *schema.parse_batch(b)) for b in batches]
        with parse_int:
            [schema.parse_batch(b) for b in integer_ts]
    state: dict[str, PartitionState] = {}
    out: list[RowBatch] = []
    with windows:
        for part, events, dead in parsed:
            if part not in state:
                state[part] = compiled.partition_state(part)
            rows = RowBatch(dead_letters=list(dead))
            rows.extend(state[part].process(events))
            out.append(rows)
        out += [partition.flush() for partition in state.values()]
    rows_written = sum(len(rows) for rows in out)
    with tempfile.TemporaryDirectory() as store:
        sink_config = ClickHouseSink(
            f"chdb://{store}/db", tables=table_specs(compiled), statements=compiled.statements()
        )
        partition = sink_config.build_part("clickhouse", "clickhouse", None)
        with sink:
            for rows in out:
                partition.write_batch([rows])
            partition.snapshot()  # returns once every row is stored
        with closing:
            partition.close()
    return {
        "records": records,
        "rows": rows_written,
        "parse_cpu": parse.cpu / 2,
        "parse_wall": parse.wall / 2,
        "parse_int_ts_cpu": parse_int.cpu / 2,
        "parse_int_ts_wall": parse_int.wall / 2,
        "windows_cpu": windows.cpu,
        "windows_wall": windows.wall,
        "sink_cpu": sink.cpu,
        "sink_wall": sink.wall,
        "sink_close_cpu": closing.cpu,
        "sink_close_wall": closing.wall,
    }


def _with_integer_ts(batch: InputBatch) -> InputBatch:
    """`batch` with every valid RFC 3339 `ts` of a JSON object rewritten as epoch ms."""
    values: list[bytes | None] = []
    for value in batch.values:
        try:
            event = orjson.loads(value or b"")
            event["ts"] = parse_timestamp(event["ts"]) if type(event["ts"]) is str else None
        except (orjson.JSONDecodeError, TypeError, KeyError, InvalidField):
            event = None
        values.append(value if event is None or event["ts"] is None else orjson.dumps(event))
    return InputBatch(batch.part, batch.offsets, values, batch.timestamps_ms)


def _flow_env(servers: str, topic: str, store: Path) -> dict[str, str]:
    return flow_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": f"chdb://{store}",
        }
    )


def run_flow(servers: str, topic: str, prefix: list[str] | None = None) -> dict[str, float]:
    """The flow as one command (optionally under `prefix`, e.g. py-spy): its records, drain
    seconds (its own summary), whole-command seconds and CPU seconds (`os.wait4`)."""
    with tempfile.TemporaryDirectory() as scratch:
        env = _flow_env(servers, topic, Path(scratch) / "store")
        log = Path(scratch) / "out.txt"
        started = time.monotonic()
        with log.open("wb") as out:
            child = subprocess.Popen(
                [*(prefix or []), *flow_command()],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        text = log.read_text(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"the flow failed:\n{text[-3000:]}")
        records, rate = summary_rate(text)
    return {
        "records": records,
        "drain": records / rate if rate else 0.0,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def run_stage(stage: str, servers: str, topic: str, small_topic: str) -> dict[str, float]:
    """One stage in a fresh interpreter (the flow ones as the flow's own command)."""
    if stage == "flow":
        return run_flow(servers, topic)
    if stage == "flow_small":
        return run_flow(servers, small_topic)
    command = [sys.executable, "-m", "bench.profile_realistic", "--stage", stage]
    command += ["--bootstrap", servers, "--topic", topic]
    done = subprocess.run(command, cwd=REPO, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{done.stderr.decode()[-3000:]}")
    return orjson.loads(done.stdout.splitlines()[-1])


STAGE_FUNCTIONS: dict[str, Callable[[str, str], dict[str, float]]] = {
    "consume_one": consume_one,
    "consume_each": consume_each,
    "source": source,
    "in_memory": in_memory,
}


# --- py-spy: the flow's samples sorted into groups -------------------------------------------

STARTUP = "f: start-up (imports)"
ENGINE = "f: Bytewax"
OTHER = "f: other"
# (group, substrings of a frame: its function or its file), checked from the innermost
# frame outwards; the first frame that matches decides. Imports anywhere in the stack count
# as start-up; a sample of the worker thread with no Python frame at all is Bytewax's
# engine (Rust) at work.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a: kafka-python record decoding", ("/kafka/record/", "PartitionRecords.")),
    ("f: dead letters to Kafka", ("/kafka/producer/", "_DeadLetterPartition")),
    ("a: kafka-python fetcher, protocol, network", ("/kafka/",)),
    ("b: our source partitions", ("/connectors/kafka_reader.py", "/connectors/kafka.py")),
    ("c: parse", ("<waxhouse schema ", "/waxhouse/fields.py")),
    ("d: windows", ("<waxhouse table ", "/waxhouse/engine.py")),
    (
        "e: ClickHouse sink",
        ("/clickhouse_connect/", "/chdb", "/connectors/clickhouse", "/waxhouse/report.py"),
    ),
    ("f: metrics", ("/prometheus_client/", "/connectors/metrics.py")),
    ("f: steps' glue", ("/waxhouse/dataflow.py", "/waxhouse/rows.py")),
    (ENGINE, ("/bytewax/",)),
)


def group_of(frames: list[str]) -> str:
    if not frames:
        return ENGINE
    if any(frame.startswith("_find_and_load ") for frame in frames):
        return STARTUP
    for frame in reversed(frames):
        for group, needles in GROUPS:
            if any(needle in frame for needle in needles):
                return group
    return OTHER


def thread_of(name: str) -> str:
    """Thread groups: the worker, kafka-python's I/O threads, the sink's, the rest."""
    if name == "MainThread":
        return "worker (main)"
    if name.startswith("kafka-io"):
        return "kafka-python I/O threads"
    if name.startswith("clickhouse"):
        return "ClickHouse sink thread"
    return "other threads"


Sample = tuple[str, str, str]  # (thread group, group, innermost function)


def py_spy_samples(path: Path) -> Counter[Sample]:
    """Samples per (thread group, group, innermost function) from py-spy's raw output
    (`--threads`)."""
    counts: Counter[Sample] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] if ": " in frames[0] else ""
        group = group_of(frames[1:])
        if not frames[1:] and thread != "MainThread":
            group = OTHER  # a helper thread in native code (e.g. chDB)
        counts[thread_of(thread), group, _function(frames[-1]) if frames[1:] else "-"] += int(n)
    return counts


def _function(frame: str) -> str:
    """`name (/path/to/file.py:line)` as `name (file.py)`: paths from site-packages or the
    repository, the standard library's by file name, generated code without its address."""
    name, _, where = frame.partition(" (")
    path = where.rpartition(":")[0] or where.rstrip(")")
    if "/site-packages/" in path:
        path = path.rpartition("/site-packages/")[2]
    elif path.startswith(f"{REPO}/"):
        path = path.removeprefix(f"{REPO}/")
    elif path.startswith("/"):
        path = path.rpartition("/")[2]
    if " at 0x" in path:  # "<waxhouse schema Event at 0x7f...>"
        path = path.partition(" at 0x")[0] + ">"
    return f"{name} ({path})"


def run_py_spy(servers: str, topic: str, out: Path) -> tuple[dict[str, float], Counter[Sample]]:
    prefix = ["py-spy", "record", "--rate", str(PY_SPY_RATE), "--nonblocking", "--threads"]
    prefix += ["--full-filenames", "--format", "raw", "--output", str(out), "--"]
    done = run_flow(servers, topic, prefix)
    return done, py_spy_samples(out)


# --- the report ------------------------------------------------------------------------------


def per_million(seconds: float, records: float) -> float:
    return seconds / records * 1e6


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    """The median over rounds of `key` seconds per million records."""
    return statistics.median(per_million(r[key], r["records"]) for r in rounds)


Spied = list[tuple[dict[str, float], Counter[Sample]]]


def spy_share(
    runs: Spied, thread: str | None = None, groups: Callable[[str], bool] | None = None
) -> float:
    """The median over the py-spy runs of the share of samples in `thread` (a thread
    group; None: any) whose group `groups` accepts (None: any)."""
    return statistics.median(
        sum(
            n
            for (in_thread, group, _), n in counts.items()
            if (thread is None or in_thread == thread) and (groups is None or groups(group))
        )
        / sum(counts.values())
        for _, counts in runs
    )


def _starts(prefix: str) -> Callable[[str], bool]:
    return lambda group: group.startswith(prefix)


def _is(name: str) -> Callable[[str], bool]:
    return lambda group: group == name


def stage_lines(
    rounds: Mapping[str, list[dict[str, float]]],
    records: int,
    spied: Spied,
) -> list[str]:
    """(a) to (f): CPU per million records of each stage measured apart, its share of the
    flow's CPU, and the share of the flow's py-spy samples in the same code."""
    flow_cpu = median_of(rounds["flow"], "cpu")
    fixed = per_million(statistics.median(r["cpu"] for r in rounds["flow_small"]), records)
    one = median_of(rounds["consume_one"], "cpu")
    each = median_of(rounds["consume_each"], "cpu")
    src = median_of(rounds["source"], "cpu")
    mem = rounds["in_memory"]
    parse, windows, sink = (median_of(mem, f"{s}_cpu") for s in ("parse", "windows", "sink"))

    def sampled(groups: Callable[[str], bool]) -> str:
        return f"{spy_share(spied, groups=groups):.0%}" if spied else "-"

    rows: list[tuple[str, float, Callable[[str], bool] | None]] = [
        ("(a) kafka-python: decoding, fetcher, I/O thread (`consume_one`)", one, _starts("a:")),
        ("(b) one consumer per partition (`consume_each` - `consume_one`)", each - one, None),
        (
            "(b) our source partitions around them (`source` - `consume_each`)",
            src - each,
            _starts("b:"),
        ),
        ("(c) parse (the schema's `parse_batch`)", parse, _starts("c:")),
        ("(d) windows (`PartitionState`: every table)", windows, _starts("d:")),
        ("(e) ClickHouse sink (its thread and chDB's native ones)", sink, _starts("e:")),
        ("(f) start-up and shutdown (`flow_small`; py-spy: imports)", fixed, _is(STARTUP)),
    ]
    lines = [
        "| stage | CPU s per M records, measured apart | share of the flow's CPU |"
        " share of the flow's py-spy samples |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, cpu, groups in rows:
        spied_share = "-" if groups is None else sampled(groups)
        lines.append(f"| {name} | {cpu:.2f} | {cpu / flow_cpu:.0%} | {spied_share} |")
    apart = one + (each - one) + (src - each) + parse + windows + sink + fixed
    rest = sampled(lambda group: group.startswith("f:") and group != STARTUP)
    lines += [
        f"| (f) Bytewax, steps' glue, metrics, dead letters to Kafka | - | - | {rest} |",
        f"| sum of the stages measured apart | {apart:.2f} | {apart / flow_cpu:.0%} | - |",
        f"| **the flow, whole command** | **{flow_cpu:.2f}** | 100% | 100% |",
    ]
    return lines


def raw_lines(rounds: Mapping[str, list[dict[str, float]]]) -> list[str]:
    lines = [
        "| stage | records | CPU s per M records, per round | median | records/s (wall), median |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    keys = {
        "flow": [("flow", "cpu", "wall")],
        "flow_small": [("flow_small", "cpu", "wall")],
        "consume_one": [("consume_one", "cpu", "wall")],
        "consume_each": [("consume_each", "cpu", "wall")],
        "source": [("source", "cpu", "wall")],
        "in_memory": [
            ("parse", "parse_cpu", "parse_wall"),
            ("parse, every `ts` an integer", "parse_int_ts_cpu", "parse_int_ts_wall"),
            ("windows", "windows_cpu", "windows_wall"),
            ("sink", "sink_cpu", "sink_wall"),
            ("sink close", "sink_close_cpu", "sink_close_wall"),
        ],
    }
    for stage, done in rounds.items():
        for name, cpu, wall in keys[stage]:
            records = done[0]["records"]
            if stage == "flow_small":
                cells = ", ".join(f"{r[cpu]:.2f} s" for r in done)
                seconds = statistics.median(r[cpu] for r in done)
                lines.append(f"| {name} | {records:,.0f} | {cells} (CPU s) | {seconds:.2f} s | - |")
                continue
            cells = ", ".join(f"{per_million(r[cpu], r['records']):.2f}" for r in done)
            speed = statistics.median(r["records"] / r[wall] for r in done)
            median = median_of(done, cpu)
            lines.append(f"| {name} | {records:,.0f} | {cells} | {median:.2f} | {speed:,.0f} |")
    flow = rounds["flow"]
    drain = statistics.median(r["records"] / r["drain"] for r in flow)
    lines += [
        "",
        f"The flow's own drain rate (its summary): {drain:,.0f} records/s; whole command"
        f" (start to exit): {statistics.median(r['records'] / r['wall'] for r in flow):,.0f}"
        f" records/s; start-up and shutdown alone (`flow_small`):"
        f" {statistics.median(r['wall'] for r in rounds['flow_small']):.1f} s wall.",
    ]
    return lines


def py_spy_lines(runs: Spied, top: int = 15) -> list[str]:
    if not runs:
        return []
    groups = sorted({g for _, counts in runs for _, g, _ in counts})
    threads = sorted({t for _, counts in runs for t, _, _ in counts})
    total = [sum(counts.values()) for _, counts in runs]

    lines = [
        f"Samples of active threads at {PY_SPY_RATE} Hz, median share over {len(runs)} run(s)"
        f" ({', '.join(f'{n:,}' for n in total)} samples); each sample goes to the group of"
        " the innermost frame that has one, or to start-up when an import is on the stack.",
        "",
        "| group | " + " | ".join(threads) + " | all threads |",
        "| --- |" + " ---: |" * (len(threads) + 1),
    ]
    for group in groups:
        cells = [f"{spy_share(runs, thread, _is(group)):.1%}" for thread in threads]
        overall = spy_share(runs, groups=_is(group))
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {overall:.1%} |")
    cells = [f"{spy_share(runs, thread):.1%}" for thread in threads]
    lines.append("| **all groups** | " + " | ".join(cells) + " | 100% |")
    seconds = [done["wall"] for done, _ in runs]
    lines += [
        "",
        "Under py-spy the flow took " + ", ".join(f"{s:.1f} s" for s in seconds) + " (wall).",
        "",
        f"The {top} innermost functions with the most samples (their own time, every run"
        " together; `-`: a thread with no Python frame):",
        "",
        "| function | group | share of samples |",
        "| --- | --- | ---: |",
    ]
    pooled: Counter[tuple[str, str]] = Counter()
    for _, counts in runs:
        for (_, group, function), n in counts.items():
            pooled[function, group] += n
    for (function, group), n in pooled.most_common(top):
        lines.append(f"| `{function}` | {group} | {n / sum(total):.1%} |")
    return lines


def write_report(lines: list[str]) -> None:
    """The measured sections between the markers; the text around them stays."""
    measured = "\n".join([BEGIN, *lines, END])
    if REPORT.exists() and BEGIN in (text := REPORT.read_text()) and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        REPORT.write_text(head + measured + tail)
    else:
        REPORT.write_text(f"# Where the time goes: realistic input, kafka-python\n\n{measured}\n")


def produce_topic(servers: str, topic: str, config: RealisticConfig, limit: int = 0) -> int:
    """In a child process, so this one (and every stage forked from it) stays small. With
    `limit`, only the first `limit` records."""
    records = iter(RealisticGenerator(config))
    return produce(servers, topic, itertools.islice(records, limit) if limit else records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--py-spy-runs", type=int, default=3, help="0: no py-spy")
    parser.add_argument("--stage", choices=sorted(STAGE_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # a child: one stage, its numbers as the last line of stdout
        from waxhouse.runtime import tune_garbage_collector

        tune_garbage_collector()  # as the flow does: its collector settings
        print(orjson.dumps(STAGE_FUNCTIONS[args.stage](args.bootstrap, args.topic)).decode())
        return

    config = RealisticConfig(seed=args.seed, events=args.events)
    rounds: dict[str, list[dict[str, float]]] = {stage: [] for stage in STAGES}
    spied: Spied = []
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        topic, small = (f"profile-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("full", "small"))
        for name in (topic, small):
            create_topic(servers, name, PARTITIONS)
            create_topic(servers, f"{name}.dlq", 1)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            produced = pool.apply(produce_topic, (servers, topic, config))
            pool.apply(produce_topic, (servers, small, config, SMALL))
        print(f"produced {produced:,} realistic records to {topic}", flush=True)
        for i in range(args.repeat):
            for stage in STAGES:
                done = run_stage(stage, servers, topic, small)
                rounds[stage].append(done)
                print(f"round {i + 1}: {stage:<13} {orjson.dumps(done).decode()}", flush=True)
        for i in range(args.py_spy_runs):
            spied.append(run_py_spy(servers, topic, Path(scratch) / f"py-spy-{i}.txt"))
            print(f"py-spy run {i + 1}: {spied[-1][0]}", flush=True)

    options = {"--events": args.events, "--repeat": args.repeat, "--py-spy-runs": args.py_spy_runs}
    command = "python -m bench.profile_realistic " + shlex.join(
        [part for option, value in options.items() for part in (option, str(value))]
    )
    lines = [
        f"`{command}` (flow at commit {flow_version()}, {os.cpu_count()} CPUs; stages"
        f" alternated, {args.repeat} rounds, medians)",
        "",
        "### Shares of the flow's CPU, from the stages measured apart",
        "",
        *stage_lines(rounds, produced, spied),
        "",
        "### Every stage, every round",
        "",
        *raw_lines(rounds),
        "",
    ]
    if spied:
        lines += ["### py-spy: the flow's samples by group and thread", "", *py_spy_lines(spied)]
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    write_report(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
