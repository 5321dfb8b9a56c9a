"""The built-in synthetic clickstream: embedded mode's source and the tests' input.

`ClickstreamGenerator` is pure and deterministic: the same config gives the same records,
and a pickled generator resumes exactly where it stopped. It models a shop:

- Zipf-like page popularity over a catalogue with some unicode page names;
- users who come back in bursts, so they have several sessions;
- rare purchases with 2-decimal values;
- event times that trail the record time by up to `max_disorder_ms` (out of order, within
  the default allowed lateness), some written as RFC 3339 strings;
- about `malformed_ratio` of records broken in the ways real producers break them.

`GeneratorSource` is the Bytewax source around it.
"""

from __future__ import annotations

import bisect
import pickle
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.records import InputBatch, SourceItem, SourceRecord

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
    value: bytes
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
        rng = self._rng
        kind = rng.randrange(14)
        broken = dict(event)
        if kind == 0:
            return value[: rng.randrange(1, len(value) - 1)]  # truncated JSON
        if kind == 1:
            return rng.randbytes(rng.randrange(1, 64))  # random bytes
        if kind == 2:
            return b'{"event_id": "\xff\xfe", "user_id": "x"}'  # invalid UTF-8
        if kind == 3:
            return rng.choice([b"[1, 2, 3]", b"null", b'"just a string"', b"42"])
        if kind == 4:
            return b"[" * 5000 + b"]" * 5000  # nesting deeper than any parser allows
        if kind == 5:
            del broken["user_id"]
        elif kind == 6:
            broken["ts"] = "2026-01-01T10:00:00"  # no offset
        elif kind == 7:
            broken["ts"] = 1_767_225_600_000.5  # a float is not integer milliseconds
        elif kind == 8:
            broken["type"] = "refund"
        elif kind == 9:
            broken["value"] = -rng.randrange(1, 1000) / 100
        elif kind == 10:
            broken["value"] = True
        elif kind == 11:
            broken["page"] = "/" + "x" * 3000
        elif kind == 12:
            broken["event_id"] = ""
        else:
            broken["value"] = "12.50"
        return orjson.dumps(broken)


class _GeneratorPartition(StatefulSourcePartition[tuple[str, SourceItem], bytes]):
    def __init__(self, generator: ClickstreamGenerator, rate: float, batch_size: int) -> None:
        self._gen = generator
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
        records = [SourceRecord(r.n, r.value, r.timestamp_ms) for r in self._gen.take(count)]
        batch = InputBatch(GENERATOR_PART, f"{GENERATOR_PART}/", records)
        return [(GENERATOR_PART, batch)]

    def next_awake(self) -> datetime | None:
        if self._awake_at is None:
            return None
        delay = max(0.0, self._awake_at - time.monotonic())
        return datetime.now(timezone.utc) + timedelta(seconds=delay)

    def snapshot(self) -> bytes:
        return pickle.dumps(self._gen)


class GeneratorSource(FixedPartitionedSource[tuple[str, SourceItem], bytes]):
    """One partition of generated records; resumes from its pickled generator."""

    def __init__(self, config: GeneratorConfig, rate: float = 0.0, batch_size: int = 5_000):
        self._config = config
        self._rate = rate
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [GENERATOR_PART]

    def build_part(
        self, step_id: str, for_part: str, resume_state: bytes | None
    ) -> _GeneratorPartition:
        if resume_state is None:
            generator = ClickstreamGenerator(self._config)
        else:
            generator = pickle.loads(resume_state)
        return _GeneratorPartition(generator, self._rate, self._batch_size)
