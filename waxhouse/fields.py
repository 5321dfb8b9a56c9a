"""Declare an event schema in Python; get an exact, fast parser for it.

A schema maps JSON field names to field helpers, in the order the event keeps them:

    READINGS = Schema(
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
    Reading = READINGS.event_type  # bound at module level, so events pickle

Parsing is errors-as-data, as the pipeline's contract says: every record becomes either an
event (a `schema.event_type` tuple: the fields in declaration order, then the record's
`offset`, `payload` and `received_at_ms`) or a `DeadLetterRow` with a reason:

- `invalid_json`: not UTF-8 JSON, or JSON that is not an object (a missing value too);
- `invalid_event`: the first broken field rule in declaration order, then the
  `require_any` groups; the error names the field (`page: must be a string of 1 to 2048
  characters`);
- `future`: a valid event whose event time is more than `max_future_ms` ahead of its
  record's timestamp (a record without one, a negative timestamp, is not checked).

A JSON `null` in an optional field means absent, and an absent optional field takes its
`default` (None unless given). Booleans are never numbers. Unknown fields are ignored.
`parse_record` and `parse_batch` never raise on bad input.

`Schema.parse_batch` runs a loop generated for the schema (`schema.source`), which checks
and builds the common valid record inline and hands everything else to `parse_record`,
which decides and explains: both give the same answer.
"""

from __future__ import annotations

import keyword
import linecache
import re
import sys
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import orjson

from waxhouse.records import InputBatch, record_source
from waxhouse.rows import DeadLetterRow

OFFSET, PAYLOAD, RECEIVED_AT = -3, -2, -1
"""Positions of the record fields at the end of every event tuple."""
RECORD_FIELDS = ("offset", "payload", "received_at_ms")

MAX_TS_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
DEFAULT_MAX_FUTURE_MS = 3_600_000


class InvalidField(ValueError):
    """A field rule is broken; the message names the field."""


# ---------------------------------------------------------------------------
# Timestamps: integer epoch milliseconds, or RFC 3339 with an explicit offset

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d is 0-9 only: "٢٠٢٦" is not a year
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def parse_timestamp(raw: object, name: str = "ts") -> int:
    """Epoch milliseconds (0..`MAX_TS_MS`) from an integer or an RFC 3339 string with an
    explicit offset (`Z` or `±hh:mm`); sub-millisecond digits are truncated.

    >>> parse_timestamp("2026-11-26T11:15:30.2509+01:00")
    1795688130250
    """
    if type(raw) is int:
        if 0 <= raw <= MAX_TS_MS:
            return raw
        raise InvalidField(f"{name}: epoch milliseconds out of range 0..{MAX_TS_MS}")
    if isinstance(raw, str):
        return parse_rfc3339(raw, name)
    raise InvalidField(f"{name}: must be integer epoch milliseconds or an RFC 3339 string")


def parse_rfc3339(text: str, name: str = "ts") -> int:
    """Epoch milliseconds from an RFC 3339 string with an explicit offset.

    The regular expression checks the shape; C (`datetime.fromisoformat`) reads the value,
    sub-millisecond digits floored. What C declines or would misread goes through
    `_rfc3339_fields`, the reference reading, which also says what is wrong.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidField(
            f"{name}: not an RFC 3339 timestamp with an explicit offset (Z or ±hh:mm)"
        )
    zulu, off_h, off_m = match.group(8, 10, 11)
    if not zulu and (off_h > "23" or off_m > "59"):  # Python would take +00:60 as +01:00
        return _rfc3339_fields(match, name)
    try:
        ms = (datetime.fromisoformat(text) - _EPOCH) // _MILLISECOND
    except ValueError:
        return _rfc3339_fields(match, name)
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidField(f"{name}: out of range 0..{MAX_TS_MS} epoch milliseconds")
    return ms


def format_rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC with milliseconds: `2026-01-01T00:00:00.250Z`
    (what `parse_rfc3339` reads back to the same value)."""
    moment = _EPOCH + ms * _MILLISECOND
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rfc3339_fields(match: re.Match[str], name: str = "ts") -> int:
    """The reference reading of a string `_RFC3339` matched, field by field."""
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
        raise InvalidField(f"{name}: invalid date or time: {e}") from e
    if zulu:
        offset_minutes = 0
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise InvalidField(f"{name}: invalid UTC offset")
        offset_minutes = (int(off_h) * 60 + int(off_m)) * (-1 if sign == "-" else 1)
    millis = int((fraction or "0")[:3].ljust(3, "0"))
    seconds = (local.toordinal() - _EPOCH_ORDINAL) * 86_400 + (
        local.hour * 3600 + local.minute * 60 + local.second - offset_minutes * 60
    )
    ms = seconds * 1000 + millis
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidField(f"{name}: out of range 0..{MAX_TS_MS} epoch milliseconds")
    return ms


# ---------------------------------------------------------------------------
# Fields
#
# A field knows its rules twice: `read` applies them one by one and says which is broken
# (the full parser, `parse_object`); `fast_test`/`fast_value` write them as one Python
# expression over a variable holding the raw value (`obj[name]` when required,
# `obj.get(name)` when optional), inlined in the generated batch loop. Both must agree.


@dataclass(frozen=True, kw_only=True)
class Field:
    """How one JSON field is checked and what the event keeps; made by the helpers below."""

    optional: bool = False

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        """The kept value of `obj[name]`; raises `InvalidField` naming the broken rule."""
        raise NotImplementedError

    def fast_test(self, var: str) -> str:
        """A Python expression over `var` (the raw value) true when every rule plainly holds."""
        raise NotImplementedError

    def fast_value(self, var: str) -> str:
        """A Python expression for the kept value, where `fast_test(var)` holds."""
        return var

    def _either_absent(self, var: str, test: str) -> str:
        return f"({var} is None or ({test}))" if self.optional else test


@dataclass(frozen=True, kw_only=True)
class TextField(Field):
    """A JSON string of `min_length` to `max_length` characters."""

    max_length: int
    min_length: int = 1
    intern: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(
                f"text: need 0 <= min_length <= max_length, got {self.min_length}"
                f" and {self.max_length}"
            )

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        value = obj.get(name)
        if value is None:
            if self.optional:
                return None
            raise InvalidField(f"{name}: required")
        if type(value) is str and self.min_length <= len(value) <= self.max_length:
            return sys.intern(value) if self.intern else value
        raise InvalidField(
            f"{name}: must be a string of {self.min_length} to {self.max_length} characters"
        )

    def fast_test(self, var: str) -> str:
        length = f"len({var}) <= {self.max_length}"
        if self.min_length:
            length = f"{'0 <' if self.min_length == 1 else f'{self.min_length} <='} {length}"
        return self._either_absent(var, f"type({var}) is str and {length}")

    def fast_value(self, var: str) -> str:
        if not self.intern:
            return var
        return f"(None if {var} is None else intern({var}))" if self.optional else f"intern({var})"


@dataclass(frozen=True, kw_only=True)
class ChoiceField(Field):
    """A JSON string among `choices`."""

    choices: frozenset[str]

    def __post_init__(self) -> None:
        if not self.choices or not all(type(c) is str for c in self.choices):
            raise ValueError("one_of: give at least one choice, each a string")

    @property
    def _error(self) -> str:
        return f"must be one of {', '.join(sorted(self.choices))}"

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        value = obj.get(name)
        if value is None and self.optional:
            return None
        if type(value) is str and value in self.choices:
            return value
        # A missing required choice says what it may be, as the clickstream's `type` does.
        raise InvalidField(f"{name}: {self._error}")

    def fast_test(self, var: str) -> str:
        return self._either_absent(var, f"type({var}) is str and {var} in choices_{var}")


@dataclass(frozen=True, kw_only=True)
class TimestampField(Field):
    """Event time: integer epoch milliseconds or an RFC 3339 string; kept as epoch ms."""

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        if self.optional:
            value = obj.get(name)
            return None if value is None else parse_timestamp(value, name)
        if name not in obj:
            raise InvalidField(f"{name}: required")
        return parse_timestamp(obj[name], name)  # null: neither an integer nor a string

    def fast_test(self, var: str) -> str:
        # The batch loop has already read a string value with `rfc3339` (see `Schema`).
        return self._either_absent(var, f"type({var}) is int and 0 <= {var} <= {MAX_TS_MS}")


@dataclass(frozen=True, kw_only=True)
class IntegerField(Field):
    """A JSON integer (not a boolean, not a float) in `[min, max]`."""

    min: int
    max: int
    default: int | None = None

    def __post_init__(self) -> None:
        _check_bounds("integer", self.min, self.max, int)
        _check_default("integer", self.optional, self.default)
        if self.default is not None and not self.min <= self.default <= self.max:
            raise ValueError(f"integer: default {self.default} is not in [{self.min}, {self.max}]")

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        value = obj.get(name)
        if value is None:
            if self.optional:
                return self.default
            raise InvalidField(f"{name}: required")
        if type(value) is not int:
            raise InvalidField(f"{name}: must be an integer")
        if not self.min <= value <= self.max:
            raise InvalidField(f"{name}: must be between {self.min} and {self.max}")
        return value

    def fast_test(self, var: str) -> str:
        return self._either_absent(
            var, f"type({var}) is int and {self.min!r} <= {var} <= {self.max!r}"
        )

    def fast_value(self, var: str) -> str:
        if self.optional and self.default is not None:
            return f"({self.default!r} if {var} is None else {var})"
        return var


@dataclass(frozen=True, kw_only=True)
class DecimalField(Field):
    """A JSON number (not a boolean) in `[min, max]`, kept as `round(v * 10**places)`.

    `default` is what an absent value keeps, already in those units (an integer).
    """

    places: int
    min: float
    max: float
    default: int | None = None

    def __post_init__(self) -> None:
        if type(self.places) is not int or not 0 <= self.places <= 18:
            raise ValueError(f"decimal: places must be an integer 0..18, got {self.places!r}")
        _check_bounds("decimal", self.min, self.max, (int, float))
        _check_default("decimal", self.optional, self.default)

    @property
    def scale(self) -> int:
        return 10**self.places

    def read(self, name: str, obj: Mapping[str, object]) -> object:
        value = obj.get(name)
        if value is None:
            if self.optional:
                return self.default
            raise InvalidField(f"{name}: required")
        if type(value) is not int and type(value) is not float:
            raise InvalidField(f"{name}: must be a number")
        if not self.min <= value <= self.max:
            raise InvalidField(
                f"{name}: must be between {_number_text(self.min)} and {_number_text(self.max)}"
            )
        return round(value * self.scale)

    def fast_test(self, var: str) -> str:
        return self._either_absent(
            var,
            f"(type({var}) is float or type({var}) is int)"
            f" and {self.min!r} <= {var} <= {self.max!r}",
        )

    def fast_value(self, var: str) -> str:
        kept = f"round({var} * {self.scale})" if self.places else f"round({var})"
        if self.optional:
            return f"({self.default!r} if {var} is None else {kept})"
        return kept


def _check_bounds(helper: str, low: object, high: object, kinds: type | tuple[type, ...]) -> None:
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, kinds) or bound != bound:
            raise ValueError(f"{helper}: bounds must be numbers, got {bound!r}")
        if bound in (float("inf"), float("-inf")):
            raise ValueError(f"{helper}: bounds must be finite, got {bound!r}")
    if not low <= high:  # type: ignore[operator]
        raise ValueError(f"{helper}: min {low!r} is greater than max {high!r}")


def _check_default(helper: str, optional: bool, default: object) -> None:
    if default is None:
        return
    if type(default) is not int:
        raise ValueError(f"{helper}: default must be an integer, got {default!r}")
    if not optional:
        raise ValueError(f"{helper}: a default is for an optional field (optional=True)")


def _number_text(x: float) -> str:
    """A bound as people write it: 200, -100, 0.5, 1e9."""
    if isinstance(x, float) and x.is_integer():
        digits = str(abs(int(x)))
        if len(digits) > 6 and len(digits.rstrip("0")) == 1:
            return f"{'-' if x < 0 else ''}{digits[0]}e{len(digits) - 1}"
        return str(int(x))
    return repr(x)


def text(
    max_length: int, *, min_length: int = 1, optional: bool = False, intern: bool = False
) -> TextField:
    """A JSON string of `min_length` to `max_length` characters.

    `intern=True` keeps one `str` per distinct value (`sys.intern`), for values repeated
    across many events that windows keep for long, such as pages.
    """
    return TextField(max_length=max_length, min_length=min_length, optional=optional, intern=intern)


def one_of(*choices: str, optional: bool = False) -> ChoiceField:
    """A JSON string among `choices`; the error lists them sorted."""
    return ChoiceField(choices=frozenset(choices), optional=optional)


def timestamp(*, optional: bool = False) -> TimestampField:
    """Integer epoch milliseconds 0..`MAX_TS_MS`, or an RFC 3339 string with an explicit
    offset (`Z` or `±hh:mm`); kept as epoch milliseconds, sub-millisecond digits truncated."""
    return TimestampField(optional=optional)


def integer(
    *, min: int, max: int, optional: bool = False, default: int | None = None
) -> IntegerField:
    """A JSON integer (not a boolean, not a float) in `[min, max]`.

    `default` (with `optional=True`) is what an absent or null value keeps.
    """
    return IntegerField(min=min, max=max, optional=optional, default=default)


def decimal(
    places: int, *, min: float, max: float, optional: bool = False, default: int | None = None
) -> DecimalField:
    """A JSON number (not a boolean) in `[min, max]`, kept as the integer
    `round(v * 10**places)`: `decimal(2, ...)` keeps 21.5 as 2150 hundredths.

    `default` (with `optional=True`) is what an absent or null value keeps, in those units.
    """
    return DecimalField(places=places, min=min, max=max, optional=optional, default=default)


def money(*, max: float = 1e9) -> DecimalField:
    """An optional amount 0 <= v <= `max`, kept as integer cents `round(v * 100)`;
    missing or null means 0."""
    return DecimalField(places=2, min=0, max=max, optional=True, default=0)


# ---------------------------------------------------------------------------
# Schema

BatchParser = Callable[[InputBatch, int], tuple[list[Any], list[DeadLetterRow]]]


class Schema:
    """An event schema and its parser; see the module docstring.

    `fields` in the order events keep them; `event_time` names the required `timestamp()`
    field that windows use and the `future` rule checks; `require_any` lists groups of
    optional fields of which at least one must be present. `name` names the generated
    `event_type`, whose module is the caller's: bind it there under that name (as with
    `collections.namedtuple`) for events to pickle.
    """

    def __init__(
        self,
        fields: Mapping[str, Field],
        *,
        event_time: str,
        require_any: Sequence[Sequence[str]] = (),
        name: str = "Event",
    ) -> None:
        self.fields: Mapping[str, Field] = MappingProxyType(dict(fields))
        self.names: tuple[str, ...] = tuple(self.fields)
        for field_name, field in self.fields.items():
            _check_name(field_name)
            if not isinstance(field, Field):
                raise TypeError(f"{field_name}: not a field (use text(), timestamp(), ...)")
        if not self.names:
            raise ValueError("a schema needs at least one field")
        time_field = self.fields.get(event_time)
        if time_field is None:
            raise ValueError(f"event_time: no field {event_time!r} (fields: {self._listing()})")
        if not isinstance(time_field, TimestampField) or time_field.optional:
            raise ValueError(f"event_time: {event_time!r} must be a required timestamp() field")
        self.event_time = event_time
        self.time_index: int = self.names.index(event_time)
        self.require_any: tuple[tuple[str, ...], ...] = tuple(
            self._group(group) for group in require_any
        )
        self.event_type: type[tuple[Any, ...]] = namedtuple(  # type: ignore[misc]
            name, (*self.names, *RECORD_FIELDS), module=_caller_module()
        )
        self.event_type.__doc__ = (
            f"An event of a waxhouse schema: {', '.join(self.names)}, then its record's"
            f" {', '.join(RECORD_FIELDS)}."
        )
        self._fields = tuple(self.fields.items())
        self.source: str = self._batch_source() + "\n\n" + self._batch_source(decoded=True)
        namespace: dict[str, Any] = {
            "_loads": orjson.loads,
            "_new": tuple.__new__,
            "_event_type": self.event_type,
            "_rfc3339": parse_rfc3339,
            "_intern": sys.intern,
            "_slow": self.parse_record,
            "_choices": {n: f.choices for n, f in self._fields if isinstance(f, ChoiceField)},
        }
        filename = f"<waxhouse schema {name} at {id(self):#x}>"
        # Tracebacks through the generated loop show its lines, as attrs does.
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True), filename)
        exec(compile(self.source, filename, "exec"), namespace)
        self._parse_batch: BatchParser = namespace["parse_batch"]
        self._parse_decoded: Callable[..., tuple[list[Any], list[DeadLetterRow]]] = namespace[
            "parse_decoded"
        ]

    def __repr__(self) -> str:
        return f"Schema({self.event_type.__name__}: {', '.join(self.names)})"

    def index(self, name: str) -> int:
        """The position of field `name` (or a record field, e.g. `offset`) in an event."""
        if name in self.fields:
            return self.names.index(name)
        if name in RECORD_FIELDS:
            return len(self.names) + RECORD_FIELDS.index(name)
        raise KeyError(f"no field {name!r} in this schema (fields: {self._listing()})")

    def kind(self, name: str) -> Field:
        """The field helper `name` was declared with."""
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(
                f"no field {name!r} in this schema (fields: {self._listing()})"
            ) from None

    def parse_object(self, obj: object) -> tuple[Any, ...]:
        """The kept values of a decoded JSON object, in declaration order (no record
        fields); raises `InvalidField` for the first broken rule. For the gateway."""
        if not isinstance(obj, dict):
            raise InvalidField(f"expected a JSON object, got {type(obj).__name__}")
        values = tuple([field.read(name, obj) for name, field in self._fields])
        for group in self.require_any:
            if all(obj.get(name) is None for name in group):
                raise InvalidField(f"{', '.join(group)}: at least one is required")
        return values

    def parse_record(
        self,
        value: bytes | None,
        part: str,
        offset: int,
        received_at_ms: int,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    ) -> tuple[Any, ...] | DeadLetterRow:
        """One record's bytes -> an event, or a dead letter saying why not.

        Both are tuples: tell them apart with `type(parsed) is schema.event_type`.
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
            values = self.parse_object(obj)
        except InvalidField as e:
            return DeadLetterRow(source, "invalid_event", str(e), payload, received_at_ms)
        ahead_ms = values[self.time_index] - received_at_ms
        if received_at_ms >= 0 and ahead_ms > max_future_ms:
            error = (
                f"{self.event_time}: {ahead_ms / 1000:.3f} s ahead of the record's timestamp "
                f"(at most {max_future_ms / 1000:g} s allowed)"
            )
            return DeadLetterRow(source, "future", error, payload, received_at_ms)
        return tuple.__new__(self.event_type, (*values, offset, payload, received_at_ms))

    def parse_batch(
        self, batch: InputBatch, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    ) -> tuple[list[tuple[Any, ...]], list[DeadLetterRow]]:
        """Parse a whole batch, keeping partition order; `parse_record` says what is valid.

        Runs the loop generated for this schema (`self.source`).
        """
        return self._parse_batch(batch, max_future_ms)

    def parse_decoded(
        self,
        batch: InputBatch,
        objects: Sequence[object],
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    ) -> tuple[list[tuple[Any, ...]], list[DeadLetterRow]]:
        """`parse_batch` for records whose JSON is already decoded: `objects[i]` is
        `orjson.loads(batch.values[i])`. The same answers, without decoding again (the
        gateway decodes a request's body once, then encodes each event as its record).
        """
        return self._parse_decoded(batch, objects, max_future_ms)

    def _listing(self) -> str:
        return ", ".join(self.names)

    def _group(self, group: Sequence[str]) -> tuple[str, ...]:
        if isinstance(group, str) or not group:
            raise ValueError(f"require_any: each group is a non-empty list of names, got {group!r}")
        for name in group:
            field = self.fields.get(name)
            if field is None:
                raise ValueError(f"require_any: no field {name!r} (fields: {self._listing()})")
            if not field.optional:
                raise ValueError(f"require_any: {name!r} is required anyway; list optional fields")
        return tuple(group)

    def _batch_source(self, *, decoded: bool = False) -> str:
        """The Python source of this schema's batch loop (see `parse_batch`); `decoded`:
        of `parse_decoded`, which takes each record's object instead of decoding it."""
        time_var = f"f_{self.event_time}"
        required = [name for name, field in self._fields if not field.optional]
        optional = [name for name, field in self._fields if field.optional]
        times = [name for name, field in self._fields if isinstance(field, TimestampField)]
        choices = [name for name, field in self._fields if isinstance(field, ChoiceField)]

        read = [f"f_{n} = obj[{n!r}]" for n in required]  # a KeyError: not plainly valid
        read += [f"f_{n} = obj.get({n!r})" for n in optional]
        for n in times:
            read += [f"if type(f_{n}) is str:", f"    f_{n} = rfc3339(f_{n})"]

        # The event time first: the `except` below sets it to None to fail the test.
        tests = [
            self.fields[self.event_time].fast_test(time_var),
            f"{time_var} - received_at_ms <= max_future_ms",
        ]
        tests += [field.fast_test(f"f_{n}") for n, field in self._fields if n != self.event_time]
        tests += [
            "(" + " or ".join(f"f_{n} is not None" for n in group) + ")"
            for group in self.require_any
        ]
        kept = [field.fast_value(f"f_{n}") for n, field in self._fields]
        kept += ["offset", "value", "received_at_ms"]

        if decoded:
            head = [
                "def parse_decoded(batch, objects, max_future_ms):",
                f'    """The batch loop of Schema({", ".join(self.names)}), decoded records."""',
            ]
            loop = [
                "    for offset, value, received_at_ms, obj in zip(",
                "        batch.offsets, batch.values, batch.timestamps_ms, objects, strict=True",
                "    ):",
                "        try:",
            ]
        else:
            head = [
                "def parse_batch(batch, max_future_ms):",
                f'    """The batch loop of Schema({", ".join(self.names)})."""',
            ]
            loop = [
                "    for offset, value, received_at_ms in zip(",
                "        batch.offsets, batch.values, batch.timestamps_ms, strict=True",
                "    ):",
                "        try:",
                "            obj = loads(value)",
            ]
        lines = [
            *head,
            "    events = []",
            "    dead = []",
            "    append = events.append",
            "    loads, new, event_type, slow = _loads, _new, _event_type, _slow",
            "    rfc3339, intern = _rfc3339, _intern",
            *(f"    choices_f_{n} = _choices[{n!r}]" for n in choices),
            "    part = batch.part",
            *loop,
            *(f"            {line}" for line in read),
            "        except Exception:  # the full parser below says what is wrong",
            f"            {time_var} = None",
            "        if (",
            f"            {tests[0]}",
            *(f"            and {test}" for test in tests[1:]),
            "        ):",
            "            append(new(event_type, (",
            *(f"                {value}," for value in kept),
            "            )))",
            "            continue",
            "        parsed = slow(value, part, offset, received_at_ms, max_future_ms)",
            "        if type(parsed) is event_type:",
            "            append(parsed)",
            "        else:",
            "            dead.append(parsed)",
            "    return events, dead",
        ]
        return "\n".join(lines) + "\n"


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r}: a field name must be a Python identifier (not a keyword)")
    if name.startswith("_"):
        raise ValueError(f"{name!r}: a field name must not start with an underscore")
    if name in RECORD_FIELDS:
        raise ValueError(f"{name!r}: the name of a record field ({', '.join(RECORD_FIELDS)})")


def _caller_module() -> str:
    """The module that declared the schema (where its event type is to be bound)."""
    try:
        return str(sys._getframe(2).f_globals.get("__name__", "__main__"))
    except (AttributeError, ValueError):
        return "__main__"
