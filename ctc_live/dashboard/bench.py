"""`ctc-live bench dashboard`: what one dashboard refresh costs.

The refresh runs in the window's own process; what remains in the pipeline's process is
taking the snapshot and pickling it for the pipe (timed here too).

The window refreshes from snapshots of the simulated scene (640×480 frames, ~10 cells in
view) that are built beforehand, so only the dashboard's own work is timed: reading the
snapshot, updating every panel and painting the window (offscreen). Snapshot times advance by
1/refresh_hz per refresh, so the slow panels redraw exactly as often as they do live.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time

import numpy as np

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import Config, load_config
from ctc_live.pipeline.snapshot import Command, Snapshot

BENCH_CELL_RATE_HZ = 160.0  # ~10 cells in the default field of view


class _Cycle:
    """Serves prepared snapshots in turn, stamped as if taken at the refresh rate."""

    def __init__(self, snapshots: list[Snapshot], refresh_hz: float) -> None:
        self.snapshots = snapshots
        self.period_ns = round(1e9 / refresh_hz)
        self.count = 0
        self.t0 = time.monotonic_ns()

    def snapshot(self) -> Snapshot:
        snap = self.snapshots[self.count % len(self.snapshots)]
        taken = self.t0 + self.count * self.period_ns
        self.count += 1
        return dataclasses.replace(
            snap,
            taken_ns=taken,
            frame_number=self.count,
            frame_exposure_ns=taken - 3_000_000,
            elapsed_s=self.count * self.period_ns / 1e9,
        )

    def send(self, command: Command) -> None:
        pass


@benchmark("dashboard", help="cost of one dashboard refresh (update + offscreen paint)")
def bench_dashboard(options: BenchOptions) -> list[Figure]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy import QtWidgets

    from ctc_live.dashboard.app import check_qt_binding
    from ctc_live.dashboard.scene_source import SceneSource
    from ctc_live.dashboard.window import DashboardWindow

    check_qt_binding()
    config = load_config(options.config_file) if options.config_file else Config()
    config.simulation.cell_rate_hz = BENCH_CELL_RATE_HZ
    refresh_hz = config.dashboard.refresh_hz
    n_frames, n_refresh = (8, 150) if options.quick else (30, 900)

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["ctc-live-bench"])
    scene = SceneSource(config, n_frames, interval_s=1 / refresh_hz)
    snapshots = []
    for _ in range(n_frames):
        snapshots.append(scene.snapshot())
        scene.advance()
    source = _Cycle(snapshots, refresh_hz)
    window = DashboardWindow(source, config)
    window.timer.stop()  # driven by hand so that each refresh is timed alone
    window.show()
    for _ in range(n_frames):
        window.refresh()
        app.processEvents()

    times = np.empty(n_refresh)
    cpu_start = time.process_time_ns()
    for i in range(n_refresh):
        start = time.perf_counter_ns()
        window.refresh()
        app.processEvents()  # the repaint
        times[i] = (time.perf_counter_ns() - start) / 1e6
    cpu_ms = (time.process_time_ns() - cpu_start) / 1e6 / n_refresh
    window.close()
    app.processEvents()

    # What serving the window costs the pipeline's process per refresh: pickling a snapshot
    # (the pipe's write releases the GIL).
    start = time.process_time_ns()
    for i in range(n_refresh):
        pickle.dumps(snapshots[i % len(snapshots)], protocol=pickle.HIGHEST_PROTOCOL)
    pickle_ms = (time.process_time_ns() - start) / 1e6 / n_refresh
    cells = np.mean([len(s.cells) for s in snapshots])
    return [
        # CPU time is what the dashboard takes from the pipeline; wall time also counts the
        # waits of a busy machine.
        Figure("refresh, CPU time", cpu_ms, "ms"),
        Figure(f"CPU at {refresh_hz:g} Hz", cpu_ms * refresh_hz / 10, "% of a core"),
        Figure("refresh, wall median", float(np.median(times)), "ms"),
        Figure("refresh, wall p99", float(np.percentile(times, 99)), "ms"),
        Figure("snapshot pickled for the window", pickle_ms, "ms"),
        Figure("cells in view", float(cells), "cells"),
    ]
