"""The dashboard driving a real short simulated run: the whole pipeline, its threads, the
sorter emulator and the run store, with the window (offscreen) as the only control."""

from __future__ import annotations

import threading

from qtpy import QtCore

from ctc_live.config import load_config
from ctc_live.dashboard import DashboardWindow, run_dashboard
from ctc_live.pipeline import Pipeline
from ctc_live.storage import read_run


def live_config():
    # Rich in CTCs so that a few seconds show decisions of every kind and sorter pulses.
    return load_config(None, overrides={"simulation.ctc_fraction": 0.3})


def start_run(config, run_dir):
    """Start a pipeline and, as `ctc-live run` does, end it on a stop request."""
    pipeline = Pipeline(config, run_dir).start()
    runner = threading.Thread(target=lambda: (pipeline.wait(), pipeline.stop()), daemon=True)
    runner.start()
    return pipeline, runner


def shown(window, key) -> int:
    return int(window.counts.values[key].text().replace(",", ""))


def test_dashboard_controls_a_real_run(qtbot, tmp_path):
    config = live_config()
    pipeline, runner = start_run(config, tmp_path / "run")
    window = DashboardWindow(pipeline, config)
    qtbot.addWidget(window)
    window.show()
    try:
        qtbot.waitUntil(lambda: shown(window, "ctc") >= 2 and shown(window, "cells") >= 10,
                        timeout=60_000)
        # The threshold control takes effect live: at 1.0 no cell can be called a CTC.
        window.threshold_spin.setValue(1.0)
        qtbot.waitUntil(lambda: pipeline.decider.threshold == 1.0, timeout=5_000)
        frame_at_change = window.refresh().frame_number
        cells_at_change = shown(window, "cells")
        qtbot.waitUntil(lambda: shown(window, "cells") >= cells_at_change + 15, timeout=60_000)
        assert window.threshold_spin.value() == 1.0
        with qtbot.waitSignal(window.stopped, timeout=60_000):
            qtbot.mouseClick(window.stop_button, QtCore.Qt.MouseButton.LeftButton)
    finally:
        pipeline.request_stop()
        runner.join(60)
    summary = pipeline.summary
    snap = window.refresh()
    assert not snap.running

    # What the window shows at the end is the run's summary.
    cells, pulses = summary["cells"], summary["pulses"]
    for key in ("ctc", "wbc", "uncertain"):
        assert shown(window, key) == cells[key], key
    assert shown(window, "cells") == cells["total"]
    for key in ("sent", "done", "missed", "lost"):
        assert shown(window, f"pulses_{key}") == pulses[key], key
    assert shown(window, "frames_processed") == summary["frames"]["processed"]
    assert shown(window, "frames_dropped") == sum(summary["frames"]["dropped"].values())

    # Decisions before the change have CTCs; cells first seen after it are decided at the
    # new threshold, and none of them is a CTC.
    decided = read_run(tmp_path / "run")["cells"]
    before = [c for c in decided if c["threshold"] == config.classifier.threshold]
    after = [c for c in decided if c["first_frame"] > frame_at_change]
    assert any(c["decision"] == "ctc" for c in before)
    assert len(after) >= 10 and all(c["threshold"] == 1.0 for c in after)
    assert not any(c["decision"] == "ctc" for c in after)
    assert any(e["kind"] == "threshold" for e in read_run(tmp_path / "run")["events"])


def test_run_dashboard_on_a_real_run_saves_the_screenshot(tmp_path):
    """The window in its own process, on a real run that ends by itself."""
    config = live_config()
    pipeline, runner = start_run(config, tmp_path / "run")
    stopper = threading.Timer(4.0, pipeline.request_stop)  # as --duration 4 would
    stopper.start()
    shot = tmp_path / "dashboard.png"
    try:
        assert run_dashboard(pipeline, config, screenshot=shot) == 0
    finally:
        stopper.cancel()
        pipeline.request_stop()
        runner.join(60)
    assert pipeline.summary is not None
    assert shot.stat().st_size > 50_000
