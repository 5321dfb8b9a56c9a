"""A real single-node Apache Kafka broker (KRaft mode) for tests.

The broker's jars come from Maven Central through ``tests/support/kafka/pom.xml`` and are
cached in ``.cache/kafka/<version>/`` at the repository root; Maven runs only when that
cache is missing or was made from another pom. The broker runs as a local JVM
(``java -cp '<cache>/*' kafka.Kafka server.properties``) that listens on 127.0.0.1 only,
with its configuration, data and log in a temporary directory.

With the default properties (`server_properties`) it has, besides its PLAINTEXT listener
(the default one, also used between broker and controller):

- ``SASL_PLAINTEXT`` and ``SASL_SSL`` listeners authenticating with SCRAM-SHA-512: one user
  with a random password, stored at format time (``--add-scram`` with the salted password,
  so the password itself is on no command line and in no file), and a CA and broker
  certificate made by `tests.support.tls` in the broker's directory;
- a PLAINTEXT listener ``PROXIED`` that binds one port but is advertised at another, where
  a test's `tests.support.tcp_proxy.TcpProxy` listens: a client that bootstraps through
  the proxy is told to keep talking through it, so cutting the proxy partitions it.

``KafkaBroker.shutdown()``/``kill()`` followed by ``start()`` bring the same broker back on
the same ports with the same data, which is what fault tests need; ``stop()`` ends it for
good and deletes its directory.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Protocol

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from tests.support.tls import make_server_tls

logger = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "4.1.1"
LOOPBACK = "127.0.0.1"

_SUPPORT_DIR = Path(__file__).resolve().parent
POM_PATH = _SUPPORT_DIR / "kafka" / "pom.xml"
DEFAULT_CACHE_ROOT = _SUPPORT_DIR.parents[1] / ".cache" / "kafka"

_MARKER_NAME = ".resolved"
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0
_LOG_TAIL_LINES = 60
_POLL_INTERVAL_S = 0.2

_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class KafkaBrokerError(RuntimeError):
    """The test broker could not be resolved, formatted, started or reached."""


class TopicFactory(Protocol):
    """Creates a uniquely named topic and returns its name (the ``topic_factory`` fixture)."""

    def __call__(self, partitions: int = 1, *, prefix: str = "topic") -> str: ...


SecuredProtocol = Literal["SASL_PLAINTEXT", "SASL_SSL"]
SECURED_PROTOCOLS: tuple[SecuredProtocol, ...] = ("SASL_PLAINTEXT", "SASL_SSL")
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM-SHA-512
DEFAULT_SASL_USERNAME = "waxhouse-test"
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class BrokerPorts:
    """The loopback ports of a combined broker + controller node.

    `broker` is the PLAINTEXT listener's, `controller` the controller's. The default
    properties also use `sasl_plaintext` and `sasl_ssl`, and bind the ``PROXIED`` listener
    on `proxied` while advertising it at `proxy`, where nothing listens until a test starts
    a proxy there.
    """

    broker: int
    controller: int
    sasl_plaintext: int
    sasl_ssl: int
    proxied: int
    proxy: int


@dataclass(frozen=True)
class SecuredListener:
    """How a client reaches one of the broker's SASL listeners, in each client's words."""

    protocol: SecuredProtocol
    bootstrap_servers: str
    username: str
    password: str = field(repr=False)
    ca_file: Path

    def kafka_python_options(self, *, password: str | None = None) -> dict[str, str]:
        """kafka-python keyword arguments (`password` overrides the right one)."""
        options = {
            "security_protocol": self.protocol,
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password if password is None else password,
        }
        if self.protocol == "SASL_SSL":
            options["ssl_cafile"] = str(self.ca_file)
        return options

    def confluent_config(self, *, password: str | None = None) -> dict[str, str]:
        """librdkafka configuration, `bootstrap.servers` included."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.protocol,
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password if password is None else password,
        }
        if self.protocol == "SASL_SSL":
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def flow_env(self, *, password: str | None = None) -> dict[str, str]:
        """The flow's settings (environment variables) for this listener."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": self.protocol,
            "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": self.username,
            "KAFKA_SASL_PASSWORD": self.password if password is None else password,
        }
        if self.protocol == "SASL_SSL":
            env["KAFKA_SSL_CAFILE"] = str(self.ca_file)
        return env


# ---------------------------------------------------------------------------
# Jars


def resolve_kafka_jars(
    version: str = DEFAULT_KAFKA_VERSION, cache_root: Path = DEFAULT_CACHE_ROOT
) -> Path:
    """Return the folder holding every jar the broker needs, running Maven if needed.

    A marker file records the pom it was made from; a folder without a matching marker is
    resolved again from scratch. A file lock makes concurrent test runs wait for each other.
    """
    jar_dir = cache_root / version
    marker = jar_dir / _MARKER_NAME
    expected = _marker_text(version)
    cache_root.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_root / f"{version}.lock"):
        if _read_text(marker) == expected:
            logger.debug("Kafka %s jars already cached in %s", version, jar_dir)
            return jar_dir
        shutil.rmtree(jar_dir, ignore_errors=True)
        started = time.monotonic()
        _copy_dependencies(version, jar_dir)
        marker.write_text(expected, encoding="utf-8")
        logger.info(
            "resolved Kafka %s jars into %s in %.1f s", version, jar_dir, time.monotonic() - started
        )
    return jar_dir


def _marker_text(version: str) -> str:
    pom_digest = hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    return f"kafka {version}\npom sha256 {pom_digest}\n"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_dependencies(version: str, jar_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError("Maven ('mvn') is not on PATH; it is needed to fetch Kafka's jars")
    command = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(POM_PATH),
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={jar_dir}",
        "dependency:copy-dependencies",
    ]
    logger.info("resolving Kafka %s jars with Maven into %s", version, jar_dir)
    result = _run(command, timeout_s=_MAVEN_TIMEOUT_S)
    jars = list(jar_dir.glob("kafka_2.13-*.jar")) if jar_dir.is_dir() else []
    if result.returncode != 0 or not jars:
        raise KafkaBrokerError(
            f"Maven could not resolve Kafka {version} (exit {result.returncode}):\n"
            f"{_tail(result.stdout)}"
        )


def _run(command: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise KafkaBrokerError(f"{command[0]} timed out after {timeout_s:.0f} s") from e


# ---------------------------------------------------------------------------
# Configuration


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own `Uuid.randomUuid`, never one starting with "-": the storage tool's
    argument parser would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(ports: BrokerPorts, data_dir: Path, *, keystore: Path) -> str:
    """The ``server.properties`` of a single combined broker + controller on loopback.

    Listeners: PLAINTEXT (the default, and between broker and controller), CONTROLLER,
    SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-512; TLS from the PEM `keystore`, a private key
    followed by its certificate chain), and PROXIED (PLAINTEXT, advertised at `ports.proxy`).
    """
    bind = {
        "PLAINTEXT": ports.broker,
        "CONTROLLER": ports.controller,
        "SASL_PLAINTEXT": ports.sasl_plaintext,
        "SASL_SSL": ports.sasl_ssl,
        "PROXIED": ports.proxied,
    }
    advertise = {
        "PLAINTEXT": ports.broker,
        "SASL_PLAINTEXT": ports.sasl_plaintext,
        "SASL_SSL": ports.sasl_ssl,
        "PROXIED": ports.proxy,
    }
    protocols = {
        "PLAINTEXT": "PLAINTEXT",
        "CONTROLLER": "PLAINTEXT",
        "SASL_PLAINTEXT": "SASL_PLAINTEXT",
        "SASL_SSL": "SASL_SSL",
        "PROXIED": "PLAINTEXT",
    }
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{ports.controller}",
        "listeners": _listener_list(bind),
        "advertised.listeners": _listener_list(advertise),
        "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        # The server side of SCRAM needs a login module but no credentials of its own:
        # users live in the cluster metadata (stored at format time).
        f"listener.name.sasl_plaintext.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": _SCRAM_JAAS,
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": _SCRAM_JAAS,
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
        "listener.name.sasl_ssl.ssl.client.auth": "none",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a SIGKILL the restarted node finds its previous incarnation still registered
        # and may only re-register once that session expires (default 9 s, heartbeat 2 s).
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _listener_list(ports: dict[str, int]) -> str:
    return ",".join(f"{name}://{LOOPBACK}:{port}" for name, port in ports.items())


def scram_credential_argument(username: str, password: str, salt: bytes) -> str:
    """The storage tool's ``--add-scram`` value for a SCRAM-SHA-512 user, in its salted form.

    The salted password is what SCRAM derives from the password (RFC 5802's
    ``Hi(password, salt, i)``, PBKDF2-HMAC-SHA-512); the broker keeps only keys derived
    from it, and the password itself goes on no command line.
    """
    salted = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, SCRAM_ITERATIONS)
    return (
        f"{SCRAM_MECHANISM}=[name={username},iterations={SCRAM_ITERATIONS},"
        f'salt="{base64.b64encode(salt).decode("ascii")}",'
        f'saltedpassword="{base64.b64encode(salted).decode("ascii")}"]'
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _free_ports() -> BrokerPorts:
    ports: list[int] = []
    while len(ports) < 6:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    broker, controller, sasl_plaintext, sasl_ssl, proxied, proxy = ports
    return BrokerPorts(broker, controller, sasl_plaintext, sasl_ssl, proxied, proxy)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _first_errors(text: str, count: int = 5) -> str:
    """The first ERROR/FATAL lines: the cause, which shutdown noise pushes out of the tail."""
    errors = [line for line in text.splitlines() if " ERROR " in line or " FATAL " in line]
    return "\n".join(errors[:count]) or "(none)"


# ---------------------------------------------------------------------------
# The broker process

_LIVE_BROKERS: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


class KafkaBroker:
    """One local KRaft node (broker + controller) on 127.0.0.1.

    ``start()`` resolves the jars, creates the temporary directory, picks the ports and
    formats storage the first time; later calls (after ``shutdown()`` or ``kill()``) reuse
    all of that. ``stop()`` shuts down and deletes the directory; a ``start()`` after it
    begins a new, empty broker on new ports. Used as a context manager it starts on entry
    and stops on exit. `properties` writes its ``server.properties``; clients reach it at
    ``127.0.0.1:ports.broker``.

    By default (`server_properties`) the node also has the SASL_PLAINTEXT, SASL_SSL and
    PROXIED listeners, its CA and certificate, and one SCRAM-SHA-512 user (`sasl_username`,
    with a random `sasl_password`); everything a client needs stays the same across
    restarts. A broker with its own `properties` has none of that (reading
    `sasl_bootstrap_servers` and the like raises `KafkaBrokerError`).
    """

    def __init__(
        self,
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        cache_root: Path = DEFAULT_CACHE_ROOT,
        heap: str = "512m",
        startup_timeout_s: float = 90.0,
        shutdown_timeout_s: float = 30.0,
        java: str = "java",
        properties: Callable[[BrokerPorts, Path], str] | None = None,
        cluster_id: str | None = None,
        sasl_username: str = DEFAULT_SASL_USERNAME,
    ) -> None:
        self._version = version
        self._custom_properties = properties
        self._cluster_id = cluster_id
        self._sasl_username = sasl_username
        self._sasl_password = secrets.token_hex(16)
        self._cache_root = cache_root
        self._heap = heap
        self._startup_timeout_s = startup_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._java = java
        self._jar_dir: Path | None = None
        self._work_dir: Path | None = None
        self._ports: BrokerPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_start = 0

    # -- what tests read ------------------------------------------------------

    @property
    def version(self) -> str:
        return self._version

    @property
    def ports(self) -> BrokerPorts:
        if self._ports is None:
            raise KafkaBrokerError("the broker has not been started")
        return self._ports

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the PLAINTEXT listener; stable across restarts."""
        return f"{LOOPBACK}:{self.ports.broker}"

    @property
    def secured(self) -> bool:
        """Whether it runs the default properties, with the secured and proxied listeners."""
        return self._custom_properties is None

    @property
    def sasl_username(self) -> str:
        self._require_secured()
        return self._sasl_username

    @property
    def sasl_password(self) -> str:
        """The SCRAM user's password: random per broker, never written to the broker's files."""
        self._require_secured()
        return self._sasl_password

    @property
    def ca_file(self) -> Path:
        """The PEM certificate of the CA that signed the SASL_SSL listener's certificate."""
        self._require_secured()
        return self.work_dir / "tls" / "ca.pem"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_PLAINTEXT listener (SCRAM-SHA-512)."""
        self._require_secured()
        return f"{LOOPBACK}:{self.ports.sasl_plaintext}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_SSL listener (SCRAM-SHA-512 over TLS)."""
        self._require_secured()
        return f"{LOOPBACK}:{self.ports.sasl_ssl}"

    @property
    def proxied_listener_port(self) -> int:
        """Where the PROXIED listener really listens: a proxy's target port."""
        self._require_secured()
        return self.ports.proxied

    @property
    def proxied_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` the PROXIED listener is advertised at: a proxy's listen port."""
        self._require_secured()
        return f"{LOOPBACK}:{self.ports.proxy}"

    def secured_listener(self, protocol: SecuredProtocol) -> SecuredListener:
        """What a client needs to reach the SASL_PLAINTEXT or SASL_SSL listener."""
        address = {
            "SASL_PLAINTEXT": self.sasl_bootstrap_servers,
            "SASL_SSL": self.ssl_bootstrap_servers,
        }
        return SecuredListener(
            protocol=protocol,
            bootstrap_servers=address[protocol],
            username=self.sasl_username,
            password=self.sasl_password,
            ca_file=self.ca_file,
        )

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise KafkaBrokerError("the broker has not been started")
        return self._work_dir

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        """The broker JVM's stdout and stderr, appended to across restarts."""
        return self.work_dir / "broker.log"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the broker (a no-op if it runs) and wait until it answers metadata requests."""
        if self.is_running:
            return
        if self._work_dir is None:
            self._prepare()
        started = time.monotonic()
        self._launch()
        try:
            self._wait_until_ready()
        except BaseException:
            self._terminate(graceful=False)
            raise
        logger.info(
            "Kafka %s broker ready at %s in %.1f s",
            self._version,
            self.bootstrap_servers,
            time.monotonic() - started,
        )

    def shutdown(self) -> None:
        """Stop the broker gracefully (SIGTERM, then SIGKILL after a timeout); keep its data."""
        self._terminate(graceful=True)

    def kill(self) -> None:
        """Kill the broker with SIGKILL, as a crash would; keep its data."""
        self._terminate(graceful=False)

    def restart(self, *, hard: bool = False) -> None:
        """Shut down (or with ``hard``, kill) and start again on the same ports and data."""
        self._terminate(graceful=not hard)
        self.start()

    def stop(self) -> None:
        """Shut down and delete the broker's directory. Safe to call more than once."""
        self._terminate(graceful=True)
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._work_dir = None
        self._ports = None
        _LIVE_BROKERS.discard(self)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------

    def _require_secured(self) -> None:
        if not self.secured:
            raise KafkaBrokerError(
                "this broker runs its own properties: it has no secured or proxied listeners"
            )

    def _prepare(self) -> None:
        self._jar_dir = resolve_kafka_jars(self._version, self._cache_root)
        work_dir = Path(tempfile.mkdtemp(prefix="waxhouse-kafka-"))
        self._work_dir = work_dir
        self._ports = ports = _free_ports()
        _LIVE_BROKERS.add(self)
        if self._custom_properties is None:
            tls = make_server_tls(work_dir / "tls")
            properties = server_properties(ports, self.data_dir, keystore=tls.keystore)
        else:
            properties = self._custom_properties(ports, self.data_dir)
        (work_dir / "server.properties").write_text(properties, encoding="utf-8")
        (work_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
        self._format_storage()

    def _classpath(self) -> str:
        if self._jar_dir is None:
            raise KafkaBrokerError("the broker's jars have not been resolved")
        return str(self._jar_dir / "*")

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            self._java,
            "-Xms128m",
            f"-Xmx{self._heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        command = self._java_command(
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self._cluster_id or new_cluster_id(),
            "--config",
            str(self.work_dir / "server.properties"),
        )
        if self.secured:
            user = scram_credential_argument(
                self._sasl_username, self._sasl_password, secrets.token_bytes(16)
            )
            command += ["--add-scram", user]
        result = _run(command, timeout_s=_FORMAT_TIMEOUT_S)
        if result.returncode != 0:
            raise KafkaBrokerError(
                f"formatting KRaft storage failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout)}"
            )
        logger.debug("formatted KRaft storage in %s", self.data_dir)

    def _launch(self) -> None:
        command = self._java_command("kafka.Kafka", str(self.work_dir / "server.properties"))
        self._log_handle = self.log_path.open("ab")
        self._log_start = self._log_handle.tell()
        self._process = subprocess.Popen(
            _die_with_parent(command),
            cwd=self.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logger.info(
            "started Kafka broker pid %d on %s (log %s)",
            self._process.pid,
            self.bootstrap_servers,
            self.log_path,
        )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        while not _port_open(self.ports.broker):
            self._check_alive_before(deadline)
            time.sleep(_POLL_INTERVAL_S)
        while not self._answers_metadata():
            self._check_alive_before(deadline)
            time.sleep(_POLL_INTERVAL_S)

    def _check_alive_before(self, deadline: float) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise self._failure(f"the broker exited with code {self._process.returncode}")
        if time.monotonic() > deadline:
            raise self._failure(f"the broker did not answer within {self._startup_timeout_s:.0f} s")

    def _answers_metadata(self) -> bool:
        try:
            with KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="waxhouse-test-broker-probe",
                bootstrap_timeout_ms=5_000,
                request_timeout_ms=5_000,
            ) as admin:
                cluster = admin.describe_cluster()
        except KafkaError as e:
            logger.debug("broker not ready yet: %r", e)
            return False
        brokers = cluster.get("brokers") or []
        return cluster.get("controller_id", -1) >= 0 and any(
            not broker.get("is_fenced", False) for broker in brokers
        )

    def _failure(self, reason: str) -> KafkaBrokerError:
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_start)
            log_text = handle.read().decode("utf-8", errors="replace")
        return KafkaBrokerError(
            f"{reason}; first errors in {self.log_path}:\n{_first_errors(log_text)}\n"
            f"last lines:\n{_tail(log_text)}"
        )

    def _terminate(self, *, graceful: bool) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            if graceful:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self._shutdown_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "Kafka broker pid %d ignored SIGTERM for %.0f s; killing it",
                        process.pid,
                        self._shutdown_timeout_s,
                    )
            if process.poll() is None:
                process.kill()
                process.wait()
            logger.info("Kafka broker pid %d exited with %s", process.pid, process.returncode)
        self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def _die_with_parent(command: list[str]) -> list[str]:
    """Have the broker get SIGTERM if this process dies without stopping it.

    Linux delivers the parent-death signal when the *thread* that forked exits, so it is
    only used when the broker is started from the main thread.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return command
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


@atexit.register
def _stop_leftover_brokers() -> None:
    for broker in list(_LIVE_BROKERS):
        broker.stop()


# ---------------------------------------------------------------------------
# Topics


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    *,
    configs: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create a topic (replication factor 1) and wait until every partition has a leader.

    Test topics keep their records forever (`retention.ms=-1`) unless `configs` says
    otherwise: tests replay events with old timestamps, which time-based retention would
    delete within minutes of the broker's next retention check.
    """
    spec: dict[str, object] = {
        "num_partitions": partitions,
        "replication_factor": 1,
        "configs": {"retention.ms": "-1", **(configs or {})},
    }
    timeout_ms = int(timeout_s * 1000)
    with _admin(bootstrap_servers, timeout_ms) as admin:
        admin.create_topics({name: spec}, timeout_ms=timeout_ms)
        admin.wait_for_topics([name], timeout_ms=timeout_ms)
        (topic,) = admin.describe_topics([name])
    found = len(topic.get("partitions") or [])
    if found != partitions:
        raise KafkaBrokerError(f"topic {name!r} has {found} partitions, expected {partitions}")
    logger.debug("created topic %s with %d partitions", name, partitions)


def delete_topic(bootstrap_servers: str, name: str, *, timeout_s: float = 30.0) -> None:
    """Delete a topic; the broker removes its data in the background."""
    timeout_ms = int(timeout_s * 1000)
    with _admin(bootstrap_servers, timeout_ms) as admin:
        admin.delete_topics([name], timeout_ms=timeout_ms)
    logger.debug("deleted topic %s", name)


def _admin(bootstrap_servers: str, timeout_ms: int) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="waxhouse-tests-admin",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
