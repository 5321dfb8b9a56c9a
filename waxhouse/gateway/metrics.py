"""The gateway's Prometheus metrics (served on its own `GET /metrics`).

`path` is the route template (`/v1/events`, `/v1/events/ws`, ..., or `other`), never the
raw URL; no label ever holds a token, a key or a client address.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "waxhouse_gateway_requests",
    "HTTP responses by status code; each WebSocket frame counts with the status it would "
    "have had over HTTP (200 for an ack)",
    ["path", "status"],
)
EVENTS = Counter(
    "waxhouse_gateway_events",
    "Events received, by outcome: accepted (produced and acknowledged) or rejected",
    ["path", "outcome"],
)
ACK_SECONDS = Histogram(
    "waxhouse_gateway_ack_seconds",
    "From a request or frame read in full to Kafka acknowledging all its events",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge("waxhouse_gateway_in_flight", "Requests and frames waiting for Kafka", ["path"])
WEBSOCKETS = Gauge("waxhouse_gateway_websockets", "Open WebSocket connections")
KAFKA_READY = Gauge(
    "waxhouse_gateway_kafka_ready", "1 while Kafka is reachable (what /readyz answers), else 0"
)


@cache
def answered(path: str, status: int) -> Any:
    """The `REQUESTS` child of (path, status), looked up once (paths and statuses are few)."""
    return REQUESTS.labels(path, str(status))


@dataclass(frozen=True)
class RouteMetrics:
    """A route's children of the per-path metrics, looked up once."""

    in_flight: Any
    ack_seconds: Any
    accepted: Any
    rejected: Any


@cache
def route(path: str) -> RouteMetrics:
    return RouteMetrics(
        IN_FLIGHT.labels(path),
        ACK_SECONDS.labels(path),
        EVENTS.labels(path, "accepted"),
        EVENTS.labels(path, "rejected"),
    )
