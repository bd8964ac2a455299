"""The dashboard's main window: polls a snapshot source and sends commands back.

Nothing here runs on the pipeline's threads: a QTimer on the GUI thread asks the source for
its latest snapshot at ``refresh_hz`` and draws it. A slow GUI just skips frames; the
pipeline never waits for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from qtpy import QtCore, QtGui, QtWidgets

from ctc_live.config import Config
from ctc_live.dashboard.image import LiveImage
from ctc_live.dashboard.panels import CountsPanel, LatencyPanel, RatesPlot, RunPanel, SorterPanel
from ctc_live.pipeline.snapshot import (
    Arm,
    Command,
    SaveFrame,
    SetRecording,
    SetThreshold,
    Snapshot,
    Start,
    Stop,
)

log = logging.getLogger(__name__)

THRESHOLD_STEPS = 100  # slider resolution: 0.01 in P(CTC)
# Plots, tables and the levels histogram are statistics over seconds: redrawn once a second.
# Repainting their axes at the frame rate would cost more than the image itself.
SLOW_PANEL_INTERVAL_NS = 1_000_000_000


class SnapshotSource(Protocol):
    """What the dashboard needs from a pipeline: both calls are cheap and thread-safe."""

    def snapshot(self) -> Snapshot: ...

    def send(self, command: Command) -> None: ...


class DashboardWindow(QtWidgets.QMainWindow):
    """Live view of one run. ``refresh()`` is public so tests and benchmarks can drive it."""

    stopped = QtCore.Signal()  # the pipeline went from running to stopped
    closed = QtCore.Signal()

    def __init__(self, source: SnapshotSource, config: Config) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self.last_snapshot: Snapshot | None = None
        self._seen_running = False
        self._slow_refresh_ns: int | None = None
        self.operator_stopped = False  # the last Stop came from the Stop button
        self._poll_error: str | None = None
        self.setWindowTitle(f"ctc-live — {config.name}")

        self.image = LiveImage()
        self.counts = CountsPanel()
        self.rates = RatesPlot(config.dashboard.history_s)
        self.latency = LatencyPanel(config.pipeline.deadline_ms)
        self.sorter = SorterPanel()
        self.run = RunPanel()
        self._build_controls()
        self._build_layout()

        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, round(1000 / config.dashboard.refresh_hz)))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # --- construction -------------------------------------------------------------------

    def _build_controls(self) -> None:
        bar = QtWidgets.QToolBar("controls")
        bar.setMovable(False)
        bar.setStyleSheet("QToolBar { spacing: 8px } QToolButton, QLabel { font-size: 14px }")
        self.addToolBar(bar)
        self.start_button = self._button(bar, "Start", self._start_clicked)
        self.stop_button = self._button(bar, "Stop", self._stop_clicked)
        bar.addSeparator()
        self.arm_button = self._button(bar, "Arm sorter", self._arm_clicked, checkable=True)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel("CTC threshold"))
        self.threshold_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, THRESHOLD_STEPS)
        self.threshold_slider.setFixedWidth(160)
        # Only on release: dragging would flood the pipeline (and the run store) with values.
        self.threshold_slider.setTracking(False)
        self.threshold_slider.valueChanged.connect(
            lambda v: self.threshold_spin.setValue(v / THRESHOLD_STEPS)
        )
        bar.addWidget(self.threshold_slider)
        self.threshold_spin = QtWidgets.QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSingleStep(1 / THRESHOLD_STEPS)
        self.threshold_spin.setKeyboardTracking(False)
        self.threshold_spin.valueChanged.connect(self._threshold_changed)
        bar.addWidget(self.threshold_spin)
        bar.addSeparator()
        self.record_button = self._button(bar, "Record", self._record_clicked, checkable=True)
        self.save_frame_button = self._button(bar, "Save frame", self.save_frame)
        self.statusBar().setStyleSheet("font-size: 13px")

    def _button(self, bar: QtWidgets.QToolBar, text: str, slot, checkable: bool = False):
        button = QtWidgets.QToolButton()
        button.setText(text)
        button.setCheckable(checkable)
        button.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextOnly)
        # `clicked` fires on the operator's action only, never when a refresh mirrors state.
        button.clicked.connect(slot)
        bar.addWidget(button)
        return button

    def _build_layout(self) -> None:
        side = QtWidgets.QVBoxLayout()
        side.addWidget(self.counts)
        side.addWidget(self.sorter)
        side.addWidget(self.run)
        side.addStretch(1)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.image, 3)
        top.addLayout(side, 2)
        rates_box = QtWidgets.QGroupBox("Rates")
        rates_box.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
        QtWidgets.QVBoxLayout(rates_box).addWidget(self.rates)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(rates_box, 3)
        bottom.addWidget(self.latency, 2)
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addLayout(top, 3)
        layout.addLayout(bottom, 2)
        self.setCentralWidget(central)
        self.resize(1600, 1000)

    # --- commands -----------------------------------------------------------------------

    def send(self, command: Command) -> None:
        """Send a command; a failure is shown on the status bar and logged, never raised into
        the event loop."""
        log.info("dashboard command: %s", command)
        try:
            self.source.send(command)
        except Exception as exc:
            log.exception("dashboard command %s failed", command)
            self.statusBar().showMessage(f"{type(command).__name__} failed: {exc}")

    def send_stop(self) -> None:
        self.send(Stop())

    def _start_clicked(self) -> None:
        self.operator_stopped = False
        self.send(Start())

    def _stop_clicked(self) -> None:
        self.operator_stopped = True
        self.send_stop()

    def _arm_clicked(self, checked: bool) -> None:
        self.send(Arm(armed=checked))

    def _record_clicked(self, checked: bool) -> None:
        self.send(SetRecording(on=checked))

    def _threshold_changed(self, value: float) -> None:
        with QtCore.QSignalBlocker(self.threshold_slider):
            self.threshold_slider.setValue(round(value * THRESHOLD_STEPS))
        self.send(SetThreshold(threshold=round(value, 4)))

    def save_frame(self) -> Path:
        """Ask the pipeline to save its current frame as a PNG in the run folder."""
        snap = self.last_snapshot
        folder = snap.run_dir if snap is not None and snap.run_dir is not None else Path.cwd()
        number = snap.frame_number if snap is not None else 0
        path = folder / "frames" / f"frame-{number:06d}.png"
        self.send(SaveFrame(path=path))
        self.statusBar().showMessage(f"saving frame {number:,} to {path}", 5000)
        return path

    # --- refresh ------------------------------------------------------------------------

    def refresh(self) -> Snapshot | None:
        """Poll the source once and redraw; never raises into the event loop."""
        try:
            snap = self.source.snapshot()
        except Exception as exc:  # a broken source must not kill the window
            message = f"cannot read the pipeline's state: {exc}"
            if message != self._poll_error:
                log.exception("dashboard poll failed")
                self._poll_error = message
            self.statusBar().showMessage(message)
            return None
        self._poll_error = None
        self.last_snapshot = snap
        self.image.update_from(snap)
        self.counts.update_from(snap)
        self.rates.add(snap)
        self.sorter.update_from(snap.sorter)
        self.run.update_from(snap)
        self._mirror_controls(snap)
        if (
            self._slow_refresh_ns is None
            or snap.taken_ns - self._slow_refresh_ns >= SLOW_PANEL_INTERVAL_NS
            or not snap.running
        ):
            self._slow_refresh_ns = snap.taken_ns
            self.image.update_histogram()
            self.rates.redraw()
            self.latency.update_from(snap)
        if snap.running:
            self._seen_running = True
        elif self._seen_running:
            self._seen_running = False
            self.stopped.emit()
        return snap

    def _mirror_controls(self, snap: Snapshot) -> None:
        """Show the pipeline's actual state on the controls without sending anything."""
        self.start_button.setEnabled(not snap.running)
        self.stop_button.setEnabled(snap.running)
        self.arm_button.setEnabled(snap.sorter.enabled and snap.sorter.connected)
        self.arm_button.setChecked(snap.sorter.armed)
        self.record_button.setChecked(snap.recording)
        if not self.threshold_spin.hasFocus():
            with QtCore.QSignalBlocker(self.threshold_spin):
                self.threshold_spin.setValue(snap.threshold)
            with QtCore.QSignalBlocker(self.threshold_slider):
                self.threshold_slider.setValue(round(snap.threshold * THRESHOLD_STEPS))

    # --- closing ------------------------------------------------------------------------

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.timer.stop()
        # Unconditionally: Stop is idempotent, and it is what makes the pipeline write its summary.
        self.send_stop()
        super().closeEvent(event)
        self.closed.emit()
