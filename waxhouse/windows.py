"""Event-time windows and sessions for one source partition: pure logic, no I/O.

Everything here is a deterministic function of the partition's record sequence (plus idle
ticks from a live, caught-up source):

- The *watermark* is the largest event time seen so far in the partition, advanced by
  idle ticks. An event at most `lateness` behind the watermark it arrives at is never late.
- A tumbling window `[start, end)` closes once the watermark is past `end + lateness`.
- A session closes once the watermark is past `session_end + gap + lateness`, i.e. once no
  on-time event could still extend it.
- An event whose window (or session) has already closed is *late* for that output: it is
  counted where it was on time and gets one `late` dead letter naming what it missed.

Whether a window or session is closed is decided from the watermark alone, never from
when its row happened to be emitted, so batch boundaries cannot change any result.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import accumulate

from waxhouse.events import Event
from waxhouse.records import record_source
from waxhouse.rows import DeadLetterRow, PageStatsRow, RowBatch, SessionRow

_NO_WATERMARK = -(2**62)
_NEVER = 2**62
# A user's state: [end of the last closed session or None, scheduled deadline, *sessions].
_LAST_CLOSED, _DEADLINE, _SESSIONS = range(3)

# Page window accumulator slots.
_VIEWS, _CLICKS, _CARTS, _PURCHASES, _CENTS, _USERS = range(6)
_TYPE_SLOT = {"page_view": _VIEWS, "click": _CLICKS, "add_to_cart": _CARTS, "purchase": _PURCHASES}

# Session slots: start, end, events, page_views, purchases, cents, then the entry event
# (id, page) and the exit event (id, page), flat: a million open sessions are a million of
# these lists. Entry is the event with the smallest (ts, event_id) (its ts is the start),
# exit the one with the largest (its ts is the end).
(
    _START,
    _END,
    _EVENTS,
    _PAGE_VIEWS,
    _S_PURCHASES,
    _S_CENTS,
    _ENTRY_ID,
    _ENTRY_PAGE,
    _EXIT_ID,
    _EXIT_PAGE,
) = range(10)


@dataclass(frozen=True)
class WindowConfig:
    """Window sizes in milliseconds; `build(part)` makes one partition's state machine."""

    window_ms: int
    lateness_ms: int
    session_gap_ms: int

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.session_gap_ms <= 0 or self.lateness_ms < 0:
            raise ValueError(f"invalid window configuration: {self}")

    def build(self, part: str) -> PartitionWindows:
        return PartitionWindows(self, part)


class PageWindows:
    """Tumbling windows per page, aligned to the Unix epoch."""

    def __init__(self, config: WindowConfig, part: str) -> None:
        self._size = config.window_ms
        self._lateness = config.lateness_ms
        self._part = part
        self._open: dict[int, dict[str, list]] = {}

    def add_all(self, events: list[Event], marks: list[int]) -> list[int]:
        """Count each event unless its window has closed; returns the indexes not counted.

        `marks[i]` is the watermark event `i` arrived at.
        """
        size, lateness, windows = self._size, self._lateness, self._open
        slots, purchase = _TYPE_SLOT, "purchase"
        late: list[int] = []
        current = -1
        pages: dict[str, list] = {}
        for i, (_, user_id, kind, page, ts, cents, _, _, _) in enumerate(events):
            start = ts - ts % size
            if start + size + lateness < marks[i]:
                late.append(i)
                continue
            if start != current:
                current = start
                pages = windows.get(start)  # type: ignore[assignment]
                if pages is None:
                    pages = windows[start] = {}
            acc = pages.get(page)
            if acc is None:
                acc = pages[page] = [0, 0, 0, 0, 0, set()]
            acc[slots[kind]] += 1
            if kind == purchase:
                acc[_CENTS] += cents
            acc[_USERS].add(user_id)
        return late

    def close(self, watermark: int) -> list[PageStatsRow]:
        """Emit and forget every window the watermark has passed."""
        limit = watermark - self._size - self._lateness
        closed = sorted(start for start in self._open if start < limit)
        rows: list[PageStatsRow] = []
        for start in closed:
            rows.extend(self._rows(start, self._open.pop(start)))
        return rows

    def flush(self) -> list[PageStatsRow]:
        """Emit every open window, keeping them open (bounded mode's end of input)."""
        rows: list[PageStatsRow] = []
        for start in sorted(self._open):
            rows.extend(self._rows(start, self._open[start]))
        return rows

    def _rows(self, start: int, pages: dict[str, list]) -> list[PageStatsRow]:
        end, part, new = start + self._size, self._part, tuple.__new__
        # PageStatsRow fields in order, built without a Python-level __new__ per row.
        return [
            new(
                PageStatsRow,
                (
                    start,
                    end,
                    page,
                    part,
                    views,
                    clicks,
                    carts,
                    purchases,
                    cents,
                    len(users),
                    views + clicks + carts + purchases,  # version
                ),
            )
            for page, (views, clicks, carts, purchases, cents, users) in pages.items()
        ]


class UserSessions:
    """Session windows per user: maximal runs of events at most `gap` apart.

    Per user it keeps the open sessions (sorted, more than `gap` apart) and, for a while
    after one closes, the end of the last closed one, so that a late event that would
    bridge into an emitted session is recognised as late instead of starting a new one.

    A heap of (deadline, user) finds closable users without scanning every key. Each user
    with state is scheduled once, at a deadline no later than its earliest real one:
    extending a session only moves its real deadline later, so the common case touches no
    heap; a user popped too early is rescheduled at its real deadline.
    """

    def __init__(self, config: WindowConfig) -> None:
        self._gap = config.session_gap_ms
        self._lateness = config.lateness_ms
        self._slack = config.session_gap_ms + config.lateness_ms
        # user -> [end of the last closed session or None, the deadline of the user's live
        # entry in _deadlines or _NEVER, *open sessions]: one list per user
        self._users: dict[str, list] = {}
        self._deadlines: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return sum(len(state) - _SESSIONS for state in self._users.values())

    def __getstate__(self) -> dict:
        """Snapshots leave the heap out: it is rebuilt from the users' deadlines, so a
        snapshot of a million open sessions holds a million fewer tuples."""
        return {name: value for name, value in vars(self).items() if name != "_deadlines"}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._deadlines = [
            (user_state[_DEADLINE], user)
            for user, user_state in self._users.items()
            if user_state[_DEADLINE] != _NEVER
        ]
        heapq.heapify(self._deadlines)

    def add_all(self, events: list[Event], marks: list[int]) -> list[int]:
        """Add each event to its user's sessions unless its session has closed; returns the
        indexes not added. `marks[i]` is the watermark event `i` arrived at.

        The common case, extending a user's one open session, is inline; the rest goes
        through `add`.
        """
        gap, lateness, users = self._gap, self._lateness, self._users
        late: list[int] = []
        for i, event in enumerate(events):
            event_id, user_id, kind, page, ts, cents, _, _, _ = event
            state = users.get(user_id)
            if state is None:  # a new user: a new session, unless it would be closed already
                if ts + gap + lateness < marks[i]:
                    late.append(i)
                else:
                    users[user_id] = [None, _NEVER, _new_session(event)]
                    self._schedule(user_id, users[user_id], ts + self._slack)
                continue
            if len(state) == _SESSIONS + 1:
                session = state[_SESSIONS]
                start, end = session[_START], session[_END]
                if (
                    start - gap <= ts <= end + gap
                    and end + gap + lateness >= marks[i]
                    and (state[_LAST_CLOSED] is None or min(ts, start) - gap > state[_LAST_CLOSED])
                ):
                    # The entry key's time is the start, the exit key's the end.
                    if ts > end:
                        session[_END], session[_EXIT_ID], session[_EXIT_PAGE] = ts, event_id, page
                    elif ts < start:
                        session[_START] = ts
                        session[_ENTRY_ID], session[_ENTRY_PAGE] = event_id, page
                    else:  # a tie with the entry or exit time: (event_id, page) decides
                        _tie(session, ts, event_id, page)
                    session[_EVENTS] += 1
                    if kind == "page_view":
                        session[_PAGE_VIEWS] += 1
                    elif kind == "purchase":
                        session[_S_PURCHASES] += 1
                        session[_S_CENTS] += cents
                    continue
            if not self.add(event, marks[i]):
                late.append(i)
        return late

    def add(self, event: Event, watermark: int) -> bool:
        """Add `event` to its user's sessions unless its session has closed."""
        gap = self._gap
        ts = event.ts
        state = self._users.get(event.user_id)
        if state is None:
            if ts + gap + self._lateness < watermark:
                return False
            state = self._users[event.user_id] = [None, _NEVER, _new_session(event)]
            self._schedule(event.user_id, state, ts + self._slack)
            return True
        last_closed, sessions = state[_LAST_CLOSED], state[_SESSIONS:]
        touching = [s for s in sessions if s[_START] - gap <= ts <= s[_END] + gap]
        if touching:
            if any(s[_END] + gap + self._lateness < watermark for s in touching):
                return False
            start = min(ts, touching[0][_START])
        else:
            if ts + gap + self._lateness < watermark:
                return False
            start = ts
        if last_closed is not None and start - gap <= last_closed:
            return False
        merged = _new_session(event)
        for session in touching:
            _merge(merged, session)
        kept = [s for s in sessions if not any(s is t for t in touching)]
        kept.append(merged)
        kept.sort(key=_session_start)
        state[_SESSIONS:] = kept
        self._schedule(event.user_id, state, min(s[_END] for s in kept) + self._slack)
        return True

    def _schedule(self, user: str, state: list, deadline: int) -> None:
        """Make sure `user` is looked at once the watermark passes `deadline`."""
        if deadline < state[_DEADLINE]:
            state[_DEADLINE] = deadline
            heapq.heappush(self._deadlines, (deadline, user))

    def close(self, watermark: int) -> list[SessionRow]:
        """Emit every session the watermark has passed; forget users with nothing left."""
        heap, users = self._deadlines, self._users
        rows: list[SessionRow] = []
        while heap and heap[0][0] < watermark:
            deadline, user = heapq.heappop(heap)
            state = users.get(user)
            if state is None or state[_DEADLINE] != deadline:
                continue  # superseded by an earlier entry, already handled
            state[_DEADLINE] = _NEVER
            self._close_user(user, state, watermark, rows)
        return rows

    def _close_user(self, user: str, state: list, watermark: int, rows: list[SessionRow]) -> None:
        slack = self._slack
        last_closed, sessions = state[_LAST_CLOSED], state[_SESSIONS:]
        still_open = []
        for session in sessions:
            if session[_END] + slack < watermark:
                rows.append(_session_row(user, session))
                if last_closed is None or session[_END] > last_closed:
                    last_closed = session[_END]
            else:
                still_open.append(session)
        state[_LAST_CLOSED], state[_SESSIONS:] = last_closed, still_open
        if still_open:
            self._schedule(user, state, min(s[_END] for s in still_open) + slack)
        elif last_closed is None or last_closed + self._gap + slack < watermark:
            # No on-time event can reach back to the closed session any more: an event
            # that would is late by the plain "its session would have closed" rule.
            del self._users[user]
        else:
            self._schedule(user, state, last_closed + self._gap + slack)

    def flush(self) -> list[SessionRow]:
        """Emit every open session, keeping them open (bounded mode's end of input)."""
        return [
            _session_row(user, session)
            for user, state in self._users.items()
            for session in state[_SESSIONS:]
        ]


def _session_start(session: list) -> int:
    return session[_START]


def _new_session(event: Event) -> list:
    purchase = event.type == "purchase"
    return [
        event.ts,
        event.ts,
        1,
        1 if event.type == "page_view" else 0,
        1 if purchase else 0,
        event.cents if purchase else 0,
        event.event_id,
        event.page,
        event.event_id,
        event.page,
    ]


def _tie(session: list, ts: int, event_id: str, page: str) -> None:
    """An event at the session's start or end time: the smaller (event_id, page) enters,
    the larger exits."""
    if ts == session[_START] and (event_id, page) < (session[_ENTRY_ID], session[_ENTRY_PAGE]):
        session[_ENTRY_ID], session[_ENTRY_PAGE] = event_id, page
    if ts == session[_END] and (event_id, page) > (session[_EXIT_ID], session[_EXIT_PAGE]):
        session[_EXIT_ID], session[_EXIT_PAGE] = event_id, page


def _merge(into: list, other: list) -> None:
    if (other[_START], other[_ENTRY_ID], other[_ENTRY_PAGE]) < (
        into[_START],
        into[_ENTRY_ID],
        into[_ENTRY_PAGE],
    ):
        into[_START], into[_ENTRY_ID], into[_ENTRY_PAGE] = (
            other[_START],
            other[_ENTRY_ID],
            other[_ENTRY_PAGE],
        )
    if (other[_END], other[_EXIT_ID], other[_EXIT_PAGE]) > (
        into[_END],
        into[_EXIT_ID],
        into[_EXIT_PAGE],
    ):
        into[_END], into[_EXIT_ID], into[_EXIT_PAGE] = (
            other[_END],
            other[_EXIT_ID],
            other[_EXIT_PAGE],
        )
    into[_EVENTS] += other[_EVENTS]
    into[_PAGE_VIEWS] += other[_PAGE_VIEWS]
    into[_S_PURCHASES] += other[_S_PURCHASES]
    into[_S_CENTS] += other[_S_CENTS]


def _session_row(user: str, session: list) -> SessionRow:
    return SessionRow(
        user_id=user,
        session_start_ms=session[_START],
        session_end_ms=session[_END],
        events=session[_EVENTS],
        page_views=session[_PAGE_VIEWS],
        purchases=session[_S_PURCHASES],
        revenue_cents=session[_S_CENTS],
        entry_page=session[_ENTRY_PAGE],
        exit_page=session[_EXIT_PAGE],
        version=session[_EVENTS],
    )


class PartitionWindows:
    """All windowed state of one source partition, driven batch by batch."""

    def __init__(self, config: WindowConfig, part: str) -> None:
        self.part = part
        self.pages = PageWindows(config, part)
        self.sessions = UserSessions(config)
        self.max_event_ts: int | None = None
        self.watermark = _NO_WATERMARK

    def process(self, events: list[Event]) -> RowBatch:
        """Count a batch of events in partition order, then emit what has closed."""
        out = RowBatch()
        if not events:
            return self._close(out)
        times = [event[4] for event in events]
        # marks[i]: the watermark event i arrives at, the largest event time before it.
        marks = list(accumulate(times, max, initial=self.watermark))
        late_pages = self.pages.add_all(events, marks)
        late_sessions = self.sessions.add_all(events, marks)
        if late_pages or late_sessions:
            missed_page, missed_session = set(late_pages), set(late_sessions)
            for i in sorted(missed_page | missed_session):
                missed = [
                    name
                    for name, late in (
                        ("page_stats", i in missed_page),
                        ("user_sessions", i in missed_session),
                    )
                    if late
                ]
                out.dead_letters.append(self._late(events[i], ", ".join(missed)))
        newest = max(times)
        if self.max_event_ts is None or newest > self.max_event_ts:
            self.max_event_ts = newest
        self.watermark = marks[-1]
        return self._close(out)

    def idle(self, idle_ms: int) -> RowBatch:
        """The partition is caught up and has been quiet for `idle_ms`: let time pass."""
        if self.max_event_ts is not None:
            self.watermark = max(self.watermark, self.max_event_ts + idle_ms)
        return self._close(RowBatch())

    def flush(self) -> RowBatch:
        """End of bounded input: emit everything still open."""
        return RowBatch(page_stats=self.pages.flush(), sessions=self.sessions.flush())

    def _late(self, event: Event, missed: str) -> DeadLetterRow:
        return DeadLetterRow(
            source=record_source(self.part, event.offset),
            reason="late",
            error=f"missed {missed}",
            payload=event.payload,
            received_at_ms=event.received_at_ms,
        )

    def _close(self, out: RowBatch) -> RowBatch:
        out.page_stats.extend(self.pages.close(self.watermark))
        out.sessions.extend(self.sessions.close(self.watermark))
        return out
