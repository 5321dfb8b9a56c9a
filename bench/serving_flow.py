"""The serving benchmark's first part: the clickstream flow with its Redis sink on and off.

Both inputs (`bench.compare`'s benchmark shape and `bench.realistic`) are produced once to
fresh 4-partition topics; each round then drains each topic twice in bounded mode, once
with `REDIS_URL` (a fresh database of the benchmark's redis-server) and once without, the
order alternating between rounds, each run into a fresh chDB store with recovery off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.common import bounded_env, produce, summary_rate
from bench.compare import BENCHMARK_SHAPE
from bench.realistic import RealisticConfig, RealisticGenerator
from tests.support.flow import REPO, flow_env
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

TICKS = os.sysconf("SC_CLK_TCK")
INPUTS = ("benchmark", "realistic")
LIVE_TABLES = ("page_stats", "user_sessions")


@dataclass
class FlowRun:
    """One bounded run of the flow."""

    records: int
    rate: float  # the flow's own summary: records over its start to its last write
    command_rate: float  # records over the whole command, interpreter start-up included
    cpu: float  # the command's CPU seconds
    redis_cpu: float = 0.0  # redis-server's CPU seconds over the run
    keys: dict[str, int] = field(default_factory=dict)  # row hashes per live table
    stream: dict[str, int] = field(default_factory=dict)  # stream entries per live table


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fill(servers: str, events: int, seed: int) -> dict[str, str]:
    """The two inputs' topics, filled; their names by input."""
    tag = uuid.uuid4().hex[:8]
    topics = {}
    for name in INPUTS:
        topic = f"serving-{name}-{tag}"
        create_topic(servers, topic, 4)
        create_topic(servers, f"{topic}.dlq", 1)
        if name == "benchmark":
            config = GeneratorConfig(seed=seed, events=events, **BENCHMARK_SHAPE)
            produce(servers, topic, ClickstreamGenerator(config).take(events))
        else:
            produce(servers, topic, RealisticGenerator(RealisticConfig(seed=seed, events=events)))
        topics[name] = topic
    return topics


def drain(
    servers: str,
    topic: str,
    redis_url: str | None,
    redis_pid: int,
    settings: Mapping[str, str] | None = None,
) -> FlowRun:
    """One bounded run of `python -m bytewax.run dataflows.clickstream` over `topic`, with
    its live tables in Redis at `redis_url` (emptied first) or without Redis; `settings`
    added to its environment."""
    store = Path(tempfile.mkdtemp(prefix="bench-serving-")) / "store"
    env = flow_env(bounded_env(servers, topic, store))
    for name in [k for k in env if k.startswith(("REDIS_", "SERVE_"))]:
        del env[name]
    if redis_url is not None:
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()
        env["REDIS_URL"] = redis_url
    env.update(settings or {})
    redis0 = cpu_of(redis_pid)
    _children_cpu()
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.clickstream"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = child.communicate(timeout=600)
    wall = time.monotonic() - started
    if child.returncode != 0:
        raise RuntimeError(f"the flow failed ({child.returncode}):\n{stderr[-3000:]}")
    records, rate = summary_rate(stdout)
    run = FlowRun(records, rate, records / wall, _children_cpu(), cpu_of(redis_pid) - redis0)
    if redis_url is not None:
        with redis.Redis.from_url(redis_url) as client:
            for table in LIVE_TABLES:
                namespace = f"wh:clickstream:{table}"
                run.keys[table] = sum(
                    1 for _ in client.scan_iter(match=f"{namespace}:r:*", count=10_000)
                )
                run.stream[table] = int(client.xlen(f"{namespace}:s"))
    return run


def _children_cpu() -> float:
    """CPU seconds of the children reaped since the last call (the flow just run)."""
    times = os.times()
    total = times.children_user + times.children_system
    spent, _REAPED[0] = total - _REAPED[0], total
    return spent


_REAPED = [os.times().children_user + os.times().children_system]
