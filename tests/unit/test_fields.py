"""Field helpers and schemas: every rule, every dead-letter reason, the generated batch loop
against the full parser, and the clickstream declared with fields against the test
oracle's reading of the contract.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.oracle import Invalid, oracle_event
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig
from waxhouse.fields import (
    _RFC3339,
    DEFAULT_MAX_FUTURE_MS,
    MAX_TS_MS,
    OFFSET,
    PAYLOAD,
    RECEIVED_AT,
    DecimalField,
    Field,
    InvalidField,
    Schema,
    TextField,
    TimestampField,
    _rfc3339_fields,
    decimal,
    format_rfc3339,
    integer,
    money,
    one_of,
    parse_rfc3339,
    parse_timestamp,
    text,
    timestamp,
)
from waxhouse.records import InputBatch
from waxhouse.rows import DeadLetterRow

EVENT_TYPES = ("page_view", "click", "add_to_cart", "purchase")
CLICKSTREAM = Schema(
    {
        "event_id": text(128),
        "user_id": text(256),
        "type": one_of(*EVENT_TYPES),
        "page": text(2048, intern=True),
        "ts": timestamp(),
        "value": money(),
    },
    event_time="ts",
)
SENSORS = Schema(
    {
        "reading_id": text(128),
        "device_id": text(128),
        "ts": timestamp(),
        "temperature": decimal(2, min=-100, max=200, optional=True),
        "humidity": decimal(2, min=0, max=100, optional=True),
    },
    event_time="ts",
    require_any=[("temperature", "humidity")],
    name="Reading",
)
Reading = SENSORS.event_type  # bound where it was declared, so readings pickle

# Every other kind of field, and a second timestamp besides the event time.
MIXED = Schema(
    {
        "valid_from": timestamp(),
        "code": text(5, min_length=3),
        "note": text(4, min_length=0, optional=True),
        "level": one_of("low", "high", optional=True),
        "count": integer(min=-5, max=10),
        "retries": integer(min=0, max=3, optional=True, default=1),
        "weight": decimal(3, min=0, max=2.5, optional=True, default=0),
        "seen": timestamp(optional=True),
    },
    event_time="valid_from",
    name="Mixed",
)
Mixed = MIXED.event_type

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RECORD_MS = TS + 1_234  # the record's timestamp
HOUR_MS = 3_600_000
_MISSING = object()


def record(base: dict[str, object], **changes: object) -> bytes:
    """`base` with `changes` as JSON (`_MISSING` drops a field; integers of any size)."""
    obj = {k: v for k, v in {**base, **changes}.items() if v is not _MISSING}
    huge = {k: v for k, v in obj.items() if type(v) is int and not -(2**63) <= v < 2**64}
    raw = orjson.dumps({**obj, **dict.fromkeys(huge, 0)})
    for name, value in huge.items():  # orjson writes no such integers, JSON has them
        raw = raw.replace(f'"{name}":0'.encode(), f'"{name}":{value}'.encode(), 1)
    return raw


def parse(
    schema: Schema,
    value: bytes | None,
    received_at_ms: int = RECORD_MS,
    max_future_ms: int = HOUR_MS,
) -> Any:
    """Through the generated batch loop, which must agree with the full record parser."""
    batch = InputBatch("topic/0", [7], [value], [received_at_ms])
    events, dead = schema.parse_batch(batch, max_future_ms)
    [parsed] = [*events, *dead]
    slow = schema.parse_record(value, "topic/0", 7, received_at_ms, max_future_ms)
    assert (type(parsed), parsed) == (type(slow), slow)
    assert type(parsed) is (schema.event_type if events else DeadLetterRow)
    return parsed


def invalid(schema: Schema, value: bytes, **kwargs: Any) -> str:
    """The error of a record that must be an `invalid_event` dead letter."""
    dead = parse(schema, value, **kwargs)
    assert isinstance(dead, DeadLetterRow)
    assert (dead.reason, dead.source, dead.payload) == ("invalid_event", "topic/0/7", value)
    return dead.error


# ---------------------------------------------------------------------------------------
# The clickstream, as the contract says it parses

CLICK = {
    "event_id": "e1",
    "user_id": "u1",
    "type": "purchase",
    "page": "/p",
    "ts": TS,
    "value": 19.99,
}
ARABIC_INDIC = {str(d): chr(0x0660 + d) for d in range(10)}


def click(**changes: object) -> bytes:
    return record(CLICK, **changes)


def test_a_valid_click_keeps_every_field_and_its_record() -> None:
    event = parse(CLICKSTREAM, click())
    assert event == ("e1", "u1", "purchase", "/p", TS, 1999, 7, click(), RECORD_MS)
    assert (event.page, event.value, event.offset) == ("/p", 1999, 7)
    assert (event[OFFSET], event[PAYLOAD], event[RECEIVED_AT]) == (7, click(), RECORD_MS)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (click(event_id=_MISSING), "event_id: required"),
        (click(event_id=None), "event_id: required"),
        (click(event_id=""), "event_id: must be a string of 1 to 128 characters"),
        (click(event_id="x" * 129), "event_id: must be a string of 1 to 128 characters"),
        (click(event_id=17), "event_id: must be a string of 1 to 128 characters"),
        (click(user_id="u" * 257), "user_id: must be a string of 1 to 256 characters"),
        (click(type="refund"), "type: must be one of add_to_cart, click, page_view, purchase"),
        (click(type=_MISSING), "type: must be one of add_to_cart, click, page_view, purchase"),
        (click(type="PURCHASE"), "type: must be one of add_to_cart, click, page_view, purchase"),
        (click(type=["click"]), "type: must be one of add_to_cart, click, page_view, purchase"),
        (click(type={"a": 1}), "type: must be one of add_to_cart, click, page_view, purchase"),
        (click(page="/" * 2049), "page: must be a string of 1 to 2048 characters"),
        (click(page=["/p"]), "page: must be a string of 1 to 2048 characters"),
        (click(ts=_MISSING), "ts: required"),
        (click(ts=None), "ts: must be integer epoch milliseconds or an RFC 3339 string"),
        (click(ts=True), "ts: must be integer epoch milliseconds or an RFC 3339 string"),
        (click(ts=1.5e12), "ts: must be integer epoch milliseconds or an RFC 3339 string"),
        (click(ts=-1), f"ts: epoch milliseconds out of range 0..{MAX_TS_MS}"),
        (click(ts=MAX_TS_MS + 1), f"ts: epoch milliseconds out of range 0..{MAX_TS_MS}"),
        (
            click(ts="2026-11-26T10:15:30.250"),
            "ts: not an RFC 3339 timestamp with an explicit offset (Z or ±hh:mm)",
        ),
        (
            click(ts="2026-02-30T10:15:30Z"),
            "ts: invalid date or time: day is out of range for month",
        ),
        (click(ts="2026-11-26T10:15:30+24:00"), "ts: invalid UTC offset"),
        (
            click(ts="1969-12-31T23:59:59.999Z"),
            f"ts: out of range 0..{MAX_TS_MS} epoch milliseconds",
        ),
        (click(value=-0.01), "value: must be between 0 and 1e9"),
        (click(value=1e9 + 1), "value: must be between 0 and 1e9"),
        (click(value=True), "value: must be a number"),
        (click(value="12.50"), "value: must be a number"),
        # The first broken rule in declaration order is the one reported.
        (click(event_id="", type="refund", value=True), "event_id:"),
        (click(page="", ts=-1), "page:"),
    ],
)
def test_a_broken_clickstream_rule_is_invalid_event_naming_the_field(
    raw: bytes, error: str
) -> None:
    got = invalid(CLICKSTREAM, raw)
    assert got.startswith(error) if error.endswith(":") else got == error


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'"a string"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b"", None),
        (b"{", None),
        (b"\xff\xfe\x00garbage", None),
        (b'{"event_id": "\xff"}', None),
        (b"[" * 3000 + b"]" * 3000, None),
        (None, None),
    ],
)
def test_not_a_json_object_is_invalid_json(raw: bytes | None, error: str | None) -> None:
    for schema in (CLICKSTREAM, SENSORS, MIXED):
        dead = parse(schema, raw)
        assert isinstance(dead, DeadLetterRow)
        assert (dead.reason, dead.payload) == ("invalid_json", raw if raw is not None else b"")
        if error is not None:
            assert dead.error == error


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0, 0),
        (MAX_TS_MS, MAX_TS_MS),
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-26T10:15:30.250Z", 1_795_688_130_250),
        ("2026-11-26t10:15:30.250z", 1_795_688_130_250),
        ("2026-11-26 10:15:30.250Z", 1_795_688_130_250),
        ("2026-11-26T10:15:30.2509999Z", 1_795_688_130_250),  # sub-ms digits truncated
        ("2026-11-26T10:15:30.2Z", 1_795_688_130_200),
        ("2026-11-26T10:15:30Z", 1_795_688_130_000),
        ("2026-11-26T11:15:30.250+01:00", 1_795_688_130_250),
        ("2026-11-26T04:45:30.250-05:30", 1_795_688_130_250),
        ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
        ("1970-01-01T01:00:00+01:00", 0),
    ],
)
def test_timestamp_forms(ts: object, expected: int) -> None:
    assert parse_timestamp(ts) == expected
    event = parse(CLICKSTREAM, click(ts=ts), received_at_ms=expected)
    assert event.ts == expected


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-26 10:15",
        "2026-11-26T25:15:30Z",
        "2026-11-26T10:15:30+00:60",
        "0001-01-01T00:00:00+01:00",
        "yesterday",
        "".join(ARABIC_INDIC.get(c, c) for c in "2026-01-01T00:00:00Z"),
        " 2026-01-01T00:00:00Z",
    ],
)
def test_a_broken_timestamp_string_names_its_field(ts: str) -> None:
    with pytest.raises(InvalidField, match=r"^valid_from: "):
        parse_timestamp(ts, "valid_from")
    assert invalid(CLICKSTREAM, click(ts=ts)).startswith("ts: ")


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (_MISSING, 0),
        (None, 0),
        (0, 0),
        (19.99, 1999),
        (0.29, 29),
        (1.005, 100),  # float 1.005 is 1.00499..., round() says 100
        (123.456, 12346),
        (1e9, 100_000_000_000),
    ],
)
def test_money_is_kept_as_integer_cents(value: object, cents: int) -> None:
    assert parse(CLICKSTREAM, click(value=value)).value == cents


def test_money_takes_its_maximum() -> None:
    schema = Schema({"ts": timestamp(), "price": money(max=500)}, event_time="ts")
    assert parse(schema, record({"ts": TS}, price=500)).price == 50_000
    assert invalid(schema, record({"ts": TS}, price=500.01)) == "price: must be between 0 and 500"


@pytest.mark.parametrize(
    ("ts", "received_at_ms", "max_future_ms", "future"),
    [
        (TS, TS - HOUR_MS, HOUR_MS, False),  # exactly the allowed skew ahead
        (TS, TS - HOUR_MS - 1, HOUR_MS, True),  # one millisecond more
        ("2026-01-01T00:00:00Z", TS - HOUR_MS - 1, HOUR_MS, True),
        ("2026-01-01T00:00:00Z", TS - HOUR_MS, HOUR_MS, False),
        (TS, TS - 1, 0, True),
        (TS, TS + 86_400_000, HOUR_MS, False),  # behind the record time: lateness decides
        (TS, -1, HOUR_MS, False),  # a record without a timestamp is not checked
    ],
)
def test_an_event_too_far_ahead_of_its_record_is_future(
    ts: object, received_at_ms: int, max_future_ms: int, future: bool
) -> None:
    parsed = parse(CLICKSTREAM, click(ts=ts), received_at_ms, max_future_ms)
    if not future:
        assert type(parsed) is CLICKSTREAM.event_type and parsed.ts == TS
        return
    assert isinstance(parsed, DeadLetterRow)
    ahead = (TS - received_at_ms) / 1000
    assert (parsed.reason, parsed.error) == (
        "future",
        f"ts: {ahead:.3f} s ahead of the record's timestamp"
        f" (at most {max_future_ms / 1000:g} s allowed)",
    )


def test_a_future_event_is_checked_after_the_field_rules() -> None:
    raw = click(ts=4_102_444_800_000, type="refund")
    assert invalid(CLICKSTREAM, raw).startswith("type:")


def test_unknown_fields_are_ignored_unicode_kept_and_pages_interned() -> None:
    page = "/café/日本語-🙂"
    first = parse(CLICKSTREAM, click(page=page, extra={"nested": [1, 2]}))
    second = parse(CLICKSTREAM, click(page=page, ts="2026-01-01T00:00:00Z"))
    third = parse(CLICKSTREAM, click(page=page), received_at_ms=-1)  # the full parser's
    assert first.page == second.page == third.page == page
    assert first.page is second.page is third.page  # one str per page, kept for long


def test_parse_batch_keeps_partition_order_and_names_sources() -> None:
    values = [
        click(event_id="a"),
        b"nope",
        click(event_id="b", ts="2026-01-01T00:00:00Z"),
        click(event_id=""),
        None,
    ]
    stamps = [RECORD_MS + i for i in range(5)]
    batch = InputBatch("events/3", [10, 11, 12, 13, 14], values, stamps)
    events, dead = CLICKSTREAM.parse_batch(batch)
    assert [(e.event_id, e.offset, e.received_at_ms) for e in events] == [
        ("a", 10, stamps[0]),
        ("b", 12, stamps[2]),
    ]
    assert [(d.source, d.reason, d.received_at_ms) for d in dead] == [
        ("events/3/11", "invalid_json", stamps[1]),
        ("events/3/13", "invalid_event", stamps[3]),
        ("events/3/14", "invalid_json", stamps[4]),
    ]
    assert CLICKSTREAM.parse_batch(InputBatch("events/3", [], [], [])) == ([], [])


def same_as_the_oracle(
    values: Sequence[bytes | None],
    stamps: Sequence[int] | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    *,
    oracle: bool = True,
) -> tuple[list[Any], list[DeadLetterRow]]:
    """The batch parser on one batch: it agrees with `parse_record` record by record and,
    with `oracle`, each record's verdict (valid, or the reason and the field named) with
    the test oracle's reading of the contract (tests/support/oracle.py), written apart
    from it. The oracle reads timestamps with `datetime.fromisoformat`, looser than RFC
    3339: adversarial timestamps are checked against the examples here instead."""
    stamps = list(stamps) if stamps is not None else [RECORD_MS] * len(values)
    batch = InputBatch("events/0", list(range(100, 100 + len(values))), list(values), stamps)
    events, dead = CLICKSTREAM.parse_batch(batch, max_future_ms)
    by_offset: dict[int, Any] = {e.offset: e for e in events}
    by_offset.update({int(d.source.rpartition("/")[2]): d for d in dead})
    for offset, value, received_at_ms in zip(batch.offsets, values, stamps, strict=True):
        got = by_offset[offset]
        assert tuple(got) == tuple(
            CLICKSTREAM.parse_record(value, "events/0", offset, received_at_ms, max_future_ms)
        )
        if not oracle:
            continue
        try:
            event = oracle_event(value if value is not None else b"")
        except Invalid as bad:
            want = (bad.reason, bad.field)
        else:
            ahead = received_at_ms >= 0 and event["ts"] > received_at_ms + max_future_ms
            want = ("future", "ts") if ahead else ("valid", "")
        if type(got) is DeadLetterRow:
            field = got.error.split(":")[0] if got.reason in ("invalid_event", "future") else ""
            verdict = (got.reason, field)
        else:
            verdict = ("valid", "")
        assert verdict == want, value
    return events, dead


def test_the_example_records_parse_as_the_contract_says() -> None:
    values: list[bytes | None] = [
        click(),
        click(value=_MISSING),
        click(value=None),
        click(value=0.29),
        click(user_id=None),
        click(type=1),
        click(page=""),
        click(ts="2026-01-01T00:00:00.2509999Z"),
        click(ts="2026-11-26 10:15"),
        click(ts="0001-01-01T00:00:00+01:00"),
        click(ts="".join(ARABIC_INDIC.get(c, c) for c in "2026-01-01T00:00:00Z")),
        click(value={"amount": 1}),
        click(page="/café/日本語-🙂", extra={"nested": [1, 2]}),
        click(ts=4_102_444_800_000),
        b"",
        b'{"event_id": "e1",',
        b"[" * 3000 + b"]" * 3000,
        None,
    ]
    events, dead = same_as_the_oracle(values, oracle=False)
    assert (len(events), len(dead)) == (6, 12)
    same_as_the_oracle(values, [TS - HOUR_MS - 1] * len(values), HOUR_MS, oracle=False)
    same_as_the_oracle(values, [-1] * len(values), 0, oracle=False)


def test_generated_clickstream_records_parse_as_the_contract_says() -> None:
    """Realistic records, a third of them broken in every way real producers break them."""
    config = GeneratorConfig(seed=11, events=3_000, malformed_ratio=0.3)
    records = ClickstreamGenerator(config).take(config.events)
    events, dead = same_as_the_oracle([r.value for r in records], [r.timestamp_ms for r in records])
    assert len(events) > 1_500 and len(dead) > 600


@pytest.mark.parametrize("schema", [CLICKSTREAM, SENSORS, MIXED], ids=lambda s: s.event_time)
def test_parse_decoded_answers_as_parse_batch(schema: Schema) -> None:
    """The gateway's loop over objects already decoded: the same events and dead letters
    as decoding each record, for every record that is JSON at all."""
    config = GeneratorConfig(seed=12, events=3_000, malformed_ratio=0.3)
    records = ClickstreamGenerator(config).take(config.events)
    decodable = []
    for record in records:
        try:
            decodable.append((record, orjson.loads(record.value or b"")))
        except orjson.JSONDecodeError:
            continue
    batch = InputBatch(
        "gateway",
        [r.n for r, _ in decodable],
        [r.value for r, _ in decodable],
        [r.timestamp_ms - 5_000 * (r.n % 3) for r, _ in decodable],  # some `future`
    )
    objects = [obj for _, obj in decodable]
    assert schema.parse_decoded(batch, objects, 2_000) == schema.parse_batch(batch, 2_000)
    assert len(decodable) > 2_000


# Adversarial records, written as JSON text so numbers orjson never writes (beyond 64
# bits, exponents, -0) and duplicate keys are in too.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
odd_numbers = st.sampled_from(
    [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551615",
        "18446744073709551616",
        "1e400",
        "1E2",
        "-0",
        "-0.0",
        "1.0",
        "0.005",
        "999999999.999",
        "1000000000.001",
        "1e9",
        "NaN",
        "Infinity",
    ]
)
rfc3339_like = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, zone: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
    ),
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " ", "_"]),
    st.integers(0, 25),
    st.integers(0, 60),
    st.integers(0, 61),
    st.just("") | st.text(alphabet="0123456789", min_size=1, max_size=12).map(".".__add__),
    st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "UTC", "+0100", "+01"])
    | st.builds(
        lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
        st.sampled_from("+-"),
        st.integers(0, 25),
        st.integers(0, 61),
    ),
)


def sized_text(*limits: int, over: int = 1) -> st.SearchStrategy[str]:
    """Strings at and around length limits (up to `over` past them), ASCII or not."""
    lengths = sorted({n + d for n in limits for d in range(-1, over + 1) if n + d > 0})
    return st.builds(
        lambda n, c: c * n, st.sampled_from(lengths), st.sampled_from(["x", "é", "🙂", "\x00"])
    )


def as_json(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A value as JSON text, non-ASCII escaped or not."""
    return strategy.flatmap(
        lambda v: st.sampled_from([json.dumps(v), json.dumps(v, ensure_ascii=False)])
    )


def field_text(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A value as JSON text, or a number orjson never writes."""
    return as_json(strategy) | odd_numbers


def rfc3339_text(ms: int, offset_minutes: int, digits: int, separator: str) -> str:
    """`ms` written as RFC 3339 at a UTC offset, with 0 to 9 fraction digits."""
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    fraction = f".{local.microsecond:06d}000"[: digits + 1] if digits else ""
    zone = local.strftime("%z")
    zone = "Z" if offset_minutes == 0 else f"{zone[:3]}:{zone[3:]}"
    return local.strftime(f"%Y-%m-%d{separator}%H:%M:%S") + fraction + zone


valid_ts = st.integers(TS - 2 * HOUR_MS, TS + 2 * HOUR_MS) | st.builds(
    rfc3339_text,
    st.integers(TS - 2 * HOUR_MS, TS + 2 * HOUR_MS) | st.integers(0, MAX_TS_MS - 86_400_000),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.integers(0, 9),
    st.sampled_from("Tt "),
)
valid_clicks = {
    "event_id": as_json(st.text(min_size=1, max_size=8) | sized_text(128, over=0)),
    "user_id": as_json(st.text(min_size=1, max_size=8) | sized_text(256, over=0)),
    "type": as_json(st.sampled_from(EVENT_TYPES)),
    "page": as_json(st.text(min_size=1, max_size=8) | sized_text(2048, over=0)),
    "ts": as_json(valid_ts),
    "value": as_json(st.none() | st.floats(0, 1e9) | st.integers(0, 10**9)),
}
# Anything at all, and values near each rule's edges.
broken_clicks = {
    "event_id": field_text(sized_text(128) | json_values),
    "user_id": field_text(sized_text(256) | json_values),
    "type": field_text(st.sampled_from(["x", "Click", "page_view "]) | json_values),
    "page": field_text(sized_text(2048) | json_values),
    "ts": field_text(
        st.integers(-10, 10)
        | st.integers(MAX_TS_MS - 10, MAX_TS_MS + 10)
        | rfc3339_like
        | json_values
    ),
    "value": field_text(
        st.floats(-1, 2e9, allow_nan=False) | st.integers(-5, 2 * 10**9) | json_values
    ),
}


@st.composite
def click_texts(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """A JSON object's text: a valid event with a few fields broken, dropped, repeated or
    added, in any order (repeated keys: the last one counts)."""
    fields = [(name, draw(valid_clicks[name])) for name in valid_clicks]
    names = st.sampled_from(list(valid_clicks))
    for name in draw(st.lists(names, max_size=2)):
        fields.append((name, draw(broken_clicks[name])))
    for name in draw(st.lists(names, max_size=2)):
        fields = [(n, value) for n, value in fields if n != name]
    extra = st.tuples(st.sampled_from(["extra", "Type", "ts "]), field_text(json_values))
    fields += draw(st.lists(extra, max_size=2))
    fields = draw(st.permutations(fields))
    return ("{" + ",".join(f"{json.dumps(n)}:{v}" for n, v in fields) + "}").encode()


raw_records = (
    click_texts()
    | click_texts()
    | st.binary(max_size=100)
    | st.none()
    | json_values.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(raw_records, min_size=1, max_size=6),
    st.sampled_from([-1, 0, TS - HOUR_MS - 1, TS, TS + HOUR_MS]),
    st.sampled_from([0, 1, HOUR_MS, DEFAULT_MAX_FUTURE_MS * 24]),
)
def test_any_batch_parses_as_the_contract_says(
    values: list[bytes | None], received_at_ms: int, max_future_ms: int
) -> None:
    same_as_the_oracle(values, [received_at_ms] * len(values), max_future_ms, oracle=False)


@settings(max_examples=300, deadline=None)
@given(rfc3339_like)
def test_rfc3339_fast_reading_agrees_with_the_field_by_field_one(text: str) -> None:
    """`parse_rfc3339` lets C read the value; `_rfc3339_fields` is the reference."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        with pytest.raises(InvalidField, match="not an RFC 3339 timestamp"):
            parse_rfc3339(text)
        return
    try:
        expected: int | str = _rfc3339_fields(match)
    except InvalidField as e:
        expected = str(e)
    try:
        got: int | str = parse_rfc3339(text)
    except InvalidField as e:
        got = str(e)
    assert got == expected


# ---------------------------------------------------------------------------------------
# A sensors-like schema: optional decimals, and at least one of them

READING = {"reading_id": "r1", "device_id": "d1", "ts": TS, "temperature": 21.5, "humidity": 40}


def reading(**changes: object) -> bytes:
    return record(READING, **changes)


def test_a_valid_reading_keeps_hundredths() -> None:
    event = parse(SENSORS, reading())
    assert event == Reading("r1", "d1", TS, 2150, 4000, 7, reading(), RECORD_MS)
    assert type(event) is Reading


@pytest.mark.parametrize(
    ("temperature", "humidity", "kept"),
    [
        (21.5, _MISSING, (2150, None)),
        (_MISSING, 55, (None, 5500)),
        (None, 55, (None, 5500)),  # null is absent
        (21.5, None, (2150, None)),
        (-100, 0, (-10_000, 0)),  # the bounds are in
        (200, 100, (20_000, 10_000)),
        (-100.0, 100.0, (-10_000, 10_000)),
        (19.99, 0.29, (1999, 29)),
        (1.005, 36.6, (100, 3660)),  # float 1.005 is 1.00499...
        (21.555, 0.125, (2156, 12)),  # Python's round: 2155.5 -> 2156, 12.5 -> 12
        (-12.345, 0.005, (-1234, 0)),
        (-0.0, 0, (0, 0)),
    ],
)
def test_temperature_and_humidity_are_optional_and_kept_in_hundredths(
    temperature: object, humidity: object, kept: tuple[int | None, int | None]
) -> None:
    event = parse(SENSORS, reading(temperature=temperature, humidity=humidity))
    assert (event.temperature, event.humidity) == kept


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"temperature": _MISSING, "humidity": _MISSING}, "temperature, humidity: at least one"),
        ({"temperature": None, "humidity": None}, "temperature, humidity: at least one"),
        ({"temperature": -100.01}, "temperature: must be between -100 and 200"),
        ({"temperature": 200.01}, "temperature: must be between -100 and 200"),
        ({"temperature": 1e300}, "temperature: must be between -100 and 200"),
        ({"humidity": -0.01}, "humidity: must be between 0 and 100"),
        ({"humidity": 100.001}, "humidity: must be between 0 and 100"),
        ({"temperature": True}, "temperature: must be a number"),
        ({"humidity": False}, "humidity: must be a number"),
        ({"temperature": "21.5"}, "temperature: must be a number"),
        ({"temperature": [21.5]}, "temperature: must be a number"),
        ({"reading_id": _MISSING}, "reading_id: required"),
        ({"device_id": "d" * 129}, "device_id: must be a string of 1 to 128 characters"),
        ({"ts": "2026-01-01T00:00:00"}, "ts: not an RFC 3339 timestamp"),
        # Field rules come first, in declaration order, then the groups.
        ({"reading_id": "", "temperature": True}, "reading_id:"),
        ({"temperature": True, "humidity": None}, "temperature: must be a number"),
        ({"temperature": None, "humidity": 101}, "humidity: must be between 0 and 100"),
    ],
)
def test_a_broken_reading_is_invalid_event_naming_the_field(
    changes: dict[str, object], error: str
) -> None:
    got = invalid(SENSORS, reading(**changes))
    assert got.startswith(error)
    assert got == "temperature, humidity: at least one is required" or "at least" not in error


def test_a_reading_ahead_of_its_record_is_future() -> None:
    dead = parse(SENSORS, reading(ts=TS + 2 * HOUR_MS), received_at_ms=TS)
    assert isinstance(dead, DeadLetterRow)
    assert (dead.reason, dead.error) == (
        "future",
        "ts: 7200.000 s ahead of the record's timestamp (at most 3600 s allowed)",
    )


def test_readings_pickle_as_their_event_type() -> None:
    event = parse(SENSORS, reading())
    copy = pickle.loads(pickle.dumps([event], protocol=pickle.HIGHEST_PROTOCOL))[0]
    assert (type(copy), copy) == (Reading, event)


# ---------------------------------------------------------------------------------------
# Every other kind of field

SAMPLE = {"valid_from": TS, "code": "abc", "count": 0}


def sample(**changes: object) -> bytes:
    return record(SAMPLE, **changes)


def test_absent_optional_fields_take_their_defaults() -> None:
    event = parse(MIXED, sample())
    assert event == Mixed(TS, "abc", None, None, 0, 1, 0, None, 7, sample(), RECORD_MS)
    nulls = sample(note=None, level=None, retries=None, weight=None, seen=None)
    assert parse(MIXED, nulls)[: len(MIXED.names)] == event[: len(MIXED.names)]


@pytest.mark.parametrize(
    ("changes", "name", "kept"),
    [
        ({"code": "abcde"}, "code", "abcde"),
        ({"code": "日本語"}, "code", "日本語"),
        ({"note": ""}, "note", ""),  # min_length=0
        ({"note": "🙂🙂🙂🙂"}, "note", "🙂🙂🙂🙂"),
        ({"level": "high"}, "level", "high"),
        ({"count": -5}, "count", -5),
        ({"count": 10}, "count", 10),
        ({"retries": 0}, "retries", 0),
        ({"weight": 2.5}, "weight", 2500),
        ({"weight": 1}, "weight", 1000),
        ({"weight": 0.0005}, "weight", 0),  # round(0.5) is 0
        ({"weight": 0.0015}, "weight", 2),
        ({"seen": 0}, "seen", 0),
        ({"seen": "2026-11-26T11:15:30.250+01:00"}, "seen", 1_795_688_130_250),
        ({"valid_from": "2026-01-01T00:00:00.999999Z"}, "valid_from", TS + 999),
    ],
)
def test_field_values_are_kept(changes: dict[str, object], name: str, kept: object) -> None:
    event = parse(MIXED, sample(**changes))
    assert getattr(event, name) == kept


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"valid_from": _MISSING}, "valid_from: required"),
        ({"code": "ab"}, "code: must be a string of 3 to 5 characters"),
        ({"code": "abcdef"}, "code: must be a string of 3 to 5 characters"),
        ({"code": None}, "code: required"),
        ({"note": "12345"}, "note: must be a string of 0 to 4 characters"),
        ({"note": 5}, "note: must be a string of 0 to 4 characters"),
        ({"level": "mid"}, "level: must be one of high, low"),
        ({"level": ["low"]}, "level: must be one of high, low"),
        ({"count": _MISSING}, "count: required"),
        ({"count": None}, "count: required"),
        ({"count": 11}, "count: must be between -5 and 10"),
        ({"count": -6}, "count: must be between -5 and 10"),
        ({"count": 1.0}, "count: must be an integer"),
        ({"count": True}, "count: must be an integer"),
        ({"count": "1"}, "count: must be an integer"),
        ({"count": 10**30}, "count: must be an integer"),  # orjson: a float beyond 64 bits
        ({"retries": 4}, "retries: must be between 0 and 3"),
        ({"retries": False}, "retries: must be an integer"),
        ({"weight": 2.5001}, "weight: must be between 0 and 2.5"),
        ({"weight": True}, "weight: must be a number"),
        ({"seen": "2026-01-01"}, "seen: not an RFC 3339 timestamp"),
        ({"seen": -1}, "seen: epoch milliseconds out of range"),
        ({"seen": True}, "seen: must be integer epoch milliseconds or an RFC 3339 string"),
    ],
)
def test_broken_field_rules_name_the_field(changes: dict[str, object], error: str) -> None:
    assert invalid(MIXED, sample(**changes)).startswith(error)


def test_parse_object_gives_the_kept_values_or_raises() -> None:
    assert CLICKSTREAM.parse_object({**CLICK, "ts": "2026-01-01T00:00:00Z"}) == (
        "e1",
        "u1",
        "purchase",
        "/p",
        TS,
        1999,
    )
    assert SENSORS.parse_object({**READING, "humidity": None}) == ("r1", "d1", TS, 2150, None)
    for obj, error in [
        ([CLICK], "expected a JSON object, got list"),
        (None, "expected a JSON object, got NoneType"),
        ("{}", "expected a JSON object, got str"),
        ({**CLICK, "page": ""}, "page: must be a string of 1 to 2048 characters"),
        ({"reading_id": "r", "device_id": "d", "ts": 0}, "temperature, humidity: at least one"),
    ]:
        schema = SENSORS if isinstance(obj, dict) and "reading_id" in obj else CLICKSTREAM
        with pytest.raises(InvalidField) as raised:
            schema.parse_object(obj)
        assert str(raised.value).startswith(error)


# A random object for MIXED, and the full parser as its own reference: the generated batch
# loop must agree with it on every record (the `parse` helper checks that).
mixed_fields = {
    "valid_from": field_text(st.integers(-1, 2) | rfc3339_like | json_values),
    "code": field_text(sized_text(3, 5) | json_values),
    "note": field_text(sized_text(0, 4) | json_values),
    "level": field_text(st.sampled_from(["low", "high", "mid"]) | json_values),
    "count": field_text(st.integers(-7, 12) | json_values),
    "retries": field_text(st.integers(-1, 4) | json_values),
    "weight": field_text(st.floats(-0.1, 2.6) | st.integers(-1, 3) | json_values),
    "seen": field_text(st.integers(-1, 1) | rfc3339_like | json_values),
}


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(list(mixed_fields)), st.just(None)).flatmap(
        lambda chosen: st.fixed_dictionaries({name: mixed_fields[name] for name in chosen})
    ),
    st.booleans(),
)
def test_the_batch_loop_agrees_with_the_full_parser(fields: dict[str, str], full: bool) -> None:
    if full:
        fields = {"valid_from": "0", "code": '"abc"', "count": "1", **fields}
    raw = ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()
    parsed = parse(MIXED, raw, received_at_ms=-1)
    assert type(parsed) is Mixed or parsed.reason in ("invalid_json", "invalid_event")


# ---------------------------------------------------------------------------------------
# The schema object


def test_the_event_type_is_a_named_tuple_of_the_fields_then_the_record() -> None:
    assert CLICKSTREAM.names == ("event_id", "user_id", "type", "page", "ts", "value")
    assert CLICKSTREAM.event_type._fields == (
        *CLICKSTREAM.names,
        "offset",
        "payload",
        "received_at_ms",
    )
    assert (SENSORS.event_type.__name__, CLICKSTREAM.event_type.__name__) == ("Reading", "Event")
    assert Reading.__module__ == __name__
    assert (CLICKSTREAM.time_index, SENSORS.time_index, MIXED.time_index) == (4, 2, 0)
    assert [CLICKSTREAM.index(n) for n in ("event_id", "value", "offset", "received_at_ms")] == [
        0,
        5,
        6,
        8,
    ]
    assert len(CLICKSTREAM.event_type._fields) + OFFSET == CLICKSTREAM.index("offset")


def test_kind_gives_the_declared_field() -> None:
    assert CLICKSTREAM.kind("page") == text(2048, intern=True)
    assert isinstance(CLICKSTREAM.kind("ts"), TimestampField)
    value = CLICKSTREAM.kind("value")
    assert isinstance(value, DecimalField)
    assert (value.places, value.min, value.max, value.default, value.optional) == (
        2,
        0,
        1e9,
        0,
        True,
    )
    assert isinstance(SENSORS.kind("reading_id"), TextField)
    assert isinstance(SENSORS.kind("reading_id"), Field)


@pytest.mark.parametrize("lookup", ["index", "kind"])
def test_unknown_field_names_are_a_key_error_listing_the_fields(lookup: str) -> None:
    with pytest.raises(KeyError, match="no field 'temp' in this schema") as raised:
        getattr(SENSORS, lookup)("temp")
    assert "reading_id, device_id, ts, temperature, humidity" in str(raised.value)


def test_the_generated_source_is_kept_for_reading() -> None:
    source = CLICKSTREAM.source
    assert source.startswith("def parse_batch(batch, max_future_ms):")
    assert "obj['page']" in source and "obj.get('value')" in source
    assert "intern(f_page)" in source and "round(f_value * 100)" in source
    compile(source, "<test>", "exec")


class CountingSchema(Schema):
    """A schema that counts the records its batch loop hands to the full parser."""

    fallbacks = 0

    def parse_record(self, *args: Any, **kwargs: Any) -> Any:
        self.fallbacks += 1
        return super().parse_record(*args, **kwargs)


@pytest.mark.parametrize(
    ("schema", "values"),
    [
        (
            CLICKSTREAM,
            [
                click(),
                click(value=_MISSING, extra=[1]),
                click(value=1e9, ts=0, page="p" * 2048),
                click(value=0, ts="2026-01-01T05:30:00.1239+05:30"),
                click(event_id="e" * 128, user_id="🙂" * 256, type="page_view"),
            ],
        ),
        (
            SENSORS,
            [
                reading(),
                reading(temperature=-100, humidity=100),
                reading(temperature=200.0, humidity=None),
                reading(temperature=_MISSING, humidity=0),
            ],
        ),
        (
            MIXED,
            [
                sample(),
                sample(note="", level="low", count=10, retries=3, weight=2.5, seen=MAX_TS_MS),
                sample(code="abcde", count=-5, weight=0, seen="2026-01-01T00:00:00Z"),
            ],
        ),
    ],
)
def test_plainly_valid_records_never_leave_the_batch_loop(
    schema: Schema, values: list[bytes]
) -> None:
    """Every value at the edge of its rule is still the inline path's (speed, not results:
    the full parser would give the same events)."""
    counting = CountingSchema(
        schema.fields,
        event_time=schema.names[schema.time_index],
        require_any=schema.require_any,
    )
    events, dead = counting.parse_batch(
        InputBatch("topic/0", list(range(len(values))), list(values), [TS] * len(values))
    )
    assert (len(events), dead, counting.fallbacks) == (len(values), [], 0)
    counting.parse_batch(InputBatch("topic/0", [0], [reading(ts=-1)], [TS]))
    assert counting.fallbacks == 1


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Schema({"ts": timestamp()}, event_time="time"), "event_time: no field 'time'"),
        (
            lambda: Schema({"ts": text(10)}, event_time="ts"),
            "event_time: 'ts' must be a required timestamp",
        ),
        (
            lambda: Schema({"ts": timestamp(optional=True)}, event_time="ts"),
            "event_time: 'ts' must be a required timestamp",
        ),
        (
            lambda: Schema(
                {"ts": timestamp(), "a": integer(min=0, max=1, optional=True)},
                event_time="ts",
                require_any=[("a", "b")],
            ),
            "require_any: no field 'b'",
        ),
        (
            lambda: Schema(
                {"ts": timestamp(), "a": integer(min=0, max=1)},
                event_time="ts",
                require_any=[("a",)],
            ),
            "require_any: 'a' is required anyway",
        ),
        (
            lambda: Schema({"ts": timestamp()}, event_time="ts", require_any=["ts"]),
            "require_any: each group is a non-empty list",
        ),
        (lambda: Schema({}, event_time="ts"), "at least one field"),
        (lambda: Schema({"ts": timestamp(), "offset": text(5)}, event_time="ts"), "record field"),
        (lambda: Schema({"ts": timestamp(), "class": text(5)}, event_time="ts"), "identifier"),
        (lambda: Schema({"ts": timestamp(), "a-b": text(5)}, event_time="ts"), "identifier"),
        (lambda: Schema({"ts": timestamp(), "_a": text(5)}, event_time="ts"), "underscore"),
        (lambda: Schema({"ts": timestamp(), "a": str}, event_time="ts"), "a: not a field"),
        (lambda: text(3, min_length=4), "min_length <= max_length"),
        (lambda: one_of(), "at least one choice"),
        (lambda: integer(min=1, max=0), "min 1 is greater than max 0"),
        (lambda: integer(min=0, max=5, default=1), "a default is for an optional field"),
        (lambda: integer(min=0, max=5, optional=True, default=9), "default 9 is not in"),
        (lambda: integer(min=False, max=5), "bounds must be numbers"),
        (lambda: decimal(2, min=0, max=float("inf")), "bounds must be finite"),
        (lambda: decimal(-1, min=0, max=1), "places must be an integer"),
        (lambda: decimal(2, min=0, max=1, optional=True, default=0.5), "must be an integer"),
    ],
)
def test_a_schema_that_cannot_work_fails_at_construction(
    build: Callable[[], object], error: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        build()


@given(st.integers(min_value=0, max_value=MAX_TS_MS))
def test_format_rfc3339_reads_back_to_the_same_milliseconds(ms: int) -> None:
    text = format_rfc3339(ms)
    assert text.endswith("Z") and len(text) == 24
    assert parse_rfc3339(text) == ms
