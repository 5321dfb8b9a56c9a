"""The input event model and its parser.

Parsing is errors-as-data: every record becomes either an `Event` or a `DeadLetterRow`
with a reason (`invalid_json` or `invalid_event`, with an error naming the field; or
`future`: a valid event dated too far ahead of its record's timestamp, see
`parse_batch`). It never raises on bad input.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from sys import intern
from typing import Literal, NamedTuple

import orjson

from waxhouse.records import InputBatch, record_source
from waxhouse.rows import DeadLetterRow

EventType = Literal["page_view", "click", "add_to_cart", "purchase"]
EVENT_TYPES: frozenset[str] = frozenset(("page_view", "click", "add_to_cart", "purchase"))
DeadLetterReason = Literal["invalid_json", "invalid_event", "future", "late"]

MAX_TS_MS = 253402300799999
MAX_VALUE = 1e9
DEFAULT_MAX_FUTURE_MS = 3_600_000

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d is 0-9 only: "٢٠٢٦" is not a year
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


class Event(NamedTuple):
    """A valid event, with where it came from (for a later `late` dead letter)."""

    event_id: str
    user_id: str
    type: str
    page: str
    ts: int  # event time, epoch milliseconds
    cents: int  # round(value * 100); 0 when value is missing
    offset: int  # the record's offset in its source partition
    payload: bytes
    received_at_ms: int


class InvalidField(ValueError):
    """A field rule is broken; the message names the field."""


def parse_timestamp(raw: object) -> int:
    """Epoch milliseconds from an integer or an RFC 3339 string with an explicit offset."""
    if type(raw) is int:
        if 0 <= raw <= MAX_TS_MS:
            return raw
        raise InvalidField(f"ts: epoch milliseconds out of range 0..{MAX_TS_MS}")
    if isinstance(raw, str):
        return _parse_rfc3339(raw)
    raise InvalidField("ts: must be integer epoch milliseconds or an RFC 3339 string")


def _parse_rfc3339(text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidField("ts: not an RFC 3339 timestamp with an explicit offset (Z or ±hh:mm)")
    zulu, off_h, off_m = match.group(8, 10, 11)
    if not zulu and (off_h > "23" or off_m > "59"):  # Python would take +00:60 as +01:00
        return _rfc3339_fields(match)
    try:
        # The shape is RFC 3339's; the C parser reads the value, sub-ms digits floored.
        ms = (datetime.fromisoformat(text) - _EPOCH) // _MILLISECOND
    except ValueError:
        return _rfc3339_fields(match)  # says what is wrong (or reads what C declined)
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidField(f"ts: out of range 0..{MAX_TS_MS} epoch milliseconds")
    return ms


def _rfc3339_fields(match: re.Match[str]) -> int:
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        local = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone.utc,
        )
    except ValueError as e:
        raise InvalidField(f"ts: invalid date or time: {e}") from e
    if zulu:
        offset_minutes = 0
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise InvalidField("ts: invalid UTC offset")
        offset_minutes = (int(off_h) * 60 + int(off_m)) * (-1 if sign == "-" else 1)
    millis = int((fraction or "0")[:3].ljust(3, "0"))
    seconds = (local.toordinal() - _EPOCH_ORDINAL) * 86_400 + (
        local.hour * 3600 + local.minute * 60 + local.second - offset_minutes * 60
    )
    ms = seconds * 1000 + millis
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidField(f"ts: out of range 0..{MAX_TS_MS} epoch milliseconds")
    return ms


def _text(obj: dict[str, object], name: str, max_len: int) -> str:
    value = obj.get(name)
    if type(value) is str and 0 < len(value) <= max_len:
        return value
    if value is None:
        raise InvalidField(f"{name}: required")
    raise InvalidField(f"{name}: must be a string of 1 to {max_len} characters")


def _cents(obj: dict[str, object]) -> int:
    value = obj.get("value")
    if value is None:
        return 0
    kind = type(value)
    if kind is not int and kind is not float:
        raise InvalidField("value: must be a number")
    if not 0 <= value <= MAX_VALUE:  # type: ignore[operator]
        raise InvalidField("value: must be between 0 and 1e9")
    return round(value * 100)  # type: ignore[operator]


def _event(obj: dict[str, object], offset: int, payload: bytes, received_at_ms: int) -> Event:
    event_id = _text(obj, "event_id", 128)
    user_id = _text(obj, "user_id", 256)
    kind = obj.get("type")
    if type(kind) is not str or kind not in EVENT_TYPES:
        raise InvalidField(f"type: must be one of {', '.join(sorted(EVENT_TYPES))}")
    page = _text(obj, "page", 2048)
    if "ts" not in obj:
        raise InvalidField("ts: required")
    ts = parse_timestamp(obj["ts"])
    return Event(event_id, user_id, kind, page, ts, _cents(obj), offset, payload, received_at_ms)


def parse_record(
    value: bytes | None,
    part: str,
    offset: int,
    received_at_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Event | DeadLetterRow:
    """One record's bytes -> an event, or a dead letter saying why not.

    A valid event whose `ts` is more than `max_future_ms` ahead of its record's timestamp
    is a dead letter `future` (a device clock in 2099 must not make every later event of
    its partition late). A record without a timestamp (negative) is not checked.
    """
    payload = value if value is not None else b""
    source = record_source(part, offset)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        return DeadLetterRow(source, "invalid_json", str(e), payload, received_at_ms)
    if type(obj) is not dict:
        error = f"expected a JSON object, got {type(obj).__name__}"
        return DeadLetterRow(source, "invalid_json", error, payload, received_at_ms)
    try:
        event = _event(obj, offset, payload, received_at_ms)
    except InvalidField as e:
        return DeadLetterRow(source, "invalid_event", str(e), payload, received_at_ms)
    ahead_ms = event.ts - received_at_ms
    if received_at_ms >= 0 and ahead_ms > max_future_ms:
        error = (
            f"ts: {ahead_ms / 1000:.3f} s ahead of the record's timestamp "
            f"(at most {max_future_ms / 1000:g} s allowed)"
        )
        return DeadLetterRow(source, "future", error, payload, received_at_ms)
    return event


def parse_batch(
    batch: InputBatch, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
) -> tuple[list[Event], list[DeadLetterRow]]:
    """Parse a whole batch, keeping partition order; `parse_record` says what is valid.

    The hot loop: a record that plainly satisfies every rule becomes an `Event` inline;
    anything else (a missing or odd field, a string `ts`, bad JSON) goes through
    `parse_record`, which decides and explains. Both paths give the same answer.
    """
    events: list[Event] = []
    dead: list[DeadLetterRow] = []
    append = events.append
    loads, new, event_types, part = orjson.loads, tuple.__new__, EVENT_TYPES, batch.part
    for offset, value, received_at_ms in zip(
        batch.offsets, batch.values, batch.timestamps_ms, strict=True
    ):
        try:
            obj = loads(value)  # type: ignore[arg-type]
            event_id, user_id, kind, page, ts = (
                obj["event_id"],
                obj["user_id"],
                obj["type"],
                obj["page"],
                obj["ts"],
            )
            amount = obj.get("value")
        except Exception:  # the full parser below says what is wrong
            amount = ts = None
        if type(ts) is str:
            try:
                ts = _parse_rfc3339(ts)
            except InvalidField:
                ts = None
        if (
            type(ts) is int
            and 0 <= ts <= MAX_TS_MS
            and ts - received_at_ms <= max_future_ms
            and type(event_id) is str
            and type(user_id) is str
            and type(page) is str
            and type(kind) is str
            and 0 < len(event_id) <= 128
            and 0 < len(user_id) <= 256
            and 0 < len(page) <= 2048
            and kind in event_types
        ):
            if amount is None:
                cents = 0
            elif (type(amount) is float or type(amount) is int) and 0 <= amount <= MAX_VALUE:
                cents = round(amount * 100)
            else:
                cents = -1
            if cents >= 0:
                # One str object per distinct page: windows and sessions keep pages for
                # long, and a million open sessions would otherwise hold a million copies.
                page = intern(page)
                record = (event_id, user_id, kind, page, ts, cents, offset, value, received_at_ms)
                append(new(Event, record))
                continue
        parsed = parse_record(value, part, offset, received_at_ms, max_future_ms)
        if type(parsed) is Event:
            append(parsed)
        else:
            dead.append(parsed)  # type: ignore[arg-type]
    return events, dead
