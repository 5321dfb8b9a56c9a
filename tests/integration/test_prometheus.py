"""A real Prometheus scrapes a live flow; what it stored matches what the flow did.

The flow serves its metrics on Bytewax's API server (`BYTEWAX_DATAFLOW_API_ENABLED`,
`BYTEWAX_DATAFLOW_API_PORT`); a `prometheus` process (Debian's package, installed by
`.ci/run`) scrapes it every second, and the test reads the values back through
Prometheus' HTTP API and compares them with the independent oracle's account of the input.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
from kafka import KafkaProducer

from tests.support.flow import start_flow
from tests.support.kafka_broker import TopicFactory
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

INSTALL = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends prometheus"
)
MISSING = f"the `prometheus` binary is not on the PATH; install it with: {INSTALL}"

pytestmark = [
    pytest.mark.integration,
    # Skipped before the broker starts; in CI (which installs it) a missing one fails below.
    pytest.mark.skipif(
        shutil.which("prometheus") is None and not os.environ.get("CI"), reason=MISSING
    ),
]
KAFKA_PASSWORD = "kafka-s3cret-pw-in-env"
WINDOW_MS = GAP_MS = 2_000  # WINDOW_SECONDS / SESSION_GAP_SECONDS below
RECORDS = 2_000
DEADLINE_S = 120.0


def prometheus_binary() -> str:
    """The `prometheus` binary; CI must have it (`.ci/run` installs it), elsewhere skip."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING} (.ci/run should have)")
        pytest.skip(MISSING)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def running_prometheus(binary: str, target: str, directory: Path) -> Iterator[str]:
    """A Prometheus scraping `target` (host:port) every second; yields its base URL."""
    directory.mkdir()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: waxhouse\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    with (directory / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def query(base: str, promql: str) -> dict[str, float]:
    """Prometheus' instant query result: the value per series, keyed by its labels
    (`job` and `instance` left out), `""` for a series with no other label."""
    url = f"{base}/api/v1/query?{urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    values = {}
    for series in body["data"]["result"]:
        labels = {k: v for k, v in series["metric"].items() if k not in ("job", "instance")}
        labels.pop("__name__", None)
        key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        values[key] = float(series["value"][1])
    return values


def scalar(base: str, promql: str) -> float | None:
    """The one value of `promql`, or None while Prometheus has no such series."""
    try:
        values = query(base, promql)
    except (urllib.error.URLError, ConnectionError):
        return None  # Prometheus is still starting
    assert len(values) <= 1, values
    return next(iter(values.values()), None)


def generated(records: int) -> list[GeneratedRecord]:
    """Records with event times in the recent past, a mix of malformed ones, and event-time
    disorder (0.5 s) under the allowed lateness (1 s): none is late."""
    config = GeneratorConfig(
        seed=11,
        events=records,
        users=400,
        pages=50,
        start_ms=int(time.time() * 1000) - 120_000,
        mean_interval_ms=20.0,
        max_disorder_ms=500,
        malformed_ratio=0.05,
    )
    return ClickstreamGenerator(config).take(records)


def produce_late_event(bootstrap: str, topic: str, ts: int) -> None:
    """One valid event an hour older than anything in partition 0: late for both outputs."""
    event = {"event_id": "late-1", "user_id": "late-user", "type": "click", "page": "/l", "ts": ts}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topic, key=b"late-user", value=orjson.dumps(event), partition=0).get(timeout=30)
    producer.close()


def test_prometheus_scrapes_what_the_flow_did(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    topic = topic_factory(2, prefix="prom")
    records = generated(RECORDS)
    positions = produce_records(kafka_bootstrap, topic, records)
    produce_late_event(kafka_bootstrap, topic, records[0].timestamp_ms - 3_600_000)
    produced = RECORDS + 1

    # What the flow must report, from the oracle.
    expected = oracle(records, window_ms=WINDOW_MS, gap_ms=GAP_MS)
    dead = Counter(reason for reason, _, _ in expected.dead_letters.values())
    dead["late"] = 1
    valid = produced - dead["invalid_json"] - dead["invalid_event"]
    by_partition: dict[str, list[GeneratedRecord]] = {}
    for record in records:
        part = positions[record.n].rsplit("/", 1)[0]
        by_partition.setdefault(part, []).append(record)
    assert sorted(by_partition) == [f"{topic}/0", f"{topic}/1"]
    # page_stats rows are per source partition; a session belongs to one user's partition.
    page_rows = sum(
        len(oracle(part, window_ms=WINDOW_MS, gap_ms=GAP_MS).page_stats)
        for part in by_partition.values()
    )
    sink_rows = {
        "page_stats": page_rows,
        "user_sessions": len(expected.sessions),
        "dead_letters": sum(dead.values()),
    }

    api_port = free_port()
    log = tmp_path / "flow.log"
    flow = start_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="prom-dlq"),
            "KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,  # unused by a plaintext broker, never shown
            "CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
            "WINDOW_SECONDS": str(WINDOW_MS // 1000),
            "ALLOWED_LATENESS_SECONDS": "1",
            "SESSION_GAP_SECONDS": str(GAP_MS // 1000),
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(api_port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # writes dataflow.json there
        },
        log,
    )
    try:
        with running_prometheus(binary, f"127.0.0.1:{api_port}", tmp_path / "prom") as prom:
            # Live: the flow never ends. Wait until Prometheus has seen every record consumed
            # and every row written (idle partitions close the last windows by wall clock).
            deadline = time.monotonic() + DEADLINE_S
            while True:
                assert flow.poll() is None, log.read_text()[-3000:]
                consumed = scalar(prom, f'sum(waxhouse_records_consumed_total{{topic="{topic}"}})')
                written = {
                    table: scalar(prom, f'waxhouse_sink_rows_total{{table="{table}"}}')
                    for table in sink_rows
                }
                if consumed == produced and written == sink_rows:
                    break
                assert time.monotonic() < deadline, (
                    f"after {DEADLINE_S:.0f} s Prometheus had consumed={consumed} of "
                    f"{produced} and sink rows {written}, expected {sink_rows}\n"
                    + log.read_text()[-3000:]
                )
                time.sleep(0.5)

            assert scalar(prom, 'up{job="waxhouse"}') == 1
            assert query(prom, f'waxhouse_records_consumed_total{{topic="{topic}"}}').keys() == {
                f"partition=0,topic={topic}",
                f"partition=1,topic={topic}",
            }
            assert query(prom, f'waxhouse_consumer_lag_records{{topic="{topic}"}}') == {
                f"partition=0,topic={topic}": 0.0,
                f"partition=1,topic={topic}": 0.0,
            }
            assert query(prom, "waxhouse_dead_letters_total") == {
                f"reason={reason}": float(count) for reason, count in dead.items()
            }
            assert scalar(prom, "waxhouse_events_parsed_total") == valid
            assert query(prom, "waxhouse_late_events_total") == {
                "output=page_stats": 1.0,
                "output=user_sessions": 1.0,
            }
            emitted = query(prom, "waxhouse_window_rows_emitted_total")
            assert emitted == {
                "table=page_stats": float(page_rows),
                "table=user_sessions": float(len(expected.sessions)),
            }
            assert scalar(prom, 'waxhouse_sink_errors_total{table="page_stats"}') in (None, 0)
            # Seconds, positive, one series per partition that has a watermark.
            lags = query(prom, "waxhouse_watermark_lag_seconds")
            assert lags.keys() == {f"partition={topic}/0", f"partition={topic}/1"}
            assert all(0 < lag < 3_600 for lag in lags.values()), lags
            for table in ("page_stats", "user_sessions"):
                count = scalar(prom, f'waxhouse_window_freshness_seconds_count{{table="{table}"}}')
                assert count is not None and 0 < count <= sink_rows[table], (table, count)
                total = scalar(prom, f'waxhouse_window_freshness_seconds_sum{{table="{table}"}}')
                assert total is not None and total > 0, (table, total)
            batches = scalar(prom, 'waxhouse_sink_batch_seconds_count{table="page_stats"}')
            assert batches is not None and batches >= 1

        # The endpoint serves prometheus_client's default registry (its process and
        # platform collectors too), and never the password set in the environment.
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as r:
            exposition = r.read().decode()
        assert "waxhouse_records_consumed_total{" in exposition
        assert "python_info{" in exposition
        assert KAFKA_PASSWORD not in exposition
    finally:
        stop(flow)
    output = log.read_text()
    assert "clickstream starting" in output and "starts at offset" in output
    assert KAFKA_PASSWORD not in output
