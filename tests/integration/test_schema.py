"""The schema: its replicated variant, and a flow that waits for a schema applied by others.

The replicated DDL cannot run without ClickHouse Keeper, but the real engine's parser
(`formatQuery`) must accept every statement as written, and the variant must differ from
the single-server DDL only in `ON CLUSTER` and the engine names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from tests.support.clickstream import STATEMENTS, TABLES
from tests.support.flow import run_cli
from waxhouse.connectors.clickhouse import ClickHouseSink, RetryPolicy
from waxhouse.connectors.clickhouse_store import (
    ensure_schema,
    missing_schema_objects,
    open_client,
    parse_clickhouse_url,
    schema_objects,
    schema_statements,
    wait_for_schema,
)
from waxhouse.errors import SinkError

pytestmark = pytest.mark.integration

OBJECTS = [
    "page_stats_data",
    "page_stats",
    "user_sessions_data",
    "user_sessions",
    "dead_letters_data",
    "dead_letters",
]


@pytest.fixture
def empty(store_url: str) -> Iterator[Client]:
    client = open_client(parse_clickhouse_url(store_url))
    try:
        yield client
    finally:
        client.close()


def test_the_schema_creates_three_tables_and_their_views() -> None:
    assert schema_objects(STATEMENTS) == OBJECTS


def test_the_replicated_variant_changes_only_cluster_and_engines(empty: Client) -> None:
    plain = schema_statements(STATEMENTS)
    replicated = schema_statements(STATEMENTS, "prod-eu")
    assert [name for name, _ in replicated] == [name for name, _ in plain]
    for (name, single), (_, statement) in zip(plain, replicated, strict=True):
        assert statement.count(" ON CLUSTER `prod-eu`") == 1, name
        engines = re.findall(r"ENGINE = (\w+)", statement)
        assert all(e.startswith("Replicated") and e.endswith("MergeTree") for e in engines)
        assert ("_data" in name) == bool(engines), name
        undone = statement.replace(" ON CLUSTER `prod-eu`", "").replace("Replicated", "")
        assert undone == single, name
        # The engine's own parser accepts it and reads the cluster and engine back.
        (formatted,) = empty.query(
            "SELECT formatQuery({q:String})", parameters={"q": statement}
        ).result_rows[0]
        assert "ON CLUSTER `prod-eu`" in formatted, formatted
        assert all(f"ENGINE = {e}" in formatted for e in engines), formatted


def test_waiting_for_the_schema_fails_naming_what_is_missing(empty: Client) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with pytest.raises(SinkError, match="apply the schema with `waxhouse schema`") as caught:
        wait_for_schema(
            empty, STATEMENTS, 10.0, poll_seconds=2.0, sleep=sleep, clock=lambda: now[0]
        )
    assert all(name in str(caught.value) for name in OBJECTS)
    assert sleeps == [2.0] * 5
    assert missing_schema_objects(empty, STATEMENTS) == OBJECTS, "waiting created nothing"


def test_waiting_for_the_schema_returns_once_someone_applies_it(empty: Client) -> None:
    applied = []

    def apply_instead_of_sleeping(seconds: float) -> None:
        ensure_schema(empty, STATEMENTS)
        applied.append(seconds)

    wait_for_schema(empty, STATEMENTS, 60.0, sleep=apply_instead_of_sleeping, clock=lambda: 0.0)
    assert len(applied) == 1
    assert missing_schema_objects(empty, STATEMENTS) == []


def test_a_sink_that_must_not_create_the_schema_stops_without_it(store_url: str) -> None:
    sink = ClickHouseSink(
        store_url,
        TABLES,
        STATEMENTS,
        retry=RetryPolicy(max_attempts=1, max_elapsed_seconds=0),
        create_schema=False,
    )
    with pytest.raises(SinkError, match="page_stats_data"):
        sink.build_part("test", "clickhouse", None)
    client = open_client(parse_clickhouse_url(store_url))
    try:
        assert missing_schema_objects(client, STATEMENTS) == OBJECTS
    finally:
        client.close()


def test_the_schema_command_prints_applies_and_refuses_a_cluster_for_chdb(store_url: str) -> None:
    printed = run_cli(
        {"CLICKHOUSE_URL": store_url}, "schema", "--print", "--replicated", "--cluster", "prod"
    )
    assert printed.returncode == 0, printed.stderr
    for name, statement in schema_statements(STATEMENTS, "prod"):
        assert f"-- {name}\n{statement.strip()};" in printed.stdout

    half = run_cli({"CLICKHOUSE_URL": store_url}, "schema", "--replicated")
    assert half.returncode == 2 and "--replicated and --cluster go together" in half.stderr

    embedded = run_cli({"CLICKHOUSE_URL": store_url}, "schema", "--replicated", "--cluster", "prod")
    assert embedded.returncode == 2 and "has no cluster" in embedded.stderr

    applied = run_cli({"CLICKHOUSE_URL": store_url}, "schema")
    assert applied.returncode == 0, applied.stderr
    assert "Schema is up to date" in applied.stdout
    client = open_client(parse_clickhouse_url(store_url))
    try:
        assert missing_schema_objects(client, STATEMENTS) == []
    finally:
        client.close()
