"""`waxhouse autoscale` against a live flow and the real broker."""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.integration.test_recovery import kafka_env
from tests.support.autoscaling import Phase, free_run, ramp
from tests.support.flow import REPO, flow_env, run_flow, start_flow
from tests.support.kafka_broker import TopicFactory
from tests.support.oracle import oracle
from tests.support.scrape import free_port, scrape
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.autoscale.local import LocalCluster
from waxhouse.autoscale.model import Controller, Policy
from waxhouse.autoscale.run import HEADER, Autoscaler
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

RATE = 1_000  # records per second


def steady(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """Produce generated records at `RATE` until `stop` (at most 90 s)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    records = iter(ClickstreamGenerator(GeneratorConfig(seed=7, events=90 * RATE)).take(90 * RATE))
    began = time.monotonic()
    sent = 0
    try:
        while not stop.is_set() and time.monotonic() - began < 90:
            due = int((time.monotonic() - began) * RATE)
            for record in (next(records) for _ in range(due - sent)):
                producer.send(topic, key=record.key, value=record.value)
            sent = due
            time.sleep(0.01)
    finally:
        producer.close()


def test_a_dry_run_recommends_from_a_live_flow_s_metrics(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """The flow is fed 1,000 records/s; the autoscaler, told a process sustains 300/s (a
    flow with nothing waiting measures no capacity of its own), reads that rate from the
    flow's metrics and recommends the most processes the 4 partitions allow, without acting."""
    topic, dlq = topic_factory(4, prefix="scale"), topic_factory(1, prefix="scale-dlq")
    port = free_port()
    env = kafka_env(kafka_bootstrap, topic, dlq, f"chdb://{tmp_path / 'store'}")
    env |= {
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
    }
    flow = start_flow(env, tmp_path / "flow.log")
    stop = threading.Event()
    producer = threading.Thread(target=steady, args=(kafka_bootstrap, topic, stop), daemon=True)
    producer.start()
    try:
        deadline = time.monotonic() + 90
        while "waxhouse_records_consumed_total{" not in (scrape(port) or ""):
            assert flow.poll() is None and time.monotonic() < deadline, "the flow did not start"
            time.sleep(0.2)
        command = [sys.executable, "-m", "waxhouse.cli", "autoscale", "--dry-run"]
        command += ["--metrics", f"http://127.0.0.1:{port}/metrics", "--capacity", "300"]
        command += ["--interval", "2", "--looks", "12", "--up-delay", "4", "--cooldown", "0"]
        done = subprocess.run(
            command, cwd=REPO, env=flow_env({}), capture_output=True, text=True, timeout=120
        )
    finally:
        stop.set()
        producer.join(timeout=30)
        flow.terminate()
        flow.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    header, *lines = done.stdout.splitlines()
    assert header.split()[:6] == [
        "seconds",
        "processes",
        "input/s",
        "backlog",
        "capacity/s",
        "needed",
    ]
    rows = [line.split(maxsplit=7) for line in lines]
    assert len(rows) == 12 and all(row[1] == "1" for row in rows)  # never rescaled
    looked = rows[-5:]  # rates come once the looks span 10 s; the producer warms up
    rates = [float(row[2].replace(",", "")) for row in looked]
    assert 0.5 * RATE <= statistics.median(rates) <= 1.5 * RATE, rates
    assert all(row[4] == "300" and row[5] == "4" for row in looked), lines
    assert rows[-1][6] == "up"  # what it would do, after 4 s of agreeing looks


@pytest.mark.slow
def test_a_burst_then_quiet_rescales_1_2_1_and_the_tables_stay_exact(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """The local actuator runs the clickstream flow; a producer sends 500 records/s, then a
    burst of as many as it can in 3 s, then 500/s again.

    On this machine one process consumes as fast as a producer beside it can write (both
    share two cores with the broker), so no rate it can reach overloads a process. The
    model is therefore told each process may use a quarter of a core, as a Kubernetes
    CPU limit of 250m would say: the capacity it measures while the flow is behind (about
    30,000 records per CPU second) becomes some 8,000/s per process, below the burst and
    far above 500/s. The controller goes 1 -> 2 processes and, once the load has stayed
    low, back to 1: two actions; the final tables equal the oracle's. Each rescale's stop
    and start times and the lag around it are printed."""
    topic, dlq = topic_factory(4, prefix="ramp"), topic_factory(1, prefix="ramp-dlq")
    url = f"chdb://{tmp_path / 'store'}"
    env = flow_env(kafka_env(kafka_bootstrap, topic, dlq, url))
    recovery = tmp_path / "recovery"
    cluster = LocalCluster(
        "dataflows.clickstream",
        recovery,
        tmp_path / "logs",
        env=env,
        snapshot_s=1,
        peer_port=free_run(2),
        api_port=free_run(2),
    )
    policy = Policy(
        max_processes=2,
        catch_up_s=30,
        dead_band=0.3,
        up_delay_s=4,
        down_delay_s=16,
        cooldown_s=16,
        cores_per_process=0.25,
    )
    out = io.StringIO()
    autoscaler = Autoscaler(Controller(policy, current=1), out, actuator=cluster)
    phases = [Phase(500, 14), Phase(100_000, 3), Phase(500, 50)]
    stop = threading.Event()
    produced: list[tuple[list[GeneratedRecord], dict[int, str]]] = []
    producer = threading.Thread(
        target=lambda: produced.append(ramp(kafka_bootstrap, topic, phases, stop)), daemon=True
    )
    cluster.start(1)
    try:
        producer.start()
        deadline = time.monotonic() + sum(p.seconds for p in phases) + 60
        while producer.is_alive() and time.monotonic() < deadline:
            autoscaler.look()
            time.sleep(2)
    finally:
        stop.set()
        producer.join(timeout=60)
        cluster.stop()
    print(HEADER, out.getvalue(), sep="\n")
    for decision, report in autoscaler.rescales:
        after = [d for d in autoscaler.decisions if d.at > decision.at and d.rates]
        peak = max((d.rates.demand.backlog for d in after[:10] if d.rates), default=0.0)
        print(f"{decision.action} at {decision.at:.0f}: {report}; peak lag after {peak:,.0f}")
    records, positions = produced[0]
    actions = [(d.action, d.target) for d in autoscaler.decisions if d.action != "hold"]
    assert actions == [("up", 2), ("down", 1)], out.getvalue()

    done = run_flow(
        {**kafka_env(kafka_bootstrap, topic, dlq, url), "KAFKA_STOP_AT_END": "true"},
        ["-r", str(recovery), "-s", "1", "-b", "0"],
    )
    assert_tables_match(read_tables(url, done.stdout), oracle(records), records, positions)
