"""Clickstream analytics: events -> page_stats, user_sessions, dead_letters.

    python -m bytewax.run dataflows.clickstream

With `KAFKA_BOOTSTRAP_SERVERS` unset it runs embedded: the built-in generator feeds it
and results land in the chDB store at ./data/clickhouse. docs/reference.md describes its
tables; docs/guide.md shows how a pipeline like this one is written.
"""

from __future__ import annotations

import waxhouse
from waxhouse import Pipeline, Schema, Table, agg, fields, windows
from waxhouse.connectors.generator import GeneratorConfig, GeneratorSource

EVENT_TYPES = ("page_view", "click", "add_to_cart", "purchase")

events = Schema(
    {
        "event_id": fields.text(128),
        "user_id": fields.text(256),
        "type": fields.one_of(*EVENT_TYPES),
        "page": fields.text(2048, intern=True),  # one str per page, however many events
        "ts": fields.timestamp(),
        "value": fields.money(),  # cents; missing means 0
    },
    event_time="ts",
)
Event = events.event_type  # bound here, so events pickle (as namedtuple classes must be)


def declare(window_seconds: float, session_gap_seconds: float) -> Pipeline:
    """The clickstream with its two window sizes (WINDOW_SECONDS, SESSION_GAP_SECONDS)."""
    purchase = {"type": "purchase"}
    page_stats = Table(
        "page_stats",
        key="page",
        window=windows.tumbling(window_seconds),
        aggregates={
            "views": agg.count(where={"type": "page_view"}),
            "clicks": agg.count(where={"type": "click"}),
            "add_to_carts": agg.count(where={"type": "add_to_cart"}),
            "purchases": agg.count(where=purchase),
            "revenue": agg.sum("value", where=purchase),
            "unique_users": agg.count_distinct("user_id"),  # exact: the topic is keyed by user
        },
        live=windows.live(top_by="views", provisional=True),  # trending pages, this minute so far
    )
    user_sessions = Table(
        "user_sessions",
        key="user_id",
        window=windows.session(session_gap_seconds),
        aggregates={
            "events": agg.count(),
            "page_views": agg.count(where={"type": "page_view"}),
            "purchases": agg.count(where=purchase),
            "revenue": agg.sum("value", where=purchase),
            "entry_page": agg.first("page", by="event_id"),
            "exit_page": agg.last("page", by="event_id"),
        },
        live=windows.live(provisional=True),  # each user's session so far, then final
    )
    return Pipeline(
        "clickstream",
        events,
        key="user_id",
        tables=[page_stats, user_sessions],
        dedup=("user_id", "event_id"),  # a client's retry counts once (DEDUP_SECONDS)
    )


def generated(settings: waxhouse.Settings) -> GeneratorSource:
    """The embedded source: generated click events, keyed by user."""
    config = GeneratorConfig(seed=settings.generator_seed, events=settings.generator_events)
    return GeneratorSource(config, rate=settings.generator_rate)


settings = waxhouse.load_settings()
pipeline = declare(settings.window_seconds, settings.session_gap_seconds)
flow = waxhouse.flow(pipeline, embedded=generated, settings=settings)
