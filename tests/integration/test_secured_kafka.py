"""The flow against a secured Kafka: SASL_PLAINTEXT and SASL_SSL, SCRAM-SHA-512, both clients.

The records are written through the broker's PLAINTEXT listener; the flow reads them, and
its dead-letter producer writes the DLQ topic, only through the secured listener it is
given (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CAFILE`). Each bounded run's
tables equal the independent oracle, the DLQ topic holds every dead letter with its
headers, and the password is in neither the flow's output nor its metrics. A wrong
password makes the flow fail, with a non-zero exit and a message that says why.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.dlq import assert_dlq_equals_the_table, read_dlq
from tests.support.flow import run_flow, start_flow
from tests.support.kafka_broker import (
    SECURED_PROTOCOLS,
    KafkaBroker,
    SecuredProtocol,
    TopicFactory,
)
from tests.support.oracle import Expected, oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig
from waxhouse.settings import KAFKA_CLIENTS, KafkaClient

pytestmark = pytest.mark.integration

SEED = 29
EVENTS = 3_000
PARTITIONS = 2
FLOW_TIMEOUT_S = 180
METRICS_DEADLINE_S = 60.0
WRONG_PASSWORD_DEADLINE_S = 60.0
WRONG_PASSWORD = "wrong-password-5be81d"


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)


@pytest.fixture(scope="module")
def expected(records: list[GeneratedRecord]) -> Expected:
    return oracle(records)


def client_env(client: KafkaClient) -> dict[str, str]:
    return {} if client == "kafka-python" else {"KAFKA_CLIENT": client}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("client", KAFKA_CLIENTS)
@pytest.mark.parametrize("protocol", SECURED_PROTOCOLS)
def test_a_bounded_run_through_a_secured_listener_equals_the_oracle(
    kafka_broker: KafkaBroker,
    topic_factory: TopicFactory,
    records: list[GeneratedRecord],
    expected: Expected,
    tmp_path: Path,
    protocol: SecuredProtocol,
    client: KafkaClient,
) -> None:
    listener = kafka_broker.secured_listener(protocol)
    topic, dlq = topic_factory(PARTITIONS, prefix="secured"), topic_factory(prefix="secured-dlq")
    positions = produce_records(kafka_broker.bootstrap_servers, topic, records)
    url = f"chdb://{tmp_path / 'store'}"

    done = run_flow(
        {
            **listener.flow_env(),
            **client_env(client),
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        },
        timeout_s=FLOW_TIMEOUT_S,
    )

    output = done.stdout + done.stderr
    assert f"'kafka_security_protocol': '{protocol}'" in output  # the settings it ran with
    assert listener.password not in output
    tables = read_tables(url, done.stdout)
    assert_tables_match(tables, expected, records, positions)
    # The flow's DLQ producer wrote every dead letter, with its headers, through the
    # secured listener (read back here through PLAINTEXT).
    assert len(tables.dead_letters) == len(expected.dead_letters) > 0
    assert_dlq_equals_the_table(read_dlq(kafka_broker.bootstrap_servers, dlq), tables)


def scrape(port: int) -> str | None:
    """The flow's `/metrics` exposition, or None while its API server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def consumed(exposition: str, topic: str) -> float:
    pattern = (
        rf"^waxhouse_records_consumed_total\{{[^}}]*topic=\"{re.escape(topic)}\"[^}}]*\}} (\S+)$"
    )
    return sum(float(value) for value in re.findall(pattern, exposition, re.M))


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.parametrize("client", KAFKA_CLIENTS)
def test_the_password_is_not_in_a_live_flows_metrics_or_output(
    kafka_broker: KafkaBroker,
    topic_factory: TopicFactory,
    records: list[GeneratedRecord],
    tmp_path: Path,
    client: KafkaClient,
) -> None:
    listener = kafka_broker.secured_listener("SASL_SSL")
    topic, dlq = topic_factory(PARTITIONS, prefix="secured"), topic_factory(prefix="secured-dlq")
    produce_records(kafka_broker.bootstrap_servers, topic, records)
    api_port, log = free_port(), tmp_path / "flow.log"

    flow = start_flow(
        {
            **listener.flow_env(),
            **client_env(client),
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(api_port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
        },
        log,
    )
    try:
        # Live: it never ends. Scrape until every record has been consumed.
        deadline = time.monotonic() + METRICS_DEADLINE_S
        exposition = scrape(api_port)
        while exposition is None or consumed(exposition, topic) < EVENTS:
            assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, (
                f"not every record consumed within {METRICS_DEADLINE_S:.0f} s\n"
                + log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.5)
            exposition = scrape(api_port)
    finally:
        stop(flow)

    assert consumed(exposition, topic) == EVENTS
    assert "waxhouse_dead_letters_total{" in exposition
    assert listener.password not in exposition
    output = log.read_text(errors="replace")
    assert "starts at offset" in output
    assert listener.password not in output


@pytest.mark.slow
def test_a_wrong_password_fails_the_flow_and_says_why(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Both clients at once (one deadline for both): each run must exit non-zero in time."""
    listener = kafka_broker.secured_listener("SASL_SSL")
    topic, dlq = topic_factory(prefix="secured"), topic_factory(prefix="secured-dlq")
    flows: dict[KafkaClient, tuple[subprocess.Popen[bytes], Path]] = {}
    for client in KAFKA_CLIENTS:
        log = tmp_path / f"{client}.log"
        env = {
            **listener.flow_env(password=WRONG_PASSWORD),
            **client_env(client),
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": f"chdb://{tmp_path / client}",
        }
        flows[client] = (start_flow(env, log), log)

    deadline = time.monotonic() + WRONG_PASSWORD_DEADLINE_S
    codes: dict[KafkaClient, int | None] = {}
    for client, (flow, _) in flows.items():
        try:
            codes[client] = flow.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            flow.kill()  # no SIGTERM grace: a run stuck retrying gains nothing from it
            flow.wait(timeout=30)
            codes[client] = None

    problems = []
    for client, (_, log) in flows.items():
        output = log.read_text(errors="replace")
        assert WRONG_PASSWORD not in output
        assert listener.password not in output
        if codes[client] is None:
            problems.append(
                f"{client}: still running after {WRONG_PASSWORD_DEADLINE_S:.0f} s instead of "
                f"failing; its output:\n{output[-2500:]}"
            )
        elif codes[client] == 0 or not re.search(r"authentication", output, re.I):
            problems.append(f"{client}: exit {codes[client]}, output:\n{output[-2500:]}")
    if problems:
        pytest.fail("with a wrong password:\n" + "\n\n".join(problems))
