"""Ours: `python -m bytewax.run dataflows.clickstream` in bounded mode into a fresh chDB store.

With `--check`, it only reads the results back from that store (a separate process, so
the queries are not part of the timed drain): the counts per page and window from
`page_stats`, and in the report's notes what the other outputs account for (dead letters
per reason, late ones per output they missed, events in `user_sessions`), from which
`bench.compare` checks that every record is accounted for. With `--flow-repo DIR` the flow is
the one of another checkout (its `dataflows`, `connectors` and `waxhouse` packages, run
from DIR), for a comparison with an earlier commit. `main(env)` runs it with extra
settings (`bench.peers.waxhouse_confluent`); the Kafka client the flow says it uses is
noted in the report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bench.common import summary_rate
from bench.peers._job import Report, arguments, count_key
from tests.support.clickhouse import query_rows
from tests.support.flow import REPO, flow_command, flow_env

_CLIENT = re.compile(r"'kafka_client': '([\w-]+)'")
COUNTS_SQL = """
    SELECT page, toUnixTimestamp64Milli(window_start), views + clicks + add_to_carts + purchases
    FROM page_stats"""
# Late dead letters name the outputs they missed in `error` ("missed page_stats, ...").
DEAD_LETTERS_SQL = """
    SELECT reason, count(),
        countIf(position(error, 'page_stats') > 0), countIf(position(error, 'user_sessions') > 0)
    FROM dead_letters GROUP BY reason"""
SESSION_EVENTS_SQL = "SELECT sum(events) FROM user_sessions"


def store_url(out: Path) -> str:
    return f"chdb://{out.resolve().with_suffix('.chdb')}"


def drain(
    servers: str, topic: str, out: Path, extra_env: Mapping[str, str], repo: Path = REPO
) -> None:
    report = Report()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": store_url(out),
        **extra_env,
    }
    done = subprocess.run(
        flow_command(), cwd=repo, env=flow_env(env), capture_output=True, text=True, check=False
    )
    report.stop()
    if done.returncode != 0 or "records/s" not in done.stdout:
        sys.exit(f"the flow failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    records, rate = summary_rate(done.stdout)
    report.notes["command_seconds"] = report.seconds
    client = _CLIENT.search(done.stdout + done.stderr)
    report.notes["kafka_client"] = client.group(1) if client else "unknown"
    report.records, report.seconds = records, records / rate  # the flow's own clock
    report.write(out)


def check(out: Path) -> None:
    report = Report()
    url = store_url(out)
    rows = query_rows(url, COUNTS_SQL)
    report.counts = {count_key(page, start): int(n) for page, start, n in rows}
    dead = query_rows(url, DEAD_LETTERS_SQL)
    report.notes["dead_letters"] = {reason: int(n) for reason, n, _, _ in dead}
    report.notes["late_missed"] = {
        "page_stats": sum(int(pages) for reason, _, pages, _ in dead if reason == "late"),
        "user_sessions": sum(int(users) for reason, _, _, users in dead if reason == "late"),
    }
    report.notes["session_events"] = int(query_rows(url, SESSION_EVENTS_SQL)[0][0] or 0)
    report.write(out.with_suffix(".counts.json"))


def main(extra_env: Mapping[str, str] | None = None) -> None:
    if "--check" in sys.argv:
        sys.argv.remove("--check")
        args = arguments(__doc__.splitlines()[0])
        check(args.out)
    else:
        args = arguments(__doc__.splitlines()[0])
        drain(args.bootstrap, args.topic, args.out, extra_env or {}, args.flow_repo or REPO)


if __name__ == "__main__":
    main()
