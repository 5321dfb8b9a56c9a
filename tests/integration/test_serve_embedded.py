"""The embedded demo shows live results: a flow with `SERVE_LISTEN` and no `REDIS_URL`
serves its live tables from its own process (the generator in, chDB out, no Redis)."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

from tests.support.flow import start_flow
from tests.support.gateway import request
from tests.support.http_process import http_status
from tests.support.scrape import free_port
from tests.support.serve import SseClient

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0


def test_an_embedded_flow_serves_its_tops_rows_and_streams_itself(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "flow.log"
    flow = start_flow(
        {
            "CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
            "GENERATOR_EVENTS": "0",  # endless
            "GENERATOR_RATE": "3000",
            "WINDOW_SECONDS": "5",
            "ALLOWED_LATENESS_SECONDS": "1",
            "SERVE_LISTEN": f"127.0.0.1:{port}",
            "SERVE_TOKENS": "embedded-token",
        },
        log,
    )
    headers = {"Authorization": "Bearer embedded-token"}
    try:
        deadline = time.monotonic() + DEADLINE_S
        while http_status(url + "/readyz", timeout_s=1.0) != 200:
            assert flow.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert request("GET", url + "/v1/page_stats/top").status == 401  # tokens hold here too
        while (top := request("GET", url + "/v1/page_stats/top", headers=headers)).status != 200:
            assert top.status == 404, top  # no window closed yet
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        closed = top.json()
        assert isinstance(closed, dict) and closed["top"], closed
        first = closed["top"][0]
        assert first["views"] >= closed["top"][-1]["views"] > 0
        # The top page's row: its newest window, final or still provisional.
        page = urllib.parse.quote(first["key"], safe="/")
        row = request("GET", f"{url}/v1/page_stats/{page}", headers=headers)
        assert row.status == 200, row
        shown = row.json()
        assert isinstance(shown, dict) and shown["row"]["page"] == first["key"]
        assert shown["row"]["window_start"] >= closed["window_start"]
        # The stream: the next windows' tops, as they close, each newer than the last.
        with SseClient(url + "/v1/page_stats/stream", headers=headers, timeout_s=30) as sse:
            events = sse.read(2)
        assert [e.event for e in events] == ["top", "top"]
        assert events[0].data["window_start"] < events[1].data["window_start"]
        history = request("GET", f"{url}/v1/page_stats/history/{page}", headers=headers)
        assert history.status == 503  # the flow holds the embedded store
    finally:
        flow.kill()
        flow.wait(timeout=30)
    assert "serving live tables on" in log.read_text()
