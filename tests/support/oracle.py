"""An independent oracle: the contract's tables computed in plain Python from the records.

It shares no code with the pipeline: stdlib `json`, `datetime.fromisoformat`, sorting.
An event more than `max_future_ms` ahead of its record's timestamp is a `future` dead
letter. It assumes no record is late (every event at most the allowed lateness behind its
partition's newest event), which the tests' inputs guarantee.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from waxhouse.connectors.generator import GeneratedRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WINDOW_MS, GAP_MS = 60_000, 1_800_000
MAX_FUTURE_MS = 3_600_000
DEDUP_MS = 600_000

TYPES = ("page_view", "click", "add_to_cart", "purchase")


class Invalid(Exception):
    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason, field)
        self.reason, self.field = reason, field


def oracle_ts(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise Invalid("invalid_event", "ts")
    if isinstance(raw, int):
        if not 0 <= raw <= 253402300799999:
            raise Invalid("invalid_event", "ts")
        return raw
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as e:
        raise Invalid("invalid_event", "ts") from e
    if moment.tzinfo is None or len(raw) < 20:
        raise Invalid("invalid_event", "ts")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def oracle_object(raw: bytes) -> dict:
    """A record's value as a JSON object, or `invalid_json`."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Invalid("invalid_json") from e
    if not isinstance(obj, dict):
        raise Invalid("invalid_json")
    return obj


def oracle_event(raw: bytes) -> dict:
    obj = oracle_object(raw)
    for name, longest in (("event_id", 128), ("user_id", 256)):
        if not isinstance(obj.get(name), str) or not 1 <= len(obj[name]) <= longest:
            raise Invalid("invalid_event", name)
    if obj.get("type") not in TYPES:
        raise Invalid("invalid_event", "type")
    if not isinstance(obj.get("page"), str) or not 1 <= len(obj["page"]) <= 2048:
        raise Invalid("invalid_event", "page")
    obj["ts"] = oracle_ts(obj.get("ts"))
    value = obj.get("value", 0)
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e9:
        raise Invalid("invalid_event", "value")
    obj["cents"] = round(value * 100)
    return obj


@dataclass
class Expected:
    page_stats: list[tuple]
    sessions: list[tuple]
    dead_letters: dict[int, tuple[str, str, bytes]]  # record n -> reason, field, payload


def oracle(
    records: list[GeneratedRecord],
    window_ms: int = WINDOW_MS,
    gap_ms: int = GAP_MS,
    max_future_ms: int = MAX_FUTURE_MS,
    dedup_ms: int = DEDUP_MS,
    partition_of: Mapping[int, int] | None = None,
) -> Expected:
    """The clickstream's final rows and dead letters, the records read in order, each in
    partition `partition_of[n]` (default: one partition). Lateness is not modelled: the
    generator's records are never late."""
    windows: dict[tuple[int, str], list[dict]] = defaultdict(list)
    users: dict[str, list[dict]] = defaultdict(list)
    dead: dict[int, tuple[str, str, bytes]] = {}
    watermark: dict[int, int] = {}
    counted: dict[tuple[int, str, str], int] = {}  # largest ts counted per identity
    for record in records:
        try:
            event = oracle_event(record.value)
        except Invalid as bad:
            dead[record.n] = (bad.reason, bad.field, record.value)
            continue
        if record.timestamp_ms >= 0 and event["ts"] > record.timestamp_ms + max_future_ms:
            dead[record.n] = ("future", "", record.value)  # a skewed clock: counts nowhere
            continue
        partition = 0 if partition_of is None else partition_of[record.n]
        mark = watermark.get(partition)
        identity = (partition, event["user_id"], event["event_id"])
        earlier = counted.get(identity)
        if earlier is not None and mark is not None and earlier >= mark - dedup_ms:
            dead[record.n] = ("duplicate", "", record.value)  # a retry: counted once
            continue
        counted[identity] = event["ts"] if earlier is None else max(earlier, event["ts"])
        watermark[partition] = event["ts"] if mark is None else max(mark, event["ts"])
        windows[(event["ts"] // window_ms * window_ms, event["page"])].append(event)
        users[event["user_id"]].append(event)
    page_stats = []
    for (start, page), group in windows.items():
        kinds = [e["type"] for e in group]
        page_stats.append(
            (
                start,
                start + window_ms,
                page,
                *(kinds.count(kind) for kind in TYPES),
                sum(e["cents"] for e in group if e["type"] == "purchase"),
                len({e["user_id"] for e in group}),
            )
        )
    sessions = []
    for user, group in users.items():
        group.sort(key=lambda e: e["ts"])
        runs = [[group[0]]]
        for e in group[1:]:
            if e["ts"] - runs[-1][-1]["ts"] <= gap_ms:
                runs[-1].append(e)
            else:
                runs.append([e])
        for run in runs:
            ordered = sorted(run, key=lambda e: (e["ts"], e["event_id"], e["page"]))
            sessions.append(
                (
                    user,
                    run[0]["ts"],
                    run[-1]["ts"],
                    len(run),
                    sum(e["type"] == "page_view" for e in run),
                    sum(e["type"] == "purchase" for e in run),
                    sum(e["cents"] for e in run if e["type"] == "purchase"),
                    ordered[0]["page"],
                    ordered[-1]["page"],
                )
            )
    return Expected(sorted(page_stats), sorted(sessions), dead)
