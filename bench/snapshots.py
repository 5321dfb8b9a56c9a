"""Snapshots: what recovery costs a bounded run with many open sessions.

    python -m bench.snapshots [--events 400000] [--repeat 3] [--baseline DIR]

One 4-partition topic gets `--events` valid events, each from a different user, spread
over 1,500 s of event time (under the 1,800 s session gap): at the end every user has one
open session, so the state grows to `--events` open sessions. The flow drains it in
bounded mode (`KAFKA_STOP_AT_END=true`) three ways, alternated, `--repeat` rounds:
without recovery, with `-s 5` and with `-s 1` (a snapshot every second: what k8s/ runs).
Per way, the median whole-command seconds (process start to exit) and the ratio to the
run without recovery; and the recovery directory's size at the end, per open session.

`--baseline DIR` (a checkout of an earlier commit) runs the same three ways on that
checkout's flow in the same rounds, so the change is measured against what it changed.
Writes `bench/results/snapshots.md`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import bootstrap, bounded_env, summary_rate
from bench.memory import PARTITIONS, Shape, produce
from tests.support.flow import FLOW, REPO, flow_env, recovery_args
from tests.support.kafka_broker import create_topic

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = (("no recovery", None), ("-s 5", 5), ("-s 1", 1))


@dataclass(frozen=True)
class Run:
    tree: str  # "this" or "base"
    way: str
    seconds: float
    recovery_bytes: int


def drain(
    tree: Path, way: str, snapshot_s: int | None, servers: str, topic: str, scratch: Path
) -> tuple[float, int]:
    """Whole-command seconds and the recovery directory's bytes at the end."""
    name = f"{tree.name}-{way.replace(' ', '')}-{uuid.uuid4().hex[:6]}"
    recovery = scratch / f"{name}-recovery"
    args = [] if snapshot_s is None else recovery_args(recovery, snapshot_s)
    env = bounded_env(servers, topic, scratch / name)
    if snapshot_s is not None:
        recovery.mkdir()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", FLOW, *args],
        cwd=tree,
        env={**flow_env(env), "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    summary_rate(done.stdout)  # the run summary is there: it finished its work
    size = sum(p.stat().st_size for p in recovery.rglob("*") if p.is_file()) if snapshot_s else 0
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit")
    args = parser.parse_args()
    shape = Shape(events=args.events, users=args.events, span_ms=1_500_000)
    trees = [("this", REPO)] + ([("base", args.baseline.resolve())] if args.baseline else [])
    runs: list[Run] = []
    with bootstrap() as servers, tempfile.TemporaryDirectory(prefix="snapshots-") as tmp:
        topic = f"snapshots-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic, PARTITIONS)
        create_topic(servers, f"{topic}.dlq", 1)
        sent = produce(servers, topic, shape)
        print(f"{sent:,} events, {shape.open_sessions:,} open sessions at the end", flush=True)
        for round_ in range(args.repeat):
            for tree_name, tree in trees:
                for way, snapshot_s in WAYS:
                    seconds, size = drain(tree, way, snapshot_s, servers, topic, Path(tmp))
                    runs.append(Run(tree_name, way, seconds, size))
                    print(
                        f"round {round_ + 1} {tree_name} {way}: {seconds:.1f} s, "
                        f"recovery {size / 2**20:.1f} MiB",
                        flush=True,
                    )
    write_report(runs, shape, args)


def write_report(runs: list[Run], shape: Shape, args: argparse.Namespace) -> None:
    lines = [
        "# Snapshots with open sessions",
        "",
        f"`python -m bench.snapshots --events {args.events} --repeat {args.repeat}"
        + (f" --baseline {args.baseline}`" if args.baseline else "`"),
        "",
        f"{shape.events:,} events, each from its own user: {shape.open_sessions:,} open "
        "sessions at the end. Bounded runs, whole command (start to exit), medians of "
        f"{args.repeat} alternated rounds on a shared 2-core machine.",
        "",
        "| tree | way | median s | vs no recovery | recovery dir MiB | bytes per open session |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tree in dict.fromkeys(run.tree for run in runs):
        base = statistics.median(
            r.seconds for r in runs if r.tree == tree and r.way == "no recovery"
        )
        for way, snapshot_s in WAYS:
            mine = [r for r in runs if r.tree == tree and r.way == way]
            median = statistics.median(r.seconds for r in mine)
            size = statistics.median(r.recovery_bytes for r in mine)
            per = f"{size / shape.open_sessions:,.0f}" if snapshot_s else "-"
            lines.append(
                f"| {tree} | {way} | {median:.1f} | {median / base:.2f}x | "
                f"{size / 2**20:.1f} | {per} |"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshots.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
