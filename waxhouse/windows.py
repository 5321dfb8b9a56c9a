"""The windows a table can have (`waxhouse.tables` says how each one behaves).

from waxhouse import windows

windows.tumbling(60)                                     # seconds, or a timedelta
windows.sliding(windows.minutes(5), every=windows.minutes(1))
windows.session(windows.minutes(30))
windows.count(100)
windows.episodes(lambda r: r.temperature > r.temp_max, at_least=3, tie="reading_id")

windows.live(top_by="views", provisional=True)        # Table(..., live=...): also in Redis
"""

from waxhouse.tables import (
    CountWindow,
    Episodes,
    Live,
    Session,
    Sliding,
    Tumbling,
    Window,
    count,
    episodes,
    hours,
    live,
    minutes,
    seconds,
    session,
    sliding,
    tumbling,
)

__all__ = [
    "CountWindow",
    "Episodes",
    "Live",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "count",
    "episodes",
    "hours",
    "live",
    "minutes",
    "seconds",
    "session",
    "sliding",
    "tumbling",
]
