"""Segmenting one still image, without a background model."""

from __future__ import annotations

import numpy as np

from ctc_live.config import SegmentationConfig
from ctc_live.segmentation.edges import to_uint8
from ctc_live.segmentation.realtime import RealtimeSegmenter
from ctc_live.segmentation.reference import segment_reference
from ctc_live.segmentation.regions import CellRecord


def segment_image(
    image: np.ndarray,
    config: SegmentationConfig,
    pixel_size_um: float,
    method: str | None = None,
    frame_number: int = 0,
) -> tuple[np.ndarray, list[CellRecord]]:
    """Label image (int32, 0 = background, ids match the records) and the cells of one grey
    image, by ``method`` ('realtime' or 'reference'; default: the config's)."""
    method = method or config.method
    if image.ndim != 2:
        raise ValueError(f"expected a grey (H, W) image, got shape {image.shape}")
    if method == "reference":
        return segment_reference(image, config, pixel_size_um, frame_number)
    if method != "realtime":
        raise ValueError(f"unknown segmentation method {method!r}: expected realtime or reference")
    labels, cells = RealtimeSegmenter(config, pixel_size_um).segment(
        to_uint8(image), image, frame_number
    )
    return labels.copy(), cells
