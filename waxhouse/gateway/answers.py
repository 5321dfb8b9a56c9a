"""JSON answers and refusals, shared by the gateway's and serve's HTTP servers (aiohttp).

    raise Refused(429, "over the rate", retry_after=1)   # in a handler
    return refusal(e)                                   # where it is caught

An error is `{"error": "..."}` (with `"retry_after"` when there is one), `Retry-After`
goes in a header as well, a 401 says how to authenticate, and a 413 closes the
connection (the rest of the body is not read).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["JSON", "Refused", "json_response", "refusal"]

JSON = "application/json"


class Refused(Exception):
    """A request or frame answered with `status` and `error` (and maybe `Retry-After`)."""

    def __init__(self, status: int, error: str, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"error": self.error}
        if self.retry_after is not None:
            answer["retry_after"] = self.retry_after
        return answer


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


def refusal(refused: Refused) -> web.Response:
    headers = {}
    if refused.retry_after is not None:
        headers["Retry-After"] = str(refused.retry_after)
    if refused.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="waxhouse"'
    response = json_response(refused.status, refused.body(), headers)
    if refused.status == 413:
        response.force_close()  # the rest of the body is not read
    return response
