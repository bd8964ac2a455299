"""From a segmentation mask to cells: shape features, shape rules, records and crops.

Both segmentation methods end here, so a cell is described and accepted the same way whichever
method found it. Features come from each blob's outer contour (OpenCV moments), which costs
microseconds per cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np

from ctc_live.config import SegmentationConfig


@dataclass(slots=True)
class CellRecord:
    """One detected cell in one frame. Coordinates: x = column (along the flow), y = row."""

    frame_number: int
    label: int
    x_px: float
    y_px: float
    x_um: float
    y_um: float
    bbox: tuple[int, int, int, int]  # x, y, width, height in px
    area_px: int
    diameter_um: float  # equivalent-circle diameter
    solidity: float
    eccentricity: float
    mean_intensity: float
    touches_edge: bool
    single_cell: bool
    # The crop, or how to cut it: cut on first use, since the live stage scores only the
    # crops of cells still undecided (cutting every one cost a tenth of its frame time).
    _crop: np.ndarray | Callable[[], np.ndarray] = field(repr=False)
    # Centres (x, y, x, y px, rear cell first) of the two cells a blob may hold (see
    # ``pair_centres``); None for a round blob.
    ends_px: tuple[float, float, float, float] | None = None
    # Crops on those centres (``end_crops``).
    _end_crops: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False)

    @property
    def crop(self) -> np.ndarray:
        """(crop_size, crop_size) float32, normalised."""
        if callable(self._crop):
            self._crop = self._crop()
        return self._crop

    @property
    def may_be_two_cells(self) -> bool:
        """Longer than wide by ``TWO_CELLS_MIN_EXCESS_UM``, in any direction: maybe two
        cells."""
        return self.ends_px is not None

    def end_crops(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Crops centred on the two cells a blob may hold (``ends_px``), else None.

        Two cells that overlap in the image for their whole crossing make one blob; the crop
        on its outline mixes them, but one on each end shows mostly one cell. On the
        simulator (two 60 s scenes, blobs 3 µm or more longer than high) such crops were
        scored right 99% of the time, and the mean log-odds of a blob's end crops named its
        CTC in 42 of 44 blobs of two cells, where the blob's own crops called 26 a CTC.
        """
        return None if self._end_crops is None else self._end_crops()

    def row(self) -> dict:
        """The record without its crop, for tables and CSV files."""
        return {name: getattr(self, name) for name in CSV_FIELDS}


CSV_FIELDS = (
    "frame_number",
    "label",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "bbox",
    "area_px",
    "diameter_um",
    "solidity",
    "eccentricity",
    "mean_intensity",
    "touches_edge",
    "single_cell",
)


@dataclass(slots=True)
class Shape:
    """Shape of one blob, measured on its outer contour."""

    contour: np.ndarray
    cx: float
    cy: float
    polygon_area: float
    solidity: float
    eccentricity: float
    major_px: float
    minor_px: float
    bbox: tuple[int, int, int, int]


def measure_contour(contour: np.ndarray) -> Shape | None:
    """Shape features of one outer contour; None for a degenerate (zero-area) contour."""
    m = cv2.moments(contour)
    if m["m00"] <= 0:
        return None
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    # Eigenvalues of the blob's second-moment matrix: its equivalent ellipse's axes.
    a, b, c = m["mu20"] / m["m00"], m["mu02"] / m["m00"], m["mu11"] / m["m00"]
    root = math.sqrt(((a - b) / 2) ** 2 + c * c)
    lam1, lam2 = (a + b) / 2 + root, max((a + b) / 2 - root, 0.0)
    return Shape(
        contour=contour,
        cx=m["m10"] / m["m00"],
        cy=m["m01"] / m["m00"],
        polygon_area=m["m00"],
        solidity=m["m00"] / hull_area if hull_area > 0 else 1.0,
        eccentricity=math.sqrt(1 - lam2 / lam1) if lam1 > 0 else 0.0,
        major_px=4 * math.sqrt(lam1),
        minor_px=4 * math.sqrt(lam2),
        bbox=cv2.boundingRect(contour),
    )


@dataclass(frozen=True, slots=True)
class ShapeRules:
    """The config's µm limits converted to pixels for one pixel size."""

    min_area_px: float
    max_area_px: float
    max_blob_area_px: float
    max_length_px: float
    max_aspect: float
    min_solidity: float
    max_eccentricity: float

    @classmethod
    def from_config(cls, cfg: SegmentationConfig, pixel_size_um: float) -> ShapeRules:
        r_min = cfg.min_diameter_um / 2 / pixel_size_um
        r_max = cfg.max_diameter_um / 2 / pixel_size_um
        return cls(
            min_area_px=math.pi * r_min**2,
            max_area_px=math.pi * r_max**2,
            # A clump of a few touching cells is still reported (not as a single cell); a wall
            # edge, a streak or a large static structure is not.
            max_blob_area_px=3 * math.pi * r_max**2,
            max_length_px=5 * r_max,
            max_aspect=cfg.max_aspect,
            min_solidity=cfg.min_solidity,
            max_eccentricity=cfg.max_eccentricity,
        )

    def is_cell(self, shape: Shape, area_px: int, frame_shape: tuple[int, int]) -> bool:
        """Could this blob be a cell (or a few touching ones)? Rejects debris, wall edges,
        streaks, large static structures and anything spanning the frame. A cell cut by the
        frame edge may look thin, so the aspect rule spares blobs at the edge; the length
        rule does not."""
        return self.min_area_px <= area_px <= self.max_blob_area_px and self.may_be_cell(
            shape, frame_shape
        )

    def may_be_cell(self, shape: Shape, frame_shape: tuple[int, int]) -> bool:
        """``is_cell`` without the pixel area, from the contour alone: the cheap test first.
        The polygon through the outline's pixel centres is smaller than the pixel count by
        about half the perimeter, so its area is only checked loosely here."""
        if not 0.5 * self.min_area_px <= shape.polygon_area <= self.max_blob_area_px:
            return False
        x, y, w, h = shape.bbox
        if (x == 0 and x + w >= frame_shape[1]) or (y == 0 and y + h >= frame_shape[0]):
            return False
        if shape.major_px > self.max_length_px:
            return False
        return touches_edge(shape.bbox, frame_shape) or (
            shape.major_px <= self.max_aspect * max(shape.minor_px, 1.0)
        )

    def is_single(self, shape: Shape, area_px: int) -> bool:
        return (
            self.min_area_px <= area_px <= self.max_area_px
            and shape.solidity >= self.min_solidity
            and shape.eccentricity <= self.max_eccentricity
        )


class CropNormaliser:
    """Cuts the fixed-size crop around a centroid and removes brightness and background.

    The background under the cell is modelled as a plane fitted to the crop's border pixels
    (a cloudy or dim background is rarely flat over 30 px), subtracted, and the rest divided by
    its standard deviation. The result is unchanged by any gain and offset of the image and by
    a linear background gradient.
    """

    def __init__(self, size: int):
        self.size = size
        index = np.arange(size * size).reshape(size, size)
        self._border = np.concatenate([index[0], index[-1], index[1:-1, 0], index[1:-1, -1]])
        yy, xx = np.divmod(self._border, size)
        design = np.stack([np.ones_like(xx), xx, yy], axis=1).astype(np.float64)
        self._fit = np.linalg.pinv(design).astype(np.float32)  # least-squares plane
        gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
        self._plane = np.stack([np.ones_like(gx), gx, gy]).reshape(3, -1)  # 1, x, y per pixel

    def __call__(self, image: np.ndarray, cx: float, cy: float) -> np.ndarray:
        crop = self.cut(image, cx, cy)
        flat = crop.reshape(-1)
        flat -= (self._fit @ flat.take(self._border)) @ self._plane
        std = float(cv2.meanStdDev(crop)[1][0, 0])
        if std > 0:
            crop *= 1.0 / std
        return crop

    def cut(self, image: np.ndarray, cx: float, cy: float) -> np.ndarray:
        """float32 crop centred on (cx, cy); parts outside the image repeat its edge pixels."""
        s = self.size
        x0 = round(cx) - s // 2
        y0 = round(cy) - s // 2
        h, w = image.shape
        if 0 <= x0 and 0 <= y0 and x0 + s <= w and y0 + s <= h:
            return image[y0 : y0 + s, x0 : x0 + s].astype(np.float32)
        ys = np.clip(np.arange(y0, y0 + s), 0, h - 1)
        xs = np.clip(np.arange(x0, x0 + s), 0, w - 1)
        return image[np.ix_(ys, xs)].astype(np.float32)


# A blob this much longer than wide may hold two cells (one cell's outline varies by a pixel or
# two either way). Of the blobs 2 µm or more longer than wide in 1,600 frames of the simulator,
# 178 held one cell (median excess 2.5 µm), 308 two (6.0 µm); at 3 µm, 71 and 272. Offline, the
# whole decision path on three 60 s scenes, 2 → 3 µm: recovery 0.925 / 0.952 / 0.932 → 0.909 /
# 0.955 / 0.932 (4 CTCs fewer of 897), purity 0.919 / 0.925 / 0.919 → 0.915 / 0.931 / 0.935
# (6 bystanders fewer); live (20 s), 5% fewer crops to score (a blob that may be two is
# scored on every crop, and on each cell's): 7,602 against 8,039, 6,880 before any direction.
TWO_CELLS_MIN_EXCESS_UM = 3.0


def pair_centres(contour: np.ndarray, min_excess_px: float
                 ) -> tuple[float, float, float, float] | None:
    """Centres (x, y, x, y px; rear cell first) of the two cells a blob may hold, whatever
    their orientation; None for a blob less than ``min_excess_px`` longer than wide.

    Two overlapping cells of about one size make a blob whose smallest enclosing rectangle
    lies along the line through their centres, one cell wide and their distance longer: each
    centre is half a width in from an end. Cells one above the other (across the flow) move at
    different speeds and part on the way to the sorter; the centroid's line runs between
    them."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(contour)
    if abs(w - h) < min_excess_px:
        return None
    a = math.radians(angle)
    ux, uy = (math.cos(a), math.sin(a)) if w >= h else (-math.sin(a), math.cos(a))
    half = abs(w - h) / 2
    ends = (cx - half * ux, cy - half * uy, cx + half * ux, cy + half * uy)
    return ends if ends[0] <= ends[2] else ends[2:] + ends[:2]


def _end_crops(crops: CropNormaliser, source: np.ndarray,
               ends: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    return crops(source, ends[0], ends[1]), crops(source, ends[2], ends[3])


def touches_edge(bbox: tuple[int, int, int, int], frame_shape: tuple[int, int]) -> bool:
    x, y, w, h = bbox
    return x == 0 or y == 0 or x + w >= frame_shape[1] or y + h >= frame_shape[0]


def measure_contours(contours: list[np.ndarray]) -> list[Shape]:
    return [shape for shape in map(measure_contour, contours) if shape is not None]


def records_from_shapes(
    shapes: list[Shape],
    image: np.ndarray,
    frame_number: int,
    rules: ShapeRules,
    crops: CropNormaliser,
    pixel_size_um: float,
    labels: np.ndarray,
    crop_source: np.ndarray | None = None,
    contrast: np.ndarray | None = None,
) -> list[CellRecord]:
    """Keep the blobs that pass the shape rules, draw them into ``labels`` (all zero on
    entry; ids 1..n in record order, nothing else drawn) and describe each as a CellRecord
    with its crop, cut from ``crop_source`` (default: ``image``).

    A cell's position is its outline's centroid, or, given ``contrast`` (the frame minus
    its background), the centroid of |contrast| inside the blob: on the simulator that
    halved the error of a track's velocity extrapolated to the sorter (90th percentile of
    0.75 → 0.49 µm at 1.2 mm), since every pixel counts, not only those on the outline.
    The crop stays centred on the outline, as the classifier was trained."""
    crop_source = image if crop_source is None else crop_source
    records: list[CellRecord] = []
    for shape in shapes:
        if not rules.may_be_cell(shape, image.shape):
            continue
        x, y, bw, bh = shape.bbox
        label_id = len(records) + 1
        cv2.drawContours(labels, [shape.contour], -1, label_id, cv2.FILLED)
        inside = labels[y : y + bh, x : x + bw] == label_id
        area = int(np.count_nonzero(inside))
        if not rules.is_cell(shape, area, image.shape):
            labels[y : y + bh, x : x + bw][inside] = 0
            continue
        cx, cy = shape.cx, shape.cy
        ends = pair_centres(shape.contour, TWO_CELLS_MIN_EXCESS_UM / pixel_size_um)
        end_crops = None if ends is None else partial(_end_crops, crops, crop_source, ends)
        if contrast is not None:
            m = cv2.moments(np.abs(contrast[y : y + bh, x : x + bw]) * inside)
            if m["m00"] > 0:
                cx, cy = x + m["m10"] / m["m00"], y + m["m01"] / m["m00"]
        records.append(
            CellRecord(
                frame_number=frame_number,
                label=label_id,
                x_px=cx,
                y_px=cy,
                x_um=cx * pixel_size_um,
                y_um=cy * pixel_size_um,
                bbox=(x, y, bw, bh),
                area_px=area,
                diameter_um=2 * math.sqrt(area / math.pi) * pixel_size_um,
                solidity=shape.solidity,
                eccentricity=shape.eccentricity,
                mean_intensity=cv2.mean(image[y : y + bh, x : x + bw], inside.view(np.uint8))[0],
                touches_edge=touches_edge(shape.bbox, image.shape),
                single_cell=rules.is_single(shape, area),
                _crop=partial(crops, crop_source, shape.cx, shape.cy),
                ends_px=ends,
                _end_crops=end_crops,
            )
        )
    return records
