"""The windows a table can have (`waxhouse.tables` says how each one behaves).

from waxhouse import windows

windows.tumbling(60)                                     # seconds, or a timedelta
windows.sliding(windows.minutes(5), every=windows.minutes(1))
windows.session(windows.minutes(30))
windows.count(100)
windows.episodes(lambda r: r.temperature > r.temp_max, at_least=3, tie="reading_id")
"""

from waxhouse.tables import (
    CountWindow,
    Episodes,
    Session,
    Sliding,
    Tumbling,
    Window,
    count,
    episodes,
    hours,
    minutes,
    seconds,
    session,
    sliding,
    tumbling,
)

__all__ = [
    "CountWindow",
    "Episodes",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "count",
    "episodes",
    "hours",
    "minutes",
    "seconds",
    "session",
    "sliding",
    "tumbling",
]
