"""What every peer shares: its command line, the job's event rule, and its report.

The job: tumbling 60 s event-time windows aligned to the epoch, the count of valid events
per page per window. An event is valid under the same rules as waxhouse's (DESIGN.md,
"Input events"); the timestamp rule is waxhouse's own (`waxhouse.fields.parse_timestamp`),
so every peer agrees on what a valid `ts` is. Malformed records are skipped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from waxhouse.fields import InvalidField, parse_timestamp

WINDOW_MS = 60_000
EVENT_TYPES = frozenset(("page_view", "click", "add_to_cart", "purchase"))
_LIMITS = (("event_id", 128), ("user_id", 256), ("page", 2048))


def page_and_ts(value: bytes | None) -> tuple[str, int] | None:
    """(page, event time in epoch ms) of a valid event, else None."""
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    for name, limit in _LIMITS:
        text = obj.get(name)
        if type(text) is not str or not 0 < len(text) <= limit:
            return None
    kind = obj.get("type")
    if type(kind) is not str or kind not in EVENT_TYPES or "ts" not in obj:
        return None
    amount = obj.get("value")
    if amount is not None and (type(amount) not in (int, float) or not 0 <= amount <= 1e9):
        return None
    try:
        ts = parse_timestamp(obj["ts"])
    except InvalidField:
        return None
    return obj["page"], ts


def count_key(page: str, window_start_ms: int) -> str:
    return f"{page}|{window_start_ms}"


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True, type=Path, help="where the report goes")
    parser.add_argument(
        "--flow-repo", type=Path, default=None, help="ours: run the flow of this checkout"
    )
    return parser.parse_args()


@dataclass
class Report:
    """Records drained, seconds of the drain (runner's own clock), and the job's counts.

    `closed_until`, for a runner that leaves windows open at the end of the input: per page,
    the largest window end up to which it closed (emitted) every window of that page.
    `dropped`: records it dropped as late, per window (`count_key`).
    """

    started: float = field(default_factory=time.monotonic)
    records: int = 0
    seconds: float = 0.0
    counts: Mapping[str, int] | None = None
    closed_until: Mapping[str, int] | None = None
    dropped: Mapping[str, int] | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started

    def write(self, path: Path) -> None:
        body = {
            "records": self.records,
            "seconds": self.seconds,
            "notes": self.notes,
            "counts": self.counts,
            "closed_until": self.closed_until,
            "dropped": self.dropped,
        }
        path.write_bytes(orjson.dumps(body))
