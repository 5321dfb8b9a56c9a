"""Deduplication (`waxhouse.dedup`): the contract's rule, case by case and against a plain
reading of it on random streams, through snapshots; the clickstream with client retries
against its oracle; and the state's size in a snapshot."""

from __future__ import annotations

import importlib
import itertools
import pickle
from decimal import Decimal
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.oracle import oracle
from tests.support.retries import with_retries
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig
from waxhouse.dedup import CHUNK_EVENTS, DedupState, identity_hashes
from waxhouse.engine import NO_WATERMARK
from waxhouse.pipeline import PipelineError
from waxhouse.segments import Segment
from waxhouse.testing import Record, run

HORIZON = 600_000


def state(horizon_ms: int = HORIZON) -> DedupState:
    # Events here are (user, id, ts).
    return DedupState((0, 1), ("user_id", "event_id"), 2, horizon_ms)


def feed(dedup: DedupState, events: list[tuple], watermark: int = NO_WATERMARK) -> list[bool]:
    """Which of `events` are duplicates, fed one batch."""
    kept, _copies = dedup.split(numbered(events), watermark)
    return copies_among(events, kept)


def numbered(events: list[tuple]) -> list[tuple]:
    """Each event with its position after its fields, to tell equal events apart."""
    return [(*event, i) for i, event in enumerate(events)]


def copies_among(events: list[tuple], kept: list[tuple]) -> list[bool]:
    counted = {event[-1] for event in kept}
    return [i not in counted for i in range(len(events))]


@pytest.mark.parametrize(
    ("events", "duplicates"),
    [
        pytest.param([("u", "1", 100), ("u", "1", 100)], [False, True], id="a retry"),
        pytest.param(
            [("u", "1", 100), ("u", "2", 100), ("v", "1", 100)],
            [False, False, False],
            id="identity is both fields",
        ),
        pytest.param(
            [("ab", "c", 100), ("a", "bc", 100)], [False, False], id="fields never run together"
        ),
        pytest.param(
            [("u", "1", 0), ("u", "2", HORIZON), ("u", "1", 0)],
            [False, False, True],
            id="earlier exactly the horizon behind the watermark",
        ),
        pytest.param(
            [("u", "1", 0), ("u", "2", HORIZON + 1), ("u", "1", 0)],
            [False, False, False],
            id="earlier beyond the horizon: counted again",
        ),
        pytest.param(
            [("u", "1", 0), ("u", "1", 10 * HORIZON), ("u", "2", 10 * HORIZON), ("u", "1", 0)],
            [False, True, False, False],
            id="a duplicate does not move the watermark",
        ),
        pytest.param(
            [("u", "2", 5 * HORIZON), ("u", "1", 0), ("u", "1", 7)],
            [False, False, False],
            id="a late event is remembered, but only for the horizon",
        ),
        pytest.param(
            [("u", "2", HORIZON), ("u", "1", 1), ("u", "1", 2)],
            [False, False, True],
            id="a late event within the horizon is remembered",
        ),
        pytest.param(
            [("u", "1", 0), ("u", "2", 2 * HORIZON), ("u", "1", 2 * HORIZON), ("u", "1", 0)],
            [False, False, False, True],
            id="the largest time counted with an identity decides",
        ),
    ],
)
def test_the_rule(events: list[tuple], duplicates: list[bool]) -> None:
    assert feed(state(), events) == duplicates
    # One event per batch, through a snapshot each time: the same answers.
    dedup, answers = state(), []
    for event in events:
        answers += feed(dedup, [event], max([NO_WATERMARK, *_marks(events, answers)]))
        dedup = pickle.loads(pickle.dumps(dedup))
    assert answers == duplicates


def _marks(events: list[tuple], answers: list[bool]) -> list[int]:
    return [e[2] for e, copy in zip(events, answers, strict=False) if not copy]


def test_a_zero_horizon_still_catches_a_copy_of_the_newest_event() -> None:
    assert feed(state(0), [("u", "1", 5), ("u", "1", 5), ("u", "2", 6), ("u", "1", 5)]) == [
        False,
        True,
        False,
        False,
    ]


def test_identities_keep_fields_apart_at_every_arity() -> None:
    def differ(indexes: tuple[int, ...], events: list[tuple]) -> None:
        hashes = identity_hashes(indexes)(events)
        assert len(set(hashes)) == len(events), events

    differ((0,), [("a",), ("é",), ("",)])
    differ((0, 1), [("ab", "c"), ("a", "bc"), ("abc", ""), ("", "abc"), ("é", "x")])
    differ((0, 1, 2), [("a", "b", "c"), ("a", "bc", ""), ("ab", "", "c"), ("a\x00", "b", "c")])
    differ((2, 0), [("ab", "x", "c"), ("b", "x", "ca")])
    # Stable across processes and platforms: a snapshot's hashes mean the same on resume.
    assert identity_hashes((0, 1))([("user-1", "ev-1")]) == [
        xxhash.xxh3_64_intdigest(b"user-1ev-1", seed=6)
    ]
    with pytest.raises(ValueError, match="at least one field"):
        identity_hashes(())


def plain_rule(events: list[tuple], horizon_ms: int) -> list[bool]:
    """The contract read plainly: every earlier counted event, kept whole."""
    counted: list[tuple] = []
    watermark = NO_WATERMARK
    out = []
    for user, eid, ts in events:
        copy = any((u, e) == (user, eid) and t >= watermark - horizon_ms for u, e, t in counted)
        out.append(copy)
        if not copy:
            counted.append((user, eid, ts))
            watermark = max(watermark, ts)
    return out


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["u", "v", "ü"]),
            st.sampled_from(["1", "2", "3", "4"]),
            st.integers(0, 40),
        ),
        max_size=60,
    ),
    horizon=st.integers(0, 12),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_random_streams_follow_the_plain_rule_through_snapshots(
    events: list[tuple], horizon: int, cuts: list[int]
) -> None:
    dedup, answers, watermark = state(horizon), [], NO_WATERMARK
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    for start, end in itertools.pairwise(bounds):
        batch = events[start:end]
        kept, _ = dedup.split(numbered(batch), watermark)
        answers += copies_among(batch, kept)
        watermark = max([watermark, *(e[2] for e in kept)])
        dedup = pickle.loads(pickle.dumps(dedup))
    assert answers == plain_rule(events, horizon)


def test_the_snapshot_keeps_16_bytes_per_event_in_sealed_chunks_and_forgets_old_ones() -> None:
    dedup = state(60_000)
    events = [(f"user-{i % 97}", f"event-{i}", i) for i in range(3 * CHUNK_EVENTS + 5)]
    kept, copies = dedup.split(events, NO_WATERMARK)
    assert len(kept) == len(events) and not copies
    snapshot = pickle.dumps(dedup, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(snapshot) < 16.2 * len(events) + 1_000  # hashes and times, no strings
    assert b"user-1" not in snapshot
    chunks = [chunk for _, chunk in dedup.__getstate__()["chunks"]]
    assert len(chunks) == 3 and all(isinstance(c, Segment) and c.sealed for c in chunks)
    # Time moves on: every chunk whose events are all beyond the horizon is forgotten.
    dedup.forget(2 * CHUNK_EVENTS + 60_000)
    assert len(dedup.__getstate__()["chunks"]) == 1
    assert len(dedup) == len(events) - 2 * CHUNK_EVENTS
    restored = pickle.loads(pickle.dumps(dedup))
    assert restored.seen == dedup.seen


# --- the clickstream with client retries ------------------------------------------------


def clickstream() -> Any:
    return importlib.import_module("dataflows.clickstream").declare(60, 1_800)


def test_clickstream_with_retries_matches_the_oracle_also_through_replays() -> None:
    """Copies sent soon after (this oracle has no lateness: the sensors flow's test has
    copies sent after the horizon, which count again where they are on time)."""
    generated = ClickstreamGenerator(GeneratorConfig(seed=11, events=30_000)).take(30_000)
    horizon = 300_000
    records = with_retries(generated, much_later=0, seed=11)
    expected = oracle(records, dedup_ms=horizon)
    reasons = [reason for reason, _, _ in expected.dead_letters.values()]
    assert reasons.count("duplicate") > 400
    inputs = [Record(r.value, 0, r.timestamp_ms, r.n) for r in records]
    for options in ({}, {"replay_every": 4, "batch_size": 300}):
        result = run(clickstream(), inputs, lateness_ms=10_000, dedup_ms=horizon, **options)
        pages = sorted(
            (
                r["window_start"],
                r["window_end"],
                r["page"],
                r["views"],
                r["clicks"],
                r["add_to_carts"],
                r["purchases"],
                int(r["revenue"] * 100),
                r["unique_users"],
            )
            for r in result.rows["page_stats"]
        )
        assert pages == expected.page_stats
        sessions = sorted(
            (
                r["user_id"],
                r["session_start"],
                r["session_end"],
                r["events"],
                r["page_views"],
                r["purchases"],
                int(r["revenue"] * 100),
                r["entry_page"],
                r["exit_page"],
            )
            for r in result.rows["user_sessions"]
        )
        assert sessions == expected.sessions
        dead = {row.source: row.reason for row in result.dead_letters}
        want = {f"events/0/{n}": reason for n, (reason, _, _) in expected.dead_letters.items()}
        assert dead == want


def test_a_duplicate_s_dead_letter_names_the_identity() -> None:
    value = b'{"event_id":"e1","user_id":"u1","type":"click","page":"/p","ts":1000}'
    result = run(clickstream(), [Record(value, 0, 1000, 0), Record(value, 0, 2000, 1)])
    (dead,) = result.dead_letters
    assert (dead.source, dead.reason) == ("events/0/1", "duplicate")
    assert dead.error.startswith("user_id, event_id: ")
    assert dead.payload == value
    assert result.rows["page_stats"][0]["clicks"] == 1
    assert result.rows["page_stats"][0]["revenue"] == Decimal(0)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"dedup": ("user_id", "nope")}, "'nope' is not a field"),
        ({"dedup": "user_id"}, "a list of field names"),
        ({"dedup": ("user_id", "user_id")}, "named twice"),
        ({"dedup_horizon": 60}, "without dedup fields"),
        ({"dedup": ("user_id", "ts")}, "'ts' must be a required text"),
        ({"dedup": ("value",)}, "'value' must be a required text"),
    ],
)
def test_a_wrong_dedup_declaration_is_refused(options: dict, error: str) -> None:
    from waxhouse import Pipeline

    base = clickstream()
    with pytest.raises(PipelineError, match=error):
        Pipeline("p", base.schema, key="user_id", tables=list(base.tables), **options)
