"""Scaled out: a 2-process cluster and a 2-worker process give exactly the oracle's tables.

The same 60,000 generated records (out of order, ~1% malformed) on a 3-partition topic go
through the flow, bounded, as Bytewax runs it:

- a cluster of two processes on localhost (`-i 0|1 -a "127.0.0.1:P0;127.0.0.1:P1"`): the
  three Kafka partitions split 2 + 1 between them, and only one of them opens the chDB
  store (the ClickHouse sink has a single partition; a second process opening the store
  would fail with chDB error 36). Once more with recovery on, both processes sharing one
  recovery directory or each with its own (a StatefulSet's volume per pod), and again from
  there: the resumed cluster adds nothing; one process alone resumes from the shared
  directory and refuses to resume from one of the per-process ones;
- one process with two workers (`-w 2`): uneven partition counts per worker, the setting
  of upstream bytewax PR #556 (a worker's partitions held back behind another's epochs).
  Every run is bounded and has a deadline, so a stall fails the test;
- embedded mode (the generator, one partition) as a 2-process cluster, against a
  single-process run of the same seed and the oracle.

All three tables are compared row by row with the independent oracle.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.flow import recovery_args, run_flow, start_flow
from tests.support.kafka_broker import LOOPBACK, create_topic
from tests.support.oracle import Expected, oracle
from tests.support.produce import produce_records
from tests.support.tables import Tables, assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

SEED = 23
EVENTS = 60_000
EMBEDDED_EVENTS = 50_000
PARTITIONS = 3
PROCESSES = 2
DEADLINE_S = 300.0  # bounded runs of these sizes take seconds: this long is a stall

OPENING_STORE = "Opening ClickHouse"
PARTITION_START = re.compile(r"partition (\S+) starts at offset (\d+) \((\w+)\), stops at (\d+)")


@dataclass
class Topic:
    name: str
    dlq: str
    positions: dict[int, str]  # record n -> topic/partition/offset


@dataclass(frozen=True)
class PartitionStart:
    part: str
    offset: int
    origin: str  # "earliest" or "resumed"
    stop_at: int


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)


@pytest.fixture(scope="module")
def expected(records: list[GeneratedRecord]) -> Expected:
    return oracle(records)


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str, records: list[GeneratedRecord]) -> Topic:
    suffix = uuid.uuid4().hex[:12]
    name, dlq = f"scale-{suffix}", f"scale-{suffix}.dlq"
    create_topic(kafka_bootstrap, name, PARTITIONS)
    create_topic(kafka_bootstrap, dlq, 1)
    return Topic(name, dlq, produce_records(kafka_bootstrap, name, records))


def kafka_settings(bootstrap: str, topic: Topic, url: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic.name,
        "KAFKA_DLQ_TOPIC": topic.dlq,
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": url,
    }


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now, all different (held together while picked)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tails(outputs: list[str]) -> str:
    return "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outputs))


def run_cluster(
    overrides: dict[str, str],
    log_dir: Path,
    args: Sequence[str] = (),
    process_args: Callable[[int], Sequence[str]] = lambda i: (),
) -> list[str]:
    """Run the flow as a cluster of `PROCESSES` processes on localhost; their outputs.

    Every process gets `args`, and process i also `process_args(i)`. Fails unless every
    process exits 0 before the deadline.
    """
    addresses = ";".join(f"{LOOPBACK}:{port}" for port in free_ports(PROCESSES))
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"process-{i}.log" for i in range(PROCESSES)]
    for log in logs:
        log.unlink(missing_ok=True)
    processes = [
        start_flow(overrides, log, ["-i", str(i), "-a", addresses, *args, *process_args(i)])
        for i, log in enumerate(logs)
    ]
    deadline = time.monotonic() + DEADLINE_S
    try:
        codes = [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [log.read_text(encoding="utf-8", errors="replace") for log in logs]
    if codes is None:
        pytest.fail(f"the cluster was not done after {DEADLINE_S:.0f} s\n{tails(outputs)}")
    assert codes == [0] * PROCESSES, tails(outputs)
    return outputs


def run_single(overrides: dict[str, str], args: Sequence[str]) -> str:
    """Run the flow as one process; its output. Fails unless it exits 0 before the deadline."""
    try:
        done = run_flow(overrides, args, timeout_s=DEADLINE_S, check=False)
    except subprocess.TimeoutExpired as e:
        output = _text(e.stdout) + _text(e.stderr)
        pytest.fail(f"the flow was not done after {DEADLINE_S:.0f} s\n{output[-4000:]}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _text(captured: str | bytes | None) -> str:
    if isinstance(captured, bytes):
        return captured.decode("utf-8", errors="replace")
    return captured or ""


def partition_starts(output: str) -> list[PartitionStart]:
    return [
        PartitionStart(part, int(offset), origin, int(stop_at))
        for part, offset, origin, stop_at in PARTITION_START.findall(output)
    ]


def all_parts(topic: Topic) -> set[str]:
    return {f"{topic.name}/{p}" for p in range(PARTITIONS)}


def test_two_process_cluster_equals_the_oracle(
    kafka_bootstrap: str,
    topic: Topic,
    records: list[GeneratedRecord],
    expected: Expected,
    tmp_path: Path,
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    outputs = run_cluster(kafka_settings(kafka_bootstrap, topic, url), tmp_path / "logs")

    # The partitions split 2 + 1 between the processes: both did real work.
    starts = [partition_starts(out) for out in outputs]
    assert sorted(len(s) for s in starts) == [1, 2], tails(outputs)
    assert {s.part for process in starts for s in process} == all_parts(topic)
    # One process, and only one, opened the store.
    assert sum(out.count(OPENING_STORE) for out in outputs) == 1, tails(outputs)

    tables = read_tables(url)
    assert len(tables.page_stats) > 5_000
    assert_tables_match(tables, expected, records, topic.positions)


@pytest.mark.parametrize("layout", ["one shared directory", "a directory per process"])
def test_two_process_cluster_with_recovery_resumes(
    layout: str,
    kafka_bootstrap: str,
    topic: Topic,
    records: list[GeneratedRecord],
    expected: Expected,
    tmp_path: Path,
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    shared = layout == "one shared directory"
    # A shared directory is processes on one machine; a directory each is a StatefulSet
    # with a recovery volume per pod.
    dirs = [tmp_path / ("recovery" if shared else f"recovery-{i}") for i in range(PROCESSES)]
    settings = kafka_settings(kafka_bootstrap, topic, url)

    def recovery(i: int) -> list[str]:
        return recovery_args(dirs[i])

    first = run_cluster(settings, tmp_path / "first", process_args=recovery)
    # Each process created its own partition (index = process id, count = processes), at
    # the same moment as the other, in the same or its own directory.
    for i, out in enumerate(first):
        assert f"recovery: created partition {i} of {PROCESSES}" in out, tails(first)
    held = [sorted(p.name for p in d.glob("part-*.sqlite3")) for d in dirs]
    if shared:
        assert held == [["part-0.sqlite3", "part-1.sqlite3"]] * PROCESSES
    else:
        assert held == [[f"part-{i}.sqlite3"] for i in range(PROCESSES)]
    assert sum(out.count(OPENING_STORE) for out in first) == 1
    assert_tables_match(read_tables(url), expected, records, topic.positions)

    # The same cluster again: every partition resumes at the end it reached, and the
    # replayed state changes no row.
    again = run_cluster(settings, tmp_path / "again", process_args=recovery)
    assert all("recovery: resuming from" in out for out in again), tails(again)
    resumed = [s for out in again for s in partition_starts(out)]
    assert {s.part for s in resumed} == all_parts(topic), tails(again)
    assert all(s.origin == "resumed" and s.offset == s.stop_at > 0 for s in resumed), resumed
    assert sum(out.count(OPENING_STORE) for out in again) == 1
    assert_tables_match(read_tables(url), expected, records, topic.positions)

    alone = run_flow(settings, recovery_args(dirs[0]), timeout_s=DEADLINE_S, check=False)
    output = alone.stdout + alone.stderr
    if shared:
        # Resized to one process: it reaches both partitions, and resumes from them.
        assert alone.returncode == 0, output[-4000:]
        assert "resuming from" in output and "created partition" not in output
        resumed = partition_starts(output)
        assert {s.part for s in resumed} == all_parts(topic), output[-4000:]
        assert all(s.origin == "resumed" and s.offset == s.stop_at for s in resumed)
    else:
        # Resized to one process that sees only its own volume: Bytewax refuses to resume
        # without partition 1 instead of starting over and double counting.
        assert alone.returncode != 0
        assert "Missing recovery partitions" in output, output[-4000:]
    assert_tables_match(read_tables(url), expected, records, topic.positions)


def test_two_workers_over_uneven_partitions_equal_the_oracle(
    kafka_bootstrap: str,
    topic: Topic,
    records: list[GeneratedRecord],
    expected: Expected,
    tmp_path: Path,
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    # 3 partitions over 2 workers: one reads two, the other one. 1 s epochs (without recovery
    # the default is 10 s, longer than this whole run), so the partitions cross several
    # epoch boundaries, where one worker's partitions wait for the other's (PR #556).
    output = run_single(kafka_settings(kafka_bootstrap, topic, url), ["-w", "2", "-s", "1"])

    assert {s.part for s in partition_starts(output)} == all_parts(topic)
    assert output.count(OPENING_STORE) == 1
    assert_tables_match(read_tables(url), expected, records, topic.positions)


def test_embedded_cluster_equals_a_single_process_and_the_oracle(tmp_path: Path) -> None:
    generator = {"GENERATOR_SEED": str(SEED), "GENERATOR_EVENTS": str(EMBEDDED_EVENTS)}
    single_url = f"chdb://{tmp_path / 'single'}"
    cluster_url = f"chdb://{tmp_path / 'cluster'}"

    run_single({**generator, "CLICKHOUSE_URL": single_url}, [])
    outputs = run_cluster({**generator, "CLICKHOUSE_URL": cluster_url}, tmp_path / "logs")
    assert sum(out.count(OPENING_STORE) for out in outputs) == 1, tails(outputs)

    single: Tables = read_tables(single_url)
    cluster: Tables = read_tables(cluster_url)
    assert len(cluster.page_stats) > 5_000
    assert cluster.page_stats == single.page_stats
    assert cluster.sessions == single.sessions
    assert cluster.dead_letters == single.dead_letters

    generated = ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EMBEDDED_EVENTS)).take(
        EMBEDDED_EVENTS
    )
    names = {r.n: f"generator/{r.n}" for r in generated}
    assert_tables_match(cluster, oracle(generated), generated, names)
