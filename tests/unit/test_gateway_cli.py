"""`waxhouse gateway`'s routes: the flows' pipelines by module, and `--route` for others."""

from __future__ import annotations

import importlib
import os

import pytest

from tests.support.flow import REPO
from waxhouse.cli import gateway_routes, main
from waxhouse.errors import SettingsError
from waxhouse.settings import load_settings


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the flows' modules are imported from the current directory


def test_all_serves_both_flows_with_their_own_schema_key_and_topic() -> None:
    settings = load_settings({"KAFKA_TOPIC": "clicks", "SENSORS_TOPIC": "temps"})
    routes = gateway_routes(settings, "all", [])
    clickstream = importlib.import_module("dataflows.clickstream").pipeline
    sensors = importlib.import_module("dataflows.sensors").pipeline
    assert [(r.path, r.key, r.topic) for r in routes] == [
        ("/v1/events", "user_id", "clicks"),
        ("/v1/readings", "device_id", "temps"),
    ]
    assert routes[0].schema is clickstream.schema  # the flow's parser, not a copy
    assert routes[1].schema is sensors.schema


def test_one_flow_and_extra_routes() -> None:
    settings = load_settings({})
    routes = gateway_routes(
        settings, "sensors", ["/v1/clicks=dataflows.clickstream:pipeline@other"]
    )
    assert [(r.path, r.key, r.topic) for r in routes] == [
        ("/v1/readings", "device_id", "readings"),
        ("/v1/clicks", "user_id", "other"),
    ]


@pytest.mark.parametrize(
    ("flow", "specs", "message"),
    [
        ("none", [], "no routes"),
        ("clickstream", ["/v1/events=dataflows.sensors@x"], "served twice"),
        ("none", ["/v1/x=no_such_module@x"], "cannot import"),
        ("none", ["/v1/x=dataflows.clickstream:nothing@x"], "no Pipeline named"),
        ("none", ["/v1/x=dataflows.clickstream"], "--route must look like"),
    ],
)
def test_bad_routes_fail_with_one_clear_error(flow: str, specs: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        gateway_routes(load_settings({}), flow, specs)


def test_the_gateway_needs_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "GATEWAY_")):
            monkeypatch.delenv(name)
    assert main(["gateway"]) == 2
    assert "KAFKA_BOOTSTRAP_SERVERS must be set" in capsys.readouterr().err
