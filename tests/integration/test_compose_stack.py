"""The compose stack's wiring, run without Docker: each service's own configuration from
docker/compose.yaml (interpolated with docker/.env.example), started as a real process.

- `kafka`: a real KRaft broker (the same Kafka version, from our Maven jars) with exactly
  the server properties the apache/kafka image builds from the service's environment, and
  its CLUSTER_ID. Only addresses change: each listener moves to a free loopback port, and
  the host names `kafka`/`localhost` become 127.0.0.1.
- `kafka-topics`: the topics its command creates, with its partition counts.
- `schema`, `loadgen`, `clickstream`: their commands and environments, with `kafka:9092`
  pointing at the broker's in-network listener (INTERNAL) and the ClickHouse server's URL
  replaced by an embedded store. The load generator gets `--events` and the flow
  `KAFKA_STOP_AT_END=true`, so the run is bounded.
- `gateway`: `waxhouse gateway` with its environment (the token from `.env.example`), on a
  free loopback port instead of 0.0.0.0:8080; events posted to it are counted by the flow
  beside the load generator's, and a reading lands on the sensors flow's topic.

What it proves: the broker configuration is complete and consistent (a broker and
controller in one process, both listeners serving clients), the services reach it under
the names they are given, the flow accepts the settings it is given (including waiting for
the schema service's tables), and every produced event, the gateway's included, lands in
the tables.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.support.clickhouse import query_rows
from tests.support.compose import (
    COMPOSE_PATH,
    ENV_EXAMPLE_PATH,
    interpolate,
    kafka_properties,
    read_env_file,
)
from tests.support.flow import REPO, run_python
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.kafka_broker import LOOPBACK, BrokerPorts, KafkaBroker, create_topic
from tests.support.live import clickstream_live, redis_rows

pytestmark = pytest.mark.integration

EVENTS = 3_000
READINGS = 2_000
GATEWAY_BATCHES = 2  # requests of GATEWAY_BATCH events each, posted to the gateway
GATEWAY_BATCH = 100
LISTENER = re.compile(r"(?P<name>[A-Z_]+)://(?P<host>[^:,]*):(?P<port>\d+)")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))
    stack: dict[str, dict[str, Any]] = interpolate(compose, read_env_file(ENV_EXAMPLE_PATH))[
        "services"
    ]
    return stack


class Listeners:
    """Where the compose broker's listeners go on this machine: the one clients on the host
    use (HOST) on the broker's port, the controller on the controller port, every other
    one (INTERNAL, for the compose network) on a port of its own."""

    def __init__(self, internal_port: int) -> None:
        self.internal_port = internal_port
        self.ports: BrokerPorts | None = None

    def port(self, name: str) -> int:
        assert self.ports is not None, "the broker has not been prepared"
        return {"HOST": self.ports.broker, "CONTROLLER": self.ports.controller}.get(
            name, self.internal_port
        )

    def relocate(self, listeners: str) -> str:
        def moved(found: re.Match[str]) -> str:
            name = found.group("name")
            assert found.group("host") in ("", "kafka", "localhost"), found.group(0)
            return f"{name}://{LOOPBACK}:{self.port(name)}"

        return LISTENER.sub(moved, listeners)

    def properties(self, environment: Mapping[str, Any], data_dir: Path) -> str:
        props = kafka_properties(environment)
        for key in ("listeners", "advertised.listeners"):
            props[key] = self.relocate(props[key])
        voters = re.fullmatch(r"(\d+)@(?:localhost|kafka):\d+", props["controller.quorum.voters"])
        assert voters, props["controller.quorum.voters"]
        props["controller.quorum.voters"] = (
            f"{voters.group(1)}@{LOOPBACK}:{self.port('CONTROLLER')}"
        )
        props["log.dirs"] = str(data_dir)
        return "".join(f"{key}={value}\n" for key, value in sorted(props.items()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def broker(services: dict[str, dict[str, Any]]) -> Iterator[tuple[KafkaBroker, Listeners]]:
    environment = services["kafka"]["environment"]
    listeners = Listeners(internal_port=free_port())

    def properties(ports: BrokerPorts, data_dir: Path) -> str:
        listeners.ports = ports
        return listeners.properties(environment, data_dir)

    broker = KafkaBroker(properties=properties, cluster_id=environment["CLUSTER_ID"])
    broker.start()
    try:
        yield broker, listeners
    finally:
        broker.stop()


def on_this_machine(
    environment: Mapping[str, Any],
    internal: str,
    store_url: str,
    tmp_path: Path,
    redis_url: str = "",
) -> dict[str, str]:
    """A service's environment with the compose network's names replaced."""
    env = {name: str(value) for name, value in environment.items()}
    if "REDIS_URL" in env:
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        env["REDIS_URL"] = redis_url
    if "KAFKA_BOOTSTRAP_SERVERS" in env:
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        env["KAFKA_BOOTSTRAP_SERVERS"] = internal
    if "CLICKHOUSE_URL" in env:
        assert re.fullmatch(r"http://[^:]+:[^@]+@clickhouse:8123/\w+", env["CLICKHOUSE_URL"])
        env["CLICKHOUSE_URL"] = store_url
    if "BYTEWAX_RECOVERY_DIRECTORY" in env:
        env["BYTEWAX_RECOVERY_DIRECTORY"] = str(tmp_path / "recovery")
    # The image sets it (to a directory of its own); here, keep dataflow.json out of the repo.
    env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(tmp_path)
    return env


def image_command() -> list[str]:
    """The waxhouse image's default command (the Dockerfile's CMD)."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    command: list[str] = json.loads(cmd)
    return command


def run(command: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """A container's command, here: `python` is this interpreter, `waxhouse` the CLI."""
    program = {"python": [], "waxhouse": ["-m", "waxhouse.cli"]}
    return run_python([*program[command[0]], *command[1:]], env)


def post_json(url: str, body: object, token: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        orjson.dumps(body),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status), orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return int(e.code), {"body": e.read().decode(errors="replace")}


def start_gateway_service(
    services: dict[str, dict[str, Any]], internal: str, log: Path
) -> tuple[GatewayProcess, str]:
    """The `gateway` service's command and environment (on a free loopback port instead of
    0.0.0.0:8080), and the first token it was given."""
    service = services["gateway"]
    assert service["command"] == ["waxhouse", "gateway"]  # all routes: start_gateway's default
    env = {name: str(value) for name, value in service["environment"].items()}
    assert env.pop("KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092"
    assert env.pop("GATEWAY_LISTEN") == "0.0.0.0:8080"  # start_gateway picks a loopback port
    return start_gateway(internal, env=env, log_path=log), env["GATEWAY_TOKENS"].split(",")[0]


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_both_listeners_of_the_compose_broker_serve_clients(
    broker: tuple[KafkaBroker, Listeners],
) -> None:
    _, listeners = broker
    # The advertised addresses are the relocated ones: a client bootstrapping on either
    # listener is sent back to the same listener.
    for port in (listeners.port("HOST"), listeners.port("INTERNAL")):
        address = f"{LOOPBACK}:{port}"
        create_topic(address, name := f"listener-{port}", 1)
        producer = KafkaProducer(bootstrap_servers=address, acks="all")
        producer.send(name, b"ping").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
        consumer.assign([TopicPartition(name, 0)])
        consumer.seek_to_beginning()
        records = consumer.poll(timeout_ms=10_000)
        consumer.close()
        assert [r.value for batch in records.values() for r in batch] == [b"ping"]


@pytest.mark.slow  # two bounded flow runs: about a minute and a half
def test_the_stack_runs_end_to_end(
    broker: tuple[KafkaBroker, Listeners],
    services: dict[str, dict[str, Any]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    _, listeners = broker
    internal = f"{LOOPBACK}:{listeners.port('INTERNAL')}"
    store_url = f"chdb://{tmp_path / 'store'}"

    # kafka-topics: the topics and partition counts of its command.
    script = " ".join(services["kafka-topics"]["command"])
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", script))
    assert set(created) == {
        "events",
        "events.dlq",
        "readings",
        "readings.dlq",
        "devices",
        "alerts",
    }, script
    for topic, partitions in created.items():
        create_topic(internal, topic, int(partitions))

    def service_env(name: str) -> dict[str, str]:
        environment = services[name]["environment"]
        return on_this_machine(environment, internal, store_url, tmp_path, redis_url)

    shell, flag, script = services["schema"]["command"]
    assert (shell, flag) == ("sh", "-c")
    for command in script.split(" && "):  # both flows' tables
        schema = run(shlex.split(command), service_env("schema"))
        assert schema.returncode == 0, schema.stderr
        assert "Schema is up to date" in schema.stdout

    loadgen = services["loadgen"]["command"]
    produced = run([*loadgen, "--events", str(EVENTS), "--seed", "3"], service_env("loadgen"))
    assert produced.returncode == 0, produced.stdout + produced.stderr
    assert f"produced {EVENTS} records into events" in produced.stdout + produced.stderr

    # The gateway: events after the load generator's (newer, so none is late), acknowledged.
    gateway, token = start_gateway_service(services, internal, tmp_path / "gateway.log")
    with gateway:
        now_ms = int(time.time() * 1000)
        for b in range(GATEWAY_BATCHES):
            batch = [
                {
                    "event_id": f"gw-{b}-{n}",
                    "user_id": f"gw-user-{n % 10}",
                    "type": "page_view",
                    "page": f"/gw/{n % 3}",
                    "ts": now_ms + b * GATEWAY_BATCH + n,
                }
                for n in range(GATEWAY_BATCH)
            ]
            status, answer = post_json(gateway.url + "/v1/events", batch, token)
            assert (status, answer.get("accepted")) == (200, GATEWAY_BATCH), answer
        sent = EVENTS + GATEWAY_BATCHES * GATEWAY_BATCH
        assert end_offsets(internal, "events") == sent

        flow_command = services["clickstream"].get("command") or image_command()
        env = service_env("clickstream") | {"KAFKA_STOP_AT_END": "true"}
        assert env["CLICKHOUSE_CREATE_SCHEMA"] == "false"  # so it relies on the schema service
        flow = run(flow_command, env)
        assert flow.returncode == 0, flow.stderr[-4000:]

        summary = re.search(
            r"waxhouse: ([\d,]+) records .*?valid events\s+([\d,]+)", flow.stdout, re.S
        )
        assert summary, flow.stdout
        records, valid = (int(g.replace(",", "")) for g in summary.groups())
        assert records == sent
        letters = query_rows(store_url, "SELECT count() FROM dead_letters")[0][0]
        assert valid + letters == sent and valid > 0.95 * sent
        gateway_rows = query_rows(
            store_url, "SELECT sum(views) FROM page_stats WHERE startsWith(page, '/gw/')"
        )
        assert gateway_rows[0][0] == GATEWAY_BATCHES * GATEWAY_BATCH
        views = query_rows(
            store_url, "SELECT sum(views + clicks + add_to_carts + purchases) FROM page_stats"
        )
        sessions = query_rows(store_url, "SELECT sum(events) FROM user_sessions")
        assert views[0][0] == sessions[0][0] == valid
        assert os.path.isdir(env["BYTEWAX_RECOVERY_DIRECTORY"])
        # The live tables reached the compose stack's Redis, row for row.
        live = clickstream_live()
        for name in ("page_stats", "user_sessions"):
            stored = query_rows(store_url, f"SELECT count() FROM {name}")[0][0]  # noqa: S608
            assert len(redis_rows(redis_url, live[name])) == stored > 0, name

        # The sensors flow: its load generator's readings and registry, through its service.
        loadgen = services["sensors-loadgen"]["command"]
        produced = run(
            [*loadgen, "--events", str(READINGS), "--seed", "5"], service_env("sensors-loadgen")
        )
        assert produced.returncode == 0, produced.stdout + produced.stderr
        assert f"produced {READINGS} records into readings" in produced.stdout + produced.stderr
        sensors_env = service_env("sensors") | {"KAFKA_STOP_AT_END": "true"}
        sensors_env["BYTEWAX_RECOVERY_DIRECTORY"] = str(tmp_path / "sensors-recovery")
        flow = run(services["sensors"]["command"], sensors_env)
        assert flow.returncode == 0, flow.stderr[-4000:]
        summary = re.search(r"valid events\s+([\d,]+)\s+reference\s+([\d,]+) versions", flow.stdout)
        assert summary, flow.stdout
        valid, versions = (int(g.replace(",", "")) for g in summary.groups())
        rejected = query_rows(
            store_url,
            "SELECT count() FROM dead_letters"
            " WHERE startsWith(source, 'readings/') AND reason != 'late'",  # late ones are valid
        )[0][0]
        assert valid + rejected == READINGS and valid > 0.95 * READINGS and versions > 0
        batched = query_rows(store_url, "SELECT sum(readings) FROM device_batches")[0][0]
        assert batched == valid  # every valid reading in its device's batches

        # The sensors flow's topic, through the gateway's other route.
        reading = {"reading_id": "gw-r-1", "device_id": "gw-d-1", "ts": now_ms, "temperature": 21.5}
        before = end_offsets(internal, "readings")
        status, answer = post_json(gateway.url + "/v1/readings", [reading], token)
        assert (status, answer.get("accepted")) == (200, 1), answer
        assert end_offsets(internal, "readings") == before + 1
        assert gateway.stop() == 0, gateway.output()[-3000:]
    assert token not in gateway.output(), "the gateway logged its token"
