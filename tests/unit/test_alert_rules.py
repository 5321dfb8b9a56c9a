"""The alert rules: valid, passing their promtool unit tests, the same in both copies, and
on the metrics the flow (its Redis sink included), the gateway and `waxhouse serve` serve
only (as `waxhouse.monitoring` reads a query's metric names).

`promtool` comes from Debian's `prometheus` package, which `.ci/run` installs: in CI a
missing `promtool` fails these tests, elsewhere it skips them with the install command.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

# Imported for what they register: the flow's metrics, and the gateway's.
import waxhouse.connectors.metrics
import waxhouse.gateway.metrics  # noqa: F401
from waxhouse.monitoring import (
    PROMETHEUS_RULE_PATH,
    REPO,
    RULES_PATH,
    exposition_types,
    promql_metric_names,
    render_prometheus_rule,
    rule_file_from_prometheus_rule,
    served_family,
)

INSTALL = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends prometheus"
)
RULE_TESTS_PATH = RULES_PATH.with_name("waxhouse.rules.test.yml")
PROMETHEUS_CONFIG_PATH = REPO / "docker" / "prometheus" / "prometheus.yml"
ALERTS = {
    "TargetDown",
    "ConsumerLagHigh",
    "ConsumerLagGrowing",
    "InputStalled",
    "DeadLetterRateHigh",
    "SinkErrorsSustained",
    "SinkRetriesSustained",
    "WatermarkStalled",
    "JoinStalled",  # a flow with a temporal join: the sensors flow
    "GatewayErrors",  # the ingestion gateway (`waxhouse gateway`)
    "GatewayAckLatencyHigh",
    "RedisWritesDropped",  # the flows' Redis sink (REDIS_URL)
    "RedisDown",  # the sink's or serve's Redis connection
    "ServeErrors",  # the live-results API (`waxhouse serve`)
    "ServeStreamsSaturated",
}
SEVERITIES = {"warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = f"promtool is not on the PATH; install it with: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    """promtool's output; fails the test with that output unless it exits 0."""
    done = subprocess.run(
        [promtool, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the rule files here")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES_PATH)["groups"] for rule in group["rules"]]


def test_rule_file_is_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", RULES_PATH.name, cwd=RULES_PATH.parent)
    assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_every_rule_passes_its_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", RULE_TESTS_PATH.name, cwd=RULES_PATH.parent)


def test_prometheus_config_is_valid_and_loads_the_rules(promtool: str) -> None:
    output = run_promtool(
        promtool, "check", "config", PROMETHEUS_CONFIG_PATH.name, cwd=PROMETHEUS_CONFIG_PATH.parent
    )
    assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_kubernetes_copy_is_generated_from_the_rule_file() -> None:
    wanted = render_prometheus_rule(RULES_PATH.read_text(encoding="utf-8"))
    assert PROMETHEUS_RULE_PATH.read_text(encoding="utf-8") == wanted, (
        f"{PROMETHEUS_RULE_PATH} is out of date: run python -m waxhouse.monitoring"
    )


def test_kubernetes_copy_holds_valid_rules(promtool: str, tmp_path: Path) -> None:
    spec = rule_file_from_prometheus_rule(PROMETHEUS_RULE_PATH.read_text(encoding="utf-8"))
    (tmp_path / "spec.rules.yml").write_text(spec, encoding="utf-8")
    output = run_promtool(promtool, "check", "rules", "spec.rules.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_both_copies_carry_the_same_groups() -> None:
    rule_file = load_yaml(RULES_PATH)
    resource = load_yaml(PROMETHEUS_RULE_PATH)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "waxhouse"
    assert list(resource["spec"]) == ["groups"]
    assert resource["spec"]["groups"] == rule_file["groups"]
    assert [group["name"] for group in rule_file["groups"]] == ["waxhouse"]


def test_each_alert_has_a_severity_a_summary_a_description_and_a_delay() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    assert len(rules) == len(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert rule["for"].endswith("m"), rule["alert"]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = [
        case
        for group in load_yaml(RULE_TESTS_PATH)["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    stays_quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fires == ALERTS
    assert stays_quiet == ALERTS


def test_rules_use_only_metrics_the_flow_the_gateway_or_serve_serves() -> None:
    importlib.import_module("waxhouse.serve.metrics")  # registers serve's metrics
    types = exposition_types(generate_latest(REGISTRY).decode())
    used = {name for rule in alert_rules() for name in promql_metric_names(rule["expr"])}
    assert used, "the rules select none of the flow's metrics"
    assert {name for name in used if served_family(name, types) is None} == set()
    gateway = {name for name in used if name.startswith("waxhouse_gateway_")}
    assert {served_family(name, types) for name in gateway} == {
        "waxhouse_gateway_requests_total",
        "waxhouse_gateway_ack_seconds",
    }
    redis = {name for name in used if name.startswith("waxhouse_redis_")}
    assert {served_family(name, types) for name in redis} == {
        "waxhouse_redis_rows_total",
        "waxhouse_redis_up",
    }
    serve = {name for name in used if name.startswith("waxhouse_serve_")}
    assert {served_family(name, types) for name in serve} == {
        "waxhouse_serve_requests_total",
        "waxhouse_serve_streams",
        "waxhouse_serve_redis_up",
    }


def test_promql_metric_names_finds_selectors_not_label_values_or_comments() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, table) ("
        'rate(waxhouse_sink_batch_seconds_bucket{table="waxhouse_x"}[5m])))'
        " / on (job) group_left label_join(waxhouse_consumer_lag_records, 'p', '/', 'topic')"
        " # waxhouse_in_a_comment"
    )
    assert promql_metric_names(expr) == {
        "waxhouse_sink_batch_seconds_bucket",
        "waxhouse_consumer_lag_records",
    }


def test_served_family_maps_histogram_series_to_their_family() -> None:
    types = {"waxhouse_sink_batch_seconds": "histogram", "waxhouse_events_parsed_total": "counter"}
    histogram = "waxhouse_sink_batch_seconds"
    for suffix in ("_bucket", "_sum", "_count", ""):
        assert served_family(histogram + suffix, types) == histogram
    assert served_family("waxhouse_events_parsed_total", types) == "waxhouse_events_parsed_total"
    assert served_family("waxhouse_events_parsed_total_count", types) is None
    assert served_family("waxhouse_nothing", types) is None
