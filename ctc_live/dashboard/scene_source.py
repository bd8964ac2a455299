"""A snapshot source that shows the simulated scene with its ground truth, no pipeline.

It serves real Snapshot records built from frames the simulator rendered, with each cell's
state taken from its true class (debris shows as uncertain, cells in the first part of the
field as pending). It lets the dashboard be tested and benchmarked on its own, and applies the
commands it receives the way a pipeline would report them. Latency histograms are drawn from
a fixed log-normal and the sorter's clock figures are fixed, so those panels have data;
they are not measurements.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ctc_live.config import Config
from ctc_live.pipeline.snapshot import (
    Arm,
    CellView,
    Command,
    LatencyView,
    SaveFrame,
    SetRecording,
    SetThreshold,
    Snapshot,
    SorterView,
    Start,
    Stop,
)
from ctc_live.pipeline.stats import LATENCY_BINS_MS
from ctc_live.simulation import FlowScene

PENDING_FRACTION = 0.25  # cells are shown pending until they are this far into the field
STATE_OF_KIND = {"ctc": "ctc", "wbc": "wbc", "debris": "uncertain"}
SYNTHETIC_LATENCY_MS = {"acquisition": 1.0, "frame_queue": 0.3, "segmentation": 2.0,
                        "classification": 4.0, "decision": 0.05, "end_to_end": 8.0, "pulse": 6.0}


def _latency(
    median_ms: float, n: int, deadline_ms: float, rng: np.random.Generator
) -> LatencyView:
    samples = median_ms * rng.lognormal(0.0, 0.5, n)
    bins = np.searchsorted(LATENCY_BINS_MS, samples)
    counts = np.bincount(bins, minlength=len(LATENCY_BINS_MS) + 1)
    p50, p99 = np.percentile(samples, [50, 99]) if n else (np.nan, np.nan)
    return LatencyView(float(p50), float(p99), n, counts, int((samples > deadline_ms).sum()))


class SceneSource:
    """Frames pre-rendered at ``interval_s`` steps of scene time; ``advance()`` moves on one.

    After the last frame it starts again from the first (for benchmarks that refresh
    indefinitely); counts then restart too.
    """

    def __init__(
        self,
        config: Config,
        n_frames: int,
        interval_s: float = 0.05,
        start_s: float = 1.0,
        sort_line_px: float | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.scene = FlowScene(config)
        self.interval_s = interval_s
        self.sort_line_px = sort_line_px
        self.run_dir = run_dir
        self.times = [start_s + i * interval_s for i in range(n_frames)]
        self.frames = [self.scene.render(t) for t in self.times]
        self._new_run()

    def _new_run(self) -> None:
        self.index = 0
        self.sent: list[Command] = []
        self.running = True
        self.recording = False
        self.armed = False
        self.threshold = self.config.classifier.threshold
        self._rng = np.random.default_rng(0)

    def new_run(self, run_dir: Path | None = None) -> SceneSource:
        """A fresh run over the same frames: rendering them is the slow part."""
        run = copy.copy(self)
        run.run_dir = run_dir
        run._new_run()
        return run

    def advance(self) -> None:
        self.index = (self.index + 1) % len(self.frames)

    def send(self, command: Command) -> None:
        self.sent.append(command)
        match command:
            case Start():
                self.running = True
            case Stop():
                self.running = False
            case Arm(armed=armed):
                self.armed = armed
            case SetThreshold(threshold=t):
                self.threshold = t
            case SetRecording(on=on):
                self.recording = on
            case SaveFrame():
                pass

    def cell_views(self, t_s: float) -> tuple[CellView, ...]:
        px = self.scene.pixel_size_um
        views = []
        for cell in self.scene.visible_cells(t_s):
            x, y, r = cell.x_um(t_s) / px, cell.y_um / px, cell.diameter_um / px / 2
            state = (
                "pending" if x < PENDING_FRACTION * self.scene.width else STATE_OF_KIND[cell.kind]
            )
            views.append(
                CellView(
                    track_id=cell.id,
                    x_px=x,
                    y_px=y,
                    bbox=(int(y - r), int(x - r), int(np.ceil(y + r)), int(np.ceil(x + r))),
                    state=state,
                    p_ctc=None if state == "pending" else float(cell.kind == "ctc"),
                )
            )
        return tuple(views)

    def counts(self, t_s: float) -> dict[str, int]:
        """Cells decided by ``t_s``: those past the pending part of the field, by true class."""
        decision_x_um = PENDING_FRACTION * self.scene.width_um
        counts = dict.fromkeys(("cells", "ctc", "wbc", "uncertain"), 0)
        for cell in self.scene.cells:
            if cell.t_at_x(decision_x_um) <= t_s:
                counts["cells"] += 1
                counts[STATE_OF_KIND[cell.kind]] += 1
        counts.update(pulses_sent=counts["ctc"], pulses_done=counts["ctc"], pulses_missed=0,
                      pulses_lost=0, late=0)
        return counts

    def snapshot(self) -> Snapshot:
        t = self.times[self.index]
        counts = self.counts(t)
        frame_number = round((t - self.times[0]) / self.interval_s)
        elapsed = t - self.times[0]
        deadline = self.config.pipeline.deadline_ms
        now = time.monotonic_ns()
        last_second = self.counts(max(0.0, t - 1.0))  # the scene has flowed since t = 0
        return Snapshot(
            taken_ns=now,
            running=self.running,
            config_name=self.config.name,
            run_dir=self.run_dir,
            elapsed_s=elapsed,
            recording=self.recording,
            threshold=self.threshold,
            frame=self.frames[self.index],
            frame_number=frame_number,
            frame_exposure_ns=now - 3_000_000,
            cells=self.cell_views(t),
            sort_line_px=self.sort_line_px,
            counts=counts,
            frames={"produced": frame_number + 1, "processed": frame_number + 1},
            dropped={"queue_full": 0, "camera_gap": 0},
            rates={
                "fps": 1 / self.interval_s,
                "cells_per_s": float(counts["cells"] - last_second["cells"]),
                "ctc_per_s": float(counts["ctc"] - last_second["ctc"]),
            },
            latency={
                stage: _latency(median, counts["cells"], deadline, self._rng)
                for stage, median in SYNTHETIC_LATENCY_MS.items()
            },
            sorter=SorterView(
                enabled=True,
                connected=True,
                armed=self.armed,
                watchdog_tripped=False,
                clock_offset_us=12.5,
                round_trip_us=240.0,
                last_error=None,
            ),
        )
