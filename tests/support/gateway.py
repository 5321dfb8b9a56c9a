"""Run `waxhouse gateway` as users do: a subprocess from the repository root.

    with start_gateway(bootstrap, env={"KAFKA_TOPIC": topic}, flow="clickstream") as gw:
        post(gw.url + "/v1/events", [...])
        gw.kill()        # SIGKILL, as a crash
        gw.restart()     # the same port and settings again, waits until healthy
        gw.stop()        # SIGTERM: drains, flushes, exits 0 (returns the exit code)

`start_gateway` returns once `/healthz` answers (and, with `ready=True`, the default,
once `/readyz` says Kafka is reachable). The process's output goes to `gw.log_path`;
`gw.output()` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.support.flow import REPO, flow_env
from tests.support.scrape import free_port

START_TIMEOUT_S = 60.0


def gateway_env(bootstrap: str, env: Mapping[str, str], port: int) -> dict[str, str]:
    """This environment without waxhouse or gateway settings, then the broker, the port,
    and `env`."""
    base = {k: v for k, v in flow_env({}).items() if not k.startswith("GATEWAY_")}
    base.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    base.update(env)
    return base


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The status of `GET url`, None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


class GatewayProcess:
    """A running gateway (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        env: Mapping[str, str],
        flow: str,
        args: Sequence[str],
        log_path: Path | None,
        ready: bool,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = gateway_env(bootstrap, env, self.port)
        self.command = [sys.executable, "-m", "waxhouse.cli", "gateway", "--flow", flow, *args]
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="waxhouse-gateway-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
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
                raise AssertionError(f"the gateway exited at start:\n{self.output()[-3000:]}")
            if http_status(self.url + paths[0], timeout_s=1.0) == 200:
                paths.pop(0)
                continue
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the gateway did not answer {paths[0]} in {timeout_s} s:\n"
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
        """SIGTERM and wait; returns the exit code (the gateway exits 0 after draining)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(f"the gateway did not stop within {timeout_s} s") from None

    def restart(self) -> GatewayProcess:
        """Start again on the same port with the same settings (killing it if running)."""
        self.kill()
        return self.start()

    def __enter__(self) -> GatewayProcess:
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


def start_gateway(
    bootstrap: str,
    *,
    env: Mapping[str, str] | None = None,
    flow: str = "all",
    args: Sequence[str] = (),
    log_path: Path | None = None,
    ready: bool = True,
) -> GatewayProcess:
    """Start `waxhouse gateway --flow flow [args]` against `bootstrap` with `env` on a free
    port; returns once healthy (and ready, unless `ready=False`)."""
    return GatewayProcess(bootstrap, env or {}, flow, args, log_path, ready).start()


class Answer:
    """An HTTP answer: `status`, `headers` (case-insensitive), `body` and `json()`."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> object:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Answer:
    """One HTTP request; any status is returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, dict(e.headers), e.read())


def post_events(
    url: str,
    events: object,
    *,
    token: str | None = None,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Answer:
    """POST `events` (any JSON value; bytes are sent as they are) to `url`."""
    body = events if isinstance(events, bytes) else json.dumps(events).encode()
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return request("POST", url, body, sent, timeout_s)
