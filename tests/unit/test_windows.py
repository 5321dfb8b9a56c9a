"""Windows, sessions, watermark and lateness for one partition, with no I/O."""

from __future__ import annotations

import pickle
import random
from collections import defaultdict
from dataclasses import dataclass

import pytest

from dataflows.clickstream import events as clickstream_events
from tests.support.clickstream import Output as RowBatch
from tests.support.clickstream import PageStatsRow, SessionRow, Windows

Event = clickstream_events.event_type
W, L, GAP = 60_000, 10_000, 1_800_000


@dataclass(frozen=True)
class WindowConfig:
    window_ms: int
    lateness_ms: int
    session_gap_ms: int


CONFIG = WindowConfig(window_ms=W, lateness_ms=L, session_gap_ms=GAP)


def PartitionWindows(config: WindowConfig, part: str) -> Windows:
    return Windows(config.window_ms, config.lateness_ms, config.session_gap_ms, part)


def ev(
    ts: int,
    user: str = "u1",
    page: str = "/a",
    kind: str = "page_view",
    cents: int = 0,
    event_id: str | None = None,
) -> Event:
    eid = event_id or f"e{ts}-{user}-{page}"
    return Event(eid, user, kind, page, ts, cents, ts, b"{}", ts)


def run(events: list[Event], *, flush: bool = True, config: WindowConfig = CONFIG) -> RowBatch:
    state = PartitionWindows(config, "t/0")
    out = state.process(events)
    if flush:
        out.extend(state.flush())
    return out


def stats(out: RowBatch) -> dict[tuple[str, int], PageStatsRow]:
    return {(r.page, r.window_start_ms): r for r in out.page_stats}


def test_windows_align_to_the_epoch_and_a_boundary_opens_the_next() -> None:
    out = run([ev(59_999), ev(60_000), ev(119_999, kind="click"), ev(120_000)])
    rows = stats(out)
    assert sorted(rows) == [("/a", 0), ("/a", 60_000), ("/a", 120_000)]
    assert (rows[("/a", 0)].views, rows[("/a", 0)].window_end_ms) == (1, 60_000)
    assert (rows[("/a", 60_000)].views, rows[("/a", 60_000)].clicks) == (1, 1)


def test_counts_revenue_and_unique_users_per_page() -> None:
    out = run(
        [
            ev(1_000, "u1", kind="page_view"),
            ev(2_000, "u1", kind="click"),
            ev(3_000, "u2", kind="add_to_cart", cents=500),
            ev(4_000, "u2", kind="purchase", cents=1999),
            ev(5_000, "u3", kind="purchase", cents=1),
            ev(6_000, "u3", page="/b"),
        ]
    )
    a = stats(out)[("/a", 0)]
    assert (a.views, a.clicks, a.add_to_carts, a.purchases) == (1, 1, 1, 2)
    assert a.revenue_cents == 2000  # only purchases count as revenue
    assert a.unique_users == 3
    assert a.version == 5
    assert stats(out)[("/b", 0)].unique_users == 1


def test_window_closes_only_once_the_watermark_is_past_end_plus_lateness() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    assert state.process([ev(1_000), ev(W + L)]).page_stats == []
    closed = state.process([ev(W + L + 1)]).page_stats
    assert [(r.window_start_ms, r.views) for r in closed] == [(0, 1)]


def test_event_exactly_lateness_behind_is_on_time() -> None:
    out = run([ev(1_000), ev(W + L - 1), ev(W - 1)], flush=True)
    assert stats(out)[("/a", 0)].views == 2
    assert out.dead_letters == []


def test_event_for_a_closed_window_is_late_but_counted_in_its_open_session() -> None:
    late = ev(59_000, event_id="late-one")
    out = run([ev(50_000), ev(W + L + 1), late])
    assert stats(out)[("/a", 0)].views == 1
    [dead] = out.dead_letters
    assert (dead.reason, dead.error, dead.source) == (
        "late",
        "missed page_stats",
        f"t/0/{late.offset}",
    )
    [session] = out.sessions
    assert session.events == 3


def test_event_too_late_for_both_outputs_names_both() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(0, "u1")])
    state.process([ev(10 * GAP, "u2")])
    out = state.process([ev(1, "u1")])
    [dead] = out.dead_letters
    assert dead.error == "missed page_stats, user_sessions"


def test_session_gap_exactly_the_limit_is_one_session_and_one_more_ms_splits() -> None:
    one = run([ev(0), ev(GAP), ev(2 * GAP)])
    assert [(s.session_start_ms, s.session_end_ms, s.events) for s in one.sessions] == [
        (0, 2 * GAP, 3)
    ]
    two = run([ev(0), ev(GAP + 1)])
    assert sorted((s.session_start_ms, s.events) for s in two.sessions) == [(0, 1), (GAP + 1, 1)]


def test_out_of_order_event_bridges_two_open_sessions() -> None:
    config = WindowConfig(window_ms=W, lateness_ms=GAP, session_gap_ms=1_000)
    out = run([ev(0), ev(1_500), ev(800)], config=config)
    assert [(s.session_start_ms, s.session_end_ms, s.events) for s in out.sessions] == [
        (0, 1_500, 3)
    ]


def test_entry_and_exit_ties_break_on_event_id() -> None:
    out = run(
        [
            ev(1_000, page="/b", event_id="b"),
            ev(1_000, page="/a", event_id="a"),
            ev(5_000, page="/y", event_id="y"),
            ev(5_000, page="/z", event_id="z"),
        ]
    )
    [session] = out.sessions
    assert (session.entry_page, session.exit_page) == ("/a", "/z")


def test_session_counts_views_purchases_and_revenue() -> None:
    out = run(
        [
            ev(0, kind="page_view"),
            ev(1, kind="click"),
            ev(2, kind="add_to_cart", cents=700),
            ev(3, kind="purchase", cents=250),
        ]
    )
    [s] = out.sessions
    assert (s.events, s.page_views, s.purchases, s.revenue_cents, s.version) == (4, 1, 1, 250, 4)


def test_session_closes_once_no_on_time_event_can_extend_it() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(0, "u1")])
    assert state.process([ev(GAP + L, "u2")]).sessions == []
    [closed] = state.process([ev(GAP + L + 1, "u2")]).sessions
    assert closed.user_id == "u1"


def test_late_event_that_would_bridge_into_an_emitted_session_is_late() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(0, "u1")])
    state.process([ev(GAP + L + 1, "u2")])  # closes u1's session [0, 0]
    state.process([ev(GAP + L + 2, "u1")])  # u1's new on-time session
    out = state.process([ev(GAP, "u1")])  # within the gap of both
    [dead] = out.dead_letters
    assert "user_sessions" in dead.error
    flushed = state.flush().sessions
    assert [(s.user_id, s.session_start_ms, s.events) for s in flushed if s.user_id == "u1"] == [
        ("u1", GAP + L + 2, 1)
    ]


def test_idle_ticks_advance_time_from_the_last_event() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(1_000)])
    assert state.idle(W + L - 1_000).page_stats == []
    [row] = state.idle(W + L - 1_000 + 1).page_stats
    assert row.window_start_ms == 0
    # an event that is now more than the lateness behind is late
    assert state.process([ev(59_000)]).dead_letters[0].reason == "late"


def test_idle_ticks_before_any_event_do_nothing() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    assert not state.idle(10 * GAP)
    assert state.process([ev(0)]).dead_letters == []


def test_flush_emits_open_windows_and_keeps_them_for_a_fuller_row_later() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(1_000)])
    [first] = state.flush().page_stats
    state.process([ev(2_000, "u2")])
    [second] = state.flush().page_stats
    assert (first.views, second.views) == (1, 2)
    assert second.version > first.version


def test_users_with_nothing_open_are_forgotten() -> None:
    state = PartitionWindows(CONFIG, "t/0")
    state.process([ev(i * 1_000, f"u{i}") for i in range(100)])
    assert len(state.sessions) == 100
    state.process([ev(10 * GAP, "other")])
    state.process([ev(20 * GAP, "other2")])
    assert len(state.sessions) == 1
    assert set(state.sessions.keys) == {"other2"}


def oracle(events: list[Event]) -> tuple[set[PageStatsRow], set[SessionRow]]:
    """Brute force over all events, for inputs with no late events."""
    windows: dict[tuple[str, int], list[Event]] = defaultdict(list)
    users: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        windows[(e.page, e.ts - e.ts % W)].append(e)
        users[e.user_id].append(e)
    pages = set()
    for (page, start), group in windows.items():
        kinds = [e.type for e in group]
        pages.add(
            PageStatsRow(
                start,
                start + W,
                page,
                "t/0",
                kinds.count("page_view"),
                kinds.count("click"),
                kinds.count("add_to_cart"),
                kinds.count("purchase"),
                sum(e.value for e in group if e.type == "purchase"),
                len({e.user_id for e in group}),
                len(group),
            )
        )
    sessions = set()
    for user, group in users.items():
        group.sort(key=lambda e: e.ts)
        runs: list[list[Event]] = [[group[0]]]
        for e in group[1:]:
            if e.ts - runs[-1][-1].ts <= GAP:
                runs[-1].append(e)
            else:
                runs.append([e])
        for r in runs:
            keys = sorted((e.ts, e.event_id, e.page) for e in r)
            sessions.add(
                SessionRow(
                    user,
                    r[0].ts,
                    r[-1].ts,
                    len(r),
                    sum(e.type == "page_view" for e in r),
                    sum(e.type == "purchase" for e in r),
                    sum(e.value for e in r if e.type == "purchase"),
                    keys[0][2],
                    keys[-1][2],
                    len(r),
                )
            )
    return pages, sessions


def random_events(
    rng: random.Random, n: int, step: int = 400_000, disorder: int = L
) -> list[Event]:
    clock, out = 0, []
    kinds = ["page_view", "click", "add_to_cart", "purchase"]
    for i in range(n):
        clock += rng.randrange(0, step)
        ts = max(0, clock - rng.randrange(0, disorder + 1))
        out.append(
            ev(
                ts,
                user=f"u{rng.randrange(8)}",
                page=f"/p{rng.randrange(4)}",
                kind=rng.choice(kinds),
                cents=rng.randrange(0, 10_000),
                event_id=f"e{i}",
            )
        )
    return out


@pytest.mark.parametrize(
    ("seed", "step", "disorder"),
    [(seed, 400_000, L) for seed in range(20)]
    # Many events share a millisecond: entry and exit pages are decided by the tie rule.
    + [(seed, 3, 2) for seed in range(10)],
)
def test_matches_brute_force_whatever_the_batch_boundaries(
    seed: int, step: int, disorder: int
) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 400, step, disorder)
    expected_pages, expected_sessions = oracle(events)
    state = PartitionWindows(CONFIG, "t/0")
    out, i = RowBatch(), 0
    while i < len(events):
        size = rng.randrange(1, 60)
        out.extend(state.process(events[i : i + size]))
        if rng.random() < 0.3:  # snapshot and restore mid-stream, as recovery does
            state = pickle.loads(pickle.dumps(state))
        i += size
    out.extend(state.flush())
    assert out.dead_letters == []
    assert set(out.page_stats) == expected_pages
    assert len(out.page_stats) == len(expected_pages)
    assert set(out.sessions) == expected_sessions
    assert len(out.sessions) == len(expected_sessions)
