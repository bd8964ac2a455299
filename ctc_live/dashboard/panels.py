"""The dashboard's read-only panels: counts, rates, latency, sorter and run."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtWidgets

from ctc_live.dashboard.history import RateHistory
from ctc_live.dashboard.image import STATE_COLOURS
from ctc_live.pipeline.snapshot import Snapshot, SorterView
from ctc_live.pipeline.stats import LATENCY_BINS_MS

RED, GREEN, ORANGE, GREY = "#d62828", "#1f9d3a", "#e07b00", "#777777"
LATENCY_STAGES = (
    "acquisition", "frame_queue", "segmentation", "classification", "decision", "end_to_end",
    "pulse",
)


def _css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _group(title: str) -> QtWidgets.QGroupBox:
    box = QtWidgets.QGroupBox(title)
    box.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
    return box


def _count(n: int) -> str:
    return f"{n:,}"


def _optional(value: float | None, fmt: str, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{fmt}} {unit}"


def format_offset(offset_us: float | None) -> str:
    """The controller's clock counts from its own reset: offsets are often seconds."""
    if offset_us is not None and abs(offset_us) >= 1e6:
        return f"{offset_us / 1e6:,.6f} s"
    return _optional(offset_us, ",.1f", "µs")


def format_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class CountsPanel(QtWidgets.QGroupBox):
    """Big numbers: per-cell decisions, pulses and frames."""

    CELL_KEYS = (
        ("cells", "cells", "#202020"),
        ("ctc", "CTC", _css(STATE_COLOURS["ctc"])),
        ("wbc", "WBC", _css(STATE_COLOURS["wbc"])),
        ("uncertain", "uncertain", _css(STATE_COLOURS["uncertain"])),
    )
    PULSE_KEYS = (
        ("pulses_sent", "pulses sent", "#202020"),
        ("pulses_done", "done", GREEN),
        ("pulses_missed", "missed", RED),
        ("pulses_lost", "lost", RED),
        ("late", "late decisions", ORANGE),
    )

    def __init__(self) -> None:
        super().__init__("Counts")
        self.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
        self.values: dict[str, QtWidgets.QLabel] = {}
        grid = QtWidgets.QGridLayout(self)
        for col, (key, title, colour) in enumerate(self.CELL_KEYS):
            self._add(grid, 0, col, key, title, colour, 34)
        for col, (key, title, colour) in enumerate(self.PULSE_KEYS[:4]):
            self._add(grid, 2, col, key, title, colour, 22)
        self._add(grid, 4, 0, "late", "late decisions", ORANGE, 18)
        self._add(grid, 4, 1, "frames_processed", "frames processed", "#202020", 18)
        self._add(grid, 4, 2, "frames_dropped", "frames dropped", RED, 18)
        self.dropped_detail = QtWidgets.QLabel("")
        self.dropped_detail.setWordWrap(True)
        self.dropped_detail.setStyleSheet("font-size: 12px; font-weight: normal")
        grid.addWidget(self.dropped_detail, 4, 3, 2, 1)

    def _add(self, grid, row, col, key, title, colour, size) -> None:
        caption = QtWidgets.QLabel(title)
        caption.setStyleSheet("font-size: 12px; font-weight: normal; color: #555")
        value = QtWidgets.QLabel("0")
        value.setStyleSheet(f"font-size: {size}px; font-weight: bold; color: {colour}")
        grid.addWidget(caption, row, col)
        grid.addWidget(value, row + 1, col)
        self.values[key] = value

    def update_from(self, snap: Snapshot) -> None:
        for key, _, _ in self.CELL_KEYS + self.PULSE_KEYS:
            self.values[key].setText(_count(snap.counts.get(key, 0)))
        self.values["frames_processed"].setText(_count(snap.frames.get("processed", 0)))
        self.values["frames_dropped"].setText(_count(sum(snap.dropped.values())))
        detail = [f"{reason}: {n:,}" for reason, n in sorted(snap.dropped.items()) if n]
        if snap.counts.get("crops_dropped"):
            detail.append(f"crops dropped: {snap.counts['crops_dropped']:,}")
        self.dropped_detail.setText("\n".join(detail))


class RatesPlot(pg.GraphicsLayoutWidget):
    """Scrolling fps, cells/s and CTC/s over the last ``history_s`` seconds of the run."""

    def __init__(self, history_s: float) -> None:
        super().__init__()
        self.history = RateHistory(history_s)
        self.top = self.addPlot(row=0, col=0)
        self.bottom = self.addPlot(row=1, col=0)
        self.bottom.setXLink(self.top)
        self.top.hideAxis("bottom")  # the two plots share the bottom plot's time axis
        self.top.addLegend(offset=(5, 5), labelTextSize="11pt")
        self.bottom.addLegend(offset=(5, 5), labelTextSize="11pt")
        self.top.setLabel("left", "per second")
        self.bottom.setLabel("left", "per second")
        self.bottom.setLabel("bottom", "run time", units="s")
        self.top.showGrid(x=True, y=True, alpha=0.3)
        self.bottom.showGrid(x=True, y=True, alpha=0.3)
        self.curves = {
            "fps": self.top.plot(pen=pg.mkPen((90, 170, 255), width=2), name="frames/s"),
            "cells_per_s": self.top.plot(pen=pg.mkPen((240, 240, 240), width=2), name="cells/s"),
            # CTCs are rare: on their own axis so they are not flattened against fps.
            "ctc_per_s": self.bottom.plot(
                pen=pg.mkPen(STATE_COLOURS["ctc"], width=2), name="CTC/s"
            ),
        }
        for plot in (self.top, self.bottom):
            plot.disableAutoRange()
            plot.setMouseEnabled(x=False, y=False)

    def add(self, snap: Snapshot) -> None:
        self.history.add(snap.elapsed_s, snap.rates)

    def redraw(self) -> None:
        t, rates = self.history.series()
        if not len(t):
            return
        for key, curve in self.curves.items():
            curve.setData(t, rates[key])
        self.top.setXRange(max(0.0, t[-1] - self.history.history_s), max(t[-1], 1.0), padding=0)
        # From zero, so that a drop in rate looks like one.
        for plot, keys in ((self.top, ("fps", "cells_per_s")), (self.bottom, ("ctc_per_s",))):
            peak = max(float(np.nanmax(rates[k], initial=0.0)) for k in keys)
            plot.setYRange(0, max(peak, 1.0) * 1.1, padding=0)


class LatencyPanel(QtWidgets.QGroupBox):
    """Per-stage p50/p99 table and the end-to-end latency histogram against the deadline."""

    COLUMNS = ("p50 ms", "p99 ms", "samples", "late")

    def __init__(self, deadline_ms: float) -> None:
        super().__init__("Latency")
        self.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
        self.deadline_ms = deadline_ms
        self.table = QtWidgets.QTableWidget(len(LATENCY_STAGES), len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setVerticalHeaderLabels([s.replace("_", "-") for s in LATENCY_STAGES])
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.table.setStyleSheet("font-size: 13px; font-weight: normal")
        self.table.horizontalHeader().setSectionResizeMode(
            QtWidgets.QHeaderView.ResizeMode.Stretch
        )
        self.table.verticalHeader().setSectionResizeMode(
            QtWidgets.QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for row in range(len(LATENCY_STAGES)):
            for col in range(len(self.COLUMNS)):
                item = QtWidgets.QTableWidgetItem("—")
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignRight)
                self.table.setItem(row, col, item)
        height = self.table.horizontalHeader().height() + 4
        height += sum(self.table.rowHeight(r) for r in range(len(LATENCY_STAGES)))
        self.table.setFixedHeight(height)

        self.misses = QtWidgets.QLabel("")
        self.misses.setStyleSheet("font-size: 15px; font-weight: bold")
        self.plot = pg.PlotWidget()
        self.plot.setLogMode(x=True, y=False)
        self.plot.setLabel("bottom", "end-to-end latency (ms)")
        self.plot.setLabel("left", "cells")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.histogram = self.plot.plot(
            stepMode="center", fillLevel=0, brush=(90, 170, 255, 150), pen=(90, 170, 255)
        )
        self.plot.addItem(
            pg.InfiniteLine(
                math.log10(deadline_ms),
                angle=90,
                pen=pg.mkPen(RED, width=2, style=QtCore.Qt.PenStyle.DashLine),
                label="deadline",
                labelOpts={"position": 0.9, "color": RED},
            )
        )
        self._hist_count = -1

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.misses)
        layout.addWidget(self.plot, 1)

    def update_from(self, snap: Snapshot) -> None:
        for row, stage in enumerate(LATENCY_STAGES):
            view = snap.latency.get(stage)
            cells = ("—",) * 4 if view is None else (
                _optional(view.p50_ms, ".2f", "").strip(),
                _optional(view.p99_ms, ".2f", "").strip(),
                _count(view.count),
                _count(view.deadline_misses),
            )
            for col, text in enumerate(cells):
                item = self.table.item(row, col)
                if item.text() != text:
                    item.setText(text)
        e2e = snap.latency.get("end_to_end")
        if e2e is None:
            return
        colour = RED if e2e.deadline_misses else GREEN
        self.misses.setText(
            f'<span style="color: {colour}">over the {self.deadline_ms:g} ms deadline: '
            f"{e2e.deadline_misses:,} of {e2e.count:,}</span>"
        )
        if e2e.count != self._hist_count:
            self._hist_count = e2e.count
            self._draw_histogram(np.asarray(e2e.histogram))

    def _draw_histogram(self, counts: np.ndarray) -> None:
        # counts[0] and counts[-1] are the under- and overflow bins outside LATENCY_BINS_MS.
        inner = counts[1 : len(LATENCY_BINS_MS)]
        nonzero = np.flatnonzero(inner)
        if not len(nonzero):
            self.histogram.setData([], [])
            return
        # From just below the fastest cell to past the slowest, and always past the deadline.
        deadline_bin = int(np.searchsorted(LATENCY_BINS_MS, self.deadline_ms))
        lo = max(0, nonzero[0] - 3)
        hi = min(len(inner), max(nonzero[-1] + 4, deadline_bin + 2))
        edges = LATENCY_BINS_MS[lo : hi + 1]
        self.histogram.setData(edges, inner[lo:hi])
        self.plot.getAxis("bottom").setTicks(log_ticks(edges[0], edges[-1]))


def log_ticks(lo_ms: float, hi_ms: float) -> list[list[tuple[float, str]]]:
    """Ticks for a log axis in ms at 1-2-5 steps, labelled plainly ("0.5", "20", "1000"):
    pyqtgraph labels every minor tick as a power of ten when the span is short."""
    major, minor = [], []
    for exponent in range(-3, 6):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if lo_ms <= value <= hi_ms:
                (major if mantissa == 1 else minor).append((math.log10(value), f"{value:g}"))
    return [major, minor]


def _flag(on: bool, yes: str, no: str, yes_colour: str, no_colour: str) -> str:
    return f'<span style="color: {yes_colour if on else no_colour}">● {yes if on else no}</span>'


class SorterPanel(QtWidgets.QGroupBox):
    def __init__(self) -> None:
        super().__init__("Sorter")
        self.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
        self.state = QtWidgets.QLabel("")
        self.state.setStyleSheet("font-size: 16px")
        self.timing = QtWidgets.QLabel("")
        self.timing.setStyleSheet("font-size: 13px; font-weight: normal")
        self.error = QtWidgets.QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"font-size: 13px; font-weight: normal; color: {RED}")
        layout = QtWidgets.QVBoxLayout(self)
        for w in (self.state, self.timing, self.error):
            layout.addWidget(w)

    def update_from(self, sorter: SorterView) -> None:
        if not sorter.enabled:
            self.state.setText(f'<span style="color: {GREY}">sorter disabled</span>')
            self.timing.setText("")
            self.error.setText("")
            return
        flags = [
            _flag(sorter.connected, "connected", "disconnected", GREEN, RED),
            _flag(sorter.armed, "ARMED", "disarmed", RED, GREY),
        ]
        if sorter.watchdog_tripped:
            flags.append(f'<span style="color: {RED}">● disarmed by watchdog</span>')
        self.state.setText("&nbsp;&nbsp;".join(flags))
        self.timing.setText(
            f"clock offset {format_offset(sorter.clock_offset_us)}   "
            f"round trip {_optional(sorter.round_trip_us, ',.0f', 'µs')}"
        )
        self.error.setText(f"last error: {sorter.last_error}" if sorter.last_error else "")


class RunPanel(QtWidgets.QGroupBox):
    def __init__(self) -> None:
        super().__init__("Run")
        self.setStyleSheet("QGroupBox { font-size: 14px; font-weight: bold }")
        self.fields: dict[str, QtWidgets.QLabel] = {}
        form = QtWidgets.QFormLayout(self)
        for key in ("state", "config", "run dir", "elapsed", "recording", "threshold",
                    "memory"):
            label = QtWidgets.QLabel("—")
            label.setStyleSheet("font-size: 13px; font-weight: normal")
            label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(key, label)
            self.fields[key] = label

    def update_from(self, snap: Snapshot) -> None:
        f = self.fields
        f["state"].setText(
            _flag(snap.running, "running", "stopped", GREEN, GREY)
        )
        f["config"].setText(snap.config_name)
        f["run dir"].setText(str(snap.run_dir) if snap.run_dir else "—")
        f["elapsed"].setText(format_elapsed(snap.elapsed_s))
        f["recording"].setText(_flag(snap.recording, "REC", "off", RED, GREY))
        f["threshold"].setText(f"{snap.threshold:.2f}")
        f["memory"].setText("—" if snap.memory_mb is None else f"{snap.memory_mb:,.0f} MB")
