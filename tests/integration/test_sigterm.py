"""SIGTERM (`docker stop`, a Kubernetes pod deletion) stops the flow as Ctrl-C does: the
sinks flush and close, the summary prints, and the next start resumes from recovery."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, start_flow

pytestmark = pytest.mark.integration

STARTS = re.compile(r"partition generator starts at record (\d+) \((\w+)\)")


def run_until_sigterm(env: dict[str, str], log: Path, recovery: Path) -> str:
    flow = start_flow(env, log, recovery_args(recovery))
    try:
        deadline = time.monotonic() + 120
        # Running, and past a snapshot or two (1 s epochs).
        while "starts at record" not in log.read_text(errors="replace"):
            assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the flow did not start"
            time.sleep(0.2)
        time.sleep(4)
        flow.send_signal(signal.SIGTERM)
        flow.wait(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    return log.read_text(errors="replace")


def test_sigterm_flushes_prints_the_summary_and_resumes(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    env = {"GENERATOR_EVENTS": "0", "GENERATOR_RATE": "5000", "CLICKHOUSE_URL": url}
    recovery = tmp_path / "recovery"

    first = run_until_sigterm(env, tmp_path / "first.log", recovery)
    assert "clickstream stopped:" in first, first[-3000:]
    summary = re.search(r"rows in ClickHouse page_stats ([\d,]+)", first)
    assert summary, first[-3000:]
    stored = query_rows(url, "SELECT count() FROM page_stats")[0][0]
    assert stored == int(summary.group(1).replace(",", "")) > 0

    second = run_until_sigterm(env, tmp_path / "second.log", recovery)
    ((record, origin),) = STARTS.findall(second)
    assert origin == "resumed" and int(record) > 0, second[-3000:]
    assert "clickstream stopped:" in second
