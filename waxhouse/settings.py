"""Configuration: read the environment once into a frozen, validated object.

This is the only module that reads the environment. Everything else takes arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from waxhouse.errors import SettingsError

StartingOffset = Literal["earliest", "latest"]
KafkaClient = Literal["kafka-python", "confluent"]
KAFKA_CLIENTS: tuple[KafkaClient, ...] = ("kafka-python", "confluent")

DEFAULT_STORE = "./data/clickhouse"
DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8080"
DEFAULT_SERVE_LISTEN = "127.0.0.1:8090"
DEFAULT_GENERATOR_EVENTS = 200_000
DEFAULT_GENERATOR_SEED = 42
_MAX_TS_MS = 253402300799999


@dataclass(frozen=True)
class KafkaSecurity:
    """Settings for secured clusters. The password never appears in a repr."""

    protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def client_options(self) -> dict[str, str]:
        """The kafka-python keyword arguments these settings stand for."""
        pairs = {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
        }
        return {key: value for key, value in pairs.items() if value is not None}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "events"
    kafka_dlq_topic: str = "events.dlq"
    kafka_starting_offset: StartingOffset = "earliest"
    kafka_stop_at_end: bool = False
    kafka_client: KafkaClient = "kafka-python"
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    clickhouse_url: str = field(default=f"chdb://{os.path.abspath(DEFAULT_STORE)}", repr=False)
    clickhouse_retry_seconds: float = 300.0
    clickhouse_create_schema: bool = True
    window_seconds: int = 60
    allowed_lateness_seconds: int = 10
    session_gap_seconds: int = 1800
    event_max_future_seconds: int = 3600
    dedup_seconds: int = 600
    sensors_topic: str = "readings"
    sensors_dlq_topic: str = "readings.dlq"
    devices_topic: str = "devices"
    alerts_topic: str = "alerts"
    sensor_window_seconds: int = 300
    sensor_slide_seconds: int = 60
    sensor_batch_size: int = 100
    alert_readings: int = 3
    generator_events: int = DEFAULT_GENERATOR_EVENTS
    generator_rate: float = 0.0
    generator_seed: int = DEFAULT_GENERATOR_SEED
    log_level: str = "INFO"
    redis_url: str | None = field(default=None, repr=False)
    redis_provisional_seconds: float = 1.0
    redis_retry_seconds: float = 60.0
    redis_stream_length: int = 10_000
    serve_in_flow: bool = False  # SERVE_LISTEN set: a flow serves its live tables itself
    gateway: GatewaySettings = field(default_factory=lambda: GatewaySettings())
    serve: ServeSettings = field(default_factory=lambda: ServeSettings())

    def __post_init__(self) -> None:
        if self.kafka_client not in KAFKA_CLIENTS:
            raise SettingsError(
                f"KAFKA_CLIENT must be one of {', '.join(KAFKA_CLIENTS)}, got {self.kafka_client!r}"
            )
        if self.window_seconds <= 0:
            raise SettingsError("WINDOW_SECONDS must be a positive whole number of seconds")
        if self.allowed_lateness_seconds < 0:
            raise SettingsError("ALLOWED_LATENESS_SECONDS must be 0 or more")
        if self.session_gap_seconds <= 0:
            raise SettingsError("SESSION_GAP_SECONDS must be a positive whole number of seconds")
        if self.event_max_future_seconds < 0:
            raise SettingsError("EVENT_MAX_FUTURE_SECONDS must be 0 or more seconds")
        if self.dedup_seconds < 0:
            raise SettingsError("DEDUP_SECONDS must be 0 (no deduplication) or more seconds")
        if self.sensor_window_seconds <= 0:
            raise SettingsError("SENSOR_WINDOW_SECONDS must be a positive whole number of seconds")
        if not 0 < self.sensor_slide_seconds <= self.sensor_window_seconds:
            raise SettingsError(
                "SENSOR_SLIDE_SECONDS must be a positive whole number of seconds, at most "
                f"SENSOR_WINDOW_SECONDS ({self.sensor_window_seconds})"
            )
        if self.sensor_batch_size <= 0:
            raise SettingsError("SENSOR_BATCH_SIZE must be a positive whole number of readings")
        if self.alert_readings <= 0:
            raise SettingsError("ALERT_READINGS must be a positive whole number of readings")
        if self.clickhouse_retry_seconds < 0:
            raise SettingsError("CLICKHOUSE_RETRY_SECONDS must be 0 or more seconds")
        if self.generator_events < 0:
            raise SettingsError("GENERATOR_EVENTS must be 0 (endless) or more")
        if self.generator_rate < 0:
            raise SettingsError("GENERATOR_RATE must be 0 (unlimited) or more events per second")
        _check_clickhouse_url(self.clickhouse_url)
        if self.redis_url is not None:
            _check_redis_url(self.redis_url)
        if self.redis_provisional_seconds < 0:
            raise SettingsError("REDIS_PROVISIONAL_SECONDS must be 0 (none) or more seconds")
        if self.redis_retry_seconds < 0:
            raise SettingsError("REDIS_RETRY_SECONDS must be 0 or more seconds")
        if self.redis_stream_length <= 0:
            raise SettingsError("REDIS_STREAM_LENGTH must be a positive number of entries")

    @property
    def embedded(self) -> bool:
        """No Kafka configured: the built-in generator feeds the flow."""
        return self.kafka_bootstrap_servers is None

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def lateness_ms(self) -> int:
        return self.allowed_lateness_seconds * 1000

    @property
    def session_gap_ms(self) -> int:
        return self.session_gap_seconds * 1000

    @property
    def max_future_ms(self) -> int:
        return self.event_max_future_seconds * 1000

    @property
    def dedup_ms(self) -> int:
        return self.dedup_seconds * 1000

    def describe(self) -> dict[str, object]:
        """The effective configuration, safe to log: no password in it."""
        return {
            "mode": "embedded" if self.embedded else "kafka",
            "kafka_bootstrap_servers": self.kafka_bootstrap_servers,
            "kafka_topic": self.kafka_topic,
            "kafka_dlq_topic": self.kafka_dlq_topic,
            "kafka_starting_offset": self.kafka_starting_offset,
            "kafka_stop_at_end": self.kafka_stop_at_end,
            "kafka_client": self.kafka_client,
            "kafka_security_protocol": self.kafka_security.protocol,
            "clickhouse_url": mask_url(self.clickhouse_url),
            "clickhouse_retry_seconds": self.clickhouse_retry_seconds,
            "clickhouse_create_schema": self.clickhouse_create_schema,
            "window_seconds": self.window_seconds,
            "allowed_lateness_seconds": self.allowed_lateness_seconds,
            "session_gap_seconds": self.session_gap_seconds,
            "event_max_future_seconds": self.event_max_future_seconds,
            "dedup_seconds": self.dedup_seconds,
            "sensors_topic": self.sensors_topic,
            "sensors_dlq_topic": self.sensors_dlq_topic,
            "devices_topic": self.devices_topic,
            "alerts_topic": self.alerts_topic,
            "sensor_window_seconds": self.sensor_window_seconds,
            "sensor_slide_seconds": self.sensor_slide_seconds,
            "sensor_batch_size": self.sensor_batch_size,
            "alert_readings": self.alert_readings,
            "generator_events": self.generator_events,
            "generator_rate": self.generator_rate,
            "generator_seed": self.generator_seed,
            "redis_url": None if self.redis_url is None else mask_url(self.redis_url),
            "redis_provisional_seconds": self.redis_provisional_seconds,
            "redis_retry_seconds": self.redis_retry_seconds,
            "redis_stream_length": self.redis_stream_length,
        }


@dataclass(frozen=True)
class GatewaySettings:
    """`waxhouse gateway`'s settings (the GATEWAY_* variables). Tokens never appear in a
    repr or a description: only how many there are."""

    listen: str = DEFAULT_GATEWAY_LISTEN
    tokens: tuple[str, ...] = field(default=(), repr=False)
    rate_per_token: float = 0.0
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    ws_max_inflight: int = 16
    max_inflight_events: int = 100_000
    ack_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        host_port(self.listen)
        if self.rate_per_token < 0:
            raise SettingsError("GATEWAY_RATE_PER_TOKEN must be 0 (unlimited) or more events/s")
        if self.max_body_bytes <= 0:
            raise SettingsError("GATEWAY_MAX_BODY_BYTES must be a positive number of bytes")
        if self.ws_max_inflight <= 0:
            raise SettingsError("GATEWAY_WS_MAX_INFLIGHT must be a positive number of frames")
        if self.max_inflight_events <= 0:
            raise SettingsError("GATEWAY_MAX_INFLIGHT_EVENTS must be a positive number")
        if self.ack_timeout_seconds <= 0:
            raise SettingsError("GATEWAY_ACK_TIMEOUT_SECONDS must be a positive number")
        for token in self.tokens:
            if not token or any(c.isspace() for c in token):
                raise SettingsError("GATEWAY_TOKENS: a token is non-empty, without spaces")

    def describe(self) -> dict[str, object]:
        return {
            "gateway_listen": self.listen,
            "gateway_tokens": len(self.tokens),
            "gateway_rate_per_token": self.rate_per_token,
            "gateway_cors_origins": list(self.cors_origins),
            "gateway_max_body_bytes": self.max_body_bytes,
            "gateway_ws_max_inflight": self.ws_max_inflight,
            "gateway_max_inflight_events": self.max_inflight_events,
            "gateway_ack_timeout_seconds": self.ack_timeout_seconds,
        }


@dataclass(frozen=True)
class ServeSettings:
    """`waxhouse serve`'s settings (the SERVE_* variables). Tokens never appear in a repr
    or a description: only how many there are."""

    listen: str = DEFAULT_SERVE_LISTEN
    tokens: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()
    max_streams: int = 20_000

    def __post_init__(self) -> None:
        host_port(self.listen, "SERVE_LISTEN")
        if self.max_streams <= 0:
            raise SettingsError("SERVE_MAX_STREAMS must be a positive number of streams")
        for token in self.tokens:
            if not token or any(c.isspace() for c in token):
                raise SettingsError("SERVE_TOKENS: a token is non-empty, without spaces")

    def describe(self) -> dict[str, object]:
        return {
            "serve_listen": self.listen,
            "serve_tokens": len(self.tokens),
            "serve_cors_origins": list(self.cors_origins),
            "serve_max_streams": self.max_streams,
        }


def host_port(listen: str, setting: str = "GATEWAY_LISTEN") -> tuple[str, int]:
    """`HOST:PORT` (GATEWAY_LISTEN, SERVE_LISTEN) split; `SettingsError` naming the
    variable `setting` if malformed."""
    host, sep, port = listen.rpartition(":")
    if sep and host and port.isdigit() and 0 <= int(port) <= 65535:
        return host.strip("[]"), int(port)
    raise SettingsError(f"{setting} must be HOST:PORT, got {listen!r}")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _check_clickhouse_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise SettingsError(f"CLICKHOUSE_URL needs a host: {mask_url(url)}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as e:
            raise SettingsError(f"CLICKHOUSE_URL has an invalid port: {mask_url(url)}") from e
    elif parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise SettingsError(f"CLICKHOUSE_URL must be chdb:///absolute/path, got {url}")
    else:
        raise SettingsError(
            f"CLICKHOUSE_URL must start with http://, https:// or chdb://, got {mask_url(url)}"
        )


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got {mask_url(url)}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(f"REDIS_URL needs a host: {mask_url(url)}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise SettingsError(f"REDIS_URL has an invalid port: {mask_url(url)}") from e


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from e


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from e


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in (_text(env, name) or "").split(",") if item.strip())


def _tokens(env: Mapping[str, str], prefix: str = "GATEWAY") -> tuple[str, ...]:
    """`{prefix}_TOKENS` (comma-separated) or `{prefix}_TOKENS_FILE` (one a line, `#`
    comments)."""
    listed, file = f"{prefix}_TOKENS", f"{prefix}_TOKENS_FILE"
    path = _text(env, file)
    if path is None:
        return _list(env, listed)
    if _text(env, listed) is not None:
        raise SettingsError(f"set {listed} or {file}, not both")
    try:
        with open(path, encoding="utf-8") as lines:
            stripped = (line.strip() for line in lines)
            return tuple(line for line in stripped if line and not line.startswith("#"))
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{file} {path!r} cannot be read: {e}") from e


def load_gateway_settings(env: Mapping[str, str]) -> GatewaySettings:
    return GatewaySettings(
        listen=_text(env, "GATEWAY_LISTEN") or DEFAULT_GATEWAY_LISTEN,
        tokens=_tokens(env),
        rate_per_token=_float(env, "GATEWAY_RATE_PER_TOKEN", 0.0),
        cors_origins=_list(env, "GATEWAY_CORS_ORIGINS"),
        max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", 1024 * 1024),
        ws_max_inflight=_int(env, "GATEWAY_WS_MAX_INFLIGHT", 16),
        max_inflight_events=_int(env, "GATEWAY_MAX_INFLIGHT_EVENTS", 100_000),
        ack_timeout_seconds=_float(env, "GATEWAY_ACK_TIMEOUT_SECONDS", 10.0),
    )


def load_serve_settings(env: Mapping[str, str]) -> ServeSettings:
    return ServeSettings(
        listen=_text(env, "SERVE_LISTEN") or DEFAULT_SERVE_LISTEN,
        tokens=_tokens(env, "SERVE"),
        cors_origins=_list(env, "SERVE_CORS_ORIGINS"),
        max_streams=_int(env, "SERVE_MAX_STREAMS", 20_000),
    )


def load_settings(
    environ: Mapping[str, str] | None = None, *, gateway: bool = False, serve: bool = False
) -> Settings:
    """Build the settings from `environ` (default: the process environment). The GATEWAY_*
    variables are read only with `gateway` (`waxhouse gateway`), the SERVE_* ones only with
    `serve` (`waxhouse serve`) or when `SERVE_LISTEN` is set (a flow serving its live
    tables itself): otherwise they are neither checked nor their tokens read, and the
    defaults stand."""
    env = os.environ if environ is None else environ
    serve_in_flow = _text(env, "SERVE_LISTEN") is not None
    store = _text(env, "CLICKHOUSE_URL") or f"chdb://{os.path.abspath(DEFAULT_STORE)}"
    offset = _choice(env, "KAFKA_STARTING_OFFSET", "earliest", ("earliest", "latest"))
    client = _choice(env, "KAFKA_CLIENT", "kafka-python", KAFKA_CLIENTS)
    return Settings(
        kafka_bootstrap_servers=_text(env, "KAFKA_BOOTSTRAP_SERVERS"),
        kafka_topic=_text(env, "KAFKA_TOPIC") or "events",
        kafka_dlq_topic=_text(env, "KAFKA_DLQ_TOPIC") or "events.dlq",
        kafka_starting_offset="latest" if offset == "latest" else "earliest",
        kafka_stop_at_end=_bool(env, "KAFKA_STOP_AT_END", False),
        kafka_client="confluent" if client == "confluent" else "kafka-python",
        kafka_security=KafkaSecurity(
            protocol=_text(env, "KAFKA_SECURITY_PROTOCOL"),
            sasl_mechanism=_text(env, "KAFKA_SASL_MECHANISM"),
            sasl_username=_text(env, "KAFKA_SASL_USERNAME"),
            sasl_password=_text(env, "KAFKA_SASL_PASSWORD"),
            ssl_cafile=_text(env, "KAFKA_SSL_CAFILE"),
        ),
        clickhouse_url=store,
        clickhouse_retry_seconds=_float(env, "CLICKHOUSE_RETRY_SECONDS", 300.0),
        clickhouse_create_schema=_bool(env, "CLICKHOUSE_CREATE_SCHEMA", True),
        window_seconds=_int(env, "WINDOW_SECONDS", 60),
        allowed_lateness_seconds=_int(env, "ALLOWED_LATENESS_SECONDS", 10),
        session_gap_seconds=_int(env, "SESSION_GAP_SECONDS", 1800),
        event_max_future_seconds=_int(env, "EVENT_MAX_FUTURE_SECONDS", 3600),
        dedup_seconds=_int(env, "DEDUP_SECONDS", 600),
        sensors_topic=_text(env, "SENSORS_TOPIC") or "readings",
        sensors_dlq_topic=_text(env, "SENSORS_DLQ_TOPIC") or "readings.dlq",
        devices_topic=_text(env, "DEVICES_TOPIC") or "devices",
        alerts_topic=_text(env, "ALERTS_TOPIC") or "alerts",
        sensor_window_seconds=_int(env, "SENSOR_WINDOW_SECONDS", 300),
        sensor_slide_seconds=_int(env, "SENSOR_SLIDE_SECONDS", 60),
        sensor_batch_size=_int(env, "SENSOR_BATCH_SIZE", 100),
        alert_readings=_int(env, "ALERT_READINGS", 3),
        generator_events=_int(env, "GENERATOR_EVENTS", DEFAULT_GENERATOR_EVENTS),
        generator_rate=_float(env, "GENERATOR_RATE", 0.0),
        generator_seed=_int(env, "GENERATOR_SEED", DEFAULT_GENERATOR_SEED),
        log_level=_choice(env, "WAXHOUSE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        redis_url=_text(env, "REDIS_URL"),
        redis_provisional_seconds=_float(env, "REDIS_PROVISIONAL_SECONDS", 1.0),
        redis_retry_seconds=_float(env, "REDIS_RETRY_SECONDS", 60.0),
        redis_stream_length=_int(env, "REDIS_STREAM_LENGTH", 10_000),
        gateway=load_gateway_settings(env) if gateway else GatewaySettings(),
        serve_in_flow=serve_in_flow,
        serve=load_serve_settings(env) if serve or serve_in_flow else ServeSettings(),
    )
