"""The windows a table can have (`waxhouse.tables` says how each one behaves).

from waxhouse import windows

windows.tumbling(60)                                     # seconds, or a timedelta
windows.sliding(windows.minutes(5), every=windows.minutes(1))
windows.session(windows.minutes(30))
windows.count(100)
"""

from waxhouse.tables import (
    CountWindow,
    Session,
    Sliding,
    Tumbling,
    Window,
    count,
    hours,
    minutes,
    seconds,
    session,
    sliding,
    tumbling,
)

__all__ = [
    "CountWindow",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "count",
    "hours",
    "minutes",
    "seconds",
    "session",
    "sliding",
    "tumbling",
]
