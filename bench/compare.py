"""Side by side with peers: ours, Bytewax by the book, Quix Streams, bare consume loops.

    python -m bench.compare [--events 2000000] [--repeat 3] [--only NAME,...]
                            [--baseline DIR]

Fills a fresh 4-partition topic (keyed by user) once with generated clickstream events,
then has each runner in `bench/peers/` drain it in bounded mode as a subprocess, runners
alternated, `--repeat` rounds. Per runner, the median of: events/s (records over the drain
seconds the runner reports, which leave out interpreter start-up), CPU seconds per
million events and peak RSS (the child's `os.wait4` rusage, its own children included).
The aggregating runners' counts per page and window are checked against ours
(`page_stats`); a runner that cannot close every window by the end of the input (Quix
Streams) reports up to where it closed them, and is checked on exactly those windows.
`waxhouse_confluent` is ours with `KAFKA_CLIENT=confluent`. The "Targets" section sets
our events/s against the peers' from the same run. Writes `bench/results/compare.md` and
`bench/results/compare.png`.

`--baseline DIR` (a checkout of an earlier commit, e.g. `git worktree add DIR HEAD~5`)
adds `waxhouse@base` and `waxhouse_confluent@base`: our runners on that checkout's flow,
alternated with ours in the same rounds, so a change is measured against what it changed.
The report then goes to `bench/results/compare-vs-<commit>.md` (and `.png`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import bootstrap, produce
from bench.peers._job import WINDOW_MS
from tests.support.flow import REPO
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

RUNNERS = (
    "waxhouse",
    "waxhouse_confluent",
    "bytewax_book",
    "quixstreams",
    "kafka_python_bare",
    "confluent_bare",
    "kafka_python_orjson",
)
AGGREGATING = ("waxhouse", "waxhouse_confluent", "bytewax_book", "quixstreams")
OURS = ("waxhouse", "waxhouse_confluent")  # the flow; counts read back from its store
# (ours, peer, our events/s over theirs at least)
TARGETS = (("bytewax_book", 5.0), ("quixstreams", 3.0), ("kafka_python_orjson", 0.6))
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Run:
    records: int
    seconds: float
    wall: float
    cpu: float
    rss_mb: float
    counts_path: Path | None
    closed_until: dict[str, int] | None
    dropped: dict[str, int] | None
    notes: dict[str, object]


BASELINE = "@base"


def run_once(name: str, servers: str, topic: str, out: Path, baseline: Path | None = None) -> Run:
    peer, _, at = name.partition("@")
    command = [sys.executable, "-m", f"bench.peers.{peer}"]
    command += ["--bootstrap", servers, "--topic", topic, "--out", str(out)]
    if at:
        if baseline is None:
            raise ValueError(f"{name} needs --baseline")
        command += ["--flow-repo", str(baseline)]
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {child.returncode}")
    report = orjson.loads(out.read_bytes())
    counts_path = out if report["counts"] is not None else None
    if peer in OURS:  # read back from the store outside the timed process
        subprocess.run([*command, "--check"], cwd=REPO, check=True)
        counts_path = out.with_suffix(".counts.json")
    return Run(
        records=report["records"],
        seconds=report["seconds"],
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,
        counts_path=counts_path,
        closed_until=report.get("closed_until"),
        dropped=report.get("dropped"),
        notes=report["notes"],
    )


def counts_of(run: Run) -> dict[str, int]:
    return orjson.loads(run.counts_path.read_bytes())["counts"] if run.counts_path else {}


def produce_topic(servers: str, topic: str, config: GeneratorConfig) -> int:
    """In a child process, so the big record list never inflates this process's RSS,
    which every runner forked from here would inherit as its starting peak."""
    return produce(servers, topic, ClickstreamGenerator(config).take(config.events))


def closed_by(ours: dict[str, int], closed_until: dict[str, int]) -> dict[str, int]:
    """Our windows that end no later than where the peer says it closed that page's windows."""
    closed = {}
    for key, count in ours.items():
        page, start = key.rsplit("|", 1)
        if int(start) + WINDOW_MS <= closed_until.get(page, -(2**63)):
            closed[key] = count
    return closed


def difference(ours: dict[str, int], theirs: dict[str, int], run: Run | None = None) -> str:
    """How a peer's counts compare with ours, on the windows it could have closed.

    With the peer's `closed_until`, only the windows it had closed by the end of the input
    are expected; with its `dropped`, a window short by exactly the records it reported
    late is told apart from an unexplained difference.
    """
    closed_until = run.closed_until if run else None
    dropped = (run.dropped if run else None) or {}
    expected = ours if closed_until is None else closed_by(ours, closed_until)
    scope = "" if closed_until is None else " it closed"
    tail = ""
    if closed_until is not None:
        still_open = len(ours) - len(expected)
        open_events = sum(ours.values()) - sum(expected.values())
        tail = (
            f"; {still_open:,} of {len(ours):,} windows ({open_events:,} events) still open"
            " at the end of the input, as its closing rule predicts"
        )
    if expected == theirs:
        if closed_until is None:
            return f"equal ({len(expected):,} windows)"
        return f"equal on the {len(expected):,} windows{scope}{tail}"
    extra = theirs.keys() - expected.keys()
    short = {k: n - theirs.get(k, 0) for k, n in expected.items() if theirs.get(k, 0) != n}
    explained = {k: d for k, d in short.items() if d == dropped.get(k, 0)}
    unexplained = len(short) - len(explained)
    late = sum(explained.values())
    parts = [f"differs: {len(short):,} of {len(expected):,} windows{scope} differ"]
    if explained:
        parts.append(
            f"{len(explained):,} of them short by {late:,} events, exactly the records it"
            " dropped as late there"
        )
    if unexplained or extra:
        other = sum(abs(d) for k, d in short.items() if k not in explained)
        parts.append(
            f"{unexplained:,} off by {other:,} events not so explained, {len(extra):,} extra"
            " windows"
        )
    return ", ".join(parts) + tail


def table(runs: dict[str, list[Run]], checks: dict[str, str]) -> list[str]:
    lines = [
        "| runner | events/s | vs ours | CPU s / M events | peak RSS MB | wall s | result check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ours = rate(runs["waxhouse"]) if "waxhouse" in runs else None
    for name, done in runs.items():
        events_s = rate(done)
        cpu = statistics.median(r.cpu / r.records * 1e6 for r in done)
        rss = statistics.median(r.rss_mb for r in done)
        wall = statistics.median(r.wall for r in done)
        ratio = f"{ours / events_s:.2f}x" if ours else "-"
        lines.append(
            f"| {name} | {events_s:,.0f} | {ratio} | {cpu:.1f} | {rss:,.0f} | {wall:.1f} "
            f"| {checks.get(name, '-')} |"
        )
    return lines


def rate(done: list[Run]) -> float:
    return statistics.median(r.records / r.seconds for r in done)


def targets(runs: dict[str, list[Run]], checks: dict[str, str]) -> list[str]:
    """Our median events/s over each peer's, against the issue's targets."""
    lines = [
        "| ours | peer | ours ÷ peer | target | met | peer's result check |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for ours in OURS:
        for peer, target in TARGETS:
            goal = f"≥ {target:.0f}x" if target >= 1 else f"≥ {target:.0%}"
            if ours not in runs or peer not in runs:
                lines.append(f"| {ours} | {peer} | not run | {goal} | - | - |")
                continue
            ratio = rate(runs[ours]) / rate(runs[peer])
            shown = f"{ratio:.2f}x" if target >= 1 else f"{ratio:.0%}"
            met = "met" if ratio >= target else "**not met**"
            check = checks.get(peer, "-").split(";")[0]
            lines.append(f"| {ours} | {peer} | {shown} | {goal} | {met} | {check} |")
    return lines


def client_note(runs: dict[str, list[Run]]) -> list[str]:
    """Which Kafka client each of our runs says it used (the flow logs its settings)."""
    said = [f"`{name}`: {runs[name][0].notes.get('kafka_client')}" for name in OURS if name in runs]
    if not said:
        return []
    return ["Kafka client the flow reported: " + ", ".join(said) + ".", ""]


def baseline_commit(checkout: Path) -> str:
    """The commit a baseline checkout is at."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"--baseline {checkout}: not a git checkout ({done.stderr.strip()})")
    return done.stdout.strip()


def baseline_note(runs: dict[str, list[Run]], commit: str | None) -> list[str]:
    """Ours against the same runners on the baseline checkout, from the same rounds."""
    if commit is None:
        return []
    lines = [
        f"Baseline: `@base` runners run the flow of commit `{commit[:12]}`, alternated with"
        " ours in every round. Ours over the baseline (events/s, median):",
        "",
    ]
    for name in OURS:
        base = f"{name}{BASELINE}"
        if name in runs and base in runs:
            lines.append(f"- `{name}`: {rate(runs[name]) / rate(runs[base]):.2f}x")
    return [*lines, ""]


def quix_note(runs: dict[str, list[Run]]) -> list[str]:
    """How the Quix Streams peer closes windows, and whether its grace covered its disorder."""
    if "quixstreams" not in runs:
        return []
    notes = runs["quixstreams"][0].notes
    grace_h = int(notes["grace_ms"]) / 3_600_000
    lag_h = int(notes["max_lag_ms"]) / 3_600_000
    return [
        "Quix Streams closes a window only while processing a message, never at the end of"
        " the input: a window closes once a message of the same key (page, after"
        " `group_by`) has a timestamp >= window end + grace (quixstreams 3.28.1,"
        " `FixedTimeWindow.process_window`). Its windows ending after (the page's newest"
        " timestamp - grace) are therefore never emitted, and its check covers the others."
        f" Grace: {grace_h:g} h. Its consumer read the 4 partitions in runs of one at a"
        " time, so after `group_by` an event lagged its page's newest timestamp by up to"
        f" {lag_h:.2f} h (first run); records it dropped as late: {int(notes['late']):,}.",
        "",
    ]


def chart(runs: dict[str, list[Run]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, [rate(runs[n]) / 1000 for n in names], color="tab:blue")
    left.set_xlabel("thousand events/s (median)")
    cpu = [statistics.median(r.cpu / r.records * 1e6 for r in runs[n]) for n in names]
    right.barh(names, cpu, color="tab:orange")
    right.set_xlabel("CPU seconds per million events (median)")
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    right.set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", default=",".join(RUNNERS), help="runners, comma-separated")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a checkout to run our flow of, alongside"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runners: {', '.join(sorted(unknown))}")
    base_commit = None
    if args.baseline is not None:
        base_commit = baseline_commit(args.baseline)
        names += [f"{name}{BASELINE}" for name in OURS if name in names]

    config = GeneratorConfig(
        seed=args.seed, events=args.events, pages=10_000, users=100_000, active_users=3_000
    )
    runs: dict[str, list[Run]] = {name: [] for name in names}
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        topic = f"compare-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic, 4)
        create_topic(servers, f"{topic}.dlq", 1)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            produced = pool.apply(produce_topic, (servers, topic, config))
        print(f"produced {produced:,} events to {topic}", flush=True)
        for i in range(args.repeat):
            for name in names:
                out = Path(scratch) / f"{name}-{i}.json"
                run = run_once(name, servers, topic, out, args.baseline)
                runs[name].append(run)
                print(
                    f"round {i + 1}: {name:<20} {run.records / run.seconds:>10,.0f} events/s "
                    f"{run.wall:6.1f} s wall {run.notes or ''}",
                    flush=True,
                )

        checks: dict[str, str] = {}
        reference = counts_of(runs["waxhouse"][0]) if "waxhouse" in runs else None
        for name in names:
            peer = name.partition("@")[0]
            if peer in AGGREGATING and name != "waxhouse" and reference is not None:
                first = runs[name][0]
                checks[name] = difference(reference, counts_of(first), first)
    if reference is not None:
        checks["waxhouse"] = f"reference ({sum(reference.values()):,} valid events)"

    shown = [n for n in names if BASELINE not in n]
    command = "python -m bench.compare " + shlex.join(
        ["--events", str(args.events), "--repeat", str(args.repeat), "--only", ",".join(shown)]
        + (["--baseline", str(args.baseline)] if args.baseline else [])
    )
    heading = (
        f"{args.events:,} events (10,000 pages, 100,000 users), 4 partitions, median of "
        f"{args.repeat} run(s) each, runners alternated, {os.cpu_count()} CPUs"
    )
    lines = [
        "# Side by side with peers",
        "",
        f"`{command}`",
        "",
        heading,
        "",
        *table(runs, checks),
        "",
        "events/s: records over the drain seconds each runner reports (interpreter start-up"
        " excluded); wall s: the whole command. CPU and peak RSS: the runner process and its"
        " children (`os.wait4`). Ratio: our events/s over theirs. Result check: each"
        " aggregating runner's count per (page, window) from its first run against"
        " `waxhouse`'s.",
        "",
        *client_note(runs),
        *baseline_note(runs, base_commit),
        *quix_note(runs),
        "## Targets",
        "",
        "Median events/s of the runs above, ours over the peer's.",
        "",
        *targets(runs, checks),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    stem = "compare" if base_commit is None else f"compare-vs-{base_commit[:7]}"
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    chart(runs, heading, RESULTS / f"{stem}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
