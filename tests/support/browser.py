"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open
a page, evaluate JavaScript in it and await its promises.

    async with Chromium() as browser:
        page = await browser.open("http://127.0.0.1:8000/")
        answer = await page.evaluate("sendEvents([...])")

The browser runs as `chromium --headless=new --no-sandbox --remote-debugging-port=0` with
a temporary profile; the port it picked is read from the profile's `DevToolsActivePort`
file, and the protocol is spoken over its WebSocket with aiohttp's client. Each call waits
a bounded time; leaving the context kills the browser and deletes the profile.

`chromium_path()` finds the binary, and skips the test when there is none, except in CI
(`CI` set), where a missing browser fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

STARTUP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0


def chromium_path() -> str:
    """Where `chromium` is; skip the test without it, or fail it in CI (.ci/run installs
    it, so a missing browser there is a broken CI, not a reason to pass)."""
    found = shutil.which("chromium")
    if found is None:
        reason = "Debian's `chromium` is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must run the browser tests")
        pytest.skip(reason)
    return found


class JavaScriptError(Exception):
    """An exception thrown (or a promise rejected) by evaluated JavaScript."""


@dataclass(frozen=True)
class FailedRequest:
    """A request the page made that failed (Network.loadingFailed)."""

    url: str
    error: str  # net::ERR_FAILED ...
    cors_error: str | None  # why CORS blocked it (PreflightMissingAllowOriginHeader ...)


@dataclass
class Page:
    """One tab, attached by its DevTools session."""

    browser: Chromium
    session_id: str
    console: list[str] = field(default_factory=list)  # console calls and log entries
    failed: list[FailedRequest] = field(default_factory=list)  # in the order they failed
    _urls: dict[str, str] = field(default_factory=dict)  # request id -> URL

    async def goto(self, url: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Navigate and wait for the load event; a failed navigation raises."""
        loaded = self.browser._expect("Page.loadEventFired", self.session_id)
        try:
            result = await self.browser.call(
                "Page.navigate", {"url": url}, session_id=self.session_id, timeout_s=timeout_s
            )
            if result.get("errorText"):
                raise RuntimeError(f"navigating to {url}: {result['errorText']}")
            await asyncio.wait_for(loaded, timeout_s)
        finally:
            loaded.cancel()

    async def evaluate(self, expression: str, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """The value of `expression` in the page's global scope (a promise is awaited), as
        JSON; a thrown exception or rejected promise raises `JavaScriptError` with its
        description (`TypeError: Failed to fetch`...)."""
        result = await self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session_id=self.session_id,
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {})
            raise JavaScriptError(
                thrown.get("description") or str(thrown.get("value")) or details.get("text")
            )
        return result["result"].get("value")

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self._urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            cors = params.get("corsErrorStatus", {}).get("corsError")
            url = self._urls.get(params["requestId"], "?")
            self.failed.append(FailedRequest(url, params.get("errorText", ""), cors))
        elif method == "Runtime.consoleAPICalled":
            args = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            self.console.append(f"console.{params['type']}: {' '.join(args)}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", details.get("text"))
            self.console.append(f"uncaught: {thrown}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(f"{entry['source']} {entry['level']}: {entry['text']}")


class Chromium:
    """A headless Chromium process and one DevTools connection to it; see the module
    docstring."""

    def __init__(self, *, binary: str | None = None) -> None:
        self.binary = binary or chromium_path()
        self._profile: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._expected: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._pages: dict[str, Page] = {}

    async def __aenter__(self) -> Chromium:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def log(self) -> str:
        """The browser's own stderr so far, for a failing test's message."""
        if self._profile is None:
            return ""
        path = self._profile.parent / "chromium.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def _start(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="waxhouse-chromium-"))
        self._profile = home / "profile"
        stderr = (home / "chromium.log").open("wb")
        command = [
            self.binary,
            "--headless=new",
            "--no-sandbox",  # root in a container: the sandbox needs user namespaces
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self._profile}",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--no-default-browser-check",
            "about:blank",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,  # its own process group: close() ends its children too
        )
        stderr.close()
        endpoint = await self._devtools_endpoint()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            endpoint, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        )
        self._reader = asyncio.create_task(self._read())

    async def _devtools_endpoint(self) -> str:
        """`ws://127.0.0.1:<port>/devtools/browser/<id>`, from the file Chromium writes
        once it listens (first line the port, second the path)."""
        assert self._profile is not None and self._process is not None
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}: {self.log}")
            lines = active.read_text().splitlines() if active.exists() else []
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
            await asyncio.sleep(0.05)
        raise TimeoutError(f"chromium not listening after {STARTUP_TIMEOUT_S} s: {self.log}")

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """One DevTools command's result; a protocol error raises RuntimeError."""
        assert self._ws is not None, "the browser is not started"
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = params or {}
        if session_id is not None:
            message["sessionId"] = session_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[message["id"]] = answer
        try:
            await self._ws.send_str(json.dumps(message))
            return await asyncio.wait_for(answer, timeout_s)
        finally:
            self._calls.pop(message["id"], None)

    async def open(self, url: str) -> Page:
        """A new tab at `url`, its console and failed requests recorded."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.call(f"{domain}.enable", session_id=page.session_id)
        await page.goto(url)
        return page

    def _expect(self, method: str, session_id: str | None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event `method` of the session; register it before the
        command that causes the event."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._expected.append((method, session_id, waiter))
        return waiter

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            if "id" in message:
                answer = self._calls.get(message["id"])
                if answer is None or answer.done():
                    continue
                if "error" in message:
                    answer.set_exception(RuntimeError(f"DevTools: {message['error']}"))
                else:
                    answer.set_result(message.get("result", {}))
                continue
            method, session = message.get("method", ""), message.get("sessionId")
            params = message.get("params", {})
            page = self._pages.get(session or "")
            if page is not None:
                page.on_event(method, params)
            for expected in list(self._expected):
                name, wanted_session, waiter = expected
                if waiter.done():
                    self._expected.remove(expected)
                elif name == method and wanted_session == session:
                    waiter.set_result(params)
                    self._expected.remove(expected)
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the DevTools connection closed"))

    async def close(self) -> None:
        """Kill the browser (it keeps no state worth a graceful exit) and remove its
        profile."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._http is not None:
            await self._http.close()
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
        if self._profile is not None:
            shutil.rmtree(self._profile.parent, ignore_errors=True)


class Site:
    """A page served on 127.0.0.1 at a port of its own, so an origin other than the
    server it talks to: `html(server_url)` makes the page, the server's URL taken from
    the query parameter `param` (`site.url(server_url)` is such an address)."""

    def __init__(self, html: Callable[[str], str], param: str) -> None:
        self.param = param

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                body = html(query.get(param, [""])[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, server_url: str) -> str:
        return f"{self.origin}/?{urlencode({self.param: server_url})}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
