"""SQLite run store.

Stage threads hand rows to :meth:`RunStore.put`, which never blocks: rows wait in a bounded
queue and a writer thread inserts them, committing at least once per commit interval. WAL mode
means a crash (even ``kill -9``) loses at most the rows of the last, uncommitted interval, and
readers (``ctc-live report``) can open the file while the run goes on.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    key TEXT PRIMARY KEY,          -- config, versions, started_at, stopped_at, status, ...
    value TEXT
);
CREATE TABLE IF NOT EXISTS frames (
    t_ns INTEGER,                  -- host monotonic time of the one-second sample
    elapsed_s REAL,
    produced INTEGER,              -- cumulative frames the camera produced
    processed INTEGER,             -- cumulative frames segmented
    dropped TEXT,                  -- cumulative drops by reason, JSON object
    fps REAL,                      -- processed frames per second over the last second
    rss_mb REAL                    -- resident memory of the program's processes, MB
);
CREATE TABLE IF NOT EXISTS cells (
    track_id INTEGER PRIMARY KEY,
    first_frame INTEGER,
    last_frame INTEGER,
    n_obs INTEGER,                 -- detections linked into the track
    n_scored INTEGER,              -- crops the classifier scored
    x_first_um REAL, y_first_um REAL,
    x_last_um REAL, y_last_um REAL,
    velocity_um_s REAL,
    diameter_um REAL,
    p_ctc REAL,                    -- combined evidence (mean log-odds)
    decision TEXT,                 -- ctc | wbc | uncertain
    threshold REAL,                -- the CTC threshold in force when decided
    decided_ns INTEGER,
    latency_ms REAL,               -- exposure of the deciding frame to decision
    truth_id INTEGER,              -- simulator only: matched true cell
    truth_kind TEXT
);
CREATE TABLE IF NOT EXISTS pulses (
    pulse_id INTEGER PRIMARY KEY,
    track_id INTEGER,
    target_ns INTEGER,             -- requested start, host monotonic ns
    width_us REAL,
    sent_ns INTEGER,               -- when the FIRE line was written
    outcome TEXT,                  -- pending | done | missed | cancelled | error | lost | late
    actual_start_ns INTEGER,       -- controller's start, converted to host ns
    error_us REAL,                 -- actual - target
    apart_um REAL,                 -- the blob's two cell lines this far apart at the sorter
    aim TEXT                       -- a blob of two cells told apart: rear | front | both
                                   -- (as the two were first seen)
);
CREATE TABLE IF NOT EXISTS events (
    t_ns INTEGER,
    level TEXT,                    -- info | warning | error
    kind TEXT,                     -- e.g. sorter, reconnect, threshold, drop
    message TEXT
);
"""

TABLE_COLUMNS = {
    "frames": ["t_ns", "elapsed_s", "produced", "processed", "dropped", "fps", "rss_mb"],
    "cells": [
        "track_id", "first_frame", "last_frame", "n_obs", "n_scored", "x_first_um",
        "y_first_um", "x_last_um", "y_last_um", "velocity_um_s", "diameter_um", "p_ctc",
        "decision", "threshold", "decided_ns", "latency_ms", "truth_id", "truth_kind",
    ],
    "pulses": [
        "pulse_id", "track_id", "target_ns", "width_us", "sent_ns", "outcome",
        "actual_start_ns", "error_us", "apart_um", "aim",
    ],
    "events": ["t_ns", "level", "kind", "message"],
    "run": ["key", "value"],
}
# Rows of these tables are re-written as they change (a pulse gets its outcome later).
REPLACE_TABLES = {"pulses", "run", "cells"}


class RunStore:
    def __init__(self, path: Path, commit_interval_s: float = 1.0, max_rows: int = 100_000):
        self.path = Path(path)
        self.commit_interval_s = commit_interval_s
        self.rows: queue.Queue = queue.Queue(maxsize=max_rows)
        self.dropped = 0
        self.written = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if self.path.exists():  # two runs in one store could not be told apart
            raise CtcLiveError(f"{self.path}: a run is already stored there; a new run needs "
                               "a new directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connect(self.path).close()  # create the schema now: a bad path fails at start
        self._thread = threading.Thread(target=self._run, name="store", daemon=True)

    def start(self) -> RunStore:
        self._thread.start()
        return self

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Queue a row; never blocks. A full queue is counted (and means a dead disk)."""
        try:
            self.rows.put_nowait((table, row))
        except queue.Full:
            self.dropped += 1

    def set(self, key: str, value: Any) -> None:
        self.put("run", {"key": key, "value": value if isinstance(value, str) else json.dumps(value)})

    def event(self, level: str, kind: str, message: str) -> None:
        self.put("events", {"t_ns": time.monotonic_ns(), "level": level, "kind": kind, "message": message})

    def close(self) -> None:
        """Write everything queued, commit, stop the writer."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        db = connect(self.path)
        try:
            last_commit = time.monotonic()
            while not (self._stop.is_set() and self.rows.empty()):
                try:
                    table, row = self.rows.get(timeout=0.05)
                    _insert(db, table, row)
                    self.written += 1
                except queue.Empty:
                    pass
                if time.monotonic() - last_commit >= self.commit_interval_s:
                    db.commit()
                    last_commit = time.monotonic()
            db.commit()
        except BaseException as exc:  # surfaced by close(); the pipeline keeps running
            log.exception("run store writer failed")
            self._error = exc
        finally:
            db.close()


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    columns = TABLE_COLUMNS[table]
    verb = "INSERT OR REPLACE" if table in REPLACE_TABLES else "INSERT"
    values = [_sql_value(row.get(c)) for c in columns]
    db.execute(
        f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        values,
    )


def _sql_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def read_run(run_dir: Path) -> dict[str, Any]:
    """Everything committed in a run's store, as plain Python (works on crashed runs)."""
    path = Path(run_dir) / "run.sqlite"
    if not path.is_file():
        raise CtcLiveError(f"{run_dir}: no run store (run.sqlite) in this directory")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        out: dict[str, Any] = {}
        out["run"] = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM run")}
        for table in ("frames", "cells", "pulses", "events"):
            out[table] = [dict(r) for r in db.execute(f"SELECT * FROM {table}")]
        return out
    finally:
        db.close()
