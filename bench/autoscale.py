"""A ramp under `waxhouse autoscale`'s local actuator: processes, input rate and lag over
time, each rescale's stop and start, and whether the final tables are exact.

    python -m bench.autoscale [--phases 500:20,5000:20,15000:20,100000:4,5000:20,500:70]
                              [--cores-per-process 0.25] [--max 3]

On a throwaway broker (or KAFKA_BOOTSTRAP_SERVERS) and a fresh 4-partition topic, the
clickstream flow runs under the local actuator while a producer sends each phase's
records/s for its seconds (100,000: as many as it can). On this machine one process
consumes as fast as a producer beside it writes, so the model is told each process may
use `--cores-per-process` of a core, as a Kubernetes CPU limit would say: that puts the
ramp's top above one process's capacity. Afterwards one bounded run finishes the topic
and the tables are compared with the oracle. Writes bench/results/autoscale.md and
autoscale.png.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.common import bootstrap
from tests.support.autoscaling import Phase, free_run, ramp
from tests.support.flow import flow_env, run_flow
from tests.support.kafka_broker import create_topic
from tests.support.oracle import oracle
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.autoscale.local import LocalCluster, Rescale
from waxhouse.autoscale.model import Controller, Decision, Policy
from waxhouse.autoscale.run import HEADER, Autoscaler

RESULTS = Path(__file__).resolve().parent / "results"
READING = """Reading it:

- **The capacity is known once the flow falls behind.** With nothing waiting, a process's
  CPU goes largely to fixed costs, so the model measures nothing (docs/operating.md,
  "Autoscaling"); given `--capacity`, it acts before.
- **Down comes in steps.** Scaling down takes the largest count recommended over the
  down delay.
- **stop s**: from SIGTERM until every process exited. **start s**: until every new
  process served its metrics.
- This machine's two cores also run the broker and the producer, so more processes do
  not consume proportionally faster here: the run shows the decisions, the rescale times
  and exactness across them, not a speed-up.
"""


def env_for(servers: str, topic: str, store: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "CLICKHOUSE_URL": f"chdb://{store}",
    }


def chart(decisions: list[Decision], started: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    looks = [d for d in decisions if d.rates is not None]
    t = [d.at - started for d in looks]
    fig, (rate, lag, count) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    rate.plot(t, [d.rates.demand.input_rate for d in looks], label="input")  # type: ignore[union-attr]
    rate.plot(t, [d.rates.consumed_rate for d in looks], label="consumed")  # type: ignore[union-attr]
    rate.set_ylabel("records/s")
    rate.legend(loc="upper right")
    lag.plot(t, [d.rates.demand.backlog for d in looks], color="tab:red")  # type: ignore[union-attr]
    lag.set_ylabel("lag (records)")
    every = [d.at - started for d in decisions]
    count.step(every, [d.current for d in decisions], where="post", label="running")
    count.step(
        every, [d.recommended for d in decisions], where="post", linestyle=":", label="recommended"
    )
    for d in decisions:
        if d.action != "hold":
            for axis in (rate, lag, count):
                axis.axvline(d.at - started, color="grey", linestyle="--", alpha=0.6)
    count.set_ylabel("processes")
    count.set_xlabel("seconds")
    count.legend(loc="upper right")
    for axis in (rate, lag, count):
        axis.grid(alpha=0.3)
    fig.suptitle("waxhouse autoscale, local actuator: a ramp up and down")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases",
        default="500:20,5000:20,15000:20,100000:4,5000:20,500:70",
        help="records/s:seconds, in turn",
    )
    parser.add_argument("--cores-per-process", type=float, default=0.25)
    parser.add_argument("--max", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    phases = [
        Phase(int(rate), float(seconds))
        for rate, seconds in (phase.split(":") for phase in args.phases.split(","))
    ]
    policy = Policy(
        max_processes=args.max,
        catch_up_s=30,
        dead_band=0.3,
        up_delay_s=4,
        down_delay_s=20,
        cooldown_s=20,
        cores_per_process=args.cores_per_process,
    )
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        topic = f"autoscale-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic, 4)
        create_topic(servers, f"{topic}.dlq", 1)
        env = env_for(servers, topic, work / "store")
        cluster = LocalCluster(
            "dataflows.clickstream",
            work / "recovery",
            work / "logs",
            env=flow_env(env),
            snapshot_s=1,
            peer_port=free_run(args.max),
            api_port=free_run(args.max),
        )
        out = io.StringIO()
        autoscaler = Autoscaler(Controller(policy, current=1), out, actuator=cluster)
        started = time.monotonic()
        stop = threading.Event()
        produced: list = []
        producer = threading.Thread(
            target=lambda: produced.append(ramp(servers, topic, phases, stop)), daemon=True
        )
        cluster.start(1)
        try:
            producer.start()
            while producer.is_alive():
                autoscaler.look()
                time.sleep(args.interval)
        finally:
            stop.set()
            producer.join(timeout=60)
            cluster.stop()
        records, positions = produced[0]
        done = run_flow(
            {**env, "KAFKA_STOP_AT_END": "true"},
            ["-r", str(work / "recovery"), "-s", "1", "-b", "0"],
        )
        try:
            assert_tables_match(
                read_tables(env["CLICKHOUSE_URL"], done.stdout), oracle(records), records, positions
            )
            exact = "yes: all three tables equal the oracle's, row by row"
        except AssertionError as e:
            exact = f"NO: {str(e)[:300]}"
    decisions = autoscaler.decisions
    RESULTS.mkdir(exist_ok=True)
    chart(decisions, started, RESULTS / "autoscale.png")
    lines = [
        "# Autoscaling: a ramp under the local actuator",
        "",
        f"`python -m bench.autoscale --phases {args.phases} --cores-per-process "
        f"{args.cores_per_process} --max {args.max}`",
        "",
        f"{len(records):,} records produced in phases of records/s:seconds {args.phases} "
        "(100,000: as many as the producer could) into 4 partitions; the clickstream flow "
        "under the local actuator, looking every 2 s (policy: target 0.7, catch-up 30 s, "
        "dead band 0.3, window 10 s, up delay 4 s, down delay 20 s, cooldown 20 s, "
        f"{args.cores_per_process} of a core per process). Exact: {exact}.",
        "",
        "![processes, input rate and lag over time](autoscale.png)",
        "",
        "| action | at s | processes | stop s | start s | lag at the action | peak lag after |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for decision, report in autoscaler.rescales:
        assert isinstance(report, Rescale)
        after = [d for d in decisions if d.at > decision.at and d.rates is not None][:15]
        peak = max((d.rates.demand.backlog for d in after if d.rates), default=0.0)
        lag = decision.rates.demand.backlog if decision.rates else 0.0
        lines.append(
            f"| {decision.action} | {decision.at - started:.0f} | {report.before} -> "
            f"{report.after} | {report.stop_s:.1f} | {report.start_s:.1f} | {lag:,.0f} | "
            f"{peak:,.0f} |"
        )
    lines += ["", READING, "Every look:", "", "```", HEADER, out.getvalue().rstrip(), "```", ""]
    (RESULTS / "autoscale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
