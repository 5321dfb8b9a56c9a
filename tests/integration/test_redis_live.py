"""The clickstream with its live tables in a real Redis: kill -9 in the middle of Redis
writes, several times, then Redis holds exactly ClickHouse's final rows, key for key."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_recovery import kafka_env, kill9, wait_started
from tests.support.clickhouse import view_rows
from tests.support.flow import recovery_args, run_flow, start_flow
from tests.support.kafka_broker import TopicFactory
from tests.support.live import clickstream_live, provisional_rows, redis_rows
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_kill_9_mid_redis_writes_then_redis_equals_clickhouse_key_for_key(
    kafka_bootstrap: str, topic_factory: TopicFactory, redis_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    print(f"kill test seed {seed} (KILL_TEST_SEED={seed} runs it again)")
    records = ClickstreamGenerator(GeneratorConfig(seed=seed, events=120_000)).take(120_000)
    topic, dlq = topic_factory(4, prefix="live"), topic_factory(1, prefix="live-dlq")
    positions = produce_records(kafka_bootstrap, topic, records)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = kafka_env(kafka_bootstrap, topic, dlq, url, REDIS_URL=redis_url)
    args = recovery_args(tmp_path / "recovery")

    # 1 and 3: kill -9 inside a Redis write (after its first script call reached Redis);
    # 2: kill -9 at a random moment of a live run.
    for run in (1, 2, 3):
        if run != 2:
            at = str(rng.randint(1, 4))
            flow = start_flow({**env, "FAULT_KILL_MID_REDIS": at}, log, args, faults=True)
            assert flow.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
        else:
            flow = start_flow(env, log, args)
            wait_started(flow, log, partitions=4, runs=run)
            time.sleep(rng.uniform(0.5, 2.0))
            kill9(flow)
    assert log.read_text().count("SIGKILL in the middle of a Redis write") == 2

    done = run_flow({**env, "KAFKA_STOP_AT_END": "true"}, args)
    expected = oracle(records)
    assert_tables_match(read_tables(url, done.stdout), expected, records, positions)
    live = clickstream_live()
    for name, table in live.items():
        kept = redis_rows(redis_url, table)
        columns = list(kept[0])
        stored = view_rows(url, name, columns)
        print(f"{name}: {len(kept)} rows in Redis, {len(stored)} in ClickHouse (seed {seed})")
        assert len(kept) == len(stored)
        assert kept == stored
        assert provisional_rows(redis_url, table) == 0
