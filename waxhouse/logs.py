"""Logging setup, called once by an entry point (a flow module or the CLI)."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """Plain one-line records on stderr."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
