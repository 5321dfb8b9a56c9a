"""A full disk under the recovery directory: the flow stops with one clear line naming the
directory instead of a hang or a panic dump, and once there is room again a restart with
the same recovery directory and store resumes exactly.

The recovery directory is a small tmpfs mounted for the test (skipped where mounting is
not permitted); a filler file on it fills it mid-run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.flow import recovery_args, run_flow, start_flow
from tests.support.oracle import oracle
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 23
EVENTS = 100_000  # at 5,000 a second: the disk fills long before the run would end
DISK_SIZE = "16m"  # room for the flow's partition (about 5 MiB) and its 8 MiB reserve
STARTS = re.compile(r"partition generator starts at record (\d+) \((\w+)\)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "recovery"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def taken(directory: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with a filler file until `leave` bytes are free (0: until it is full)."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f:
        try:
            while shutil.disk_usage(disk).free > leave:
                f.write(chunk[: max(4096, min(len(chunk), shutil.disk_usage(disk).free - leave))])
                f.flush()
        except OSError:  # ENOSPC: full, as asked with leave=0
            pass
    return filler


def run_until_the_disk_fills(env: dict[str, str], disk: Path, log: Path, leave: int) -> tuple:
    """Start the flow, let it snapshot a few times, fill the disk; (exit code, output)."""
    flow = start_flow(env, log, recovery_args(disk))
    try:
        deadline = time.monotonic() + 120
        # Running, with a few snapshots written to its partition.
        while "starts at record" not in log.read_text(errors="replace") or taken(disk) < 512 << 10:
            assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the flow did not start snapshotting"
            time.sleep(0.1)
        filler = fill(disk, leave)
        code = flow.wait(timeout=120)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
    filler.unlink()
    return code, log.read_text(errors="replace")


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


def is_the_clear_line(line: str, disk: Path) -> bool:
    return line.startswith(f"waxhouse: recovery directory {disk} is full (") and line.endswith(
        "free space and restart; state up to the last complete snapshot is kept"
    )


def resume_exactly(env: dict[str, str], disk: Path, url: str) -> None:
    """With room again: the restart resumes where the snapshots left off, and the tables
    equal the oracle's over every generated record."""
    done = run_flow({**env, "GENERATOR_RATE": "0"}, recovery_args(disk))
    ((record, origin),) = STARTS.findall(done.stderr)
    assert origin == "resumed" and 0 < int(record) < EVENTS, done.stderr[-3000:]
    records = ClickstreamGenerator(GeneratorConfig(seed=SEED, events=EVENTS)).take(EVENTS)
    names = {r.n: f"generator/{r.n}" for r in records}
    assert_tables_match(read_tables(url), oracle(records), records, names)


def flow_env(url: str) -> dict[str, str]:
    return {
        "GENERATOR_EVENTS": str(EVENTS),
        "GENERATOR_SEED": str(SEED),
        "GENERATOR_RATE": "5000",
        "CLICKHOUSE_URL": url,
    }


def test_a_filling_disk_stops_the_flow_in_order_and_a_restart_is_exact(
    small_disk: Path, tmp_path: Path
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    env = flow_env(url)

    # Less free than the reserve the flow keeps, but room for the snapshots in flight.
    code, output = run_until_the_disk_fills(env, small_disk, tmp_path / "flow.log", 3 << 20)

    assert code == 1, output[-3000:]
    assert is_the_clear_line(last_line(output), small_disk), output[-3000:]
    assert "clickstream stopped:" in output  # the sinks flushed and closed
    assert "Traceback" not in output and "panicked" not in output, output[-3000:]

    resume_exactly(env, small_disk, url)


def test_a_disk_full_at_once_still_ends_with_the_clear_line_and_a_restart_is_exact(
    small_disk: Path, tmp_path: Path
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    env = flow_env(url)

    # No room at all: whether the flow notices before SQLite does is a race. If SQLite
    # fails first, Bytewax's panic is printed, but the clear line is still the last one.
    code, output = run_until_the_disk_fills(env, small_disk, tmp_path / "flow.log", 0)

    assert code != 0, output[-3000:]
    assert is_the_clear_line(last_line(output), small_disk), output[-3000:]

    resume_exactly(env, small_disk, url)
