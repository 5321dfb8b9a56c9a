"""SIGTERM (`docker stop`, a Kubernetes pod deletion) and SIGINT (Ctrl-C) stop the flow in
order: the sinks flush and close, the summary prints, the process exits 0 with no
traceback, and the next start resumes from recovery. A second signal while stopping exits
at once; a crash still exits non-zero with its error."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, run_flow, start_flow

pytestmark = pytest.mark.integration

STARTS = re.compile(r"partition generator starts at record (\d+) \((\w+)\)")
STOPPING = "stopping after the current batch"
NOT_CLEAN = ("Traceback", "panicked", "BytewaxRuntimeError", "KeyboardInterrupt")


def wait_for(flow: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + 120
    while text not in log.read_text(errors="replace"):
        assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.1)


def run_until_signal(
    env: dict[str, str], log: Path, recovery: Path, signum: int, args: list[str]
) -> tuple[int, str]:
    """Start the flow, let it run past a snapshot or two, send `signum`: (exit code, output)."""
    flow = start_flow(env, log, [*recovery_args(recovery), *args])
    try:
        wait_for(flow, log, "starts at record")
        time.sleep(4)  # 1 s epochs
        flow.send_signal(signum)
        code = flow.wait(timeout=120)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    return code, log.read_text(errors="replace")


def assert_clean_stop(code: int, output: str) -> None:
    assert code == 0, output[-3000:]
    assert STOPPING in output and "clickstream stopped:" in output, output[-3000:]
    for text in NOT_CLEAN:
        assert text not in output, output[-3000:]


@pytest.mark.parametrize(
    ("signum", "args"),
    [
        pytest.param(signal.SIGTERM, [], id="SIGTERM"),
        pytest.param(signal.SIGINT, [], id="SIGINT"),
        # Worker threads (Bytewax's cluster_main, as with -i/-a on Kubernetes) stop another way.
        pytest.param(signal.SIGTERM, ["-w", "2"], id="SIGTERM-2-workers"),
    ],
)
def test_a_signal_stops_the_flow_in_order_exits_0_and_the_next_start_resumes(
    tmp_path: Path, signum: int, args: list[str]
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    env = {"GENERATOR_EVENTS": "0", "GENERATOR_RATE": "5000", "CLICKHOUSE_URL": url}
    recovery = tmp_path / "recovery"

    code, first = run_until_signal(env, tmp_path / "first.log", recovery, signum, args)
    assert_clean_stop(code, first)
    summary = re.search(r"rows in ClickHouse page_stats ([\d,]+)", first)
    assert summary, first[-3000:]
    stored = query_rows(url, "SELECT count() FROM page_stats")[0][0]
    assert stored == int(summary.group(1).replace(",", "")) > 0

    code, second = run_until_signal(env, tmp_path / "second.log", recovery, signum, args)
    assert_clean_stop(code, second)
    ((record, origin),) = STARTS.findall(second)
    assert origin == "resumed" and int(record) > 0, second[-3000:]


def test_a_second_signal_while_stopping_exits_at_once(tmp_path: Path) -> None:
    # One record every 20 s: the orderly stop waits for the source's next wake-up.
    env = {
        "GENERATOR_EVENTS": "0",
        "GENERATOR_RATE": "0.05",
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
    }
    log = tmp_path / "flow.log"
    flow = start_flow(env, log, recovery_args(tmp_path / "recovery"))
    try:
        wait_for(flow, log, "starts at record")
        flow.send_signal(signal.SIGTERM)
        wait_for(flow, log, STOPPING)
        flow.send_signal(signal.SIGINT)
        code = flow.wait(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    output = log.read_text(errors="replace")
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "SIGINT again while stopping: exiting at once" in output, output[-3000:]
    assert "clickstream stopped:" not in output


def test_a_crash_still_exits_non_zero_with_its_error(tmp_path: Path) -> None:
    # A store the flow cannot create: a real failure of the ClickHouse sink.
    env = {
        "GENERATOR_EVENTS": "1000",
        "CLICKHOUSE_URL": "chdb:///proc/waxhouse-cannot-create/store",
        "CLICKHOUSE_RETRY_SECONDS": "1",
    }
    done = run_flow(env, recovery_args(tmp_path / "recovery"), check=False, timeout_s=300)
    assert done.returncode not in (0, None), done.stderr[-3000:]
    assert "Traceback" in done.stderr
    assert "Opening chdb:///proc/waxhouse-cannot-create/store failed" in done.stderr
    assert STOPPING not in done.stderr
