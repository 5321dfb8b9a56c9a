"""The project's one root exception and its families."""

from __future__ import annotations


class WaxhouseError(Exception):
    """Root of every error waxhouse raises on purpose."""


class SettingsError(WaxhouseError):
    """Invalid configuration; the message names the variable."""


class SinkError(WaxhouseError):
    """Writing to ClickHouse failed for good (not retryable, or retries exhausted)."""


class SourceError(WaxhouseError):
    """Reading from the source failed for good."""
