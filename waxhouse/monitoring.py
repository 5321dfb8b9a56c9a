"""Monitoring artifacts: the alert rules' two copies, and which metrics a query needs.

    python -m waxhouse.monitoring          # rewrite k8s/monitoring/prometheusrule.yaml
    python -m waxhouse.monitoring --check  # exit 1 if it is out of date

`docker/prometheus/rules/waxhouse.rules.yml` is the source of the alert rules. The
Kubernetes PrometheusRule's `spec` is that file's `groups:` document indented under
`spec:`, so both carry the same groups by construction; it is a text transform, with no
YAML library. The rule file's opening comments (everything before `groups:`) are replaced
by the PrometheusRule's header.

`promql_metric_names` and `served_family` tell which of the flow's metrics a rule or a
dashboard query selects, and whether a `/metrics` page serves it (the tests check both).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from waxhouse.errors import WaxhouseError

REPO = Path(__file__).resolve().parents[1]
RULES_PATH = REPO / "docker" / "prometheus" / "rules" / "waxhouse.rules.yml"
PROMETHEUS_RULE_PATH = REPO / "k8s" / "monitoring" / "prometheusrule.yaml"

GROUPS_KEY = "groups:"
SPEC_KEY = "spec:"
INDENT = "  "
HEADER = """\
# Generated from docker/prometheus/rules/waxhouse.rules.yml by `python -m waxhouse.monitoring`:
# edit that file and regenerate, never this one (tests/unit/test_alert_rules.py checks).
# A Prometheus Operator loads it when its ruleSelector matches these labels (with
# kube-prometheus-stack, add the `release: <release name>` label it selects on).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: waxhouse
  labels:
    app.kubernetes.io/name: waxhouse
    app.kubernetes.io/component: alerting
"""


def render_prometheus_rule(rules: str) -> str:
    """The PrometheusRule whose `spec` holds the rule file `rules`' groups."""
    lines = rules.splitlines()
    try:
        start = lines.index(GROUPS_KEY)
    except ValueError as e:
        raise WaxhouseError(f"the rule file has no top-level `{GROUPS_KEY}` line") from e
    spec = [INDENT + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join([SPEC_KEY, *spec]) + "\n"


def rule_file_from_prometheus_rule(prometheus_rule: str) -> str:
    """The reverse: the rule file inside a PrometheusRule's `spec` (for `promtool`)."""
    lines = prometheus_rule.splitlines()
    try:
        start = lines.index(SPEC_KEY) + 1
    except ValueError as e:
        raise WaxhouseError(f"the PrometheusRule has no top-level `{SPEC_KEY}` line") from e
    body = []
    for line in lines[start:]:
        if line and not line.startswith(INDENT):
            break  # the next top-level key: the spec is over
        body.append(line.removeprefix(INDENT))
    return "\n".join(body) + "\n"


# PromQL string literals (label values, label_join's arguments) and comments name no metric.
_PROMQL_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_COMMENTS = re.compile(r"#[^\n]*")
_FLOW_METRIC = re.compile(r"(?<![\w:])waxhouse_[A-Za-z0-9_:]*")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
# Series a histogram (or summary) family serves under other names than its own.
_FAMILY_SUFFIXES = {
    "_bucket": ("histogram",),
    "_sum": ("histogram", "summary"),
    "_count": ("histogram", "summary"),
}


def promql_metric_names(expr: str) -> set[str]:
    """The flow's metric names (`waxhouse_...`) that the PromQL expression `expr` selects."""
    bare = _PROMQL_COMMENTS.sub("", _PROMQL_STRINGS.sub('""', expr))
    return set(_FLOW_METRIC.findall(bare))


def exposition_types(text: str) -> dict[str, str]:
    """`{family: type}` from the `# TYPE` lines of a Prometheus text exposition."""
    return dict(_TYPE_LINE.findall(text))


def served_family(name: str, types: dict[str, str]) -> str | None:
    """The family of `types` that serves the series `name`, or None.

    That is `name` itself, or the histogram whose `_bucket`, `_sum` or `_count` it is.
    """
    if name in types:
        return name
    for suffix, kinds in _FAMILY_SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and types.get(base) in kinds:
            return base
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m waxhouse.monitoring",
        description=f"Generate {PROMETHEUS_RULE_PATH.relative_to(REPO)} from "
        f"{RULES_PATH.relative_to(REPO)}.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that it is up to date (exit 1 if not)"
    )
    args = parser.parse_args(argv)
    wanted = render_prometheus_rule(RULES_PATH.read_text(encoding="utf-8"))
    current = (
        PROMETHEUS_RULE_PATH.read_text(encoding="utf-8") if PROMETHEUS_RULE_PATH.exists() else ""
    )
    if args.check:
        if current != wanted:
            print(f"{PROMETHEUS_RULE_PATH} is out of date: run python -m waxhouse.monitoring")
            return 1
        return 0
    if current != wanted:
        PROMETHEUS_RULE_PATH.write_text(wanted, encoding="utf-8")
        print(f"wrote {PROMETHEUS_RULE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
