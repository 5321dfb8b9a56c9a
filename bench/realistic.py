"""Realistic input for the benchmarks: clickstream records as a real shop's producers send them.

    python -m bench.realistic [--events 400000] [--seed 7]   # the mix, checked against the parser

`RealisticGenerator(RealisticConfig(...))` makes Kafka records (value = JSON bytes,
key = `user_id`, record timestamp = when the event reached Kafka), deterministically
from the seed. The mix, with the defaults:

- **1,500 users** (UUID-like ids), about 120 active at a time, each active for a burst of
  about 20 events; **400 pages** with Zipf popularity (s = 1.1) over a shuffled catalogue.
- **Event times spread over 3 hours.** Records arrive at Poisson times; an event's `ts` is
  its arrival time, or up to 8 s before it for 30% of events (mostly in order per user,
  always within the flow's default 10 s allowed lateness, so never late); 0.1% are
  stragglers 30 s to 10 min behind, of which some are `late` for `page_stats`.
- **25% of `ts` as RFC 3339 strings** with an explicit offset: `Z` or `±hh:mm`
  (e.g. `+05:30`, `-08:00`, `+00:00`), milliseconds, microseconds (`.123456`, truncated
  by the parser) or whole seconds; the rest integer epoch milliseconds.
- **5% with unknown extra fields**, nested objects and arrays among them (`context`,
  `experiments`, `items`, `tags`, ...), which the parser ignores.
- **Pages up to 2,048 characters**: product, category and search paths with query strings;
  about 1 in 8 pages with non-ASCII (`/produits/été-…`, CJK, Cyrillic, emoji; with seed 7
  one is among the most popular, so 28% of events carry one), and about 1 in 20 a long
  campaign URL of 500 to 2,048 characters (one exactly 2,048), never in the top 20 ranks
  (1.2% of events). Values average about 210 bytes.
- **Event types** page_view 64%, click 26%, add_to_cart 7%, purchase 3%; every purchase
  and 40% of add_to_carts carry a `value` in cents (`49.99`; 1 in 10 a whole number).
- **0.5% malformed records**, each a dead letter with a known reason: `invalid_json`
  (truncated JSON, Latin-1 bytes, a JSON array, string or `null`, an empty value, a Kafka
  tombstone) or `invalid_event` (a missing field, `ts` without offset or as a float or a
  numeric string, an unknown type, an empty or 2,049-character page, a string, boolean or
  negative `value`, an integer `user_id`).

Each record says what the flow must make of it (`expected`: None for a valid event, or
the dead-letter reason); `python -m bench.realistic` prints the mix it made and checks
every record against the clickstream flow's parser (`dataflows.clickstream.events`).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, NamedTuple

import orjson

Expected = Literal["invalid_json", "invalid_event"] | None

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
START_MS = int((datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc) - _EPOCH).total_seconds()) * 1000
MAX_PAGE_CHARS = 2_048


@dataclass(frozen=True)
class RealisticConfig:
    """The mix (see the module docstring); `lateness_ms` is the flow's allowed lateness."""

    seed: int = 7
    events: int = 400_000
    users: int = 1_500
    pages: int = 400
    zipf_s: float = 1.1
    active_users: int = 120
    mean_burst: float = 20.0
    start_ms: int = START_MS
    span_ms: int = 3 * 3_600_000
    lateness_ms: int = 10_000
    jittered_ratio: float = 0.30
    max_jitter_ms: int = 8_000  # below lateness_ms - 1 s (whole-second RFC 3339 floors ts)
    straggler_ratio: float = 0.001
    rfc3339_ratio: float = 0.25
    extra_fields_ratio: float = 0.05
    malformed_ratio: float = 0.005

    def __post_init__(self) -> None:
        if self.events <= 0 or self.users <= 0 or self.pages <= 0 or self.active_users <= 0:
            raise ValueError(f"invalid realistic configuration: {self}")
        if self.max_jitter_ms + 1_000 > self.lateness_ms:
            raise ValueError("max_jitter_ms must stay 1 s under lateness_ms: no on-time late")


class RealisticRecord(NamedTuple):
    """One Kafka record, and what the flow must make of it."""

    n: int
    key: bytes
    value: bytes | None
    timestamp_ms: int
    expected: Expected


# --- the catalogue -----------------------------------------------------------------------

_CATEGORIES = ("shoes", "running", "kitchen", "garden", "toys", "books", "outdoor", "audio")
_NON_ASCII = (
    "/produits/été-{i}/chaussures-légères",
    "/catégorie/{i}/naïve-crème-brûlée",
    "/商品/{i}/限定版-セール",
    "/カテゴリー/{i}/おすすめ",
    "/категория/{i}/кроссовки-для-бегунов",
    "/produkte/{i}/größe-ß-übergröße",
    "/deals/{i}/🎉-flash-sale-🛒",
    "/영화/{i}/특가",
)
_SEARCH_TERMS = ("running shoes", "café table", "usb-c cable", "lego", "日本 茶", "größe 42")


def _long_page(rng: random.Random, i: int, length: int) -> str:
    """A campaign URL of `length` characters (tracking parameters, an encoded blob)."""
    head = f"/landing/{i}?utm_source=newsletter&utm_medium=email&utm_campaign=black-friday-{i}"
    if rng.random() < 0.3:
        head += "&titre=soldes-d'été-🎁"
    blob = "".join(rng.choices(_BLOB_CHARS, k=length))
    return (head + "&ref=" + blob)[:length]


_BLOB_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def catalogue(rng: random.Random, pages: int) -> list[str]:
    """`pages` distinct page strings, shuffled: list position is popularity rank. The
    first long one is exactly `MAX_PAGE_CHARS` long, the limit the parser accepts."""
    names: list[str] = []
    for i in range(pages):
        r = rng.random()
        if r < 0.05:
            long_pages = sum(name.startswith("/landing/") for name in names)
            length = MAX_PAGE_CHARS if long_pages == 0 else rng.randrange(500, MAX_PAGE_CHARS)
            names.append(_long_page(rng, i, length))
        elif r < 0.175:
            names.append(rng.choice(_NON_ASCII).format(i=i))
        elif r < 0.30:
            term = rng.choice(_SEARCH_TERMS).replace(" ", "+")
            names.append(f"/search?q={term}&page={i % 7 + 1}&sort=relevance&id={i}")
        elif r < 0.45:
            category = rng.choice(_CATEGORIES)
            names.append(f"/category/{category}/{i}?page={i % 5 + 1}")
        else:
            variant = "" if rng.random() < 0.6 else f"?color={rng.choice(('red', 'blue'))}"
            names.append(f"/products/sku-{10_000 + i}{variant}")
    rng.shuffle(names)
    # Long campaign URLs are never among the most popular pages: they would dominate the
    # bytes. Each one in the top ranks swaps with a short page further down.
    short_below = [i for i in range(_TOP_RANKS, pages) if not _is_long(names[i])]
    for rank in range(min(_TOP_RANKS, pages)):
        if _is_long(names[rank]) and short_below:
            other = short_below.pop(rng.randrange(len(short_below)))
            names[rank], names[other] = names[other], names[rank]
    return names


_TOP_RANKS = 20


def _is_long(page: str) -> bool:
    return len(page) >= 500


# --- timestamps ----------------------------------------------------------------------------

_OFFSETS_MIN = (60, 120, -300, -480, 330, 540, -210, 0, 345, -180)


def rfc3339(rng: random.Random, ts_ms: int) -> str:
    """`ts_ms` as RFC 3339 with an explicit offset, in one of the forms clients write.

    Whole seconds floor the time; microseconds append digits the parser truncates.
    """
    moment = _EPOCH + timedelta(milliseconds=ts_ms)
    r = rng.random()
    offset = 0 if r < 0.55 else rng.choice(_OFFSETS_MIN)
    local = moment + timedelta(minutes=offset)
    form = rng.random()
    if form < 0.55:
        fraction = f".{ts_ms % 1000:03d}"
    elif form < 0.85:
        fraction = f".{ts_ms % 1000:03d}{rng.randrange(1000):03d}"
    else:
        fraction = ""
    if r < 0.55:
        suffix = "Z"
    else:
        sign = "-" if offset < 0 else "+"
        suffix = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction + suffix


# --- extra fields --------------------------------------------------------------------------


def _extras(rng: random.Random) -> dict[str, object]:
    """One to three fields the contract does not know, nested ones among them."""
    pool: list[tuple[str, Callable[[], object]]] = [
        (
            "context",
            lambda: {
                "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
                "screen": {"w": rng.choice((390, 1280, 1920)), "h": 844, "dpr": 3.0},
                "locale": rng.choice(("fr-FR", "ja-JP", "de-DE", "en-US")),
            },
        ),
        (
            "experiments",
            lambda: [{"id": f"exp-{rng.randrange(40)}", "variant": rng.choice("AB")}] * 2,
        ),
        ("items", lambda: [{"sku": f"sku-{rng.randrange(10**5)}", "qty": 2, "price": 19.99}]),
        ("tags", lambda: ["sale", "🔥", 3, None, True, {"k": []}]),
        ("referrer", lambda: "https://www.google.com/search?q=chaussures+légères"),
        ("schema_version", lambda: rng.choice((2, 3, "3.1"))),
        ("props", lambda: {"a": {"b": {"c": [1, 2.5, {"d": None}]}}}),
    ]
    return {name: make() for name, make in rng.sample(pool, rng.randrange(1, 4))}


# --- malformed records ---------------------------------------------------------------------

Breaker = Callable[[random.Random, dict[str, object], bytes], "bytes | None"]


def _invalid_json(rng: random.Random, event: dict[str, object], value: bytes) -> bytes | None:
    form = rng.randrange(8)
    if form == 0:
        return value[: rng.randrange(1, len(value) - 1)]  # truncated
    if form == 1:
        return value.replace(b'"page":"', b'"page":"caf\xe9-', 1)  # Latin-1, not UTF-8
    if form == 2:
        return b"[" + value + b"]"  # a batch of one where one event was expected
    if form == 3:
        return orjson.dumps(value.decode())  # encoded twice: a JSON string
    if form == 4:
        return rng.choice((b"null", b"42", b"true"))
    if form == 5:
        return b""
    if form == 6:
        return None  # a tombstone
    return repr(event).encode()  # a Python dict: single quotes


def _invalid_event(rng: random.Random, event: dict[str, object], value: bytes) -> bytes | None:
    form = rng.randrange(10)
    if form == 0:
        del event[rng.choice(("event_id", "user_id", "type", "page", "ts"))]
    elif form == 1:
        event["ts"] = "2026-11-02T10:15:30.250"  # no offset
    elif form == 2:
        event["ts"] = rng.choice((1.7940e12, str(START_MS)))  # float, numeric string
    elif form == 3:
        event["type"] = rng.choice(("refund", "PageView", ""))
    elif form == 4:
        event["page"] = rng.choice(("", "/" + "x" * MAX_PAGE_CHARS))
    elif form == 5:
        event["value"] = rng.choice(("12.50", True, -5.0, 2e9))
    elif form == 6:
        event["user_id"] = 4242
    elif form == 7:
        event["event_id"] = "e" * 129
    elif form == 8:
        event["ts"] = -1
    else:
        event["ts"] = None
    return orjson.dumps(event)


_BREAKERS: tuple[tuple[Breaker, Expected], ...] = (
    (_invalid_json, "invalid_json"),
    (_invalid_event, "invalid_event"),
)


# --- the generator -------------------------------------------------------------------------


class RealisticGenerator:
    """Records in arrival order; the same config gives the same records."""

    def __init__(self, config: RealisticConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        rng = self._rng
        self._users = [self._uuid() for _ in range(config.users)]
        self._pages = catalogue(rng, config.pages)
        self._cum = list(
            itertools.accumulate(1.0 / (rank + 1) ** config.zipf_s for rank in range(config.pages))
        )
        self._active = [self._burst() for _ in range(config.active_users)]
        self._mean_interval = config.span_ms / config.events
        self._clock = float(config.start_ms)

    def _uuid(self) -> str:
        h = f"{self._rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def _burst(self) -> list[int]:
        rng = self._rng
        return [
            rng.randrange(self.config.users),
            1 + int(rng.expovariate(1 / self.config.mean_burst)),
        ]

    def _user(self) -> str:
        slot = self._rng.randrange(len(self._active))
        user, left = self._active[slot]
        if left <= 1:
            self._active[slot] = self._burst()
        else:
            self._active[slot][1] = left - 1
        return self._users[user]

    def _kind(self) -> str:
        r = self._rng.random()
        if r < 0.03:
            return "purchase"
        if r < 0.10:
            return "add_to_cart"
        if r < 0.36:
            return "click"
        return "page_view"

    def _amount(self) -> float | int:
        rng = self._rng
        cents = min(max(round(rng.lognormvariate(3.8, 0.9) * 100), 50), 500_000)
        return cents // 100 if rng.random() < 0.1 else cents / 100

    def _event_time(self, arrival_ms: int) -> int:
        rng, config = self._rng, self.config
        r = rng.random()
        if r < config.straggler_ratio:
            return arrival_ms - rng.randrange(30_000, 600_000)
        if r < config.straggler_ratio + config.jittered_ratio:
            return arrival_ms - rng.randrange(config.max_jitter_ms + 1)
        return arrival_ms

    def record(self, n: int) -> RealisticRecord:
        rng, config = self._rng, self.config
        self._clock += rng.expovariate(1 / self._mean_interval)
        arrival_ms = int(self._clock)
        user_id = self._user()
        kind = self._kind()
        ts = self._event_time(arrival_ms)
        event: dict[str, object] = {}
        extras = _extras(rng) if rng.random() < config.extra_fields_ratio else {}
        if extras and rng.random() < 0.5:  # unknown fields first, as some SDKs write them
            event.update(extras)
            extras = {}
        event["event_id"] = self._uuid()
        event["user_id"] = user_id
        event["type"] = kind
        event["page"] = self._pages[bisect.bisect_left(self._cum, rng.random() * self._cum[-1])]
        event["ts"] = rfc3339(rng, ts) if rng.random() < config.rfc3339_ratio else ts
        if kind == "purchase" or (kind == "add_to_cart" and rng.random() < 0.4):
            event["value"] = self._amount()
        event.update(extras)
        value: bytes | None = orjson.dumps(event)
        expected: Expected = None
        if rng.random() < config.malformed_ratio:
            breaker, expected = rng.choice(_BREAKERS)
            value = breaker(rng, dict(event), value)  # type: ignore[arg-type]
        return RealisticRecord(n, user_id.encode(), value, arrival_ms, expected)

    def __iter__(self) -> Iterator[RealisticRecord]:
        return (self.record(n) for n in range(self.config.events))


def expected_outcomes(records: list[RealisticRecord]) -> dict[str, int]:
    """How many records the flow must count as events, and reject per reason."""
    counts: Counter[str] = Counter(record.expected or "valid" for record in records)
    return {"valid": counts["valid"], "invalid_json": 0, "invalid_event": 0, **counts}


def describe(records: list[RealisticRecord]) -> dict[str, object]:
    """The mix actually made, measured on the records (for the check and the report)."""
    valid = [orjson.loads(r.value) for r in records if r.expected is None and r.value]
    pages = {event["page"] for event in valid}
    lengths = [len(r.value) for r in records if r.value is not None]
    return {
        "records": len(records),
        "users": len({event["user_id"] for event in valid}),
        "pages": len(pages),
        "rfc3339_ts": sum(type(e["ts"]) is str for e in valid) / len(valid),
        "extra_fields": sum(len(e.keys() - _KNOWN) > 0 for e in valid) / len(valid),
        "non_ascii_page_events": sum(not e["page"].isascii() for e in valid) / len(valid),
        "max_page_chars": max(len(page) for page in pages),
        "long_page_events": sum(_is_long(e["page"]) for e in valid) / len(valid),
        "mean_value_bytes": sum(lengths) / len(lengths),
        "types": dict(Counter(e["type"] for e in valid).most_common()),
        "outcomes": expected_outcomes(records),
        "event_time_span_h": (max(r.timestamp_ms for r in records) - records[0].timestamp_ms)
        / 3_600_000,
    }


_KNOWN = frozenset(("event_id", "user_id", "type", "page", "ts", "value"))


def check_against_parser(records: list[RealisticRecord]) -> list[str]:
    """Records whose parse outcome differs from what the generator meant (empty: none),
    by the clickstream flow's own schema (run from the repository root)."""
    from dataflows.clickstream import events
    from waxhouse.rows import DeadLetterRow

    wrong = []
    for record in records:
        parsed = events.parse_record(record.value, "realistic/0", record.n, record.timestamp_ms)
        got = parsed.reason if isinstance(parsed, DeadLetterRow) else None
        if got != record.expected:
            wrong.append(
                f"record {record.n}: meant {record.expected}, parsed {got}: {record.value!r:.200}"
            )
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    records = list(RealisticGenerator(RealisticConfig(seed=args.seed, events=args.events)))
    for name, value in describe(records).items():
        print(f"{name:>24}: {value:.3f}" if isinstance(value, float) else f"{name:>24}: {value}")
    wrong = check_against_parser(records)
    if wrong:
        raise SystemExit(
            "\n".join([f"{len(wrong)} records parse otherwise than meant:", *wrong[:20]])
        )
    print(f"every record parses as meant ({len(records):,})")


if __name__ == "__main__":
    main()
