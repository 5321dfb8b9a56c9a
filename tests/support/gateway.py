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

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.flow import flow_env
from tests.support.http_process import HttpProcess, http_status
from tests.support.scrape import free_port

__all__ = [
    "Answer",
    "GatewayProcess",
    "gateway_env",
    "http_status",
    "post_events",
    "request",
    "start_gateway",
]


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


class GatewayProcess(HttpProcess):
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
        port = free_port()
        command = [sys.executable, "-m", "waxhouse.cli", "gateway", "--flow", flow, *args]
        environment = gateway_env(bootstrap, env, port)
        super().__init__("the gateway", command, environment, port, log_path, ready)


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
