"""A real Redis server for tests: Debian's `redis-server`, on a free loopback port.

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

Each test takes its own database (`server.database()`), so tests never see each other's
keys. `kill()` sends SIGKILL and `start()` starts it again on the same port and data
directory (append-only file on, fsynced on every write by default, so what it
acknowledged survives the kill; the benchmarks run it as the compose stack does,
`appendfsync="everysec"`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

REDIS_SERVER = "redis-server"
DATABASES = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One `redis-server` process with its own directory; `url` names database 0."""

    def __init__(self, *, password: str | None = None, appendfsync: str = "always") -> None:
        executable = shutil.which(REDIS_SERVER)
        if executable is None:
            raise RuntimeError("redis-server is not installed (Debian: redis-server)")
        self.executable = executable
        self.password = password
        self.appendfsync = appendfsync
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="waxhouse-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._next_db = 0

    @property
    def url(self) -> str:
        return self.url_of(0)

    def url_of(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() it first"
        return self._process.pid

    def database(self) -> str:
        """The URL of a database no other test used, emptied."""
        db = self._next_db % DATABASES
        self._next_db += 1
        url = self.url_of(db)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--databases", str(DATABASES),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the process keeps it
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                pass
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in 20 s: {self.log()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
