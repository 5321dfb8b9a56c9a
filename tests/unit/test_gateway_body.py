"""A request body into events: decoding, limits and the flow's own validation."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from waxhouse import Schema, fields
from waxhouse.gateway.body import BodyError, decode_body, gunzip, media_type, validate

MAX = 64 * 1024

SCHEMA = Schema(
    {
        "event_id": fields.text(16),
        "user_id": fields.text(16),
        "ts": fields.timestamp(),
        "value": fields.money(),
    },
    event_time="ts",
)
NOW_MS = 1_800_000_000_000


def decode(body: bytes, content_type: str = "application/json", encoding: str | None = None):
    return decode_body(body, content_type=content_type, encoding=encoding, max_bytes=MAX)


def refusal(body: bytes, content_type: str = "application/json", encoding: str | None = None):
    with pytest.raises(BodyError) as caught:
        decode(body, content_type, encoding)
    return caught.value.status, caught.value.message


def event(i: int, **overrides: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "user_id": f"u{i % 3}", "ts": NOW_MS, **overrides}


objects = st.lists(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.booleans()),
        max_size=4,
    ),
    max_size=20,
)


@given(objects)
def test_an_array_ndjson_and_their_gzip_decode_to_the_same_events(events: list) -> None:
    array = orjson.dumps(events)
    ndjson = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    assert decode(array) == events
    assert decode(gzip.compress(array), encoding="gzip") == events
    if events:
        assert decode(ndjson, "application/x-ndjson") == events
        assert decode(gzip.compress(ndjson), "application/x-ndjson", "gzip") == events


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "text/plain"],
)
def test_one_object_is_one_event(content_type: str) -> None:
    assert decode(b'{"a": 1}', content_type) == [{"a": 1}]


def test_ndjson_skips_blank_lines_and_keeps_bad_lines_in_place() -> None:
    decoded = decode(b'{"a": 1}\n\n  \nnot json\r\n{"b": 2}', "application/x-ndjson")
    assert decoded[0] == {"a": 1} and decoded[2] == {"b": 2}
    batch = validate(SCHEMA, "user_id", decoded, now_ms=NOW_MS, max_future_ms=0)
    assert [r["index"] for r in batch.rejected] == [0, 1, 2]
    assert batch.rejected[1]["error"].startswith("not JSON")


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "status"),
    [
        (b"{", "application/json", None, 400),
        (b"", "application/json", None, 400),
        (b"42", "application/json", None, 400),
        (b'"text"', "application/json", None, 400),
        (b"nope\nnope", "application/x-ndjson", None, 400),
        (b"{}", "application/xml", None, 415),
        (b"{}", None, None, 415),
        (b"{}", "multipart/form-data", None, 415),
        (b"{}", "application/json", "br", 415),
        (b"{}", "application/json", "deflate", 415),
        (b"not gzip", "application/json", "gzip", 400),
        (gzip.compress(b"{}")[:-4], "application/json", "gzip", 400),
        (gzip.compress(b"{}") + b"trailing", "application/json", "gzip", 400),
        (b" " * (MAX + 1), "application/json", None, 413),
    ],
)
def test_refusals(body: bytes, content_type: str | None, encoding: str | None, status: int) -> None:
    assert refusal(body, content_type, encoding)[0] == status  # type: ignore[arg-type]


def test_a_gzip_bomb_is_413_without_inflating_it_in_full() -> None:
    bomb = gzip.compress(b"[" + b" " * (10 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < MAX  # small on the wire
    status, message = refusal(bomb, encoding="gzip")
    assert status == 413 and "inflates to more than" in message


def test_gunzip_stops_at_the_limit() -> None:
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(BodyError):
        gunzip(gzip.compress(b"x" * 101), 100)
    with pytest.raises(BodyError):
        gunzip(zlib.compress(b"{}"), 100)  # zlib, not gzip


def test_media_type() -> None:
    assert media_type(" application/x-ndjson ; charset=utf-8") == "application/x-ndjson"
    assert media_type(None) == ""


def test_accepted_events_are_produced_as_sent_keyed_by_the_key_field() -> None:
    sent = [event(0, extra={"kept": True}), event(1, value=19.99)]
    batch = validate(SCHEMA, "user_id", sent, now_ms=NOW_MS, max_future_ms=0)
    assert batch.accepted == 2 and batch.rejected == []
    assert batch.keys == [b"u0", b"u1"]
    assert [orjson.loads(v) for v in batch.values] == sent  # unknown fields kept


def test_rejections_carry_the_index_and_the_flow_parser_error() -> None:
    sent = [event(0), {"event_id": "e1", "ts": NOW_MS}, [], event(3, ts="yesterday")]
    batch = validate(SCHEMA, "user_id", sent, now_ms=NOW_MS, max_future_ms=0)
    assert batch.accepted == 1
    assert batch.rejected == [
        {"index": 1, "error": "user_id: required"},
        {"index": 2, "error": "expected a JSON object, got list"},
        {
            "index": 3,
            "error": "ts: not an RFC 3339 timestamp with an explicit offset (Z or ±hh:mm)",
        },
    ]


@pytest.mark.parametrize(("ahead_ms", "accepted"), [(0, 1), (5_000, 1), (5_001, 0)])
def test_the_future_rule_is_checked_against_the_produced_timestamp(
    ahead_ms: int, accepted: int
) -> None:
    batch = validate(
        SCHEMA, "user_id", [event(0, ts=NOW_MS + ahead_ms)], now_ms=NOW_MS, max_future_ms=5_000
    )
    assert batch.accepted == accepted
    if not accepted:
        assert batch.rejected[0]["error"] == (
            "ts: 5.001 s ahead of the record's timestamp (at most 5 s allowed)"
        )


def test_without_a_key_field_records_have_no_key() -> None:
    batch = validate(SCHEMA, None, [event(0)], now_ms=NOW_MS, max_future_ms=0)
    assert batch.keys == [None]


@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"event_id": st.text(max_size=20), "user_id": st.text(max_size=20)},
                optional={
                    "ts": st.one_of(st.integers(-5, 2 * NOW_MS), st.text(max_size=30)),
                    "value": st.one_of(
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.integers(-(2**63), 2**63 - 1),  # what orjson decodes
                        st.none(),
                    ),
                },
            ),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
        ),
        max_size=12,
    )
)
def test_each_event_gets_what_the_flow_would_make_of_its_record(events: list) -> None:
    batch = validate(SCHEMA, "user_id", events, now_ms=NOW_MS, max_future_ms=60_000)
    rejected = {r["index"]: r["error"] for r in batch.rejected}
    produced = iter(zip(batch.keys, batch.values, strict=True))
    for index, event in enumerate(events):
        record = orjson.dumps(event)
        flow = SCHEMA.parse_record(record, "events/0", index, NOW_MS, 60_000)
        if type(flow) is SCHEMA.event_type:
            assert index not in rejected
            assert next(produced) == (event["user_id"].encode(), record)
        else:
            assert rejected[index] == flow.error
    assert next(produced, None) is None
