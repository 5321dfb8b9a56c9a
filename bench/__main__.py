"""Every benchmark of the issue in one command, on one broker.

    python -m bench [--only compare,latency,memory,gateway] [--quick]

Runs `bench.compare` (throughput against the peers, with the targets), `bench.latency`
(live visibility of closed windows), `bench.memory` (RSS with 1,000,000 open sessions) and
`bench.gateway` (the ingestion gateway against its targets and its bare producer) one
after the other with their defaults, sharing one throwaway broker (or the one named by
KAFKA_BOOTSTRAP_SERVERS). Each prints its tables and writes `bench/results/<name>.md` and a
PNG chart. `--quick` runs small sizes, a smoke test in a few minutes, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import bootstrap
from tests.support.flow import REPO

FULL: dict[str, list[str]] = {
    "compare": [],
    "latency": [],
    "memory": [],
    "gateway": [],
    "serving": [],
}
QUICK: dict[str, list[str]] = {
    "compare": ["--events", "200000", "--repeat", "1"],
    "latency": ["--seconds", "100", "--capacity-events", "60000"],
    "memory": ["--events", "100000"],
    "gateway": ["--rounds", "1", "--seconds", "4", "--warmup", "1"],
    "serving": ["--rounds", "1", "--events", "30000", "--seconds", "4", "--sse-clients", "1000"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FULL), help="benchmarks, comma-separated")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(FULL)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    options = QUICK if args.quick else FULL

    failed = []
    with bootstrap() as servers:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers}
        for name in names:
            command = [sys.executable, "-m", f"bench.{name}", *options[name]]
            print(f"\n=== {' '.join(['python', *command[1:]])}", flush=True)
            started = time.monotonic()
            done = subprocess.run(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, check=False)
            print(f"=== {name}: exit {done.returncode} in {time.monotonic() - started:.0f} s")
            if done.returncode != 0:
                failed.append(name)
    print("\nresults: " + ", ".join(f"bench/results/{n}.md" for n in names if n not in failed))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
