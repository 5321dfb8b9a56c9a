"""A `waxhouse` HTTP server (the gateway, serve) run as users run it: a subprocess from
the repository root, on a free loopback port, its output in a log file.

`start()` returns once `/healthz` answers (and, with `ready`, `/readyz` too); `kill()` is
SIGKILL, as a crash; `stop()` is SIGTERM and returns the exit code; as a context manager
it stops on leaving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.flow import REPO

START_TIMEOUT_S = 60.0


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The status of `GET url`, None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


class HttpProcess:
    """`command` with `env`, serving on `port`; `what` names it in failures."""

    def __init__(
        self,
        what: str,
        command: list[str],
        env: dict[str, str],
        port: int,
        log_path: Path | None = None,
        ready: bool = True,
    ) -> None:
        self.what = what
        self.command = command
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"waxhouse-{what}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        paths = ["/healthz", "/readyz"] if self.ready else ["/healthz"]
        while paths:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"{self.what} exited at start:\n{self.output()[-3000:]}")
            if http_status(self.url + paths[0], timeout_s=1.0) == 200:
                paths.pop(0)
                continue
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.what} did not answer {paths[0]} in {timeout_s} s:\n"
                    f"{self.output()[-3000:]}"
                )
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(f"{self.what} did not stop within {timeout_s} s") from None

    def restart(self) -> Self:
        """Start again on the same port with the same settings (killing it if running)."""
        self.kill()
        return self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(AssertionError):  # stop() killed it
                self.stop(timeout_s=30)
