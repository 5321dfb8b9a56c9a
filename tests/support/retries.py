"""Client retries in a generated stream: copies of records sent again, as a client that
did not get its acknowledgement sends them, soon after or long after."""

from __future__ import annotations

import bisect
import random

from waxhouse.connectors.generator import GeneratedRecord


def with_retries(
    records: list[GeneratedRecord],
    *,
    soon: float = 0.02,
    much_later: float = 0.002,
    horizon_ms: int = 600_000,
    seed: int = 7,
) -> list[GeneratedRecord]:
    """`records` (in timestamp order) with copies inserted: after a record, with chance
    `soon`, a copy of one of the 200 before it; with chance `much_later`, of the one sent
    1.1 to 1.5 times `horizon_ms` (the deduplication horizon) before it. A copy has
    the same key and value, the timestamp of the moment it is sent again, and the records
    are numbered afresh (`n`)."""
    rng = random.Random(seed)
    out: list[GeneratedRecord] = []
    times: list[int] = []
    for record in records:
        out.append(record)
        times.append(record.timestamp_ms)
        pick = rng.random()
        if pick < soon:
            back = rng.randrange(1, 200)
        elif pick < soon + much_later:
            sent = record.timestamp_ms - rng.randrange(horizon_ms * 11 // 10, horizon_ms * 3 // 2)
            back = len(out) - bisect.bisect_right(times, sent) + 1
        else:
            continue
        if back <= len(out):
            out.append(out[-back]._replace(timestamp_ms=record.timestamp_ms))
            times.append(record.timestamp_ms)
    return [record._replace(n=n) for n, record in enumerate(out)]
