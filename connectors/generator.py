"""The built-in synthetic clickstream: embedded mode's source and the tests' input.

`ClickstreamGenerator` is pure and deterministic: the same config gives the same records,
and a pickled generator resumes exactly where it stopped. It models a shop:

- Zipf-like page popularity over a catalogue with some unicode page names;
- users who come back in bursts, so they have several sessions;
- rare purchases with 2-decimal values;
- event times that trail the record time by up to `max_disorder_ms` (out of order, within
  the default allowed lateness), some written as RFC 3339 strings;
- about `malformed_ratio` of records broken in the ways real producers break them
  (`MALFORMED_KINDS`: bad bytes, bad JSON, bad fields, 200-900 KB strings).

`GeneratorSource` is the Bytewax source around it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple, Protocol

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from waxhouse.records import InputBatch, SourceItem

logger = logging.getLogger(__name__)

GENERATOR_PART = "generator"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 42
    events: int = 200_000  # 0 = endless
    users: int = 20_000
    pages: int = 2_000
    active_users: int = 300
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    mean_interval_ms: float = 100.0
    max_disorder_ms: int = 5_000
    malformed_ratio: float = 0.01

    def __post_init__(self) -> None:
        if self.events < 0 or self.users <= 0 or self.pages <= 0 or self.active_users <= 0:
            raise ValueError(f"invalid generator configuration: {self}")


class GeneratedRecord(NamedTuple):
    n: int
    key: bytes | None
    value: bytes | None  # None: a tombstone (the registry has some)
    timestamp_ms: int


def page_name(i: int) -> str:
    """The catalogue: mostly ASCII paths, every seventh one with unicode in it."""
    if i % 7 == 3:
        return f"/catégorie/{i}/naïve-日本語-€"
    if i % 11 == 5:
        return f"/produkte/{i}/größe-ß-🙂"
    return f"/products/{i}"


class ClickstreamGenerator:
    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.n = 0
        self._rng = random.Random(config.seed)
        self._clock = float(config.start_ms)
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(config.pages)]
        self._cum_weights: list[float] = []
        total = 0.0
        for weight in weights:
            total += weight
            self._cum_weights.append(total)
        # active user -> events left in the current burst
        self._active: list[list[int]] = [self._new_burst() for _ in range(config.active_users)]

    @property
    def exhausted(self) -> bool:
        return 0 < self.config.events <= self.n

    def _new_burst(self) -> list[int]:
        return [self._rng.randrange(self.config.users), 1 + int(self._rng.expovariate(1 / 12))]

    def _page(self) -> str:
        pick = self._rng.random() * self._cum_weights[-1]
        return page_name(bisect.bisect_left(self._cum_weights, pick))

    def next_record(self) -> GeneratedRecord:
        rng = self._rng
        n = self.n
        self.n += 1
        self._clock += rng.expovariate(1 / self.config.mean_interval_ms)
        received_ms = int(self._clock)
        slot = rng.randrange(len(self._active))
        user_n, left = self._active[slot]
        if left <= 1:
            self._active[slot] = self._new_burst()
        else:
            self._active[slot][1] = left - 1
        user_id = f"user-{user_n}"
        disorder = rng.randrange(self.config.max_disorder_ms + 1) if rng.random() < 0.3 else 0
        ts = max(0, received_ms - disorder)
        event: dict[str, object] = {
            "event_id": f"ev-{self.config.seed}-{n}",
            "user_id": user_id,
            "type": self._type(),
            "page": self._page(),
            "ts": self._ts_form(ts),
        }
        if event["type"] == "purchase":
            event["value"] = rng.randrange(100, 50_000) / 100 if rng.random() < 0.9 else 20
        elif event["type"] == "add_to_cart" and rng.random() < 0.5:
            event["value"] = rng.randrange(100, 9_999) / 100
        if rng.random() < 0.05:
            event["referrer"] = "https://example.com/?q=ünïcode"
        value = orjson.dumps(event)
        if rng.random() < self.config.malformed_ratio:
            value = self._break(event, value)
        return GeneratedRecord(n, user_id.encode(), value, received_ms)

    def take(self, count: int) -> list[GeneratedRecord]:
        """Up to `count` next records (fewer at the end of a finite stream)."""
        if self.config.events:
            count = min(count, self.config.events - self.n)
        return [self.next_record() for _ in range(max(count, 0))]

    def _type(self) -> str:
        r = self._rng.random()
        if r < 0.02:
            return "purchase"
        if r < 0.07:
            return "add_to_cart"
        if r < 0.32:
            return "click"
        return "page_view"

    def _ts_form(self, ts: int) -> int | str:
        r = self._rng.random()
        if r < 0.85:
            return ts
        moment = _EPOCH + timedelta(milliseconds=ts)
        if r < 0.95:
            # sub-millisecond digits are truncated by the parser
            micros = self._rng.randrange(1000)
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + f"{micros:03d}Z"
        local = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
        return local.isoformat(timespec="milliseconds")

    def _break(self, event: dict[str, object], value: bytes) -> bytes:
        """`value` broken in one of the `MALFORMED_KINDS`, picked by weight."""
        breaker = self._rng.choices(_BREAKERS, cum_weights=_BREAKER_CUM_WEIGHTS)[0]
        return breaker(self._rng, dict(event), value)


# ---------------------------------------------------------------------------
# Malformed records
#
# Each breaker turns one valid event (as a dict, and as its JSON bytes) into garbage. Every
# kind is garbage to orjson (the pipeline) and to stdlib `json` (the tests' oracle) alike,
# for the same reason and, for `invalid_event`, the same field. Kinds where the two parsers
# disagree are left out on purpose: `NaN`/`Infinity` and numbers that overflow a double
# (stdlib accepts them), lone surrogate escapes such as "\ud800" (stdlib accepts them), and
# nesting near either parser's depth limit (orjson 1024 levels, stdlib about the recursion
# limit). Integers beyond 64 bits are parsed differently (orjson: float, stdlib: int) but
# are rejected as `ts` by both, so they are in.

Breaker = Callable[[random.Random, dict[str, object], bytes], bytes]
REQUIRED_FIELDS = ("event_id", "user_id", "type", "page", "ts")
_LIMITS = {"event_id": 128, "user_id": 256, "page": 2048}
# Huge strings stay under Kafka's default 1 MB `message.max.bytes` with the rest of the event.
HUGE_MIN_CHARS, HUGE_MAX_CHARS = 200_000, 900_000
_INVALID_UTF8 = (
    b"\xff",  # never valid
    b"\xfe\xff",  # a UTF-16 byte order mark
    b"\xc3\x28",  # a lead byte without its continuation
    b"\xc0\xaf",  # overlong encoding of "/"
    b"\xed\xa0\x80",  # an encoded surrogate (U+D800)
    b"\xf5\x80\x80\x80",  # beyond U+10FFFF
    b"\xe2\x82",  # a truncated three-byte sequence
    b"\xe9",  # Latin-1 "é"
)


def _into_page(value: bytes, inserted: bytes) -> bytes:
    """`value` with `inserted` at the start of the page string (orjson writes no spaces)."""
    return value.replace(b'"page":"', b'"page":"' + inserted, 1)


def _truncated(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    return value[: rng.randrange(1, len(value) - 1)]


def _random_bytes(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    return rng.randbytes(rng.randrange(1, 512))


def _invalid_utf8(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    form = rng.randrange(3)
    if form == 0:
        return _into_page(value, rng.choice(_INVALID_UTF8))
    if form == 1:
        return value.decode().encode("utf-16")  # right JSON, wrong encoding
    return b'{"event_id": "\xff\xfe", "user_id": "x"}'


def _not_an_object(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    form = rng.randrange(4)
    if form == 0:
        return rng.choice([b"[1, 2, 3]", b"null", b'"just a string"', b"42", b"true", b"[]"])
    if form == 1:
        return b"[" + value + b"]"  # a batch of one where one event was expected
    if form == 2:
        return orjson.dumps(value.decode())  # JSON encoded twice: a string
    return b"-0.5"


def _deep_nesting(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    depth = rng.randrange(2_000, 6_000)  # well past both parsers' limits
    form = rng.randrange(3)
    if form == 0:
        return b"[" * depth + b"]" * depth
    if form == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    # an otherwise valid event with a deeply nested extra field
    return value[:-1] + b',"meta":' + b"[" * depth + b"]" * depth + b"}"


def _bad_syntax(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    form = rng.randrange(10)
    if form == 0:
        return repr(event).encode()  # a Python dict: single quotes
    if form == 1:
        return value[:-1] + b",}"  # trailing comma
    if form == 2:
        return _into_page(value, bytes([rng.randrange(0x20)]))  # raw control character
    if form == 3:
        return b"\xef\xbb\xbf" + value  # UTF-8 byte order mark
    if form == 4:
        return value + value  # two records in one
    if form == 5:
        return value + b" trailing garbage"
    if form == 6:
        return rng.choice([b"", b" ", b"\n\t \r\n"])  # empty or blank
    if form == 7:
        return _into_page(value, b"\\x41")  # an escape JSON does not have
    if form == 8:
        return value.replace(b'"event_id":', b"event_id:", 1)  # unquoted key
    return value[:-1] + b"/* comment */}"


def _missing_field(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    form = rng.randrange(len(REQUIRED_FIELDS) + 2)
    if form < len(REQUIRED_FIELDS):
        del event[REQUIRED_FIELDS[form]]
        return orjson.dumps(event)
    return b"{}" if form == len(REQUIRED_FIELDS) else b'{"message": "hello"}'


def _wrong_type(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    ts = event["ts"]
    wrong_by_field: list[tuple[str, list[object]]] = [
        ("event_id", [12345, None, ["ev-1"], 1.5]),
        ("user_id", [42, True, {"id": "user-1"}, None]),
        ("type", [3, None, True, 0.5, ["click"], {"a": 1}]),
        ("page", [404, ["/a"], None, False]),
        ("ts", [True, None, [ts], {"ms": ts}, 1_767_225_600_000.5, "1767225600000"]),
        ("value", [True, "12.50", [1], {"amount": 1}]),
    ]
    field, wrong = rng.choice(wrong_by_field)
    event[field] = rng.choice(wrong)
    return orjson.dumps(event)


def _bad_value(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    bad_by_field: list[tuple[str, list[object]]] = [
        ("event_id", [""]),
        ("user_id", [""]),
        ("page", [""]),
        ("type", ["refund", "", "CLICK", "page-view"]),
        (
            "ts",
            [
                "2026-01-01T10:00:00",  # no offset
                "2026-02-30T12:00:00Z",  # no such day
                "yesterday",
                "",
                -1,
                253_402_300_800_000,  # after 9999-12-31
                10**30,  # beyond 64 bits
            ],
        ),
        ("value", [-0.01, -12.5, 1e10, 1_000_000_001]),
    ]
    field, bad = rng.choice(bad_by_field)
    chosen = rng.choice(bad)
    if isinstance(chosen, int) and chosen >= 2**64:  # orjson writes no such integers
        event[field] = 0
        return orjson.dumps(event).replace(f'"{field}":0'.encode(), f'"{field}":{chosen}'.encode())
    event[field] = chosen
    return orjson.dumps(event)


def _too_long(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    field = rng.choice(list(_LIMITS))
    limit = _LIMITS[field]
    length = rng.choice([limit + 1, rng.randrange(limit + 2, 10 * limit)])
    event[field] = ("/ünï-" * length)[:length]
    return orjson.dumps(event)


def _huge_string(rng: random.Random, event: dict[str, object], value: bytes) -> bytes:
    field = rng.choice(list(_LIMITS))
    length = rng.randrange(HUGE_MIN_CHARS, HUGE_MAX_CHARS)
    event[field] = ("huge-" * (length // 5 + 1))[:length]
    return orjson.dumps(event)


# (breaker, weight). Huge strings are rare (1 in 80 bad records, 12-17 MB at the default 1%
# of 200,000 records) yet enough for a test to see a flow that kept them.
MALFORMED_KINDS: tuple[tuple[Breaker, int], ...] = (
    (_truncated, 16),
    (_random_bytes, 12),
    (_invalid_utf8, 16),
    (_not_an_object, 14),
    (_deep_nesting, 6),
    (_bad_syntax, 16),
    (_missing_field, 20),
    (_wrong_type, 24),
    (_bad_value, 24),
    (_too_long, 10),
    (_huge_string, 2),
)
_BREAKERS = [breaker for breaker, _ in MALFORMED_KINDS]
_BREAKER_CUM_WEIGHTS = list(itertools.accumulate(weight for _, weight in MALFORMED_KINDS))


class RecordGenerator(Protocol):
    """What `GeneratorSource` drives: a deterministic, picklable stream of records."""

    n: int  # records made so far

    @property
    def exhausted(self) -> bool: ...
    def take(self, count: int) -> list[GeneratedRecord]: ...


class _GeneratorPartition(StatefulSourcePartition[tuple[str, SourceItem], bytes]):
    def __init__(self, generator: RecordGenerator, part: str, rate: float, batch_size: int) -> None:
        self._gen = generator
        self._part = part
        self._rate = rate
        self._batch_size = batch_size
        self._started = time.monotonic()
        self._first_n = generator.n
        self._awake_at: float | None = None

    def next_batch(self) -> list[tuple[str, SourceItem]]:
        if self._gen.exhausted:
            raise StopIteration
        count = self._batch_size
        if self._rate > 0:
            due = int((time.monotonic() - self._started) * self._rate) - (
                self._gen.n - self._first_n
            )
            count = min(count, due)
            self._awake_at = None if count > 0 else time.monotonic() + 1 / self._rate
            if count <= 0:
                return []
        records = self._gen.take(count)
        batch = InputBatch(
            self._part,
            [r.n for r in records],
            [r.value for r in records],
            [r.timestamp_ms for r in records],
        )
        return [(self._part, batch)]

    def next_awake(self) -> datetime | None:
        if self._awake_at is None:
            return None
        delay = max(0.0, self._awake_at - time.monotonic())
        return datetime.now(timezone.utc) + timedelta(seconds=delay)

    def snapshot(self) -> bytes:
        return pickle.dumps(self._gen)


class GeneratorSource(FixedPartitionedSource[tuple[str, SourceItem], bytes]):
    """One partition of generated records, at most `rate` a second (0: unlimited);
    resumes from its pickled generator. `config`: the clickstream's generator, or `make`
    builds another one. `part` names the partition (dead letters' `source` is
    `<part>/<n>`).
    """

    def __init__(
        self,
        config: GeneratorConfig | None = None,
        rate: float = 0.0,
        batch_size: int = 5_000,
        *,
        make: Callable[[], RecordGenerator] | None = None,
        part: str = GENERATOR_PART,
    ):
        if (config is None) == (make is None):
            raise ValueError("GeneratorSource: give the clickstream's config or `make`")
        self._make = make or (lambda: ClickstreamGenerator(config or GeneratorConfig()))
        self._rate = rate
        self._batch_size = batch_size
        self._part = part

    def list_parts(self) -> list[str]:
        return [self._part]

    def build_part(
        self, step_id: str, for_part: str, resume_state: bytes | None
    ) -> _GeneratorPartition:
        generator = self._make() if resume_state is None else pickle.loads(resume_state)
        logger.info(
            "partition %s starts at record %d (%s)",
            for_part,
            generator.n,
            "resumed" if resume_state is not None else "fresh start",
        )
        return _GeneratorPartition(generator, self._part, self._rate, self._batch_size)
