"""Who may send, how much, and from which web origins: pure logic, clock injected.

- `Tokens`: bearer tokens compared in constant time against every configured one; a
  caller is known by the token's position, never by the token itself (what metrics and
  logs could see).
- `RateLimiter`: one token bucket per caller, `rate` events/s with one second of burst.
- `CorsPolicy`: which `Origin`s get CORS headers, and the preflight answer.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence

ANONYMOUS = -1
"""The caller id when no tokens are configured (every client shares one bucket)."""


class Tokens:
    """The configured bearer tokens; empty means no authentication."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def caller(self, presented: str | None) -> int | None:
        """The index of the token `presented` is, `ANONYMOUS` when none are configured,
        None when it is missing or wrong. Compares with every token, each in constant
        time, so the answer's timing says nothing about which or how much matched."""
        if not self._tokens:
            return ANONYMOUS
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for index, token in enumerate(self._tokens):
            if hmac.compare_digest(given, token) and found is None:
                found = index
        return found


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; starts full.

    `take(n, now)` takes `n` and returns 0, or returns the seconds to wait before trying
    again and takes nothing. A request larger than the burst passes when the bucket is
    full and leaves it in debt (so one large request is never refused forever).
    """

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, n: int, now: float) -> float:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        needed = min(float(n), self.burst)
        if self.tokens >= needed:
            self.tokens -= n
            return 0.0
        return (needed - self.tokens) / self.rate


class RateLimiter:
    """One `TokenBucket` per caller at `rate` events/s (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[int, TokenBucket] = {}

    def retry_after(self, caller: int, events: int, now: float) -> int:
        """0 if `caller` may send `events` now (and they are counted), else the whole
        seconds to wait (at least 1), for `Retry-After`."""
        if self.rate <= 0 or events <= 0:
            return 0
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.rate, max(self.rate, 1.0), now)
        wait = bucket.take(events, now)
        return 0 if wait == 0 else max(1, math.ceil(wait))


ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding"
ALLOWED_METHODS = "GET, POST, OPTIONS"
EXPOSED_HEADERS = "Retry-After"
PREFLIGHT_MAX_AGE_S = 600


class CorsPolicy:
    """`origins` allowed to call the gateway from a browser; `*` allows any."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origin.rstrip("/") for origin in origins if origin != "*")

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from `origin` (none if not allowed)."""
        if origin is None or not self.allows(origin):
            return {}
        return {
            "Access-Control-Allow-Origin": "*" if self.any else origin,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }

    def preflight(self, origin: str | None) -> dict[str, str] | None:
        """The headers of the answer to a preflight `OPTIONS` from `origin`, or None
        when the origin is not allowed."""
        if not self.allows(origin):
            return None
        return {
            **self.headers(origin),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
