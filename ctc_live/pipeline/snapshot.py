"""What the pipeline publishes for views, and the commands views send back.

The dashboard (and the headless status line) only read snapshots: immutable records built on
request from counters that the stage threads own. Commands go the other way through the
pipeline's thread-safe command queue; the pipeline applies them between frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

CellState = Literal["pending", "ctc", "wbc", "uncertain"]


@dataclass(frozen=True)
class CellView:
    """One tracked cell as seen on the latest frame."""

    track_id: int
    x_px: float
    y_px: float
    bbox: tuple[int, int, int, int]  # (row0, col0, row1, col1), half-open
    state: CellState
    p_ctc: float | None


@dataclass(frozen=True)
class LatencyView:
    p50_ms: float
    p99_ms: float
    count: int
    histogram: np.ndarray  # counts per bin of stats.LATENCY_BINS_MS
    deadline_misses: int = 0


@dataclass(frozen=True)
class SorterView:
    enabled: bool
    connected: bool
    armed: bool
    watchdog_tripped: bool
    clock_offset_us: float | None
    round_trip_us: float | None
    last_error: str | None


@dataclass(frozen=True)
class Snapshot:
    taken_ns: int  # time.monotonic_ns() when built
    running: bool
    config_name: str
    run_dir: Path | None
    elapsed_s: float
    recording: bool
    threshold: float
    # Latest frame only: never a backlog.
    frame: np.ndarray | None
    frame_number: int
    frame_exposure_ns: int | None
    cells: tuple[CellView, ...]
    sort_line_px: float | None  # x of the sorting region when it lies in the field, else None
    # Counts (per cell, never per frame).
    counts: dict[str, int]  # cells, ctc, wbc, uncertain, pulses_sent/done/missed/lost, late
    frames: dict[str, int]  # produced, processed
    dropped: dict[str, int]  # by reason
    rates: dict[str, float]  # fps, cells_per_s, ctc_per_s (recent)
    latency: dict[str, LatencyView]  # by stage: segmentation, classification, decision, end_to_end
    sorter: SorterView
    memory_mb: float | None = None  # resident, the run's processes: the last one-second sample

    @property
    def frame_age_ms(self) -> float | None:
        if self.frame_exposure_ns is None:
            return None
        return (self.taken_ns - self.frame_exposure_ns) / 1e6


# Commands from a view to the pipeline.
@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Arm:
    armed: bool


@dataclass(frozen=True)
class SetThreshold:
    threshold: float


@dataclass(frozen=True)
class SetRecording:
    on: bool


@dataclass(frozen=True)
class SaveFrame:
    path: Path


Command = Start | Stop | Arm | SetThreshold | SetRecording | SaveFrame
