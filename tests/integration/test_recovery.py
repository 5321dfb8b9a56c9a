"""Crash safety: kill -9 at random moments and mid-flush, downtime, sink outages.

Every run here has recovery on, the way the README runs the flow. Results are compared
with the independent oracle: nothing lost, nothing counted twice, no partial rows.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, run_flow, start_flow
from tests.support.kafka_broker import TopicFactory
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig
from waxhouse.recovery import resume_epoch

pytestmark = pytest.mark.integration

STARTED = "starts at offset"


def kafka_env(bootstrap: str, topic: str, dlq: str, url: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": dlq,
        "CLICKHOUSE_URL": url,
        **extra,
    }


def wait_started(flow: subprocess.Popen[bytes], log: Path, partitions: int, runs: int) -> None:
    """Until the `runs`-th start of the flow has opened all its partitions."""
    deadline = time.monotonic() + 90
    while log.read_text(errors="replace").count(STARTED) < partitions * runs:
        assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the flow did not start"
        time.sleep(0.1)


def kill9(flow: subprocess.Popen[bytes]) -> None:
    flow.send_signal(signal.SIGKILL)
    assert flow.wait(timeout=30) == -signal.SIGKILL


def stored_rows(url: str) -> int:
    """Rows physically stored so far (duplicates from replays included); 0 when a kill
    came before the flow had even created its tables."""
    tables = ("page_stats_data", "user_sessions_data", "dead_letters_data")
    sql = (
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {t:String}"
    )
    if not all(query_rows(url, sql, {"t": t})[0][0] for t in tables):
        return 0
    return sum(query_rows(url, f"SELECT count() FROM {t}")[0][0] for t in tables)  # noqa: S608


@pytest.mark.slow
def test_kill_9_three_times_including_mid_flush_then_exact(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    records = ClickstreamGenerator(GeneratorConfig(seed=seed, events=300_000)).take(300_000)
    topic, dlq = topic_factory(4, prefix="kill"), topic_factory(1, prefix="kill-dlq")
    positions = produce_records(kafka_bootstrap, topic, records)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = kafka_env(kafka_bootstrap, topic, dlq, url)
    args = recovery_args(tmp_path / "recovery")
    progress = []

    # 1 and 3: kill -9 at a random moment of a live run; 2: kill -9 inside a sink flush,
    # the first one of the resumed run that writes more than one table. Run 1 is killed
    # early enough (the flow drains these records in about 5 s) to leave run 2 work to do.
    for run in (1, 2, 3):
        if run == 2:
            flow = start_flow({**env, "FAULT_KILL_MID_FLUSH": "1"}, log, args, faults=True)
            assert flow.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
            assert "SIGKILL in the middle of a sink flush" in log.read_text()
        else:
            flow = start_flow(env, log, args)
            wait_started(flow, log, partitions=4, runs=run)
            time.sleep(rng.uniform(0.2, 2.0))
            kill9(flow)
        progress.append(stored_rows(url))

    done = run_flow({**env, "KAFKA_STOP_AT_END": "true"}, args)
    expected = oracle(records)
    assert_tables_match(read_tables(url, done.stdout), expected, records, positions)
    final = len(expected.page_stats) + len(expected.sessions) + len(expected.dead_letters)
    print(f"kill test seed {seed}: rows stored after each kill {progress}, final {final}")
    assert progress[1] > 0, f"the mid-flush kill left nothing written (seed {seed})"
    assert min(progress) < final, f"every kill came after the work was done (seed {seed})"


def unfinished_snapshots(recovery: Path) -> dict[str, int]:
    """Per step, the snapshots of the resume epoch and later (`resume_epoch`)."""
    epoch = resume_epoch(recovery)
    assert epoch is not None
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        rows = db.execute(
            "SELECT step_id, count() FROM snaps WHERE snap_epoch >= ? GROUP BY step_id", (epoch,)
        )
        return {step.rpartition(".")[2]: n for step, n in rows}


@pytest.mark.slow
def test_kill_9_between_an_epoch_s_snapshots_leaves_no_stale_state_behind(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """A kill after the windows step snapshotted an epoch and before the sink finished it
    leaves snapshots of an epoch that never completed; the next start deletes them, so a
    later resume cannot load a state newer than its source's offsets."""
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    records = ClickstreamGenerator(GeneratorConfig(seed=seed, events=80_000)).take(80_000)
    topic, dlq = topic_factory(4, prefix="stale"), topic_factory(1, prefix="stale-dlq")
    positions = produce_records(kafka_bootstrap, topic, records)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = kafka_env(kafka_bootstrap, topic, dlq, url)
    recovery = tmp_path / "recovery"
    args = recovery_args(recovery)

    flow = start_flow({**env, "FAULT_KILL_IN_SNAPSHOT": "3"}, log, args, faults=True)
    assert flow.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    stale = unfinished_snapshots(recovery)
    assert stale.get("windows", 0) > 0, f"{stale} (seed {seed})"

    flow = start_flow(env, log, args)
    wait_started(flow, log, partitions=4, runs=2)
    assert f"dropped {sum(stale.values())} snapshots" in log.read_text()
    time.sleep(rng.uniform(0.5, 2.0))
    kill9(flow)

    done = run_flow({**env, "KAFKA_STOP_AT_END": "true"}, args)
    assert_tables_match(read_tables(url, done.stdout), oracle(records), records, positions)


def segment_files(recovery: Path) -> set[Path]:
    return {path for path in (recovery / "segments").rglob("*") if path.is_file()}


@pytest.mark.slow
def test_kill_9_with_many_open_sessions_resumes_from_segment_files(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Thousands of open sessions per partition: snapshots keep their sealed segments in
    files under the recovery directory, and a resume after kill -9 reads them back."""
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    config = GeneratorConfig(seed=seed, events=120_000, users=60_000, active_users=30_000)
    records = ClickstreamGenerator(config).take(120_000)
    topic, dlq = topic_factory(4, prefix="segkill"), topic_factory(1, prefix="segkill-dlq")
    positions = produce_records(kafka_bootstrap, topic, records)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = kafka_env(kafka_bootstrap, topic, dlq, url)
    recovery = tmp_path / "recovery"
    args = recovery_args(recovery)
    for run in (1, 2):
        flow = start_flow(env, log, args)
        wait_started(flow, log, partitions=4, runs=run)
        if run == 1:
            # Killed at a random moment after its snapshots wrote files, late enough for
            # one of them to be committed; the second run, at a random moment.
            deadline = time.monotonic() + 60
            while not segment_files(recovery) and flow.poll() is None:
                assert time.monotonic() < deadline, f"no segment file written (seed {seed})"
                time.sleep(0.05)
        time.sleep(rng.uniform(2.5, 4.0))
        kill9(flow)
    assert segment_files(recovery)
    resumed = re.findall(r"starts at offset (\d+) \(resumed\)", log.read_text())
    assert any(int(offset) > 0 for offset in resumed), f"no run resumed (seed {seed})"

    done = run_flow({**env, "KAFKA_STOP_AT_END": "true"}, args)
    assert "resuming from" in done.stderr
    assert_tables_match(read_tables(url, done.stdout), oracle(records), records, positions)


@pytest.mark.slow
def test_downtime_longer_than_a_window_splits_nothing(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    window_ms = 5_000
    topic, dlq = topic_factory(1, prefix="down"), topic_factory(1, prefix="down-dlq")
    start = (int(time.time() * 1000) // window_ms + 1) * window_ms
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

    def send(n: int, offset_ms: int) -> None:
        event = {
            "event_id": f"e{n}",
            "user_id": "u1",
            "type": "page_view",
            "page": "/d",
            "ts": start + offset_ms,
        }
        producer.send(topic, key=b"u1", value=orjson.dumps(event)).get(timeout=30)

    send(1, 1_000)
    send(2, 1_500)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = kafka_env(
        kafka_bootstrap,
        topic,
        dlq,
        url,
        WINDOW_SECONDS="5",
        ALLOWED_LATENESS_SECONDS="5",
        SESSION_GAP_SECONDS="3",
    )
    args = recovery_args(tmp_path / "recovery")
    flow = start_flow(env, log, args)
    wait_started(flow, log, partitions=1, runs=1)
    time.sleep(2.5)  # read and snapshotted; the window needs 8.5 s of quiet to close
    kill9(flow)

    time.sleep(12)  # down for longer than window + lateness
    send(3, 2_000)  # the same window, arriving while the flow is down
    producer.close()

    flow = start_flow(env, log, args)
    wait_started(flow, log, partitions=1, runs=2)
    time.sleep(14)  # quiet long enough for the idle clock to close window and session
    kill9(flow)

    assert query_rows(
        url, "SELECT toUnixTimestamp64Milli(window_start), page, views FROM page_stats"
    ) == [(start, "/d", 3)]
    assert query_rows(url, "SELECT user_id, events FROM user_sessions") == [("u1", 3)]
    assert query_rows(url, "SELECT count() FROM dead_letters") == [(0,)]


@pytest.fixture
def small_input(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> tuple[list, dict[int, str], str, str]:
    records = ClickstreamGenerator(GeneratorConfig(seed=11, events=30_000)).take(30_000)
    topic, dlq = topic_factory(2, prefix="sink"), topic_factory(1, prefix="sink-dlq")
    return records, produce_records(kafka_bootstrap, topic, records), topic, dlq


def test_transient_sink_failures_are_retried_with_backoff(
    kafka_bootstrap: str, small_input: tuple, tmp_path: Path
) -> None:
    records, positions, topic, dlq = small_input
    url = f"chdb://{tmp_path / 'store'}"
    env = kafka_env(kafka_bootstrap, topic, dlq, url, KAFKA_STOP_AT_END="true")
    done = run_flow(
        {**env, "FAULT_INSERT_FAILURES": "4"},
        recovery_args(tmp_path / "recovery"),
        faults=True,
    )
    retries = [line for line in done.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 4, done.stderr[-3000:]
    delays = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in retries]
    ceilings = [0.5, 1.0, 2.0, 4.0]  # exponential, with full jitter below each ceiling
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert_tables_match(read_tables(url), oracle(records), records, positions)


def test_sink_outage_beyond_the_retry_budget_fails_loudly_and_recovery_loses_nothing(
    kafka_bootstrap: str, small_input: tuple, tmp_path: Path
) -> None:
    records, positions, topic, dlq = small_input
    url = f"chdb://{tmp_path / 'store'}"
    env = kafka_env(kafka_bootstrap, topic, dlq, url, KAFKA_STOP_AT_END="true")
    args = recovery_args(tmp_path / "recovery")
    failed = run_flow(
        {
            **env,
            "FAULT_INSERT_FAILURES": "1000000",
            "FAULT_INSERTS_BEFORE_OUTAGE": "3",
            "CLICKHOUSE_RETRY_SECONDS": "3",
        },
        args,
        faults=True,
        check=False,
    )
    assert failed.returncode != 0
    assert "SinkError" in failed.stderr and "failed after" in failed.stderr
    written = stored_rows(url)
    assert written > 0  # the outage began mid-run

    run_flow(env, args)
    assert_tables_match(read_tables(url), oracle(records), records, positions)
