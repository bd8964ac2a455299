"""Logging set-up shared by every command: one logger per module, one format."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    # Filter at the handler too: importing pymmcore-plus lowers the root logger to DEBUG.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level.upper())
    # pymmcore-plus logs every device call at DEBUG: only its warnings concern a user.
    logging.getLogger("pymmcore-plus").setLevel(max(logging.WARNING, logging.getLogger().level))


def log_to_file(path: Path) -> logging.Handler:
    """Also write the log into a run's directory; returns the handler so it can be removed."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    console = logging.getLogger().handlers
    handler.setLevel(console[0].level if console else logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler
