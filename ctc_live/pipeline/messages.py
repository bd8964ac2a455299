"""Records passed between the pipeline's threads, each stamped with time.monotonic_ns().

Scores come back from the classifier as ``classification.Classified`` whose key is the
:class:`Observation` the crop belongs to, or the :class:`EndCrop` for a crop of one cell of
a blob of two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctc_live.tracking import LineFit


@dataclass(slots=True)
class Observation:
    """Segmentation → classification/decision: one detection linked to a track."""

    track_id: int
    frame: int
    exposure_ns: int
    segmented_ns: int
    scene_time_s: float | None
    camera_time_s: float  # the camera's timestamp: the time axis of ``fit``
    x_um: float
    y_um: float
    diameter_um: float
    velocity_um_s: float
    fit: LineFit | None  # the track's fitted line so far
    trusted: bool  # the line is good enough for a pulse on the margins alone (Track.trusted)
    ends: tuple[LineFit, LineFit] | None  # the lines of the blob's two cells (Track.ends)
    leaving: bool  # the cell will be out of the field by the next frame
    crop: np.ndarray | None  # queued for scoring; None when not (edge, track has enough)
    crop_index: int  # k for the track's k-th crop queued for scoring, -1 without a crop
    # k for the track's k-th pair of end crops queued for scoring (EndCrop), -1 without.
    end_index: int = -1


@dataclass(slots=True)
class EndCrop:
    """Segmentation → classifier → decision: the key of one crop of a pair cut on a blob's
    two cells (CellRecord.end_crops), end 0 and 1 in the order of Track.ends."""

    track_id: int
    index: int  # the pair's, as Observation.end_index
    end: int
    exposure_ns: int


@dataclass(slots=True)
class TrackEnded:
    """Segmentation → decision: the track's cell has left the field (or the stream ended)."""

    track_id: int
    frame: int
    exposure_ns: int
    segmented_ns: int


@dataclass(slots=True)
class ScoreDropped:
    """Segmentation → decision: the classifier's queue was full, this crop will not be
    scored, so the decision must not wait for it."""

    track_id: int
    crop_index: int
    end: int | None = None  # for an EndCrop: its end; crop_index is then the pair's index
