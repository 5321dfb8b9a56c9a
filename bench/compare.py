"""Side by side with peers, on benchmark and on realistic input.

    python -m bench.compare [--events 2000000] [--repeat 3] [--only NAME,...]
                            [--scenario {benchmark,realistic,both}] [--baseline DIR]

Fills a fresh 4-partition topic (keyed by user) per scenario once, then has each runner in
`bench/peers/` drain it in bounded mode as a subprocess, runners alternated, `--repeat`
rounds; within a round every scenario runs, one after the other, so their ratio is
measured side by side. Per runner, the median of: records/s (records over the drain
seconds the runner reports, which leave out interpreter start-up), whole-command
records/s (records over the command from its start to its exit: for ours the flow's
`python -m bytewax.run` command, for the others the runner process), CPU seconds per
million records and peak RSS (the child's `os.wait4` rusage, its own children included).
`waxhouse_confluent` is ours with `KAFKA_CLIENT=confluent`.

The scenarios (`--scenario`, default `both`):

- `benchmark`: `waxhouse.connectors.generator.ClickstreamGenerator` events (10,000 pages,
  100,000 users), the input of the throughput targets. Every runner runs on it. The
  aggregating runners' counts per page and window are checked against ours
  (`page_stats`); a runner that cannot close every window by the end of the input (Quix
  Streams) reports up to where it closed them, and is checked on exactly those windows.
  The "Targets" section sets our records/s against the peers' from the same run.
- `realistic`: `bench.realistic` (its docstring has the mix: 1,500 users, 400 Zipf pages,
  3 hours of event time, RFC 3339 `ts` with offsets, extra fields, long and non-ASCII
  pages, 0.5% malformed records). Ours and the bare consume loops run on it (the
  aggregating peers only on the benchmark input: their result checks rest on its
  windows). `waxhouse_confluent`'s counts are checked against `waxhouse`'s.

On both, each of our runs is checked for consistency against its own store: events in
`page_stats` + late events that missed it + rejected records = records produced (and
likewise with `user_sessions`), and on the realistic input the dead letters per reason
equal what the generator made. A "realistic ÷ benchmark" table gives the ratio per runner.

The report goes to `bench/results/compare.md` (and `.png`) when the aggregating peers ran;
otherwise to `compare-realistic.md` when the realistic scenario ran, else `compare-ours.md`,
so a run without the peers never overwrites the peers comparison.

`--baseline DIR` (a checkout of an earlier commit, e.g. `git worktree add DIR HEAD~5`)
adds `waxhouse@base` and `waxhouse_confluent@base`: our runners on that checkout's flow
(older layouts with `dataflows.settings` and a top-level `connectors` run as they are),
alternated with ours in the same rounds and scenarios, so a change is measured against
what it changed. Without the aggregating peers the report then goes to
`bench/results/compare-vs-<commit>.md` (and `.png`); with them, to `compare.md`, which
then shows before and after beside the peers.
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
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from bench.common import bootstrap, flow_version, produce
from bench.peers._job import WINDOW_MS
from bench.realistic import RealisticConfig, RealisticGenerator, RealisticRecord
from tests.support.flow import REPO
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

Scenario = Literal["benchmark", "realistic"]
SCENARIOS: tuple[Scenario, ...] = ("benchmark", "realistic")
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
PEERS = ("bytewax_book", "quixstreams")
# Who runs on which input: the peers' result checks rest on the benchmark input's windows.
SCENARIO_RUNNERS: dict[Scenario, tuple[str, ...]] = {
    "benchmark": RUNNERS,
    "realistic": tuple(name for name in RUNNERS if name not in PEERS),
}
# (ours, peer, our records/s over theirs at least), on the benchmark input
TARGETS = (("bytewax_book", 5.0), ("quixstreams", 3.0), ("kafka_python_orjson", 0.6))
RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARK_SHAPE = {"pages": 10_000, "users": 100_000, "active_users": 3_000}
REJECTED_AS_MADE = ("invalid_json", "invalid_event")  # the realistic generator's reasons


@dataclass(frozen=True)
class Run:
    records: int
    seconds: float
    wall: float
    command_seconds: float  # the command's start to exit: ours the flow's, else `wall`
    cpu: float
    rss_mb: float
    counts_path: Path | None
    closed_until: dict[str, int] | None
    dropped: dict[str, int] | None
    notes: dict[str, object]


@dataclass(frozen=True)
class Topic:
    """A scenario's filled topic: its records, their value sizes (median, mean), and for
    the realistic input what the flow must make of them (`outcomes`: valid, per reason)."""

    name: str
    records: int
    median_bytes: float
    mean_bytes: float
    outcomes: dict[str, int] | None


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
    notes = report["notes"]
    return Run(
        records=report["records"],
        seconds=report["seconds"],
        wall=wall,
        command_seconds=float(notes.get("command_seconds", wall)),
        cpu=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,
        counts_path=counts_path,
        closed_until=report.get("closed_until"),
        dropped=report.get("dropped"),
        notes=notes,
    )


def counts_of(run: Run) -> dict[str, int]:
    return orjson.loads(run.counts_path.read_bytes())["counts"] if run.counts_path else {}


def produce_benchmark(servers: str, topic: str, config: GeneratorConfig) -> Topic:
    """In a child process, so the big record list never inflates this process's RSS,
    which every runner forked from here would inherit as its starting peak."""
    records = ClickstreamGenerator(config).take(config.events)
    sent = produce(servers, topic, records)
    sizes = [len(r.value) for r in records]
    return Topic(topic, sent, statistics.median(sizes), statistics.fmean(sizes), None)


def produce_realistic(servers: str, topic: str, config: RealisticConfig) -> Topic:
    """In a child process, like `produce_benchmark`; notes what each record must become."""
    outcomes: Counter[str] = Counter()
    sizes: list[int] = []

    def tallied() -> Iterator[RealisticRecord]:
        for record in RealisticGenerator(config):
            outcomes[record.expected or "valid"] += 1
            sizes.append(len(record.value or b""))
            yield record

    sent = produce(servers, topic, tallied())
    made = {"valid": 0, **{reason: 0 for reason in REJECTED_AS_MADE}, **outcomes}
    return Topic(topic, sent, statistics.median(sizes), statistics.fmean(sizes), made)


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


def accounted(run: Run, produced: int, made: Mapping[str, int] | None) -> tuple[bool, str]:
    """Whether our run accounts for every record produced, from its own store.

    Each record is either counted (in `page_stats`, unless it is late for it), or a
    dead letter: counted + late ones that missed the output + rejected ones = records, for
    `page_stats` and for `user_sessions`. With `made` (the realistic generator's
    outcomes), the dead letters per reason must also be the ones it made.
    """
    if run.counts_path is None:
        return False, "no results read back"
    body = orjson.loads(run.counts_path.read_bytes())
    notes = body["notes"]
    dead: dict[str, int] = notes["dead_letters"]
    late: dict[str, int] = notes["late_missed"]
    in_pages = sum(body["counts"].values())
    in_sessions = int(notes["session_events"])
    rejected = sum(n for reason, n in dead.items() if reason != "late")
    totals = {
        "page_stats": in_pages + late["page_stats"] + rejected,
        "user_sessions": in_sessions + late["user_sessions"] + rejected,
    }
    problems = [
        f"{output} accounts for {total:,}" for output, total in totals.items() if total != produced
    ]
    if run.records != produced:
        problems.append(f"the flow reports {run.records:,} records")
    if made is not None:
        for reason in sorted({*REJECTED_AS_MADE, *dead} - {"late"}):
            want = made.get(reason, 0)
            if dead.get(reason, 0) != want:
                problems.append(f"{dead.get(reason, 0):,} {reason} where {want:,} were made")
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(dead.items()) if reason != "late")
    as_made = ", as generated" if made is not None and not problems else ""
    text = (
        f"{in_pages:,} events in page_stats + {late['page_stats']:,} late for it + {rejected:,}"
        f" rejected ({reasons or 'none'}{as_made}) = {totals['page_stats']:,}; user_sessions"
        f" {in_sessions:,} + {late['user_sessions']:,} late + {rejected:,} rejected ="
        f" {totals['user_sessions']:,}; records produced {produced:,}"
    )
    if problems:
        return False, f"**inconsistent** ({'; '.join(problems)}): {text}"
    return True, f"consistent: {text}"


def rate(done: list[Run]) -> float:
    return statistics.median(r.records / r.seconds for r in done)


def command_rate(done: list[Run]) -> float:
    return statistics.median(r.records / r.command_seconds for r in done)


def cpu_per_million(done: list[Run]) -> float:
    return statistics.median(r.cpu / r.records * 1e6 for r in done)


def rss(done: list[Run]) -> float:
    return statistics.median(r.rss_mb for r in done)


def table(runs: dict[str, list[Run]], checks: dict[str, str]) -> list[str]:
    lines = [
        "| runner | records/s | vs ours | whole-command records/s | CPU s / M records"
        " | peak RSS MB | wall s | result check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ours = rate(runs["waxhouse"]) if "waxhouse" in runs else None
    for name, done in runs.items():
        records_s = rate(done)
        wall = statistics.median(r.wall for r in done)
        ratio = f"{ours / records_s:.2f}x" if ours else "-"
        lines.append(
            f"| {name} | {records_s:,.0f} | {ratio} | {command_rate(done):,.0f} "
            f"| {cpu_per_million(done):.1f} | {rss(done):,.0f} | {wall:.1f} "
            f"| {checks.get(name, '-')} |"
        )
    return lines


def scenario_ratios(by_scenario: dict[Scenario, dict[str, list[Run]]]) -> list[str]:
    """Per runner that ran on both inputs: realistic over benchmark, from the same rounds.

    The ratio of the medians, and the range of the per-round ratios (round i's realistic
    run over round i's benchmark run, which ran minutes apart on the same machine).
    """
    both = [n for n in by_scenario.get("realistic", {}) if n in by_scenario.get("benchmark", {})]
    if not both:
        return []
    lines = [
        "## Realistic ÷ benchmark",
        "",
        "Per runner, the realistic input's median over the benchmark input's; in brackets the"
        " range of the ratios round by round. Below 1x for records/s: the realistic input is"
        " slower; above 1x for CPU: it costs more per record.",
        "",
        "| runner | records/s | whole-command records/s | CPU s / M records | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    measures = (
        (rate, lambda r: r.records / r.seconds),
        (command_rate, lambda r: r.records / r.command_seconds),
        (cpu_per_million, lambda r: r.cpu / r.records),
        (rss, lambda r: r.rss_mb),
    )
    for name in both:
        real, bench = by_scenario["realistic"][name], by_scenario["benchmark"][name]
        cells = []
        for median_of, one in measures:
            rounds = [one(a) / one(b) for a, b in zip(real, bench, strict=False)]
            cells.append(
                f"{median_of(real) / median_of(bench):.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return [*lines, ""]


def targets(runs: dict[str, list[Run]], checks: dict[str, str]) -> list[str]:
    """Our median records/s over each peer's, against the issue's targets."""
    if not any(peer in runs for peer, _ in TARGETS):
        return []
    lines = [
        "## Targets",
        "",
        "Median records/s of the benchmark runs above, ours over the peer's.",
        "",
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
    return [*lines, ""]


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


def baseline_note(
    by_scenario: dict[Scenario, dict[str, list[Run]]], commit: str | None
) -> list[str]:
    """Ours against the same runners on the baseline checkout, from the same rounds."""
    if commit is None:
        return []
    lines = [
        f"Baseline: `@base` runners run the flow of commit `{commit[:12]}`, alternated with"
        " ours in every round. Ours over the baseline, records/s (median; whole command in"
        " brackets):",
        "",
    ]
    for scenario, runs in by_scenario.items():
        cells = []
        for name in OURS:
            base = f"{name}{BASELINE}"
            if name in runs and base in runs:
                drain = rate(runs[name]) / rate(runs[base])
                whole = command_rate(runs[name]) / command_rate(runs[base])
                cells.append(f"`{name}` {drain:.2f}x ({whole:.2f}x)")
        if cells:
            lines.append(f"- {scenario} input: " + ", ".join(cells))
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


def checks_of(runs: dict[str, list[Run]], topic: Topic) -> tuple[dict[str, str], list[str]]:
    """Each runner's result check (its first run), and our runs' consistency lines."""
    checks: dict[str, str] = {}
    reference = counts_of(runs["waxhouse"][0]) if "waxhouse" in runs else None
    for name, done in runs.items():
        peer = name.partition("@")[0]
        if peer in AGGREGATING and name != "waxhouse" and reference is not None:
            checks[name] = difference(reference, counts_of(done[0]), done[0])
    if reference is not None:
        checks["waxhouse"] = f"reference ({sum(reference.values()):,} events in page_stats)"
    consistency = []
    for name, done in runs.items():
        if name.partition("@")[0] in OURS:
            ok, text = accounted(done[0], topic.records, topic.outcomes)
            consistency.append(f"- `{name}`: {text}")
            if not ok:
                checks[name] = f"{checks.get(name, '')} **inconsistent**".strip()
    return checks, consistency


def describe(scenario: Scenario, topic: Topic) -> str:
    if scenario == "benchmark":
        return (
            f"`ClickstreamGenerator`: {topic.records:,} records, 10,000 pages, 100,000 users,"
            f" 15% of `ts` RFC 3339, 1% malformed (some of them 200-900 KB strings); values"
            f" {topic.median_bytes:,.0f} bytes (median), {topic.mean_bytes:,.0f} (mean)."
        )
    made = topic.outcomes or {}
    rejected = ", ".join(f"{reason} {made.get(reason, 0):,}" for reason in REJECTED_AS_MADE)
    return (
        f"`bench.realistic` (seed and mix in its docstring): {topic.records:,} records,"
        " 1,500 users, 400 Zipf pages up to 2,048 characters, 3 h of event time, 25% RFC 3339"
        f" `ts`, 5% extra fields; made to be rejected: {rejected}; values"
        f" {topic.median_bytes:,.0f} bytes (median), {topic.mean_bytes:,.0f} (mean)."
    )


def chart(by_scenario: dict[Scenario, dict[str, list[Run]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for runs in by_scenario.values() for n in runs))
    height = 0.8 / len(by_scenario)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.5 * len(names)))
    colors = {"benchmark": "tab:blue", "realistic": "tab:orange"}
    for k, (scenario, runs) in enumerate(by_scenario.items()):
        ys = [i + k * height for i, n in enumerate(names) if n in runs]
        done = [runs[n] for n in names if n in runs]
        color = colors[scenario]
        left.barh(ys, [rate(d) / 1000 for d in done], height, color=color, label=scenario)
        right.barh(ys, [cpu_per_million(d) for d in done], height, color=color)
    left.set_xlabel("thousand records/s (median)")
    right.set_xlabel("CPU seconds per million records (median)")
    middle = (len(by_scenario) - 1) * height / 2
    left.set_yticks([i + middle for i in range(len(names))], names)
    right.set_yticks([i + middle for i in range(len(names))], [])
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    fig.legend(loc="lower center", ncol=len(by_scenario), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_stem(names: list[str], scenarios: list[Scenario], base_commit: str | None) -> str:
    """Where the report goes: see the module docstring."""
    if "benchmark" in scenarios and any(peer in names for peer in PEERS):
        return "compare"
    if base_commit is not None:
        return f"compare-vs-{base_commit[:7]}"
    return "compare-realistic" if "realistic" in scenarios else "compare-ours"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="records per scenario")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", default=",".join(RUNNERS), help="runners, comma-separated")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "both"), default="both")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a checkout to run our flow of, alongside"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runners: {', '.join(sorted(unknown))}")
    scenarios: list[Scenario] = list(SCENARIOS) if args.scenario == "both" else [args.scenario]
    base_commit = None
    if args.baseline is not None:
        base_commit = baseline_commit(args.baseline)
        names += [f"{name}{BASELINE}" for name in OURS if name in names]
    lineup = {
        scenario: [n for n in names if n.partition("@")[0] in SCENARIO_RUNNERS[scenario]]
        for scenario in scenarios
    }

    benchmark = GeneratorConfig(seed=args.seed, events=args.events, **BENCHMARK_SHAPE)
    realistic = RealisticConfig(seed=args.seed, events=args.events)
    by_scenario: dict[Scenario, dict[str, list[Run]]] = {
        scenario: {name: [] for name in lineup[scenario]} for scenario in scenarios
    }
    topics: dict[Scenario, Topic] = {}
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        for scenario in scenarios:
            topic = f"compare-{scenario}-{uuid.uuid4().hex[:8]}"
            create_topic(servers, topic, 4)
            create_topic(servers, f"{topic}.dlq", 1)
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                if scenario == "benchmark":
                    topics[scenario] = pool.apply(produce_benchmark, (servers, topic, benchmark))
                else:
                    topics[scenario] = pool.apply(produce_realistic, (servers, topic, realistic))
            print(f"produced {topics[scenario].records:,} {scenario} records to {topic}")
        for i in range(args.repeat):
            for scenario in scenarios:
                for name in lineup[scenario]:
                    out = Path(scratch) / f"{scenario}-{name}-{i}.json"
                    run = run_once(name, servers, topics[scenario].name, out, args.baseline)
                    by_scenario[scenario][name].append(run)
                    print(
                        f"round {i + 1}: {scenario:<9} {name:<26}"
                        f" {run.records / run.seconds:>10,.0f} records/s"
                        f" {run.records / run.command_seconds:>10,.0f} whole command"
                        f" {run.wall:6.1f} s wall {run.notes.get('kafka_client', '')}",
                        flush=True,
                    )
        checked = {
            scenario: checks_of(by_scenario[scenario], topics[scenario]) for scenario in scenarios
        }

    shown = [n for n in names if BASELINE not in n]
    command = "python -m bench.compare " + shlex.join(
        ["--events", str(args.events), "--repeat", str(args.repeat), "--only", ",".join(shown)]
        + ["--scenario", args.scenario]
        + (["--baseline", str(args.baseline)] if args.baseline else [])
    )
    heading = (
        f"{args.events:,} records per input, 4 partitions, median of {args.repeat} run(s)"
        f" each, runners alternated, {os.cpu_count()} CPUs"
    )
    version = flow_version()
    peers_ran = any(peer in by_scenario.get("benchmark", {}) for peer in PEERS)
    lines = [
        "# Side by side with peers"
        if peers_ran
        else "# Our runners on benchmark and realistic input",
        "",
        f"`{command}`",
        "",
        f"{heading}. Within each round every input ran, one after the other. Our flow:"
        f" commit {version}.",
        "",
    ]
    for scenario in scenarios:
        runs = by_scenario[scenario]
        checks, consistency = checked[scenario]
        lines += [
            f"## {scenario.capitalize()} input",
            "",
            describe(scenario, topics[scenario]),
            "",
            *table(runs, checks),
            "",
            "Consistency of our runs (first run each, read back from its store):",
            "",
            *consistency,
            "",
        ]
        if scenario == "benchmark":
            lines += [*quix_note(runs), *targets(runs, checks)]
    lines += [
        *scenario_ratios(by_scenario),
        "## How to read it",
        "",
        "records/s: records over the drain seconds each runner reports (interpreter start-up"
        " excluded; ours: the flow's own clock, from building the flow to the last stored"
        " row). Whole-command records/s: records over the command from start to exit (ours:"
        " `python -m bytewax.run dataflows.clickstream`, including start-up, opening the"
        " store and the final summary; the others: the runner process). wall s: the runner"
        " process. CPU and peak RSS: the runner process and its children (`os.wait4`)."
        " Ratio: `waxhouse`'s records/s over the runner's. Result check: each aggregating"
        " runner's count per (page, window) from its first run against `waxhouse`'s.",
        "",
    ]
    lines += [*client_note(by_scenario[scenarios[0]]), *baseline_note(by_scenario, base_commit)]
    RESULTS.mkdir(exist_ok=True)
    stem = report_stem(names, scenarios, base_commit)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    chart(by_scenario, heading, RESULTS / f"{stem}.png")
    print("\n".join(lines))
    print(f"wrote {RESULTS / stem}.md")


if __name__ == "__main__":
    main()
