"""The dashboard window (real Qt, offscreen) on snapshots of the simulated scene."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from qtpy import QtCore

from ctc_live.config import Config
from ctc_live.dashboard import DashboardWindow, run_dashboard, save_screenshot, show_dashboard
from ctc_live.dashboard import app as dashboard_app
from ctc_live.dashboard.app import check_qt_binding
from ctc_live.dashboard.history import RateHistory
from ctc_live.dashboard.image import STATE_COLOURS, auto_levels
from ctc_live.dashboard.panels import LATENCY_STAGES, format_offset, log_ticks
from ctc_live.dashboard.remote import PipeSource
from ctc_live.dashboard.scene_source import SceneSource
from ctc_live.pipeline.snapshot import Arm, SaveFrame, SetRecording, SetThreshold, Start, Stop
from ctc_live.simulation import FlowScene


def ctc_in_view_time(config: Config) -> float:
    """A scene time when a CTC is well inside the field (past the pending part)."""
    scene = FlowScene(config)
    scene.generate_until(5.0)
    cell = next(c for c in scene.cells if c.kind == "ctc" and c.t_enter_s > 0.5)
    return cell.t_at_x(0.6 * scene.width_um)


@pytest.fixture(scope="module")
def config() -> Config:
    return Config()


@pytest.fixture(scope="module")
def ctc_time(config) -> float:
    return ctc_in_view_time(config)


@pytest.fixture(scope="module")
def rendered(config, ctc_time) -> SceneSource:
    return SceneSource(config, n_frames=2, interval_s=0.01, start_s=ctc_time, sort_line_px=560)


@pytest.fixture
def source(rendered, tmp_path) -> SceneSource:
    return rendered.new_run(tmp_path / "run")


@pytest.fixture
def window(qtbot, source, config) -> DashboardWindow:
    w = DashboardWindow(source, config)
    w.timer.stop()  # the tests refresh by hand
    qtbot.addWidget(w)
    w.show()
    return w


def shown(label) -> int:
    return int(label.text().replace(",", ""))


def test_counts_on_screen_match_the_snapshot(window, source):
    snap = window.refresh()
    values = window.counts.values
    for key in ("cells", "ctc", "wbc", "uncertain", "pulses_sent", "pulses_done",
                "pulses_missed", "pulses_lost", "late"):
        assert shown(values[key]) == snap.counts[key], key
    assert snap.counts["cells"] > 50 and snap.counts["ctc"] > 0
    assert shown(values["frames_processed"]) == snap.frames["processed"]
    assert shown(values["frames_dropped"]) == sum(snap.dropped.values())
    assert f"frame {snap.frame_number:,}" in window.image.info.text()
    assert "age 3.0 ms" in window.image.info.text()
    # One box per cell, in the path of its state; one id label per track.
    for state, item in window.image.boxes.items():
        n = sum(c.state == state for c in snap.cells)
        assert item.path().elementCount() == 5 * n, state
    assert any(c.state == "ctc" for c in snap.cells)
    for state, item in window.image.ids.items():
        assert item.path().isEmpty() == (not any(c.state == state for c in snap.cells)), state
    assert window.image.sort_line.isVisible() and window.image.sort_line.value() == 560
    assert window.run.fields["config"].text() == "sim"
    assert window.run.fields["threshold"].text() == "0.50"
    assert window.run.fields["memory"].text() == "—"  # the scene alone: no run's processes
    window.run.update_from(dataclasses.replace(snap, memory_mb=1234.4))
    assert window.run.fields["memory"].text() == "1,234 MB"


def test_overlays_follow_the_next_frame(window, source):
    window.refresh()
    first = window.image.boxes["wbc"].path().boundingRect()
    source.index = 1  # the next frame, 10 ms later: the same cells, moved along the flow
    snap = window.refresh()
    assert window.image.shown_frame_number == snap.frame_number
    moved = window.image.boxes["wbc"].path().boundingRect()
    assert moved.left() > first.left() and moved.top() == pytest.approx(first.top(), abs=1)


def test_latency_and_sorter_panels(window, source):
    snap = window.refresh()
    e2e = snap.latency["end_to_end"]
    row = LATENCY_STAGES.index("end_to_end")
    assert window.latency.table.item(row, 0).text() == f"{e2e.p50_ms:.2f}"
    assert window.latency.table.item(row, 3).text() == f"{e2e.deadline_misses:,}"
    assert f"{e2e.deadline_misses:,} of {e2e.count:,}" in window.latency.misses.text()
    assert "connected" in window.sorter.state.text()
    assert "12.5 µs" in window.sorter.timing.text()


def test_rates_scroll_once_a_second(window, source):
    snap = source.snapshot()
    for i in range(6):
        window.source = StampedSource(snap, taken_ns=snap.taken_ns + i * 500_000_000,
                                      elapsed_s=i * 0.5)
        window.refresh()
    t, _ = window.rates.curves["cells_per_s"].getData()
    # Sampled every refresh; drawn once a second (at 0, 1 and 2 s): the last sample not yet.
    assert list(t) == [0.0, 0.5, 1.0, 1.5, 2.0]
    _, fps = window.rates.curves["fps"].getData()
    assert np.all(fps == snap.rates["fps"])
    low, high = window.rates.top.viewRange()[1]
    assert low == 0 and high >= snap.rates["fps"]


class StampedSource:
    """One snapshot, re-stamped: as a pipeline seen at another time."""

    def __init__(self, snap, **changes):
        self.snap = dataclasses.replace(snap, **changes)

    def snapshot(self):
        return self.snap

    def send(self, command):
        pass


def test_threshold_controls_send_set_threshold(window, source):
    window.refresh()
    window.threshold_spin.setValue(0.7)
    assert source.sent[-1] == SetThreshold(0.7)
    window.threshold_slider.setValue(30)  # tracking off: as on release of the handle
    assert source.sent[-1] == SetThreshold(0.3)
    assert window.threshold_spin.value() == pytest.approx(0.3)
    # The controls then show what the pipeline reports, without sending it back.
    n = len(source.sent)
    source.threshold = 0.45
    window.refresh()
    assert window.threshold_spin.value() == pytest.approx(0.45)
    assert window.threshold_slider.value() == 45
    assert len(source.sent) == n


def test_buttons_send_commands_and_mirror_state(qtbot, window, source):
    window.refresh()
    click = QtCore.Qt.MouseButton.LeftButton
    assert window.stop_button.isEnabled() and not window.start_button.isEnabled()
    qtbot.mouseClick(window.arm_button, click)
    assert source.sent[-1] == Arm(True)
    qtbot.mouseClick(window.record_button, click)
    assert source.sent[-1] == SetRecording(True)
    window.refresh()
    assert window.arm_button.isChecked() and window.record_button.isChecked()
    assert "ARMED" in window.sorter.state.text() and "REC" in window.run.fields["recording"].text()
    qtbot.mouseClick(window.stop_button, click)
    assert source.sent[-1] == Stop()
    with qtbot.waitSignal(window.stopped, timeout=1000):
        window.refresh()
    assert window.start_button.isEnabled() and not window.stop_button.isEnabled()
    qtbot.mouseClick(window.start_button, click)
    assert source.sent[-1] == Start()


def test_save_frame_asks_for_a_png_in_the_run_dir(window, source, tmp_path):
    snap = window.refresh()
    path = window.save_frame()
    assert source.sent[-1] == SaveFrame(path)
    assert path == tmp_path / "run" / "frames" / f"frame-{snap.frame_number:06d}.png"


def test_closing_the_window_sends_stop(window, source):
    window.refresh()
    window.close()
    assert source.sent[-1] == Stop()
    assert not window.timer.isActive()


def test_frames_are_auto_contrasted_from_the_first(window, source):
    snap = window.refresh()
    assert window.image.image.levels == pytest.approx(auto_levels(snap.frame))
    assert window.image.histogram.getLevels() == pytest.approx(auto_levels(snap.frame))


def test_dragging_the_levels_holds_them(window, source):
    window.refresh()
    assert window.image.auto_contrast.isChecked()
    window.image.histogram.setLevels(1000, 3000)  # as the operator's drag does
    assert not window.image.auto_contrast.isChecked()
    source.index = 1
    window.refresh()
    assert window.image.image.levels == pytest.approx([1000, 3000])


def test_a_failing_source_is_reported_not_raised(window, source):
    def broken():
        raise OSError("pipeline gone")

    source.snapshot = broken
    assert window.refresh() is None
    assert "pipeline gone" in window.statusBar().currentMessage()


def test_a_failing_command_is_reported_not_raised(window, source):
    def refuse(command):
        raise OSError("recorder disk full")

    source.send = refuse
    window.record_button.click()
    assert "SetRecording failed: recorder disk full" in window.statusBar().currentMessage()


def test_screenshot_is_written_and_shows_the_ctc(window, tmp_path):
    window.refresh()
    path = save_screenshot(window, tmp_path / "shots" / "dashboard.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[:2] == (window.height(), window.width())
    assert image.std() > 20  # not a blank window
    # The CTC's red box (and the red CTC count) are on screen.
    red = np.abs(image - np.array(STATE_COLOURS["ctc"])).sum(axis=2) < 40
    assert red.sum() > 200


def test_show_dashboard_for_a_duration(source, config, tmp_path):
    shot = tmp_path / "end.png"
    assert show_dashboard(source, config, screenshot=shot, duration_s=0.3) == 0
    assert Stop() in source.sent and not source.running
    assert shot.stat().st_size > 10_000


def test_show_dashboard_gives_up_on_a_pipeline_that_does_not_stop(source, config, monkeypatch):
    monkeypatch.setattr(dashboard_app, "STOP_GRACE_S", 0.3)
    monkeypatch.setattr(source, "send", source.sent.append)  # hears Stop, never stops
    assert show_dashboard(source, config, duration_s=0.2) == 1
    assert Stop() in source.sent


def test_run_dashboard_shows_the_window_in_its_own_process(source, config, tmp_path):
    shot = tmp_path / "remote.png"
    assert run_dashboard(source, config, screenshot=shot, duration_s=1.0) == 0
    # The window's Stop came back through the pipe to the source, and the run ended.
    assert Stop() in source.sent and not source.running
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = np.abs(image - np.array(STATE_COLOURS["ctc"])).sum(axis=2) < 40
    assert red.sum() > 200  # the CTC and its count, drawn from the piped snapshots


def test_run_dashboard_reports_a_window_that_cannot_start(source, config, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "no-such-platform")
    assert run_dashboard(source, config, duration_s=0.2) == 2


def test_the_window_ends_when_the_pipeline_process_is_gone(source):
    pipeline_end, window_end = multiprocessing.Pipe()
    piped = PipeSource(window_end)
    # Without its frame: a whole one would not fit the pipe's buffer with no reader yet.
    pipeline_end.send(("snapshot", dataclasses.replace(source.snapshot(), frame=None)))
    assert piped.snapshot().running
    assert pipeline_end.recv()[0] == "ready"  # the next one is asked for at once
    pipeline_end.close()
    assert piped.snapshot().running is False  # the last state, as a stopped run
    piped.send(Stop())  # dropped, not raised


def test_screenshot_without_a_display(tmp_path):
    """No DISPLAY and no QT_QPA_PLATFORM (a headless machine): rendered offscreen."""
    script = (
        "import sys\n"
        "from ctc_live.config import Config\n"
        "from ctc_live.dashboard import run_dashboard\n"
        "from ctc_live.dashboard.scene_source import SceneSource\n"
        "config = Config()\n"
        "source = SceneSource(config, n_frames=1)\n"
        "sys.exit(run_dashboard(source, config, screenshot=sys.argv[1], duration_s=0.2))\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    shot = tmp_path / "headless.png"
    subprocess.run([sys.executable, "-c", script, str(shot)], env=env, check=True, timeout=120)
    assert Image.open(shot).size == (1600, 1000)


def test_show_dashboard_returns_when_the_pipeline_stops(qapp, source, config):
    QtCore.QTimer.singleShot(300, lambda: source.send(Stop()))
    assert show_dashboard(source, config) == 0


def test_show_dashboard_stays_open_after_the_operators_stop(qapp, source, config):
    seen = {}

    def press_stop():
        window = next(w for w in qapp.topLevelWidgets() if isinstance(w, DashboardWindow))
        window.stop_button.click()
        QtCore.QTimer.singleShot(300, lambda: close(window))

    def close(window):
        seen["open_after_stop"] = window.isVisible()
        window.close()

    QtCore.QTimer.singleShot(200, press_stop)
    assert show_dashboard(source, config) == 0
    assert seen["open_after_stop"]


def test_latency_axis_is_labelled_in_plain_milliseconds():
    major, minor = log_ticks(0.8, 300)
    assert [label for _, label in major] == ["1", "10", "100"]
    assert [label for _, label in minor] == ["2", "5", "20", "50", "200"]
    assert major[1][0] == pytest.approx(1.0)  # positions are log10(ms)


def test_large_clock_offsets_read_in_seconds():
    assert format_offset(-4_681_455_491.5) == "-4,681.455491 s"
    assert format_offset(12.5) == "12.5 µs"
    assert format_offset(None) == "—"


def test_rate_history_thins_trims_and_restarts():
    history = RateHistory(history_s=10.0, sample_interval_s=0.5)
    rates = {"fps": 200.0, "cells_per_s": 100.0, "ctc_per_s": 5.0}
    kept = [history.add(t, rates) for t in np.arange(0, 30, 0.1)]
    assert sum(kept) == 60  # one sample per 0.5 s
    t, series = history.series()
    assert t[0] >= t[-1] - 10.0 and t[-1] == pytest.approx(29.5)
    assert np.all(series["fps"] == 200.0) and np.all(np.diff(t) > 0)
    history.add(1.0, rates)  # a new run: time went back
    assert len(history) == 1


def test_the_installed_qt_binding_keeps_none_alive():
    check_qt_binding()
