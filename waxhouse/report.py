"""The summary a finished run prints: what came in, what landed, how fast."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import REGISTRY

from waxhouse.runargs import bytewax_run_args, is_cluster
from waxhouse.settings import Settings, mask_url

logger = logging.getLogger(__name__)

_REASONS = ("invalid_json", "invalid_event", "future", "duplicate", "late")


def _metric(name: str, labels: dict[str, str] | None = None) -> int:
    return int(REGISTRY.get_sample_value(name, labels or {}) or 0)


class RunReport:
    """Called by the ClickHouse sink with its open client just before it closes."""

    def __init__(
        self, settings: Settings, pipeline: str, tables: list[str], join: str | None = None
    ) -> None:
        self._settings = settings
        self._join = join
        self._pipeline = pipeline
        self._tables = [*tables, "dead_letters"]
        self._started = time.monotonic()
        # In a cluster the counters are this process's own; the tables are everyone's.
        self._scope = (
            " (this process; the tables hold all)" if is_cluster(bytewax_run_args()) else ""
        )

    def __call__(self, client: Any) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        events = _metric("waxhouse_events_parsed_total")
        rejected = {
            reason: _metric("waxhouse_dead_letters_total", {"reason": reason})
            for reason in _REASONS
        }
        # Duplicates and late events are among the parsed events; the other reasons are
        # records of their own. A join's reference versions are records too (its tombstones
        # are not counted).
        versions = (
            _metric("waxhouse_reference_versions_total", {"join": self._join}) if self._join else 0
        )
        records = events + versions
        records += sum(n for reason, n in rejected.items() if reason not in ("duplicate", "late"))
        counts = {
            table: client.command(f"SELECT count() FROM {table}")  # noqa: S608 - fixed names
            for table in self._tables
        }
        logger.info(
            "%s stopped: %d records in %.1f s%s, %d valid events, dead letters %s, "
            "rows in ClickHouse %s",
            self._pipeline,
            records,
            elapsed,
            self._scope,
            events,
            rejected,
            counts,
        )
        lines = [
            "",
            f"waxhouse: {records:,} records in {elapsed:.1f} s "
            f"({records / elapsed:,.0f} records/s){self._scope}",
            f"  valid events      {events:,}",
            *([f"  reference         {versions:,} versions ({self._join})"] if self._join else []),
            "  dead letters      "
            + ", ".join(f"{reason} {count:,}" for reason, count in rejected.items()),
            "  rows in ClickHouse "
            + ", ".join(f"{table} {count:,}" for table, count in counts.items()),
            f"  store             {mask_url(self._settings.clickhouse_url)}",
            "",
            "Try:",
            f'  waxhouse sql "SELECT * FROM {self._tables[0]} LIMIT 5"',  # noqa: S608 - a name
            "",
        ]
        print("\n".join(lines), flush=True)
