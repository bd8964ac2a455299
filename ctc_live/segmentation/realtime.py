"""The real-time method: the paper's recipe with OpenCV, contours instead of label passes.

Per 640×480 frame: morphological gradient, box smoothing, one histogram for the threshold,
outer contours to fill holes, straight runs (walls) cut out of long blobs only, opening,
erosion of the halo, contours again. The watershed split runs only on the rare blob whose
shape says it is several cells.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ctc_live.config import SegmentationConfig
from ctc_live.segmentation.edges import disk, edge_threshold
from ctc_live.segmentation.regions import (
    CellRecord,
    CropNormaliser,
    Shape,
    ShapeRules,
    measure_contour,
    measure_contours,
    records_from_shapes,
)
from ctc_live.segmentation.split import split_blob_fast

# An outline whose area is below this share of its convex hull's (and of the ellipse in its
# box), in a box at least this nearly square, is an open rim (see
# ``RealtimeSegmenter._closed_rim``). A filled cell, or two touching, fill 0.85 and more of
# their hull; at 0.8 rather than 0.6 blobs of touching cells were filled whole and the
# simulator's recall of cells in view fell (0.977 → 0.974); the ellipse alone took one more
# false cell on BBBC030 (precision 0.9815 → 0.9795).
OPEN_RIM_MAX_FILL = 0.6
OPEN_RIM_MIN_ROUNDNESS = 0.6

_ZERO_BORDER = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}


class RealtimeSegmenter:
    """Segments uint8 edge-ready images of one size class; kernels and buffers made once.

    ``flow``: the cells are in suspension (the live path), so round: an elongated blob is
    tried for a split too, at the config's ``flow_split_*`` settings.
    """

    def __init__(self, config: SegmentationConfig, pixel_size_um: float, flow: bool = False):
        self.config = config
        # Eccentricity is at most 1, so 1.1 never asks for a split.
        self._split_eccentricity = config.flow_split_eccentricity if flow else 1.1
        self._split_depth = config.flow_split_depth if flow else config.split_depth
        self.pixel_size_um = pixel_size_um
        self.rules = ShapeRules.from_config(config, pixel_size_um)
        self.crops = CropNormaliser(config.crop_size)
        self._gradient_kernel = np.ones((3, 3), np.uint8)
        self._smooth = (max(round(config.edge_smooth_um / pixel_size_um) | 1, 1),) * 2
        open_px = max(round(config.opening_um / pixel_size_um / 2), 1)
        halo_px = round(config.halo_um / pixel_size_um)
        # Opening by a disk then eroding by a disk at least as large is the same as that
        # erosion alone ((A ∘ B) ⊖ (B ⊕ C) = A ⊖ (B ⊕ C)), so the opening is skipped then.
        self._open_kernel = disk(open_px) if halo_px < open_px else None
        self._halo_kernel = disk(halo_px) if halo_px else None
        # A straight run of edge pixels longer than two of the largest cells, or than most
        # of the frame, is a wall or a channel edge, whichever way the channel runs.
        self._line_px = round(2 * config.max_diameter_um / pixel_size_um)
        self._rim_px = (config.min_diameter_um / pixel_size_um,
                        config.max_diameter_um / pixel_size_um)
        self._lines: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._labels: np.ndarray | None = None
        self._drawn: list[tuple[int, int, int, int]] = []

    def segment(
        self,
        image_u8: np.ndarray,
        intensity: np.ndarray,
        frame_number: int = 0,
        crop_source: np.ndarray | None = None,
        contrast: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[CellRecord]]:
        """Cells in ``image_u8``; mean intensities are read from ``intensity`` and crops from
        ``crop_source`` (default: ``intensity``), both of the same shape; given ``contrast``
        (frame minus background), positions are contrast-weighted (see
        ``records_from_shapes``). The returned label image is reused by the next call: copy
        it to keep it."""
        mask = self.mask(image_u8)
        shapes = self.cell_shapes(mask)
        if self._labels is None or self._labels.shape != mask.shape:
            self._labels = np.zeros(mask.shape, np.int32)
        else:  # clearing only the last cells' boxes is far cheaper than the whole image
            for x, y, w, h in self._drawn:
                self._labels[y : y + h, x : x + w] = 0
        records = records_from_shapes(
            shapes,
            intensity,
            frame_number,
            self.rules,
            self.crops,
            self.pixel_size_um,
            self._labels,
            crop_source,
            contrast,
        )
        self._drawn = [cell.bbox for cell in records]
        return self._labels, records

    def mask(self, image_u8: np.ndarray) -> np.ndarray:
        cfg = self.config
        edges = cv2.morphologyEx(image_u8, cv2.MORPH_GRADIENT, self._gradient_kernel)
        edges = cv2.blur(edges, self._smooth)
        threshold = edge_threshold(edges, cfg.otsu_scale, cfg.min_edge_snr)
        mask = cv2.threshold(edges, threshold, 1, cv2.THRESH_BINARY)[1]
        outer, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(mask, [self._closed_rim(c) for c in outer], -1, 1, cv2.FILLED)
        # After filling, so that a cell whose rim merges with a wall edge is already solid
        # and only the wall's rows are cut away from it.
        self._remove_straight_runs(mask, outer)
        if self._open_kernel is not None:
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open_kernel)
        if self._halo_kernel is not None:
            mask = cv2.erode(mask, self._halo_kernel)
        return mask

    def _closed_rim(self, contour: np.ndarray) -> np.ndarray:
        """The outline to fill: a cell's rim with a gap in it (its edges fade where the
        bright halo meets a dark interior) outlines only a thin arc, which the opening then
        removes, so a rim-sized arc, its box about as wide as tall, is filled as its convex
        hull. On the simulator a 17 µm CTC alone in the channel was found in 2 of its 11
        frames. Three 60 s scenes (the whole decision path offline): CTCs tracked 870 → 872
        of 897, deflected 836 → 837, bystanders unchanged, 9-12 fewer tracks a scene (fewer
        cells split in two by a frame that lost them); BBBC030 unchanged (F1 0.9856)."""
        _, _, w, h = cv2.boundingRect(contour)
        smallest, largest = self._rim_px
        rim_sized = smallest <= min(w, h) and max(w, h) <= largest
        if not rim_sized or min(w, h) < OPEN_RIM_MIN_ROUNDNESS * max(w, h):
            return contour
        # The ellipse in its box first: most outlines are filled cells, and their hulls
        # cost 10 µs each (0.1 ms a frame).
        area = cv2.contourArea(contour)
        if area >= OPEN_RIM_MAX_FILL * math.pi / 4 * w * h:
            return contour
        hull = cv2.convexHull(contour)
        return hull if area < OPEN_RIM_MAX_FILL * cv2.contourArea(hull) else contour

    def _remove_straight_runs(self, mask: np.ndarray, outer: list) -> None:
        """Cut horizontal and vertical straight runs out of the blobs long enough to hold
        one, in place. Line openings cost milliseconds on a whole frame, so they run only
        inside such blobs (none on a background-subtracted flow frame)."""
        horizontal, vertical = self._line_kernels(mask.shape)
        shortest = min(horizontal.shape[1], vertical.shape[0])
        for contour in outer:
            x, y, w, h = cv2.boundingRect(contour)
            if max(w, h) < shortest:
                continue
            roi = mask[y : y + h, x : x + w]
            # Zero border: by default erosion treats outside as set, and every column of a
            # blob as tall as its box would pass for a vertical wall.
            walls = cv2.morphologyEx(roi, cv2.MORPH_OPEN, horizontal, **_ZERO_BORDER)
            walls |= cv2.morphologyEx(roi, cv2.MORPH_OPEN, vertical, **_ZERO_BORDER)
            roi &= ~cv2.dilate(walls, self._gradient_kernel)

    def _line_kernels(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if shape not in self._lines:
            h, w = shape
            self._lines[shape] = (
                np.ones((1, wall_run_px(self._line_px, w)), np.uint8),
                np.ones((wall_run_px(self._line_px, h), 1), np.uint8),
            )
        return self._lines[shape]

    def cell_shapes(self, mask: np.ndarray) -> list[Shape]:
        """The blobs of the mask, measured, with blobs shaped like several cells split.

        Only blobs with a concavity (solidity below the config's) are tried: in BBBC030's
        masks two cells pressed together without a neck are one blob, and splitting them by
        elongation alone lowered F1 there (0.986 → 0.968)."""
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out: list[Shape] = []
        too_small = 0.5 * self.rules.min_area_px  # polygon area: see ShapeRules.may_be_cell
        for contour in contours:
            if cv2.contourArea(contour) < too_small:
                continue
            shape = measure_contour(contour)
            if shape is None:
                continue
            several = (
                shape.solidity < self.config.split_below_solidity
                or shape.eccentricity > self._split_eccentricity
            )
            if not several or shape.polygon_area < 2 * self.rules.min_area_px:
                out.append(shape)
            else:
                out.extend(measure_contours(split_contour(contour, shape.bbox, self._split_depth)))
        return out


def wall_run_px(line_px: int, frame_px: int) -> int:
    """Length of a straight run taken for a wall: ``line_px``, or 80 % of the frame's side
    on a frame too small to hold that (a narrow channel imaged at high magnification)."""
    return max(min(line_px, int(0.8 * frame_px)), 3)


def split_contour(contour: np.ndarray, bbox: tuple[int, int, int, int], depth: float) -> list:
    """Contours of the pieces of one blob, in image coordinates."""
    x, y, w, h = bbox
    blob = np.zeros((h, w), np.uint8)
    cv2.drawContours(blob, [contour], -1, 1, cv2.FILLED, offset=(-x, -y))
    parts = split_blob_fast(blob, depth)
    pieces = []
    for part in np.unique(parts)[1:]:
        found, _ = cv2.findContours(
            (parts == part).astype(np.uint8),
            cv2.RETR_EXTERNAL,
            cv2.CHAIN_APPROX_SIMPLE,
            offset=(x, y),
        )
        pieces.extend(found)
    return pieces
