"""A request body into events, in pure code: decoding, limits, validation.

    events = decode_body(body, content_type="application/json", encoding=None, max_bytes=...)
    batch = validate(route_schema, key_field, events, now_ms=..., max_future_ms=...)

`decode_body` raises `BodyError` with the HTTP status the whole request gets (400, 413,
415); `validate` never raises: every event is accepted (with its Kafka key and value) or
rejected with its index and the error text of the flow's own dead letter, as the
contract's `{"accepted": n, "rejected": [{"index": i, "error": "..."}]}` says.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from waxhouse.fields import PAYLOAD, Schema
from waxhouse.records import InputBatch

JSON_TYPES = frozenset({"application/json", "text/plain"})
"""Read as one JSON document. `text/plain` is what a browser's `navigator.sendBeacon` and
a `fetch` without a preflight send; its body is read as JSON too."""
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip"})
_PART = "gateway"  # names the request's records in the parser's dead letters


class BodyError(Exception):
    """The whole request is refused with `status` (400, 413 or 415); `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").partition(";")[0].strip().lower()


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """The gzip stream `data` inflated; `BodyError` 413 once it would exceed `max_bytes`
    (a gzip bomb stops there, never inflated in full), 400 if it is not one whole gzip
    member."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as e:
        raise BodyError(400, f"the body is not valid gzip: {e}") from e
    if len(out) > max_bytes:
        raise BodyError(413, f"the body inflates to more than {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise BodyError(400, "the body is not one complete gzip stream")
    return out


def decode_body(
    body: bytes, *, content_type: str | None, encoding: str | None, max_bytes: int
) -> list[Any]:
    """The decoded JSON values of a request body, one per event: an object is one event,
    an array its items, NDJSON one per non-blank line.

    An NDJSON line that is not JSON stays in place as `NOT_JSON`, which `validate`
    rejects at its index; a body with nothing but such lines is not JSON at all (400).
    """
    kind = media_type(content_type)
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        raise BodyError(
            415, "Content-Type must be application/json, application/x-ndjson or text/plain"
        )
    coding = (encoding or "").strip().lower()
    if coding not in ENCODINGS:
        raise BodyError(415, "Content-Encoding must be gzip or identity")
    if len(body) > max_bytes:
        raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    if coding in ("gzip", "x-gzip"):
        body = gunzip(body, max_bytes)
    if kind in NDJSON_TYPES:
        return _ndjson(body)
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BodyError(400, f"the body is not JSON: {e}") from e
    if type(decoded) is list:
        return decoded
    if type(decoded) is dict:
        return [decoded]
    raise BodyError(400, "the body must be a JSON object or an array of objects")


class _NotJson:
    """An NDJSON line that did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _ndjson(body: bytes) -> list[Any]:
    values: list[Any] = []
    good = 0
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            values.append(orjson.loads(line))
            good += 1
        except orjson.JSONDecodeError as e:
            values.append(_NotJson(f"not JSON: {e}"))
    if values and not good:
        raise BodyError(400, "no line of the NDJSON body is JSON")
    return values


@dataclass
class Batch:
    """What a request's events came to: `keys` and `values` of the accepted ones (what
    is produced), and the rejected ones as the answer lists them."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.values)


def validate(
    schema: Schema,
    key: str | None,
    events: Sequence[Any],
    *,
    now_ms: int,
    max_future_ms: int,
) -> Batch:
    """Check the events with the flow's own parser, exactly as the flow will read them:
    each is encoded as the record it would become (its JSON as decoded, unknown fields
    kept, re-encoded compactly) with `now_ms` as its Kafka timestamp, and the batch goes
    through `Schema.parse_decoded` (the flow's generated loop over the objects already
    decoded, whose answers are `parse_record`'s: the field rules, then the `future` rule
    against that timestamp).

    Accepted events keep their record bytes as the value to produce and the `key`
    field's value in UTF-8 as the key; a rejected one is listed with its index in
    `events` and the error its dead letter would carry.
    """
    batch = Batch()
    positions: list[int] = []
    objects: list[Any] = []
    for index, event in enumerate(events):
        if isinstance(event, _NotJson):
            batch.rejected.append({"index": index, "error": event.error})
        else:
            positions.append(index)
            objects.append(event)
    records: list[bytes | None] = list(map(orjson.dumps, objects))
    parsed, dead = schema.parse_decoded(
        InputBatch(_PART, positions, records, [now_ms] * len(records)), objects, max_future_ms
    )
    key_index = None if key is None else schema.index(key)
    for event in parsed:
        batch.values.append(event[PAYLOAD])
        batch.keys.append(None if key_index is None else str(event[key_index]).encode())
    for letter in dead:
        index = int(letter.source.rpartition("/")[2])  # record_source(_PART, position)
        batch.rejected.append({"index": index, "error": letter.error})
    if dead and len(batch.rejected) > len(dead):
        batch.rejected.sort(key=lambda rejected: rejected["index"])
    return batch
