"""The parser: every field rule, every dead-letter reason, every timestamp form."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waxhouse.events import (
    _RFC3339,
    MAX_TS_MS,
    Event,
    InvalidField,
    _parse_rfc3339,
    _rfc3339_fields,
    parse_batch,
    parse_record,
    parse_timestamp,
)
from waxhouse.records import InputBatch
from waxhouse.rows import DeadLetterRow

VALID = {
    "event_id": "e1",
    "user_id": "u1",
    "type": "purchase",
    "page": "/p",
    "ts": 1_767_225_600_000,
    "value": 19.99,
}


def record(**changes: object) -> bytes:
    obj = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not _MISSING})


_MISSING = object()
# Digits other than 0-9 are digits to Python's `\d` but not to RFC 3339.
ARABIC_INDIC = {str(d): chr(0x0660 + d) for d in range(10)}


RECORD_MS = 1_767_225_601_234  # the record's timestamp: 1.234 s after VALID's ts


def parse(
    value: bytes | None, received_at_ms: int = RECORD_MS, max_future_ms: int = 3_600_000
) -> Event | DeadLetterRow:
    """Through the batch parser's hot loop, which must agree with the record parser."""
    batch = InputBatch("events/0", [7], [value], [received_at_ms])
    events, dead = parse_batch(batch, max_future_ms)
    [parsed] = [*events, *dead]
    assert parsed == parse_record(value, "events/0", 7, received_at_ms, max_future_ms)
    return parsed


def test_valid_event_keeps_every_field_and_its_record() -> None:
    event = parse(record())
    assert event == Event(
        "e1", "u1", "purchase", "/p", 1_767_225_600_000, 1999, 7, record(), RECORD_MS
    )


@pytest.mark.parametrize(
    ("raw", "error_field"),
    [
        (record(event_id=_MISSING), "event_id"),
        (record(event_id=""), "event_id"),
        (record(event_id="x" * 129), "event_id"),
        (record(event_id=17), "event_id"),
        (record(user_id=_MISSING), "user_id"),
        (record(user_id=""), "user_id"),
        (record(user_id="u" * 257), "user_id"),
        (record(user_id=None), "user_id"),
        (record(type="refund"), "type"),
        (record(type=_MISSING), "type"),
        (record(type="PURCHASE"), "type"),
        (record(type=["click"]), "type"),
        (record(type={"a": 1}), "type"),
        (record(type=1), "type"),
        (record(page=""), "page"),
        (record(page="/" * 2049), "page"),
        (record(page=["/p"]), "page"),
        (record(ts=_MISSING), "ts"),
        (record(ts=-1), "ts"),
        (record(ts=MAX_TS_MS + 1), "ts"),
        (record(ts=1.5e12), "ts"),
        (record(ts=True), "ts"),
        (record(ts=None), "ts"),
        (record(ts="2026-11-26T10:15:30.250"), "ts"),
        (record(ts="2026-11-26 10:15"), "ts"),
        (record(ts="2026-02-30T10:15:30Z"), "ts"),
        (record(ts="2026-11-26T25:15:30Z"), "ts"),
        (record(ts="2026-11-26T10:15:30+24:00"), "ts"),
        (record(ts="0001-01-01T00:00:00+01:00"), "ts"),
        (record(ts="1969-12-31T23:59:59.999Z"), "ts"),
        (record(ts="yesterday"), "ts"),
        (record(ts="".join(ARABIC_INDIC.get(c, c) for c in "2026-01-01T00:00:00Z")), "ts"),
        (record(value=-0.01), "value"),
        (record(value=1e9 + 1), "value"),
        (record(value=True), "value"),
        (record(value="12.50"), "value"),
        (record(value={"amount": 1}), "value"),
    ],
)
def test_field_rule_broken_is_invalid_event_naming_the_field(raw: bytes, error_field: str) -> None:
    dead = parse(raw)
    assert isinstance(dead, DeadLetterRow)
    assert dead.reason == "invalid_event"
    assert dead.error.startswith(f"{error_field}:")
    assert (dead.source, dead.payload, dead.received_at_ms) == ("events/0/7", raw, RECORD_MS)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"event_id": "e1",',
        b"\xff\xfe\x00garbage",
        b'{"event_id": "\xff"}',
        b"[1, 2]",
        b"null",
        b'"a string"',
        b"42",
        b"[" * 3000 + b"]" * 3000,
    ],
)
def test_not_a_json_object_is_invalid_json(raw: bytes) -> None:
    dead = parse(raw)
    assert isinstance(dead, DeadLetterRow)
    assert dead.reason == "invalid_json"
    assert dead.payload == raw


def test_missing_value_is_invalid_json_for_none_payload() -> None:
    dead = parse(None)
    assert isinstance(dead, DeadLetterRow)
    assert (dead.reason, dead.payload, dead.source) == ("invalid_json", b"", "events/0/7")


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0, 0),
        (MAX_TS_MS, MAX_TS_MS),
        (1_767_225_600_123, 1_767_225_600_123),
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-26T10:15:30.250Z", 1_795_688_130_250),
        ("2026-11-26T10:15:30.250z", 1_795_688_130_250),
        ("2026-11-26t10:15:30.250Z", 1_795_688_130_250),
        ("2026-11-26T10:15:30.2509999Z", 1_795_688_130_250),  # sub-ms digits truncated
        ("2026-11-26T10:15:30.2Z", 1_795_688_130_200),
        ("2026-11-26T10:15:30Z", 1_795_688_130_000),
        ("2026-11-26T11:15:30.250+01:00", 1_795_688_130_250),
        ("2026-11-26T04:45:30.250-05:30", 1_795_688_130_250),
        ("2026-11-26T10:15:30.250+00:00", 1_795_688_130_250),
        ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
        ("1970-01-01T01:00:00+01:00", 0),
    ],
)
def test_timestamp_forms(ts: object, expected: int) -> None:
    assert parse_timestamp(ts) == expected
    event = parse(record(ts=ts), received_at_ms=expected)
    assert isinstance(event, Event)
    assert event.ts == expected


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (_MISSING, 0),
        (None, 0),
        (0, 0),
        (19.99, 1999),
        (0.1, 10),
        (0.29, 29),
        (1.005, 100),  # float 1.005 is 1.00499..., round() says 100
        (20, 2000),
        (123.456, 12346),
        (1e9, 100_000_000_000),
    ],
)
def test_value_is_summed_as_integer_cents(value: object, cents: int) -> None:
    event = parse(record(value=value))
    assert isinstance(event, Event)
    assert event.cents == cents


HOUR_MS = 3_600_000
TS = VALID["ts"]
ISO_TS = "2026-01-01T00:00:00Z"  # the same instant as TS


@pytest.mark.parametrize(
    ("ts", "received_at_ms", "max_future_ms", "future"),
    [
        (TS, TS - HOUR_MS, HOUR_MS, False),  # exactly the allowed skew ahead
        (TS, TS - HOUR_MS - 1, HOUR_MS, True),  # one millisecond more
        (ISO_TS, TS - HOUR_MS - 1, HOUR_MS, True),  # a string ts, through the full parser
        (ISO_TS, TS - HOUR_MS, HOUR_MS, False),
        (TS, TS - 1, 0, True),  # no skew allowed at all
        (TS, TS, 0, False),
        (TS, TS + 86_400_000, HOUR_MS, False),  # behind the record time: lateness decides
        (4_102_444_800_000, RECORD_MS, HOUR_MS, True),  # a device clock in 2100
        (TS, -1, HOUR_MS, False),  # a record without a timestamp is not checked
    ],
)
def test_an_event_too_far_ahead_of_its_record_is_future(
    ts: object, received_at_ms: int, max_future_ms: int, future: bool
) -> None:
    parsed = parse(record(ts=ts), received_at_ms, max_future_ms)
    if not future:
        assert isinstance(parsed, Event) and parsed.ts == TS
        return
    assert isinstance(parsed, DeadLetterRow)
    assert (parsed.reason, parsed.source, parsed.received_at_ms) == (
        "future",
        "events/0/7",
        received_at_ms,
    )
    assert parsed.error.startswith("ts: ") and "ahead of the record's timestamp" in parsed.error


def test_a_future_event_is_checked_after_the_field_rules() -> None:
    """One reason per record: a broken field wins over the skew."""
    parsed = parse(record(ts=4_102_444_800_000, type="refund"))
    assert isinstance(parsed, DeadLetterRow) and parsed.reason == "invalid_event"


def test_unknown_fields_are_ignored_and_unicode_kept() -> None:
    event = parse(record(page="/café/日本語-🙂", extra={"nested": [1, 2]}))
    assert isinstance(event, Event)
    assert event.page == "/café/日本語-🙂"


def test_parse_batch_keeps_partition_order_and_names_sources() -> None:
    values = [record(event_id="a"), b"nope", record(event_id="b", ts="2026-01-01T00:00:00Z")]
    stamps = [RECORD_MS + 1, RECORD_MS + 2, RECORD_MS + 3]
    batch = InputBatch("events/3", [10, 11, 12], values, stamps)
    events, dead = parse_batch(batch)
    assert [e.event_id for e in events] == ["a", "b"]
    assert [(e.offset, e.received_at_ms) for e in events] == [(10, stamps[0]), (12, stamps[2])]
    assert [(d.source, d.reason) for d in dead] == [("events/3/11", "invalid_json")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=130) | json_values,
        "user_id": st.text(max_size=5) | json_values,
        "type": st.sampled_from(["page_view", "click", "add_to_cart", "purchase", "x"])
        | json_values,
        "page": st.text(max_size=5) | json_values,
        "ts": st.integers(min_value=-10, max_value=MAX_TS_MS + 10) | st.text() | json_values,
        "value": st.floats(allow_nan=False) | st.integers() | json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | event_like.map(lambda d: json.dumps(d).encode()))
def test_parser_never_raises_and_classifies_every_record(raw: bytes) -> None:
    parsed = parse(raw)
    if isinstance(parsed, Event):
        obj = json.loads(raw)
        assert parsed.event_id == obj["event_id"] and parsed.user_id == obj["user_id"]
        assert 0 <= parsed.ts <= MAX_TS_MS
        assert parsed.cents >= 0
    else:
        assert isinstance(parsed, DeadLetterRow)
        assert parsed.reason in ("invalid_json", "invalid_event")
        assert parsed.payload == raw


rfc3339_like = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, zone: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
    ),
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " "]),
    st.integers(0, 25),
    st.integers(0, 60),
    st.integers(0, 61),
    st.just("") | st.text(alphabet="0123456789", min_size=1, max_size=12).map(".".__add__),
    st.sampled_from(["Z", "z"])
    | st.builds(
        lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
        st.sampled_from("+-"),
        st.integers(0, 25),
        st.integers(0, 61),
    ),
)


@settings(max_examples=1000, deadline=None)
@given(rfc3339_like)
def test_rfc3339_fast_reading_agrees_with_the_field_by_field_one(text: str) -> None:
    """`_parse_rfc3339` lets C read the value; `_rfc3339_fields` is the reference."""
    match = _RFC3339.fullmatch(text)
    assert match is not None
    try:
        expected: int | str = _rfc3339_fields(match)
    except InvalidField as e:
        expected = str(e)
    try:
        got: int | str = _parse_rfc3339(text)
    except InvalidField as e:
        got = str(e)
    assert got == expected
