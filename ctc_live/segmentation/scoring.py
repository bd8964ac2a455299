"""Scoring a segmentation against hand-drawn masks: matches at IoU ≥ 0.5."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MatchScore:
    true_positives: int
    predicted: int
    truth: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.truth if self.truth else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: MatchScore) -> MatchScore:
        return MatchScore(
            self.true_positives + other.true_positives,
            self.predicted + other.predicted,
            self.truth + other.truth,
        )


def match_score(
    predicted: np.ndarray, truth: np.ndarray, min_truth_area: float = 0, iou: float = 0.5
) -> MatchScore:
    """Count predicted cells matching a true cell at IoU ≥ ``iou`` (one-to-one, since IoU > 0.5
    can only pair each cell once). True blobs smaller than ``min_truth_area`` px are annotation
    specks, not cells, and are left out."""
    truth_area = np.bincount(truth.ravel())
    pred_area = np.bincount(predicted.ravel())
    counted = np.flatnonzero(truth_area >= max(min_truth_area, 1))
    counted = counted[counted > 0]
    both = (truth > 0) & (predicted > 0)
    pairs, overlap = np.unique(
        np.stack([truth[both], predicted[both]]).astype(np.int64), axis=1, return_counts=True
    )
    union = truth_area[pairs[0]] + pred_area[pairs[1]] - overlap
    good = (overlap / union >= iou) & np.isin(pairs[0], counted)
    return MatchScore(
        true_positives=len(np.unique(pairs[0][good])),
        predicted=int(np.count_nonzero(pred_area[1:])),
        truth=len(counted),
    )


@dataclass
class FlowScore:
    """Detections on simulated flow frames against the scene's ground truth."""

    found: int  # cells wholly in the frame with a detection near their centre
    missed: int
    false: int  # detections with no object (cell or debris) under them: walls, dirt, noise

    def __add__(self, other: FlowScore) -> FlowScore:
        return FlowScore(
            self.found + other.found, self.missed + other.missed, self.false + other.false
        )

    @property
    def recall(self) -> float:
        return self.found / (self.found + self.missed) if self.found + self.missed else 1.0


def score_flow_frame(
    cells: list,
    truth: list[tuple[float, float, float]],
    debris: list[tuple[float, float, float]],
    width: int,
) -> FlowScore:
    """``cells``: CellRecords of one frame; ``truth`` and ``debris``: (x_px, y_px,
    diameter_px) of the cells and debris in view. A cell counts as found when a detection
    lies within a third of its diameter of its centre; only cells wholly inside the frame
    are counted. A detection on debris is neither found nor false."""
    found = missed = 0
    for x, y, d in truth:
        if d / 2 < x < width - d / 2:
            near = any(abs(c.x_px - x) < d / 3 and abs(c.y_px - y) < d / 3 for c in cells)
            found += near
            missed += not near
    false = sum(
        not any(
            abs(c.x_px - x) < d / 2 + 2 and abs(c.y_px - y) < d / 2 + 2
            for x, y, d in truth + debris
        )
        for c in cells
    )
    return FlowScore(found, missed, false)
