"""Configuration: defaults, parsing, and one clear error naming the variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.flow import flow_command, flow_env
from waxhouse.errors import SettingsError
from waxhouse.settings import Settings, load_settings, mask_url


def test_defaults_are_embedded_mode_with_the_local_store() -> None:
    settings = load_settings({})
    assert settings.embedded
    assert settings.clickhouse_url == "chdb://" + os.path.abspath("./data/clickhouse")
    assert (settings.kafka_topic, settings.kafka_dlq_topic) == ("events", "events.dlq")
    assert (settings.window_ms, settings.lateness_ms, settings.session_gap_ms) == (
        60_000,
        10_000,
        1_800_000,
    )
    assert settings.kafka_starting_offset == "earliest"
    assert settings.kafka_stop_at_end is False
    assert settings.kafka_client == "kafka-python"
    assert settings.max_future_ms == 3_600_000


def test_the_clock_skew_guard_is_set_in_seconds() -> None:
    settings = load_settings({"EVENT_MAX_FUTURE_SECONDS": "90"})
    assert settings.max_future_ms == 90_000
    assert settings.describe()["event_max_future_seconds"] == 90
    assert load_settings({"EVENT_MAX_FUTURE_SECONDS": "0"}).max_future_ms == 0


@pytest.mark.parametrize(
    ("raw", "client"),
    [
        (None, "kafka-python"),
        ("", "kafka-python"),
        ("kafka-python", "kafka-python"),
        ("confluent", "confluent"),
        ("  confluent ", "confluent"),
    ],
)
def test_kafka_client_choice(raw: str | None, client: str) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    if raw is not None:
        env["KAFKA_CLIENT"] = raw
    settings = load_settings(env)
    assert settings.kafka_client == client
    assert settings.describe()["kafka_client"] == client


@pytest.mark.parametrize("raw", ["librdkafka", "Confluent", "confluent-kafka", "kafka_python"])
def test_an_unknown_kafka_client_fails_with_one_line_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings({"KAFKA_CLIENT": raw})
    assert str(failure.value) == (
        f"KAFKA_CLIENT must be one of kafka-python, confluent, got {raw!r}"
    )


def test_settings_built_in_code_reject_an_unknown_kafka_client() -> None:
    with pytest.raises(SettingsError, match=r"^KAFKA_CLIENT must be one of"):
        Settings(kafka_client="librdkafka")  # type: ignore[arg-type]


def test_kafka_mode_and_overrides() -> None:
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "KAFKA_STARTING_OFFSET": "latest",
            "KAFKA_STOP_AT_END": "true",
            "WINDOW_SECONDS": "30",
            "ALLOWED_LATENESS_SECONDS": "0",
            "CLICKHOUSE_URL": "https://u:p%40ss@ch.example:8443/analytics",
            "KAFKA_SASL_PASSWORD": "hunter2",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        }
    )
    assert not settings.embedded
    assert settings.kafka_starting_offset == "latest" and settings.kafka_stop_at_end
    assert (settings.window_ms, settings.lateness_ms) == (30_000, 0)
    assert settings.kafka_security.client_options()["sasl_plain_password"] == "hunter2"


@pytest.mark.parametrize(("raw", "create"), [(None, True), ("true", True), ("false", False)])
def test_the_flow_creates_the_schema_unless_told_not_to(raw: str | None, create: bool) -> None:
    env = {} if raw is None else {"CLICKHOUSE_CREATE_SCHEMA": raw}
    assert load_settings(env).clickhouse_create_schema is create


def test_secrets_never_show_in_repr_or_description() -> None:
    settings = load_settings(
        {
            "KAFKA_SASL_PASSWORD": "hunter2",
            "CLICKHOUSE_URL": "http://user:s3cret@localhost:8123/db",
        }
    )
    text = repr(settings) + str(settings.describe())
    assert "hunter2" not in text and "s3cret" not in text
    assert settings.describe()["clickhouse_url"] == "http://user:***@localhost:8123/db"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WINDOW_SECONDS": "abc"}, "WINDOW_SECONDS"),
        ({"WINDOW_SECONDS": "0"}, "WINDOW_SECONDS"),
        ({"ALLOWED_LATENESS_SECONDS": "-1"}, "ALLOWED_LATENESS_SECONDS"),
        ({"SESSION_GAP_SECONDS": "1.5"}, "SESSION_GAP_SECONDS"),
        ({"EVENT_MAX_FUTURE_SECONDS": "-1"}, "EVENT_MAX_FUTURE_SECONDS"),
        ({"EVENT_MAX_FUTURE_SECONDS": "an hour"}, "EVENT_MAX_FUTURE_SECONDS"),
        ({"KAFKA_STARTING_OFFSET": "middle"}, "KAFKA_STARTING_OFFSET"),
        ({"KAFKA_STOP_AT_END": "maybe"}, "KAFKA_STOP_AT_END"),
        ({"CLICKHOUSE_CREATE_SCHEMA": "later"}, "CLICKHOUSE_CREATE_SCHEMA"),
        ({"KAFKA_CLIENT": "rdkafka"}, "KAFKA_CLIENT"),
        ({"GENERATOR_EVENTS": "-5"}, "GENERATOR_EVENTS"),
        ({"GENERATOR_RATE": "fast"}, "GENERATOR_RATE"),
        ({"CLICKHOUSE_URL": "ftp://x"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "chdb://relative/path"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://:8123"}, "CLICKHOUSE_URL"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env)


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("chdb:///data/store") == "chdb:///data/store"
    assert mask_url("http://localhost:8123") == "http://localhost:8123"


def test_the_flow_fails_fast_with_one_line_on_bad_configuration() -> None:
    env = {**os.environ, "WINDOW_SECONDS": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.clickstream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert (
        lines[-1]
        == "waxhouse: invalid configuration: WINDOW_SECONDS must be a whole number, got 'soon'"
    )


def test_passwords_never_reach_the_logs_even_when_the_server_is_unreachable() -> None:
    env = {
        **os.environ,
        "CLICKHOUSE_URL": "http://analytics:ch-s3cret-pw@127.0.0.1:9/db",
        "CLICKHOUSE_RETRY_SECONDS": "1",
        "KAFKA_SASL_PASSWORD": "kafka-s3cret-pw",
        "GENERATOR_EVENTS": "1000",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.clickstream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0  # nothing listens on port 9: the sink gives up
    output = done.stdout + done.stderr
    assert "clickstream starting" in output and "analytics:***@127.0.0.1:9" in output
    assert "ch-s3cret-pw" not in output and "kafka-s3cret-pw" not in output


def test_passwords_never_reach_the_logs_or_the_metrics_endpoint(tmp_path: Path) -> None:
    """A flow whose ClickHouse is unreachable keeps retrying; meanwhile its /metrics
    endpoint (Bytewax's API server) and its log show neither password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = flow_env(
        {
            "CLICKHOUSE_URL": "http://analytics:ch-s3cret-pw@127.0.0.1:9/db",
            "CLICKHOUSE_RETRY_SECONDS": "60",
            "KAFKA_SASL_PASSWORD": "kafka-s3cret-pw",
            "GENERATOR_EVENTS": "1000",
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # writes dataflow.json there
        }
    )
    log = tmp_path / "flow.log"
    with log.open("ab") as out:
        flow = subprocess.Popen(
            flow_command(),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        exposition = ""
        # Scrape once a retry was logged: the failing connection has been described.
        while "retrying in" not in log.read_text() or not exposition:
            assert flow.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no retry and no /metrics within 60 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    exposition = r.read().decode()
            except (urllib.error.URLError, ConnectionError):
                exposition = ""  # the API server is not up yet
            time.sleep(0.2)
    finally:
        flow.kill()
        flow.wait(timeout=30)
    output = log.read_text()
    assert "waxhouse_late_events_total" in exposition  # the flow's own metrics
    assert "analytics:***@127.0.0.1:9" in output
    for secret in ("ch-s3cret-pw", "kafka-s3cret-pw"):
        assert secret not in output and secret not in exposition


def test_the_sensors_flow_settings_and_their_defaults() -> None:
    settings = load_settings({})
    assert (settings.sensors_topic, settings.sensors_dlq_topic) == ("readings", "readings.dlq")
    assert (settings.devices_topic, settings.alerts_topic) == ("devices", "alerts")
    windows = (settings.sensor_window_seconds, settings.sensor_slide_seconds)
    assert windows == (300, 60)
    assert (settings.sensor_batch_size, settings.alert_readings) == (100, 3)
    custom = load_settings(
        {"SENSORS_TOPIC": "t", "SENSOR_SLIDE_SECONDS": "300", "ALERT_READINGS": "5"}
    )
    assert (custom.sensors_topic, custom.sensor_slide_seconds, custom.alert_readings) == (
        "t",
        300,
        5,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SENSOR_WINDOW_SECONDS": "0"}, "SENSOR_WINDOW_SECONDS"),
        ({"SENSOR_SLIDE_SECONDS": "301"}, "SENSOR_SLIDE_SECONDS"),
        ({"SENSOR_SLIDE_SECONDS": "0"}, "SENSOR_SLIDE_SECONDS"),
        ({"SENSOR_BATCH_SIZE": "0"}, "SENSOR_BATCH_SIZE"),
        ({"ALERT_READINGS": "-1"}, "ALERT_READINGS"),
        ({"ALERT_READINGS": "three"}, "ALERT_READINGS"),
    ],
)
def test_invalid_sensors_settings_fail_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable} must be"):
        load_settings(env)


def test_the_gateway_settings_and_their_defaults() -> None:
    gateway = load_settings({}, gateway=True).gateway
    assert gateway.listen == "127.0.0.1:8080"
    assert gateway.tokens == ()
    assert (gateway.rate_per_token, gateway.cors_origins) == (0.0, ())
    assert (gateway.max_body_bytes, gateway.ws_max_inflight) == (1024 * 1024, 16)
    custom = load_settings(
        {
            "GATEWAY_LISTEN": "0.0.0.0:9000",
            "GATEWAY_TOKENS": " a1 , b2,,",
            "GATEWAY_RATE_PER_TOKEN": "500",
            "GATEWAY_CORS_ORIGINS": "https://shop.example, https://app.example",
            "GATEWAY_MAX_BODY_BYTES": "2048",
            "GATEWAY_WS_MAX_INFLIGHT": "4",
        },
        gateway=True,
    ).gateway
    assert custom.listen == "0.0.0.0:9000"
    assert custom.tokens == ("a1", "b2")
    assert custom.rate_per_token == 500.0
    assert custom.cors_origins == ("https://shop.example", "https://app.example")
    assert (custom.max_body_bytes, custom.ws_max_inflight) == (2048, 4)


def test_gateway_tokens_from_a_file_never_show_in_repr_or_description(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# one a line\ntok-one\n\n  tok-two  \n")
    settings = load_settings({"GATEWAY_TOKENS_FILE": str(path)}, gateway=True)
    assert settings.gateway.tokens == ("tok-one", "tok-two")
    text = repr(settings) + str(settings.describe()) + str(settings.gateway.describe())
    assert "tok-one" not in text and "tok-two" not in text
    assert settings.gateway.describe()["gateway_tokens"] == 2


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_LISTEN": "8080"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_LISTEN": "host:port"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_LISTEN": "host:70000"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_RATE_PER_TOKEN": "-1"}, "GATEWAY_RATE_PER_TOKEN"),
        ({"GATEWAY_RATE_PER_TOKEN": "lots"}, "GATEWAY_RATE_PER_TOKEN"),
        ({"GATEWAY_MAX_BODY_BYTES": "0"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_WS_MAX_INFLIGHT": "0"}, "GATEWAY_WS_MAX_INFLIGHT"),
        ({"GATEWAY_MAX_INFLIGHT_EVENTS": "0"}, "GATEWAY_MAX_INFLIGHT_EVENTS"),
        ({"GATEWAY_ACK_TIMEOUT_SECONDS": "0"}, "GATEWAY_ACK_TIMEOUT_SECONDS"),
        ({"GATEWAY_TOKENS_FILE": "/nonexistent/tokens"}, "GATEWAY_TOKENS_FILE"),
        ({"GATEWAY_TOKENS": "a", "GATEWAY_TOKENS_FILE": "/x"}, "GATEWAY_TOKENS"),
    ],
)
def test_invalid_gateway_settings_fail_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env, gateway=True)
    # A flow reads none of them: a gateway's settings cannot stop it, nor its tokens reach it.
    assert load_settings(env).gateway == load_settings({}).gateway


def test_the_redis_settings_and_their_defaults() -> None:
    settings = load_settings({})
    assert settings.redis_url is None and not settings.serve_in_flow
    assert (settings.redis_provisional_seconds, settings.redis_retry_seconds) == (1.0, 60.0)
    assert settings.redis_stream_length == 10_000
    custom = load_settings(
        {
            "REDIS_URL": "rediss://:p4ss@cache.example:6380/2",
            "REDIS_PROVISIONAL_SECONDS": "0",
            "REDIS_RETRY_SECONDS": "5",
            "REDIS_STREAM_LENGTH": "100",
        }
    )
    assert custom.redis_url == "rediss://:p4ss@cache.example:6380/2"
    assert (custom.redis_provisional_seconds, custom.redis_retry_seconds) == (0.0, 5.0)
    assert custom.redis_stream_length == 100
    text = repr(custom) + str(custom.describe())
    assert "p4ss" not in text
    assert custom.describe()["redis_url"] == "rediss://:***@cache.example:6380/2"


def test_serve_settings_are_read_by_serve_or_by_a_flow_serving_itself(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("s-one\n")
    env = {"SERVE_TOKENS_FILE": str(path), "SERVE_MAX_STREAMS": "50"}
    assert load_settings(env).serve == load_settings({}).serve  # a plain flow reads none
    serve = load_settings(env, serve=True).serve
    assert (serve.listen, serve.tokens, serve.max_streams) == ("127.0.0.1:8090", ("s-one",), 50)
    flow = load_settings({**env, "SERVE_LISTEN": "127.0.0.1:9999"})
    assert flow.serve_in_flow and flow.serve.listen == "127.0.0.1:9999"
    assert flow.serve.tokens == ("s-one",)
    assert "s-one" not in repr(flow) + str(flow.serve.describe())


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://cache:port"}, "REDIS_URL"),
        ({"REDIS_PROVISIONAL_SECONDS": "-1"}, "REDIS_PROVISIONAL_SECONDS"),
        ({"REDIS_RETRY_SECONDS": "soon"}, "REDIS_RETRY_SECONDS"),
        ({"REDIS_STREAM_LENGTH": "0"}, "REDIS_STREAM_LENGTH"),
        ({"SERVE_LISTEN": "8090"}, "SERVE_LISTEN"),
        ({"SERVE_LISTEN": "h:1", "SERVE_MAX_STREAMS": "0"}, "SERVE_MAX_STREAMS"),
        ({"SERVE_LISTEN": "h:1", "SERVE_TOKENS": "a", "SERVE_TOKENS_FILE": "/x"}, "SERVE_TOKENS"),
    ],
)
def test_invalid_redis_and_serve_settings_fail_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env, serve=True)
