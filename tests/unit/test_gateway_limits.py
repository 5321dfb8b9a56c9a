"""Tokens, per-token rates and CORS: pure, with the clock given."""

from __future__ import annotations

import pytest

from waxhouse import Schema, fields
from waxhouse.errors import SettingsError
from waxhouse.gateway.limits import (
    ANONYMOUS,
    CorsPolicy,
    RateLimiter,
    TokenBucket,
    Tokens,
    bearer,
)
from waxhouse.gateway.routes import Route, parse_route_spec


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_tokens_name_the_caller_by_position_never_by_value() -> None:
    tokens = Tokens(["first", "second"])
    assert tokens.required
    assert tokens.caller("first") == 0
    assert tokens.caller("second") == 1
    assert tokens.caller("secon") is None
    assert tokens.caller("second2") is None
    assert tokens.caller("") is None
    assert tokens.caller(None) is None
    assert tokens.caller("ünïcode") is None


def test_without_tokens_everyone_is_the_anonymous_caller() -> None:
    tokens = Tokens([])
    assert not tokens.required
    assert tokens.caller(None) == ANONYMOUS
    assert tokens.caller("anything") == ANONYMOUS


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    assert bucket.take(60, 0.0) == 0
    assert bucket.take(60, 0.0) == pytest.approx(0.2)  # 40 left, 20 more in 0.2 s
    assert bucket.take(60, 0.2) == 0
    assert bucket.take(1, 0.2) == pytest.approx(0.01)


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    assert bucket.take(25, 0.0) == 0
    assert bucket.tokens == -15
    assert bucket.take(1, 1.0) == pytest.approx(0.6)  # -5 after a second; 1 needs 0.6 s more
    assert bucket.take(25, 2.5) == 0  # full again (capped at the burst)


def test_the_limiter_keeps_one_bucket_per_caller_and_answers_whole_seconds() -> None:
    limiter = RateLimiter(rate=10)
    assert limiter.retry_after(0, 10, now=0.0) == 0
    assert limiter.retry_after(0, 5, now=0.0) == 1  # 0.5 s, rounded up
    assert limiter.retry_after(1, 10, now=0.0) == 0  # another token, its own bucket
    slow = RateLimiter(rate=0.5)
    assert slow.retry_after(0, 1, now=0.0) == 0
    assert slow.retry_after(0, 1, now=0.0) == 2


def test_an_unlimited_rate_never_refuses() -> None:
    limiter = RateLimiter(rate=0)
    assert all(limiter.retry_after(0, 10**6, now=0.0) == 0 for _ in range(100))


def test_cors_allows_listed_origins_only() -> None:
    cors = CorsPolicy(["https://shop.example", "https://app.example/"])
    assert cors.headers("https://shop.example")["Access-Control-Allow-Origin"] == (
        "https://shop.example"
    )
    assert cors.headers("https://app.example")["Vary"] == "Origin"
    assert cors.headers("https://evil.example") == {}
    assert cors.headers(None) == {}
    assert cors.preflight("https://evil.example") is None
    preflight = cors.preflight("https://shop.example")
    assert preflight is not None
    allowed = {h.strip().lower() for h in preflight["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type", "content-encoding"}
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    assert preflight["Access-Control-Expose-Headers"] == "Retry-After"


def test_cors_star_allows_any_origin() -> None:
    cors = CorsPolicy(["*"])
    assert cors.headers("https://any.example")["Access-Control-Allow-Origin"] == "*"
    assert CorsPolicy([]).headers("https://any.example") == {}


SCHEMA = Schema({"id": fields.text(8), "ts": fields.timestamp()}, event_time="ts")


def test_route_specs() -> None:
    spec = parse_route_spec("/v1/orders=shop.orders:pipeline@orders")
    assert (spec.path, spec.pipeline, spec.topic) == (
        "/v1/orders",
        "shop.orders:pipeline",
        "orders",
    )
    for wrong in ("/v1/orders=shop.orders", "shop.orders@orders", "/v1/x=@t", "/v1/x=m@"):
        with pytest.raises(SettingsError, match="--route"):
            parse_route_spec(wrong)


@pytest.mark.parametrize("path", ["v1/x", "/v1/x/", "/v1//x", "/v1/x/ws", "/v1/x?y", ""])
def test_route_paths_are_plain(path: str) -> None:
    with pytest.raises(SettingsError):
        Route(path, SCHEMA, "id", "topic")
    assert Route("/v1/x", SCHEMA, "id", "topic").ws_path == "/v1/x/ws"
