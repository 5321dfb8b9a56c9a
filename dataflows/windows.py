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

from dataflows.events import Event
from dataflows.rows import DeadLetterRow, PageStatsRow, RowBatch, SessionRow

_NO_WATERMARK = -(2**62)

# Page window accumulator slots.
_VIEWS, _CLICKS, _CARTS, _PURCHASES, _CENTS, _USERS = range(6)
_TYPE_SLOT = {"page_view": _VIEWS, "click": _CLICKS, "add_to_cart": _CARTS, "purchase": _PURCHASES}

# Session slots: start, end, events, page_views, purchases, cents, entry key, exit key.
# Entry is the smallest (ts, event_id, page), exit the largest.
_START, _END, _EVENTS, _PAGE_VIEWS, _S_PURCHASES, _S_CENTS, _ENTRY, _EXIT = range(8)


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

    def add(self, event: Event, watermark: int) -> bool:
        """Count `event` unless its window has closed; returns whether it was counted."""
        ts = event.ts
        start = ts - ts % self._size
        if start + self._size + self._lateness < watermark:
            return False
        pages = self._open.get(start)
        if pages is None:
            pages = self._open[start] = {}
        acc = pages.get(event.page)
        if acc is None:
            acc = pages[event.page] = [0, 0, 0, 0, 0, set()]
        acc[_TYPE_SLOT[event.type]] += 1
        if event.type == "purchase":
            acc[_CENTS] += event.cents
        acc[_USERS].add(event.user_id)
        return True

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
        end = start + self._size
        return [
            PageStatsRow(
                window_start_ms=start,
                window_end_ms=end,
                page=page,
                part=self._part,
                views=acc[_VIEWS],
                clicks=acc[_CLICKS],
                add_to_carts=acc[_CARTS],
                purchases=acc[_PURCHASES],
                revenue_cents=acc[_CENTS],
                unique_users=len(acc[_USERS]),
                version=acc[_VIEWS] + acc[_CLICKS] + acc[_CARTS] + acc[_PURCHASES],
            )
            for page, acc in pages.items()
        ]


class UserSessions:
    """Session windows per user: maximal runs of events at most `gap` apart.

    Per user it keeps the open sessions (sorted, more than `gap` apart) and, for a while
    after one closes, the end of the last closed one, so that a late event that would
    bridge into an emitted session is recognised as late instead of starting a new one.
    A heap of (deadline, user) finds closable users without scanning every key.
    """

    def __init__(self, config: WindowConfig) -> None:
        self._gap = config.session_gap_ms
        self._lateness = config.lateness_ms
        # user -> [open sessions, end of the last closed session or None]
        self._users: dict[str, list] = {}
        self._deadlines: list[tuple[int, str]] = []
        self._touched: set[str] = set()

    def __len__(self) -> int:
        return sum(len(state[0]) for state in self._users.values())

    def add(self, event: Event, watermark: int) -> bool:
        """Add `event` to its user's sessions unless its session has closed."""
        gap = self._gap
        ts = event.ts
        state = self._users.get(event.user_id)
        if state is None:
            if ts + gap + self._lateness < watermark:
                return False
            self._users[event.user_id] = [[_new_session(event)], None]
            self._touched.add(event.user_id)
            return True
        sessions, last_closed = state
        if len(sessions) == 1:
            # The common case: extend the user's one open session in place.
            session = sessions[0]
            if session[_START] - gap <= ts <= session[_END] + gap:
                if session[_END] + gap + self._lateness < watermark:
                    return False
                if last_closed is not None and min(ts, session[_START]) - gap <= last_closed:
                    return False
                _add(session, event)
                self._touched.add(event.user_id)
                return True
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
        state[0] = kept
        self._touched.add(event.user_id)
        return True

    def close(self, watermark: int) -> list[SessionRow]:
        """Emit every session the watermark has passed; forget users with nothing left."""
        heap = self._deadlines
        slack = self._gap + self._lateness
        for user in self._touched:
            sessions = self._users[user][0]
            if sessions:
                heapq.heappush(heap, (min(s[_END] for s in sessions) + slack, user))
        self._touched.clear()
        rows: list[SessionRow] = []
        while heap and heap[0][0] < watermark:
            _, user = heapq.heappop(heap)
            state = self._users.get(user)
            if state is not None:
                self._close_user(user, state, watermark, rows)
        return rows

    def _close_user(self, user: str, state: list, watermark: int, rows: list[SessionRow]) -> None:
        slack = self._gap + self._lateness
        sessions, last_closed = state
        still_open = []
        for session in sessions:
            if session[_END] + slack < watermark:
                rows.append(_session_row(user, session))
                if last_closed is None or session[_END] > last_closed:
                    last_closed = session[_END]
            else:
                still_open.append(session)
        emitted = len(still_open) < len(sessions)
        state[0], state[1] = still_open, last_closed
        if still_open:
            if emitted:
                deadline = min(s[_END] for s in still_open) + slack
                heapq.heappush(self._deadlines, (deadline, user))
        elif last_closed is None or last_closed + self._gap + slack < watermark:
            # No on-time event can reach back to the closed session any more: an event
            # that would is late by the plain "its session would have closed" rule.
            del self._users[user]
        elif emitted:
            heapq.heappush(self._deadlines, (last_closed + self._gap + slack, user))

    def flush(self) -> list[SessionRow]:
        """Emit every open session, keeping them open (bounded mode's end of input)."""
        return [
            _session_row(user, session)
            for user, (sessions, _) in self._users.items()
            for session in sessions
        ]


def _session_start(session: list) -> int:
    return session[_START]


def _new_session(event: Event) -> list:
    key = (event.ts, event.event_id, event.page)
    purchase = event.type == "purchase"
    return [
        event.ts,
        event.ts,
        1,
        1 if event.type == "page_view" else 0,
        1 if purchase else 0,
        event.cents if purchase else 0,
        key,
        key,
    ]


def _add(session: list, event: Event) -> None:
    ts = event.ts
    if ts < session[_START]:
        session[_START] = ts
    elif ts > session[_END]:
        session[_END] = ts
    session[_EVENTS] += 1
    kind = event.type
    if kind == "page_view":
        session[_PAGE_VIEWS] += 1
    elif kind == "purchase":
        session[_S_PURCHASES] += 1
        session[_S_CENTS] += event.cents
    if ts <= session[_ENTRY][0] or ts >= session[_EXIT][0]:
        key = (ts, event.event_id, event.page)
        if key < session[_ENTRY]:
            session[_ENTRY] = key
        if key > session[_EXIT]:
            session[_EXIT] = key


def _merge(into: list, other: list) -> None:
    into[_START] = min(into[_START], other[_START])
    into[_END] = max(into[_END], other[_END])
    into[_EVENTS] += other[_EVENTS]
    into[_PAGE_VIEWS] += other[_PAGE_VIEWS]
    into[_S_PURCHASES] += other[_S_PURCHASES]
    into[_S_CENTS] += other[_S_CENTS]
    into[_ENTRY] = min(into[_ENTRY], other[_ENTRY])
    into[_EXIT] = max(into[_EXIT], other[_EXIT])


def _session_row(user: str, session: list) -> SessionRow:
    return SessionRow(
        user_id=user,
        session_start_ms=session[_START],
        session_end_ms=session[_END],
        events=session[_EVENTS],
        page_views=session[_PAGE_VIEWS],
        purchases=session[_S_PURCHASES],
        revenue_cents=session[_S_CENTS],
        entry_page=session[_ENTRY][2],
        exit_page=session[_EXIT][2],
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
        watermark = self.watermark
        newest = _NO_WATERMARK if self.max_event_ts is None else self.max_event_ts
        add_page, add_session = self.pages.add, self.sessions.add
        for event in events:
            on_time_page = add_page(event, watermark)
            on_time_session = add_session(event, watermark)
            if not (on_time_page and on_time_session):
                out.dead_letters.append(_late(event, on_time_page, on_time_session))
            if event.ts > newest:
                newest = event.ts
                if newest > watermark:
                    watermark = newest
        if events:
            self.max_event_ts = newest
        self.watermark = watermark
        return self._close(out)

    def idle(self, idle_ms: int) -> RowBatch:
        """The partition is caught up and has been quiet for `idle_ms`: let time pass."""
        if self.max_event_ts is not None:
            self.watermark = max(self.watermark, self.max_event_ts + idle_ms)
        return self._close(RowBatch())

    def flush(self) -> RowBatch:
        """End of bounded input: emit everything still open."""
        return RowBatch(page_stats=self.pages.flush(), sessions=self.sessions.flush())

    def _close(self, out: RowBatch) -> RowBatch:
        out.page_stats.extend(self.pages.close(self.watermark))
        out.sessions.extend(self.sessions.close(self.watermark))
        return out


def _late(event: Event, on_time_page: bool, on_time_session: bool) -> DeadLetterRow:
    missed = [
        name
        for name, on_time in (("page_stats", on_time_page), ("user_sessions", on_time_session))
        if not on_time
    ]
    return DeadLetterRow(
        source=event.source,
        reason="late",
        error="missed " + ", ".join(missed),
        payload=event.payload,
        received_at_ms=event.received_at_ms,
    )
