"""Run the clickstream flow the way users do: `python -m bytewax.run` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLOW_COMMAND = [sys.executable, "-m", "bytewax.run", "dataflows.clickstream"]


def flow_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any waxhouse settings, plus `overrides`."""
    prefixes = ("KAFKA_", "GENERATOR_", "CLICKHOUSE_", "WINDOW_", "ALLOWED_", "SESSION_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(overrides)
    return env


def run_flow(
    overrides: Mapping[str, str], timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the flow to completion; fail with its stderr unless it exits 0."""
    done = subprocess.run(
        FLOW_COMMAND,
        cwd=REPO,
        env=flow_env(overrides),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def start_flow(overrides: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the flow in the background, its output going to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            FLOW_COMMAND,
            cwd=REPO,
            env=flow_env(overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
