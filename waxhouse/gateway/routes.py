"""A gateway route: where events of one pipeline come in, and where they go.

    Route("/v1/events", clickstream.schema, key="user_id", topic="events")

One generic implementation serves every route: the schema's own parser validates, the
`key` field's value keys the Kafka record. `path` serves `POST`; `path + "/ws"` the
WebSocket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from waxhouse.errors import SettingsError
from waxhouse.fields import Schema

_PATH = re.compile(r"/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]")


@dataclass(frozen=True)
class Route:
    path: str
    schema: Schema
    key: str | None
    topic: str

    def __post_init__(self) -> None:
        if not _PATH.fullmatch(self.path) or "//" in self.path or self.path.endswith("/ws"):
            raise SettingsError(
                f"gateway route {self.path!r}: a path like /v1/orders (not ending in /ws)"
            )
        if not self.topic:
            raise SettingsError(f"gateway route {self.path}: no topic")

    @property
    def ws_path(self) -> str:
        return f"{self.path}/ws"


@dataclass(frozen=True)
class RouteSpec:
    """`--route PATH=MODULE[:NAME]@TOPIC`, parsed; the pipeline is loaded by the CLI."""

    path: str
    pipeline: str
    topic: str


def parse_route_spec(spec: str) -> RouteSpec:
    """`/v1/orders=shop.orders:pipeline@orders` -> its parts; `SettingsError` if malformed."""
    path, eq, rest = spec.partition("=")
    pipeline, at, topic = rest.rpartition("@")
    if not eq or not at or not path or not pipeline or not topic:
        raise SettingsError(f"--route must look like PATH=MODULE[:NAME]@TOPIC, got {spec!r}")
    return RouteSpec(path.strip(), pipeline.strip(), topic.strip())
