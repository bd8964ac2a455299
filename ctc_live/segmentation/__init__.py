"""Finding cells in frames: the paper's segmentation recipe, real-time and reference methods,
per-cell records with normalised crops, and the live flow segmenter with its background model."""

from ctc_live.segmentation.flow import FlowSegmenter
from ctc_live.segmentation.regions import CSV_FIELDS, CellRecord
from ctc_live.segmentation.single import segment_image

__all__ = ["CSV_FIELDS", "CellRecord", "FlowSegmenter", "segment_image"]
