"""The local actuator: a flow run as N `bytewax.run` processes on this machine, sharing one
recovery directory, and rescaled by an orderly stop of all of them and a start at the new
size from the same state.

Bytewax resumes a recovery set at any process count when every process reaches every
partition, which one directory gives. The first start creates the set for its own count
(`waxhouse.recovery`); later starts at other counts resume from it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from waxhouse.autoscale.metrics import ScrapeError, fetch
from waxhouse.errors import WaxhouseError

logger = logging.getLogger(__name__)


class LocalClusterError(WaxhouseError):
    """A process of the flow exited on its own, or did not start."""


@dataclass(frozen=True)
class Rescale:
    """How long a rescale took: stopping every process, then starting the new ones until
    each serves its metrics."""

    before: int
    after: int
    stop_s: float
    start_s: float


class LocalCluster:
    """Runs `flow` (a `bytewax.run` import string) as `processes` processes.

    Process `i` listens for its peers on `127.0.0.1:{peer_port + i}` and serves metrics on
    `127.0.0.1:{api_port + i}`; its stderr goes to `logs/process-{i}.log`. `env` is the
    flows' environment (Kafka, ClickHouse, ...); the API server is turned on here.
    """

    def __init__(
        self,
        flow: str,
        recovery: Path,
        logs: Path,
        *,
        env: Mapping[str, str] | None = None,
        snapshot_s: float = 10.0,
        peer_port: int = 2101,
        api_port: int = 3030,
        stop_timeout_s: float = 60.0,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.flow = flow
        self.recovery = recovery
        self.logs = logs
        self._env = dict(os.environ if env is None else env)
        self._snapshot_s = snapshot_s
        self._peer_port = peer_port
        self._api_port = api_port
        self._stop_timeout_s = stop_timeout_s
        self._start_timeout_s = start_timeout_s
        self._processes: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    @property
    def size(self) -> int:
        return len(self._processes)

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self._api_port + i}/metrics" for i in range(self.size)]

    def start(self, processes: int) -> float:
        """Start `processes` processes; returns the seconds until each served metrics."""
        if self._processes:
            raise LocalClusterError("already running: stop it first")
        began = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        addresses = ";".join(f"127.0.0.1:{self._peer_port + i}" for i in range(processes))
        for i in range(processes):
            command = [sys.executable, "-m", "bytewax.run", self.flow]
            command += ["-r", str(self.recovery), "-s", str(self._snapshot_s), "-b", "0"]
            if processes > 1:
                command += ["-i", str(i), "-a", addresses]
            cache = self.logs / f"api-{i}"
            cache.mkdir(exist_ok=True)
            env = {
                **self._env,
                "BYTEWAX_DATAFLOW_API_ENABLED": "true",
                "BYTEWAX_DATAFLOW_API_PORT": str(self._api_port + i),
                "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(cache),
            }
            log = (self.logs / f"process-{i}.log").open("ab")
            self._files.append(log)
            self._processes.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
            )
        self._wait_serving(began)
        return time.monotonic() - began

    def _wait_serving(self, began: float) -> None:
        pending = self.metrics_urls()
        while pending:
            self.check()
            if time.monotonic() - began > self._start_timeout_s:
                raise LocalClusterError(f"not serving metrics after {self._start_timeout_s} s")
            pending = [url for url in pending if not _answers(url)]
            if pending:
                time.sleep(0.2)

    def check(self) -> None:
        """Raise if a process has exited."""
        for i, process in enumerate(self._processes):
            code = process.poll()
            if code is not None:
                raise LocalClusterError(
                    f"process {i} of {self.flow} exited with {code}; see {self.logs}"
                )

    def stop(self) -> float:
        """SIGTERM every process (the flow stops in order) and wait; SIGKILL what is left
        after the timeout. Returns the seconds it took."""
        began = time.monotonic()
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = began + self._stop_timeout_s
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("autoscale: process %d did not stop in time: killed", process.pid)
                process.kill()
                process.wait()
        for file in self._files:
            file.close()
        self._processes, self._files = [], []
        return time.monotonic() - began

    def rescale(self, processes: int) -> Rescale:
        before = self.size
        stop_s = self.stop()
        start_s = self.start(processes)
        return Rescale(before, processes, stop_s, start_s)


def _answers(url: str) -> bool:
    try:
        fetch(url, timeout_s=2.0)
    except ScrapeError:
        return False
    return True
