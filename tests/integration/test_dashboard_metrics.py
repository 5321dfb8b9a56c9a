"""The Grafana dashboard queries what the flow and the gateway serve, and its ClickHouse SQL
answers right.

Every metric a Prometheus panel queries must be a family on a running flow's `/metrics`
(Bytewax's API server), or, for the gateway's panels (`waxhouse_gateway_*`), on a running
`waxhouse gateway`'s. The flow reads a real Kafka topic, so the source's metrics
(records consumed, consumer lag) are served too, and its input has a bad record of each
kind and a late event, so every panel but the failure counters has samples. The business
panel's SQL then runs against the store that flow wrote. The gateway takes a batch with a
good and a bad event and a request without a token, so each of its panels has samples.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.clickhouse import query_rows
from tests.support.flow import start_flow
from tests.support.gateway import start_gateway
from tests.support.kafka_broker import TopicFactory
from tests.support.produce import produce_records
from tests.support.scrape import free_port, sample_total, scrape
from tests.support.serve import LiveRows, SseClient, start_serve
from waxhouse.connectors.generator import GeneratedRecord
from waxhouse.monitoring import REPO, exposition_types, promql_metric_names, served_family

pytestmark = pytest.mark.integration

GRAFANA = REPO / "docker" / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "waxhouse.json"
DATASOURCES_PATH = GRAFANA / "provisioning" / "datasources" / "datasources.yaml"
PROMETHEUS = "prometheus"
CLICKHOUSE = "grafana-clickhouse-datasource"

# What the issue asks the dashboard to show, by the flow's metric families.
DASHBOARD_METRICS = {
    "waxhouse_records_consumed_total",  # throughput
    "waxhouse_events_parsed_total",
    "waxhouse_sink_rows_total",
    "waxhouse_consumer_lag_records",  # lag
    "waxhouse_window_freshness_seconds",  # freshness (histogram)
    "waxhouse_watermark_lag_seconds",
    "waxhouse_dead_letters_total",  # dead letters
    "waxhouse_late_events_total",
    "waxhouse_sink_batch_seconds",  # sink latency (histogram)
    "waxhouse_sink_errors_total",
    "waxhouse_sink_retries_total",
    "waxhouse_notices_total",  # the sensors flow: readings and alerts,
    "waxhouse_join_waiting_events",  # the join's wait queue,
    "waxhouse_reference_watermark_seconds",  # and the registry watermark's lag
    "waxhouse_watermark_seconds",  # (against the partition's own)
    "waxhouse_gateway_requests_total",  # the gateway: requests by status,
    "waxhouse_gateway_events_total",  # events accepted and rejected,
    "waxhouse_gateway_ack_seconds",  # ack latency (histogram),
    "waxhouse_gateway_in_flight",  # in flight,
    "waxhouse_gateway_websockets",  # WebSockets,
    "waxhouse_gateway_kafka_ready",  # and which processes reach Kafka
    "waxhouse_redis_rows_total",  # live tables: rows to Redis by result,
    "waxhouse_redis_write_seconds",  # write latency (histogram),
    "waxhouse_redis_up",  # reachability
    "waxhouse_redis_errors_total",  # and failed attempts;
    "waxhouse_serve_requests_total",  # serve: requests by status,
    "waxhouse_serve_request_seconds",  # their latency (histogram),
    "waxhouse_serve_streams",  # open streams,
    "waxhouse_serve_push_delay_seconds",  # window close to push (histogram),
    "waxhouse_serve_stream_events_total",  # events sent
    "waxhouse_serve_redis_up",  # and Redis as serve sees it
}
HISTOGRAMS = {
    "waxhouse_window_freshness_seconds",
    "waxhouse_sink_batch_seconds",
    "waxhouse_gateway_ack_seconds",
    "waxhouse_redis_write_seconds",
    "waxhouse_serve_request_seconds",
    "waxhouse_serve_push_delay_seconds",
}
# The gateway's and serve's families are served by their own /metrics, not the flow's.
GATEWAY_PREFIX = "waxhouse_gateway_"
SERVE_PREFIX = "waxhouse_serve_"
# Counters whose series appear only once something fails: the family must be served.
FAILURE_ONLY = {"waxhouse_sink_errors_total", "waxhouse_sink_retries_total"}
# Families with samples only in a flow with a join or notices (the sensors flow); this
# test runs the clickstream, so they must be served, and need no samples.
JOIN_ONLY = {
    "waxhouse_join_waiting_events",
    "waxhouse_reference_watermark_seconds",
    "waxhouse_notices_total",
}  # tests/integration/test_sensors_flow.py reads them from the sensors flow

# The flow: 1 s windows closed by the idle clock soon after the input is read.
WINDOW_MS = 1_000
DEADLINE_S = 120.0
# Views per page; /p0 also has two purchases. Eleven pages, so LIMIT 10 drops /p10.
VIEWS = {f"/p{i}": 14 - i for i in range(11)}
PURCHASES = {"/p0": (1999, 2500)}  # cents


@dataclass(frozen=True)
class Panel:
    title: str
    datasource: str  # the plugin type
    queries: tuple[str, ...]  # PromQL expressions, or SQL


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))


def panels(board: dict[str, Any]) -> list[Panel]:
    """Every panel with queries, rows' nested panels included."""
    found = []
    stack = list(board["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        targets = panel.get("targets", [])
        if not targets:
            continue
        kind = panel["datasource"]["type"]
        for target in targets:
            assert target.get("datasource", panel["datasource"])["type"] == kind, panel["title"]
        key = "expr" if kind == PROMETHEUS else "rawSql"
        found.append(Panel(panel["title"], kind, tuple(t[key] for t in targets)))
    return found


def queried_metrics(board: dict[str, Any]) -> dict[str, set[str]]:
    """`{metric name as queried: titles of the panels that query it}`."""
    queried: dict[str, set[str]] = {}
    for panel in panels(board):
        if panel.datasource == PROMETHEUS:
            for expr in panel.queries:
                for name in promql_metric_names(expr):
                    queried.setdefault(name, set()).add(panel.title)
    return queried


def top_pages_sql(board: dict[str, Any]) -> str:
    (business,) = [p for p in panels(board) if p.datasource == CLICKHOUSE]
    (sql,) = business.queries
    return sql


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    assert board["uid"] == "waxhouse"
    titles = {panel.title for panel in panels(board)}
    assert {
        "Throughput",
        "Consumer lag",
        "Result freshness",
        "Watermark lag",
        "Dead letters by reason",
        "Sink insert latency",
        "Sink errors and retries",
        "Top pages in the last hour",
        "Readings and alerts",
        "Join wait queue",
        "Reference watermark lag",
        "Gateway requests by status",
        "Gateway events accepted and rejected",
        "Gateway ack latency",
        "Gateway in flight",
        "Gateway WebSockets and Kafka readiness",
    } <= titles
    types = {name: "histogram" if name in HISTOGRAMS else "other" for name in DASHBOARD_METRICS}
    families = {served_family(name, types) for name in queried_metrics(board)}
    assert families == DASHBOARD_METRICS
    assert "FROM page_stats" in top_pages_sql(board)


def test_datasources_are_provisioned_with_the_uids_panels_use_and_no_secret() -> None:
    text = DATASOURCES_PATH.read_text(encoding="utf-8")
    uids = dict(re.findall(r"^\s+uid: (\S+)\n\s+type: (\S+)$", text, re.MULTILINE))
    assert uids == {"prometheus": PROMETHEUS, "clickhouse": CLICKHOUSE}
    assert "url: http://prometheus:9090" in text
    assert re.search(r"^\s+host: clickhouse$", text, re.MULTILINE)
    # Credentials are Grafana environment variables, never literals.
    for key in ("username", "password", "defaultDatabase"):
        (value,) = re.findall(rf"^\s+{key}: (.*)$", text, re.MULTILINE)
        assert re.fullmatch(r"\$\{[A-Z_]+\}", value), f"{key}: {value}"

    def uses(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["uid"]] if "type" in node and "uid" in node and len(node) == 2 else []
            return own + [uid for value in node.values() for uid in uses(value)]
        if isinstance(node, list):
            return [uid for value in node for uid in uses(value)]
        return []

    assert set(uses(dashboard()["panels"])) == set(uids)


def event(n: int, page: str, ts: int, kind: str, value: float | None = None) -> dict[str, Any]:
    made: dict[str, Any] = {"event_id": f"e{n}", "user_id": f"u{n % 7}", "type": kind}
    made.update(page=page, ts=ts)
    if value is not None:
        made["value"] = value
    return made


def records(now_ms: int) -> tuple[list[GeneratedRecord], list[dict[str, Any]]]:
    """The input, in order, and the valid on-time events among it.

    The valid events span 3 s of the recent past in time order, so none is late; then
    come a record that is not JSON, one that breaks a field rule, and an event two hours
    older than everything in its partition (user u0's): late for both outputs.
    """
    kinds = [(page, "page_view", None) for page, views in VIEWS.items() for _ in range(views)]
    kinds += [(page, "purchase", c / 100) for page, cents in PURCHASES.items() for c in cents]
    step = 3_000 // len(kinds)
    on_time = [
        event(n, page, now_ms - 3_000 + n * step, kind, value)
        for n, (page, kind, value) in enumerate(kinds)
    ]
    late = event(len(on_time), "/late", now_ms - 7_200_000, "click") | {"user_id": "u0"}
    bad_values = [b"{not json", orjson.dumps({"event_id": "bad", "user_id": "u1"})]
    keyed = [(e["user_id"].encode(), orjson.dumps(e)) for e in on_time]
    keyed += [(b"u1", value) for value in bad_values] + [(b"u0", orjson.dumps(late))]
    produced = [GeneratedRecord(n, key, value, now_ms) for n, (key, value) in enumerate(keyed)]
    return produced, on_time


def unserved(text: str, queried: set[str]) -> tuple[set[str], set[str]]:
    """Of the queried names: those no family serves, and those whose family has no sample."""
    types = exposition_types(text)
    sampled = {line.partition("{")[0].partition(" ")[0] for line in text.splitlines()}
    no_family, no_samples = set(), set()
    for name in queried:
        family = served_family(name, types)
        if family is None:
            no_family.add(name)
        elif family not in FAILURE_ONLY | JOIN_ONLY and name not in sampled:
            no_samples.add(name)
    return no_family, no_samples


def test_every_panel_metric_is_served_by_a_running_flow_and_the_sql_answers(
    kafka_bootstrap: str, topic_factory: TopicFactory, redis_url: str, tmp_path: Path
) -> None:
    board = dashboard()
    queried = {
        n: t
        for n, t in queried_metrics(board).items()
        if not n.startswith((GATEWAY_PREFIX, SERVE_PREFIX))
    }
    topic = topic_factory(2, prefix="dash")
    input_records, on_time = records(int(time.time() * 1000))
    positions = produce_records(kafka_bootstrap, topic, input_records)
    # page_stats rows are stored per (page, window, source partition)
    page_rows = {
        (e["page"], e["ts"] // WINDOW_MS, positions[n].rsplit("/", 1)[0])
        for n, e in enumerate(on_time)
    }

    port = free_port()
    url = f"chdb://{tmp_path / 'store'}"
    log = tmp_path / "flow.log"
    flow = start_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="dash-dlq"),
            "CLICKHOUSE_URL": url,
            "REDIS_URL": redis_url,  # its live tables too
            "WINDOW_SECONDS": str(WINDOW_MS // 1000),
            "ALLOWED_LATENESS_SECONDS": "1",
            "SESSION_GAP_SECONDS": "1",
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # its dataflow.json, not in the repo
        },
        log,
    )
    status = "no answer from /metrics"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert flow.poll() is None, log.read_text()[-4000:]
            text = scrape(port)
            if text is not None:
                no_family, no_samples = unserved(text, set(queried))
                written = sample_total(text, "waxhouse_sink_rows_total", table="page_stats")
                live = sample_total(
                    text, "waxhouse_redis_rows_total", table="page_stats", result="written"
                )
                done = written >= len(page_rows) and live >= len(page_rows)
                if not no_family and not no_samples and done:
                    break
                status = (
                    f"queried but not served: {sorted(no_family)}; served without samples: "
                    f"{sorted(no_samples)}; page_stats rows written: {written:.0f} of "
                    f"{len(page_rows)}, to Redis {live:.0f}"
                )
            assert time.monotonic() < deadline, f"{status}\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        flow.kill()
        flow.wait(timeout=30)

    # The sink counts rows once they are stored: the store has every page_stats row.
    views = Counter(e["page"] for e in on_time if e["type"] == "page_view")
    purchases = Counter(e["page"] for e in on_time if e["type"] == "purchase")
    revenue = {page: Decimal(sum(cents)) / 100 for page, cents in PURCHASES.items()}
    expected = sorted(
        (
            (page, views[page], purchases[page], revenue.get(page, Decimal("0.00")))
            for page in views.keys() | purchases.keys()
        ),
        key=lambda row: (-row[1], row[0]),
    )[:10]
    assert query_rows(url, top_pages_sql(board)) == expected


def post_json(url: str, body: Any, token: str | None) -> tuple[int, Any]:
    """`POST url` with `body` as JSON: the status and the decoded answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, orjson.dumps(body), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def test_every_gateway_panel_metric_is_served_by_a_running_gateway(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    queried = {n for n in queried_metrics(dashboard()) if n.startswith(GATEWAY_PREFIX)}
    assert queried, "the dashboard has no gateway panels"
    topic = topic_factory(1, prefix="dash-gateway")
    token = "dashboard-test-token"
    now_ms = int(time.time() * 1000)
    good = event(1, "/p", now_ms, "page_view")
    bad = event(2, "/p", now_ms, "page_view") | {"type": "scroll"}
    with start_gateway(
        kafka_bootstrap,
        env={"KAFKA_TOPIC": topic, "GATEWAY_TOKENS": token},
        flow="clickstream",
        log_path=tmp_path / "gateway.log",
    ) as gateway:
        status, answer = post_json(gateway.url + "/v1/events", [good, bad], token)
        assert (status, answer["accepted"]) == (200, 1), (status, answer)
        assert [r["index"] for r in answer["rejected"]] == [1]
        assert post_json(gateway.url + "/v1/events", [good], None)[0] == 401
        with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        log = gateway.output()
    no_family, no_samples = unserved(text, queried)
    assert not no_family, f"queried but not served by the gateway: {sorted(no_family)}"
    assert not no_samples, f"served by the gateway without samples: {sorted(no_samples)}"
    # The panels' labels hold what they show.
    requests = "waxhouse_gateway_requests_total"
    assert sample_total(text, requests, path="/v1/events", status="200") == 1
    assert sample_total(text, requests, path="/v1/events", status="401") == 1
    for outcome in ("accepted", "rejected"):
        events = sample_total(text, "waxhouse_gateway_events_total", outcome=outcome)
        assert events == 1, outcome
    acked = sample_total(text, "waxhouse_gateway_ack_seconds_count", path="/v1/events")
    assert acked == 1
    assert sample_total(text, "waxhouse_gateway_kafka_ready") == 1
    assert sample_total(text, "waxhouse_gateway_in_flight", path="/v1/events") == 0
    assert sample_total(text, "waxhouse_gateway_websockets") == 0
    assert token not in text and token not in log, "a token in the metrics or the log"


def test_every_serve_panel_metric_is_served_by_a_running_serve(
    redis_url: str, tmp_path: Path
) -> None:
    queried = {n for n in queried_metrics(dashboard()) if n.startswith(SERVE_PREFIX)}
    assert queried, "the dashboard has no serve panels"
    live = LiveRows(redis_url)
    try:
        with start_serve(redis_url, env={"SERVE_TOKENS": "dash-serve-token"}) as serve:
            headers = {"Authorization": "Bearer dash-serve-token"}
            with SseClient(serve.url + "/v1/trending/stream", headers=headers) as sse:
                live.trending(0, {"/a": 5, "/b": 7})  # a window closes: one top event
                (event,) = sse.read(1)
                assert event.event == "top"
                assert [t["key"] for t in event.data["top"]] == ["/b", "/a"]
                lookup = urllib.request.Request(serve.url + "/v1/trending/top", headers=headers)
                with urllib.request.urlopen(lookup, timeout=10) as response:
                    assert response.status == 200
                with urllib.request.urlopen(serve.url + "/metrics", timeout=10) as response:
                    text = response.read().decode()
            log = serve.output()
    finally:
        live.close()
    no_family, no_samples = unserved(text, queried)
    assert not no_family, f"queried but not served by serve: {sorted(no_family)}"
    assert not no_samples, f"served by serve without samples: {sorted(no_samples)}"
    assert sample_total(text, "waxhouse_serve_streams", transport="sse") == 1
    assert sample_total(text, "waxhouse_serve_stream_events_total", table="trending") == 1
    assert sample_total(text, "waxhouse_serve_push_delay_seconds_count", table="trending") == 1
    assert sample_total(text, "waxhouse_serve_redis_up") == 1
    assert "dash-serve-token" not in text + log, "a token in the metrics or the log"
