"""Run the clickstream flow the way users do: `python -m bytewax.run` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLOW = "dataflows.clickstream"


def flow_command(args: Sequence[str] = (), *, faults: bool = False) -> list[str]:
    """The command line; with `faults`, through `tests.support.fault_run`."""
    runner = "tests.support.fault_run" if faults else "bytewax.run"
    return [sys.executable, "-m", runner, FLOW, *args]


def recovery_args(directory: Path, snapshot_s: int = 1) -> list[str]:
    """Bytewax's recovery flags, as the README's commands give them."""
    return ["-r", str(directory), "-s", str(snapshot_s), "-b", "0"]


def flow_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any waxhouse settings, plus `overrides`."""
    prefixes = (
        "KAFKA_",
        "GENERATOR_",
        "CLICKHOUSE_",
        "WINDOW_",
        "ALLOWED_",
        "SESSION_",
        "FAULT_",
        "SENSOR",
        "DEVICES_",
        "ALERT",
        "REDIS_",
        "SERVE_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(overrides)
    return env


def run_flow(
    overrides: Mapping[str, str],
    args: Sequence[str] = (),
    *,
    faults: bool = False,
    timeout_s: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the flow to completion; unless `check` is off, fail with its stderr if it fails."""
    done = subprocess.run(
        flow_command(args, faults=faults),
        cwd=REPO,
        env=flow_env(overrides),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def start_flow(
    overrides: Mapping[str, str],
    log_path: Path,
    args: Sequence[str] = (),
    *,
    faults: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the flow in the background, its output appended to `log_path`."""
    return start_python(flow_command(args, faults=faults)[1:], overrides, log_path)


def start_python(
    args: Sequence[str], overrides: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `python ARGS` in the repository in the background, in the flow's environment,
    its output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=flow_env(overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def run_python(
    args: Sequence[str],
    overrides: Mapping[str, str],
    *,
    cwd: Path = REPO,
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` to completion in `cwd` (the repository), in the flow's environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=flow_env(overrides),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_cli(overrides: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `waxhouse` CLI with `args` to completion, in the flow's environment."""
    return run_python(["-m", "waxhouse.cli", *args], overrides)


def wait_until_partitions_start(
    flow: subprocess.Popen[bytes], log_path: Path, partitions: int, timeout_s: float = 90
) -> None:
    """Wait until a flow started with `start_flow` has opened `partitions` Kafka
    partitions (their `starts at offset` lines); fail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while log_path.read_text(errors="replace").count("starts at offset") < partitions:
        assert flow.poll() is None, log_path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"the flow did not start within {timeout_s:.0f} s"
        time.sleep(0.1)


# Small windows, so the idle clock closes them within seconds: window 2 s + lateness 1 s,
# sessions gap 2 s + lateness 1 s.
QUICK_WINDOWS = {"WINDOW_SECONDS": "2", "ALLOWED_LATENESS_SECONDS": "1", "SESSION_GAP_SECONDS": "2"}


def run_live_while_idle(
    overrides: Mapping[str, str], log_path: Path, partitions: int, idle_s: float = 8
) -> None:
    """Run the flow live with `QUICK_WINDOWS` until its `partitions` have started and then
    for `idle_s` more, in which only the idle clock can close windows and sessions; it must
    still run then. It is killed: whatever it wrote by then is what the test reads."""
    flow = start_flow({**QUICK_WINDOWS, **overrides}, log_path)
    try:
        wait_until_partitions_start(flow, log_path, partitions, timeout_s=60)
        time.sleep(idle_s)
        assert flow.poll() is None, "a live flow must keep running"
    finally:
        flow.kill()
        flow.wait(timeout=30)
