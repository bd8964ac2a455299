"""The live image: latest frame, levels control and per-cell overlays."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtGui, QtWidgets

from ctc_live.pipeline.snapshot import CellView, Snapshot

# Saturated or dark: a bright-field background is light grey, where light colours vanish.
STATE_COLOURS = {
    "ctc": (235, 30, 30),
    "wbc": (20, 170, 50),
    "uncertain": (255, 140, 0),
    "pending": (60, 60, 60),
}
STATE_LABELS = {"ctc": "CTC", "wbc": "WBC", "uncertain": "uncertain", "pending": "pending"}
# CTCs are what the operator looks for: thicker outline so they stand out at a glance.
STATE_PEN_WIDTH = {"ctc": 3.5, "wbc": 2.0, "uncertain": 2.5, "pending": 1.5}
# Auto contrast from a subsample: percentiles of every 8th pixel track the full frame closely
# and cost microseconds.
AUTO_LEVEL_STEP = 8
ID_FONT_PX = 13  # in image pixels: ids scale with the image
AUTO_LEVEL_PERCENTILES = (0.5, 99.5)


def legend_html() -> str:
    return " ".join(
        f'<span style="color: rgb{STATE_COLOURS[s]}; font-weight: bold">'
        f"■ {STATE_LABELS[s]}</span>"
        for s in STATE_COLOURS
    )


def auto_levels(frame: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(frame[::AUTO_LEVEL_STEP, ::AUTO_LEVEL_STEP], AUTO_LEVEL_PERCENTILES)
    return float(lo), float(max(hi, lo + 1))


def _digit_glyphs() -> dict[str, tuple[QtGui.QPainterPath, float]]:
    """Outline and advance of each digit: laying out text per cell and frame costs more than
    the frame itself, so ids are assembled from these."""
    font = QtGui.QFont()
    font.setPixelSize(ID_FONT_PX)
    font.setBold(True)
    metrics = QtGui.QFontMetricsF(font)
    glyphs = {}
    for digit in "0123456789-":
        path = QtGui.QPainterPath()
        path.addText(QtCore.QPointF(0, 0), font, digit)
        glyphs[digit] = (path, metrics.horizontalAdvance(digit))
    return glyphs


class LiveImage(QtWidgets.QWidget):
    """Shows the latest frame of each snapshot with boxes coloured by each cell's state."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.shown_frame_number: int | None = None
        self._setting_levels = False

        self.info = QtWidgets.QLabel("no frame yet")
        self.info.setStyleSheet("font-size: 15px; font-weight: bold")
        legend = QtWidgets.QLabel(legend_html())
        legend.setStyleSheet("font-size: 15px")
        self.auto_contrast = QtWidgets.QCheckBox("auto contrast")
        self.auto_contrast.setChecked(True)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.info)
        header.addStretch(1)
        header.addWidget(legend)
        header.addSpacing(16)
        header.addWidget(self.auto_contrast)

        self.view_widget = pg.GraphicsLayoutWidget()
        self.view = self.view_widget.addViewBox(lockAspect=True, invertY=True)
        self.view.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        self.histogram = pg.HistogramLUTItem()
        self.histogram.setImageItem(self.image)
        # The histogram is redrawn by update_histogram() at the slow panel rate: recomputing
        # it (and repainting its axis) on every frame costs more than showing the frame.
        self.image.sigImageChanged.disconnect(self.histogram.imageChanged)
        self.histogram.sigLevelChangeFinished.connect(self._levels_changed)
        self.view_widget.addItem(self.histogram)

        # One path per state for the boxes and one for the track ids (text as outlines in
        # image pixels): a handful of items however many cells, rebuilt once per frame.
        self.boxes: dict[str, QtWidgets.QGraphicsPathItem] = {}
        self.ids: dict[str, QtWidgets.QGraphicsPathItem] = {}
        for state, colour in STATE_COLOURS.items():
            box = QtWidgets.QGraphicsPathItem()
            pen = pg.mkPen(colour, width=STATE_PEN_WIDTH[state])
            pen.setCosmetic(True)
            if state == "pending":  # not decided yet: a tentative look
                pen.setStyle(QtCore.Qt.PenStyle.DashLine)
            box.setPen(pen)
            box.setZValue(10)
            ids = QtWidgets.QGraphicsPathItem()
            ids.setPen(QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
            ids.setBrush(pg.mkBrush(colour))
            ids.setZValue(11)
            for item in (box, ids):
                self.view.addItem(item)
            self.boxes[state], self.ids[state] = box, ids
        self._digits = _digit_glyphs()
        self.sort_line = pg.InfiniteLine(
            angle=90,
            pen=pg.mkPen((0, 200, 255), width=2, style=QtCore.Qt.PenStyle.DashLine),
            label="sort",
            labelOpts={"position": 0.05, "color": (0, 200, 255)},
        )
        self.sort_line.setZValue(5)
        self.sort_line.hide()
        self.view.addItem(self.sort_line)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.view_widget, 1)

    def _levels_changed(self) -> None:
        # A levels change we did not make is the operator dragging the histogram: hold it.
        if not self._setting_levels:
            self.auto_contrast.setChecked(False)

    def update_from(self, snap: Snapshot) -> None:
        if snap.frame is None:
            self.info.setText("waiting for the first frame")
            return
        age = snap.frame_age_ms
        age_text = "" if age is None else f"   age {age:,.1f} ms"
        self.info.setText(f"frame {snap.frame_number:,}{age_text}")
        if snap.frame_number == self.shown_frame_number:
            return
        self._set_frame(snap.frame)
        self.shown_frame_number = snap.frame_number
        self._draw_cells(snap.cells)
        if snap.sort_line_px is None:
            self.sort_line.hide()
        else:
            self.sort_line.setValue(snap.sort_line_px)
            self.sort_line.show()

    def update_histogram(self) -> None:
        if self.image.image is None:
            return
        self._setting_levels = True
        try:
            self.histogram.imageChanged()
        finally:
            self._setting_levels = False

    def _set_frame(self, frame: np.ndarray) -> None:
        first = self.image.image is None
        if self.auto_contrast.isChecked():
            levels = auto_levels(frame)
        else:
            levels = self.histogram.getLevels()
        self.image.setImage(frame, autoLevels=False, levels=levels)
        if first:
            # The histogram set its own default levels before there was an image; pyqtgraph
            # applies those after the first image, so put ours back through the histogram.
            self._setting_levels = True
            try:
                self.histogram.setLevels(*levels)
            finally:
                self._setting_levels = False
            self.view.autoRange(padding=0)
            self.update_histogram()

    def _draw_cells(self, cells: tuple[CellView, ...]) -> None:
        boxes = {state: QtGui.QPainterPath() for state in self.boxes}
        ids = {state: QtGui.QPainterPath() for state in self.ids}
        for cell in cells:
            row0, col0, row1, col1 = cell.bbox
            boxes[cell.state].addRect(QtCore.QRectF(col0, row0, col1 - col0, row1 - row0))
            x = float(col0)
            for digit in str(cell.track_id):
                glyph, advance = self._digits[digit]
                ids[cell.state].addPath(glyph.translated(x, row0 - 3))
                x += advance
        for state in self.boxes:
            self.boxes[state].setPath(boxes[state])
            self.ids[state].setPath(ids[state])
