"""Replay at full speed: a bounded backfill of old events against the same events made current.

    python -m bench.replay [--events 1000000] [--repeat 3]

Builds one synthetic clickstream (default 1,000,000 records over 6 hours of event time and
10,000 users, keyed by user) and produces it, once each and outside the timed part, to two
4-partition topics created with `create_topic` (retention off, so old records stay):

- `backfill`: the records as generated, record times and event times hours to months old;
- `live-like`: the same records with every record timestamp, and the `ts` of every valid
  event, shifted so that the data ends at now (in the same `ts` form: epoch milliseconds or
  RFC 3339 with the same offset and digits); malformed records keep their bytes. The shift
  is a whole number of windows, so both topics fill the same windows with the same events.

Then it drains each topic in bounded mode (`KAFKA_STOP_AT_END=true`) with
`python -m bytewax.run dataflows.clickstream` into a fresh chDB store, alternating the two
kinds (ABBA order, so a drift in machine load hits both alike), and reports the median of
the records/s each run prints and of the command's wall time, the ratio backfill/live-like,
the rows per table of each kind, and whether their contents agree up to the shift.

Uses the broker named by KAFKA_BOOTSTRAP_SERVERS, or starts a throwaway local one.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import orjson

from bench.common import bootstrap, produce, timed_flow
from dataflows.clickstream import Event, events
from tests.support.clickhouse import query_rows
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig
from waxhouse.fields import parse_timestamp

Kind = Literal["backfill", "live-like"]
KINDS: tuple[Kind, Kind] = ("backfill", "live-like")
TABLES = ("page_stats", "user_sessions", "dead_letters")

SPAN_MS = 6 * 3600 * 1000
USERS = 10_000
PARTITIONS = 4
WINDOW_SECONDS = 60  # passed to the flow; the live-like shift is a whole number of windows
TARGET_RATIO = 0.8

_SUMMARY = re.compile(
    r"waxhouse: ([\d,]+) records in [\d.]+ s \(([\d,]+) records/s\).*?"
    r"rows in ClickHouse page_stats ([\d,]+), user_sessions ([\d,]+), dead_letters ([\d,]+)",
    re.DOTALL,
)

# One fingerprint per table over its whole content, times taken back by {shift} ms and the
# topic name cut from dead-letter sources: equal fingerprints mean equal contents up to the
# shift. (A late event's payload carries its own, shifted, `ts`, so payloads are left out.)
_FINGERPRINTS = {
    "page_stats": """
        SELECT count(), sum(cityHash64(
            toUnixTimestamp64Milli(window_start) - {shift:Int64},
            toUnixTimestamp64Milli(window_end) - {shift:Int64},
            page, views, clicks, add_to_carts, purchases, toString(revenue), unique_users))
        FROM page_stats""",
    "user_sessions": """
        SELECT count(), sum(cityHash64(
            user_id,
            toUnixTimestamp64Milli(session_start) - {shift:Int64},
            toUnixTimestamp64Milli(session_end) - {shift:Int64},
            events, page_views, purchases, toString(revenue), entry_page, exit_page))
        FROM user_sessions""",
    "dead_letters": """
        SELECT count(), sum(cityHash64(
            arrayStringConcat(arraySlice(splitByChar('/', source), -2), '/'),
            reason, error, toUnixTimestamp64Milli(received_at) - {shift:Int64}))
        FROM dead_letters""",
}


@dataclass(frozen=True)
class DataShape:
    """What the generated records really hold."""

    records: int
    keys: int
    first_ms: int  # earliest record time
    last_ms: int  # latest record time

    @property
    def span_hours(self) -> float:
        return (self.last_ms - self.first_ms) / 3_600_000


@dataclass(frozen=True)
class RunResult:
    kind: Kind
    records: int
    rate: float  # records/s as the flow's summary prints it
    wall_s: float  # the whole command, interpreter start-up included
    rows: tuple[int, int, int]  # page_stats, user_sessions, dead_letters
    store: str


# -- the data ------------------------------------------------------------------------------


def generator_config(events: int, seed: int) -> GeneratorConfig:
    """`events` records over about SPAN_MS of event time, spread over USERS users.

    The generator keeps `active_users` users in a burst at once and draws each new burst's
    user from all `users`; with ~12 events a burst, 1M events make ~80k bursts, enough for
    practically every one of the 10,000 users to appear (the actual count is printed).
    """
    return GeneratorConfig(seed=seed, events=events, users=USERS, mean_interval_ms=SPAN_MS / events)


def generate(config: GeneratorConfig) -> list[GeneratedRecord]:
    return ClickstreamGenerator(config).take(config.events)


def shape_of(records: list[GeneratedRecord]) -> DataShape:
    times = [r.timestamp_ms for r in records]
    return DataShape(len(records), len({r.key for r in records}), min(times), max(times))


def live_shift_ms(last_ms: int, now_ms: int) -> int:
    """The largest whole number of windows that moves `last_ms` to no later than now."""
    window_ms = WINDOW_SECONDS * 1000
    return (now_ms - last_ms) // window_ms * window_ms


def shift_ts(raw: object, shift_ms: int) -> object:
    """A valid `ts` moved by `shift_ms`, written in the same form as before."""
    if isinstance(raw, int):
        return raw + shift_ms
    if not isinstance(raw, str):
        raise TypeError(f"not a valid ts: {raw!r}")
    moment = datetime.fromisoformat(raw) + timedelta(milliseconds=shift_ms)
    fraction = re.search(r"\.(\d+)", raw)
    digits = len(fraction.group(1)) if fraction else 0
    timespec = {0: "seconds", 3: "milliseconds", 6: "microseconds"}[digits]
    if raw[-1] in "Zz":
        text = moment.astimezone(timezone.utc).isoformat(timespec=timespec)
        return text.removesuffix("+00:00") + raw[-1]
    return moment.isoformat(timespec=timespec)


def shift_record(record: GeneratedRecord, shift_ms: int) -> GeneratedRecord:
    """The same record `shift_ms` later: its record time and, if it is a valid event, `ts`."""
    value = record.value
    parsed = events.parse_record(value, "", record.n, record.timestamp_ms)
    if isinstance(parsed, Event):
        event = orjson.loads(value)
        event["ts"] = shift_ts(event["ts"], shift_ms)
        if parse_timestamp(event["ts"]) != parsed.ts + shift_ms:
            raise RuntimeError(f"shifting ts {event['ts']!r} by {shift_ms} ms went wrong")
        value = orjson.dumps(event)
    return record._replace(value=value, timestamp_ms=record.timestamp_ms + shift_ms)


# -- the runs ------------------------------------------------------------------------------


def timed_run(kind: Kind, env: Mapping[str, str], store: str) -> RunResult:
    stdout, wall = timed_flow(env)
    match = _SUMMARY.search(stdout)
    if match is None:
        raise RuntimeError(f"unexpected run summary:\n{stdout}")
    records, rate, *rows = (int(group.replace(",", "")) for group in match.groups())
    page_stats, sessions, dead = rows
    return RunResult(kind, records, float(rate), wall, (page_stats, sessions, dead), store)


def flow_env(servers: str, topic: str, store: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_STOP_AT_END": "true",
        "WINDOW_SECONDS": str(WINDOW_SECONDS),
        "CLICKHOUSE_URL": store,
    }


def run_order(repeat: int) -> list[Kind]:
    """ABBA...: each kind goes first in every other round."""
    order: list[Kind] = []
    for i in range(repeat):
        order.extend(KINDS if i % 2 == 0 else KINDS[::-1])
    return order


def fingerprint(store: str, shift_ms: int) -> dict[str, tuple[int, int]]:
    """Per table: (rows, content hash with times moved back by `shift_ms`)."""
    prints = {}
    for table, sql in _FINGERPRINTS.items():
        ((count, digest),) = query_rows(store, sql, {"shift": shift_ms})
        prints[table] = (int(count), int(digest))
    return prints


# -- the report ----------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _median(runs: list[RunResult], attr: Literal["rate", "wall_s"]) -> float:
    return statistics.median(getattr(run, attr) for run in runs)


def report(
    command: str,
    shape: DataShape,
    shift_ms: int,
    results: list[RunResult],
    prints: Mapping[Kind, dict[str, tuple[int, int]]],
) -> None:
    by_kind = {kind: [r for r in results if r.kind == kind] for kind in KINDS}
    repeat = len(by_kind["backfill"])
    print()
    print(f"`{command}`")
    print()
    print(
        f"{shape.records:,} records, {shape.keys:,} keys (user_id), {shape.span_hours:.2f} h of "
        f"record time, {PARTITIONS} partitions; backfill {_iso(shape.first_ms)} .. "
        f"{_iso(shape.last_ms)}, live-like shifted by {shift_ms / 86_400_000:.2f} days to end "
        f"at {_iso(shape.last_ms + shift_ms)}. Median of {repeat} bounded runs each, ABBA order."
    )
    print()
    print("| topic | records/s (flow) | wall s (command) | records/s of each run |")
    print("| --- | ---: | ---: | --- |")
    for kind, runs in by_kind.items():
        each = ", ".join(f"{r.rate:,.0f}" for r in runs)
        print(f"| {kind} | {_median(runs, 'rate'):,.0f} | {_median(runs, 'wall_s'):.1f} | {each} |")
    rate_ratio = _median(by_kind["backfill"], "rate") / _median(by_kind["live-like"], "rate")
    wall_ratio = _median(by_kind["live-like"], "wall_s") / _median(by_kind["backfill"], "wall_s")
    verdict = "met" if rate_ratio >= TARGET_RATIO else "NOT met"
    print(
        f"| **backfill / live-like** | **{rate_ratio:.2f}** | {wall_ratio:.2f} (speed) | "
        f"target >= {TARGET_RATIO}: {verdict} |"
    )
    print()
    print("| table | backfill rows | live-like rows | same in every run | same up to the shift |")
    print("| --- | ---: | ---: | --- | --- |")
    for i, table in enumerate(TABLES):
        counts = {kind: {r.rows[i] for r in runs} for kind, runs in by_kind.items()}
        stable = all(len(c) == 1 for c in counts.values())
        same = prints["backfill"][table] == prints["live-like"][table]
        cells = [", ".join(f"{n:,}" for n in sorted(counts[kind])) for kind in KINDS]
        print(
            f"| {table} | {cells[0]} | {cells[1]} | {'yes' if stable else 'NO'} | "
            f"{'yes' if same else 'NO'} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    command = " ".join(["python -m bench.replay", *sys.argv[1:]])

    config = generator_config(args.events, args.seed)
    print(f"generating {args.events:,} records ...", flush=True)
    records = generate(config)
    shape = shape_of(records)
    now_ms = int(time.time() * 1000)
    if shape.last_ms > now_ms - SPAN_MS:
        raise SystemExit("the generated records are not old: use an earlier start_ms")
    shift_ms = live_shift_ms(shape.last_ms, now_ms)

    results: list[RunResult] = []
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        prefix = f"replay-{uuid.uuid4().hex[:8]}"
        topics: dict[Kind, str] = {kind: f"{prefix}-{kind}" for kind in KINDS}
        for topic in topics.values():
            create_topic(servers, topic, PARTITIONS)
            create_topic(servers, f"{topic}.dlq", 1)
        print(f"producing to {topics['backfill']} ...", flush=True)
        produce(servers, topics["backfill"], records)
        print(f"producing to {topics['live-like']} (shifted) ...", flush=True)
        produce(servers, topics["live-like"], (shift_record(r, shift_ms) for r in records))
        del records

        for n, kind in enumerate(run_order(args.repeat)):
            store = f"chdb://{scratch}/{kind}-{n}"
            result = timed_run(kind, flow_env(servers, topics[kind], store), store)
            print(f"run {n + 1}: {kind:<9} {result.rate:>10,.0f} records/s {result.wall_s:6.1f} s")
            if result.records != shape.records:
                raise RuntimeError(f"{kind} run read {result.records:,} of {shape.records:,}")
            results.append(result)

        # After every timed run, so no engine in this process competes with a flow.
        first = {kind: next(r.store for r in results if r.kind == kind) for kind in KINDS}
        prints: dict[Kind, dict[str, tuple[int, int]]] = {
            "backfill": fingerprint(first["backfill"], 0),
            "live-like": fingerprint(first["live-like"], shift_ms),
        }
    report(command, shape, shift_ms, results, prints)


if __name__ == "__main__":
    main()
