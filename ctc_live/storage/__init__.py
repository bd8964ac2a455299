"""The run store: one SQLite file (WAL) per run, written by its own thread."""

from ctc_live.storage.store import SCHEMA, RunStore, read_run

__all__ = ["SCHEMA", "RunStore", "read_run"]
