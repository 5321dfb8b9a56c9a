"""Write topics with Kafka's own Java client, as JVM producers in other stacks do.

`JavaProducer` drives ``tests/support/kafka/JavaProducer.java`` (run in Java 17 source-file
mode on the test broker's jars, so the client is the broker's own ``kafka-clients``) over
its stdin/stdout line protocol, described at the top of that file. Any producer setting
goes through `config`: ``compression.type``, ``transactional.id``, ``acks``, ...

    with JavaProducer(bootstrap, topic, {"transactional.id": "t1"}) as producer:
        producer.begin()
        producer.send(b"v", key=b"k")
        producer.flush()  # in the log, the transaction still open
        producer.commit()
    # leaving the block closes the producer; any failed send raises JavaProducerError

`produce_with_java` is `tests.support.produce.produce_records` on the Java client.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support.kafka_broker import resolve_kafka_jars
from waxhouse.connectors.generator import GeneratedRecord

logger = logging.getLogger(__name__)

JAVA_SOURCE = Path(__file__).resolve().parent / "kafka" / "JavaProducer.java"
# Compiling the source file and building the producer (with initTransactions) on a
# loaded two-core machine.
_START_TIMEOUT_S = 120.0
_STDERR_TAIL_LINES = 40
# Like produce_records' kafka-python producer: every replica, batched, in order.
DEFAULT_CONFIG: Mapping[str, str] = {
    "acks": "all",
    "linger.ms": "20",
    "batch.size": str(256 * 1024),
    "max.request.size": str(16 * 1024 * 1024),
}

_EOF = None


class JavaProducerError(RuntimeError):
    """The Java producer failed: a send or command error, a non-zero exit or a timeout."""


class JavaProducer:
    """One producer JVM writing to `topic`; a context manager (starts on entry).

    `send` returns at once (the JVM acknowledges in the background, and a failed send
    raises at the next call that waits); `flush` waits for every send so far and returns
    where each landed; `begin`/`commit`/`abort` return once the JVM has done them; `close`
    ends stdin, and the JVM flushes, closes and exits. Every failure raises
    `JavaProducerError` with the tail of the JVM's stderr. Leaving the `with` block by an
    exception kills the JVM (an open transaction is then left to the broker's timeout).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        config: Mapping[str, str] | None = None,
        *,
        jar_dir: Path | None = None,
        java: str = "java",
        heap: str = "256m",
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._config = dict(config or {})
        self._jar_dir = jar_dir
        self._java = java
        self._heap = heap
        self._process: subprocess.Popen[bytes] | None = None
        self._work_dir: Path | None = None
        self._stderr: IO[bytes] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._sends = 0
        self._acks: dict[int, tuple[int, int]] = {}
        self._exited = False

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        """Start the JVM and wait until its producer is built (transactions initialized)."""
        if self._process is not None:
            raise JavaProducerError("the Java producer was already started")
        jar_dir = self._jar_dir or resolve_kafka_jars()
        self._work_dir = Path(tempfile.mkdtemp(prefix="waxhouse-java-producer-"))
        self._stderr = (self._work_dir / "stderr.log").open("w+b")
        command = [
            self._java,
            f"-Xmx{self._heap}",
            # A short-lived JVM that first compiles the source file: C1 alone starts it in
            # about half the time, and one GC thread is plenty.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-Dlog4j2.level=WARN",
            "-cp",
            str(jar_dir / "*"),
            str(JAVA_SOURCE),
            "--bootstrap",
            self._bootstrap,
            "--topic",
            self._topic,
        ]
        for key, value in self._config.items():
            command += ["--config", f"{key}={value}"]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=self._work_dir,
        )
        self._reader = threading.Thread(
            target=self._read_stdout, name=f"java-producer-{self._process.pid}", daemon=True
        )
        self._reader.start()
        logger.debug("started Java producer pid %d for %s", self._process.pid, self._topic)
        try:
            self._await_reply("ready", timeout_s)
        except BaseException:
            self._kill()
            raise

    def close(self, timeout_s: float = 60) -> list[tuple[int, int]]:
        """End stdin (the JVM flushes, closes and exits); every send's (partition, offset)."""
        process = self._require_process()
        try:
            if process.stdin is not None and not process.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            deadline = time.monotonic() + timeout_s
            while not self._exited:
                self._take_line(deadline, "the producer to exit")
            try:
                code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired as e:
                raise self._failure(f"the JVM did not exit within {timeout_s:.0f} s") from e
            if code != 0:
                raise self._failure(f"the JVM exited with code {code}")
            return self._positions()
        finally:
            self._kill()

    def __enter__(self) -> JavaProducer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._kill()

    # -- commands ---------------------------------------------------------------------

    def send(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Send one record (`None` value: a tombstone); acknowledged in the background."""
        fields = (
            "-" if partition is None else str(partition),
            "-" if timestamp_ms is None else str(timestamp_ms),
            _b64(key),
            _b64(value),
        )
        self._write("send " + " ".join(fields))
        self._sends += 1

    def begin(self, timeout_s: float = 60) -> None:
        self._write("begin")
        self._await_reply("begun", timeout_s)

    def commit(self, timeout_s: float = 60) -> None:
        self._write("commit")
        self._await_reply("committed", timeout_s)

    def abort(self, timeout_s: float = 60) -> None:
        """Flush, then abort: the aborted records are in the log, their offsets used."""
        self._write("abort")
        self._await_reply("aborted", timeout_s)

    def flush(self, timeout_s: float = 60) -> list[tuple[int, int]]:
        """Wait for every send so far; their (partition, offset), in send order."""
        self._write("flush")
        self._await_reply("flushed", timeout_s)
        return self._positions()

    # -- internals --------------------------------------------------------------------

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise JavaProducerError("the Java producer has not been started")
        return self._process

    def _write(self, line: str) -> None:
        process = self._require_process()
        if process.stdin is None or process.stdin.closed:
            raise JavaProducerError("the Java producer is closed")
        try:
            process.stdin.write(line.encode("ascii") + b"\n")
            process.stdin.flush()
        except BrokenPipeError as e:
            raise self._failure("the JVM stopped reading commands") from e

    def _read_stdout(self) -> None:
        stdout = self._require_process().stdout
        if stdout is not None:
            for raw in stdout:
                self._lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
        self._lines.put(_EOF)

    def _await_reply(self, reply: str, timeout_s: float) -> str:
        """Handle protocol lines until one starting with `reply`; raise on any error."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._take_line(deadline, repr(reply))
            if line is None:
                try:
                    code: int | str = self._require_process().wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = "(still running)"
                raise self._failure(f"the JVM ended its output, exit code {code}, before {reply!r}")
            if line.split(" ", 1)[0] == reply:
                return line

    def _take_line(self, deadline: float, waiting_for: str) -> str | None:
        """The next protocol line, acks and errors recorded (`None` once the JVM's stdout
        has ended)."""
        if self._exited:
            return None
        try:
            line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise self._failure(f"no {waiting_for} from the JVM in time") from None
        if line is None:
            self._exited = True
            return None
        kind, _, rest = line.partition(" ")
        if kind == "ack":
            index, partition, offset = (int(part) for part in rest.split(" "))
            self._acks[index] = (partition, offset)
        elif kind == "error":
            raise self._failure(f"the Java producer reported: {line}")
        return line

    def _positions(self) -> list[tuple[int, int]]:
        missing = [i for i in range(self._sends) if i not in self._acks]
        if missing:
            raise self._failure(f"{len(missing)} sends were never acknowledged: {missing[:10]}")
        return [self._acks[i] for i in range(self._sends)]

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", errors="replace")
        self._stderr.seek(0, 2)
        return "\n".join(text.splitlines()[-_STDERR_TAIL_LINES:])

    def _failure(self, reason: str) -> JavaProducerError:
        return JavaProducerError(
            f"{reason} (topic {self._topic}); JVM stderr:\n{self._stderr_tail() or '(empty)'}"
        )

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None and process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None


def _b64(data: bytes | None) -> str:
    return "-" if data is None else base64.b64encode(data).decode("ascii")


def produce_with_java(
    bootstrap: str,
    topic: str,
    records: list[GeneratedRecord],
    config: Mapping[str, str] | None = None,
) -> dict[int, str]:
    """Produce `records` in order with the Java client, keyed by user, with their record
    timestamps; `config` adds to (or overrides) `DEFAULT_CONFIG`.

    Returns where each landed: record n -> `topic/partition/offset` (its dead-letter source).
    """
    with JavaProducer(bootstrap, topic, {**DEFAULT_CONFIG, **(config or {})}) as producer:
        for record in records:
            producer.send(record.value, key=record.key, timestamp_ms=record.timestamp_ms)
        positions = producer.flush()
    return {
        record.n: f"{topic}/{partition}/{offset}"
        for record, (partition, offset) in zip(records, positions, strict=True)
    }
