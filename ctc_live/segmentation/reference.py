"""The reference method: the paper's recipe step by step with scikit-image.

Brightness cap → Sobel edge image → Otsu threshold → fill holes → opening → watershed on
every blob. It is here to show what the recipe gives; the live pipeline uses the realtime
method, whose quality is measured against this one side by side.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology

from ctc_live.config import SegmentationConfig
from ctc_live.segmentation.edges import to_uint8
from ctc_live.segmentation.realtime import wall_run_px
from ctc_live.segmentation.regions import (
    CellRecord,
    CropNormaliser,
    ShapeRules,
    measure_contours,
    records_from_shapes,
)
from ctc_live.segmentation.split import split_blob


def reference_mask(image: np.ndarray, cfg: SegmentationConfig, pixel_size_um: float) -> np.ndarray:
    capped = to_uint8(image).astype(np.float64) / 255.0
    edges = filters.sobel(capped)
    size = max(round(cfg.edge_smooth_um / pixel_size_um) | 1, 1)
    edges = ndi.uniform_filter(edges, size)
    median = np.median(edges)
    sigma = 1.4826 * np.median(np.abs(edges - median))
    threshold = max(
        cfg.otsu_scale * filters.threshold_otsu(edges), median + cfg.min_edge_snr * sigma
    )
    mask = ndi.binary_fill_holes(edges > threshold)
    # Straight runs longer than two of the largest cells are walls and channel edges.
    line = round(2 * cfg.max_diameter_um / pixel_size_um)
    h, w = mask.shape
    walls = ndi.binary_opening(mask, np.ones((1, wall_run_px(line, w)), bool))
    walls |= ndi.binary_opening(mask, np.ones((wall_run_px(line, h), 1), bool))
    mask &= ~ndi.binary_dilation(walls, np.ones((3, 3), bool))
    mask = ndi.binary_opening(
        mask, morphology.disk(max(round(cfg.opening_um / pixel_size_um / 2), 1))
    )
    halo = round(cfg.halo_um / pixel_size_um)
    if halo:
        mask = ndi.binary_erosion(mask, morphology.disk(halo))
    return mask


def segment_reference(
    image: np.ndarray, cfg: SegmentationConfig, pixel_size_um: float, frame_number: int = 0
) -> tuple[np.ndarray, list[CellRecord]]:
    """Label image (int32) and cell records of one grey image."""
    blobs, _ = ndi.label(reference_mask(image, cfg, pixel_size_um), structure=np.ones((3, 3)))
    contours = []
    for index, box in enumerate(ndi.find_objects(blobs), start=1):
        if box is None:
            continue
        parts = split_blob(blobs[box] == index, cfg.split_depth)
        for part in range(1, int(parts.max()) + 1):
            found, _ = cv2.findContours(
                (parts == part).astype(np.uint8),
                cv2.RETR_EXTERNAL,
                cv2.CHAIN_APPROX_NONE,
                offset=(box[1].start, box[0].start),
            )
            contours.extend(found)
    labels = np.zeros(image.shape, np.int32)
    records = records_from_shapes(
        measure_contours(contours),
        image,
        frame_number,
        ShapeRules.from_config(cfg, pixel_size_um),
        CropNormaliser(cfg.crop_size),
        pixel_size_um,
        labels,
    )
    return labels, records
