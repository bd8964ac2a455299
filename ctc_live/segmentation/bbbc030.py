"""The BBBC030 DIC images (CHO cells, 20X) with hand-drawn masks: the real-cell yardstick."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ctc_live.config import REPO_ROOT, SegmentationConfig
from ctc_live.errors import CtcLiveError
from ctc_live.segmentation.images import read_grey
from ctc_live.segmentation.scoring import MatchScore, match_score
from ctc_live.segmentation.single import segment_image

# A copy ships with the tests (4.5 MB; see tests/data/README.md for its source and citation).
DEFAULT_FOLDER = REPO_ROOT / "tests" / "data" / "bbbc030"
PIXEL_SIZE_UM = 0.65


def load(folder: Path = DEFAULT_FOLDER) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, true label image) for each image that has a mask; touching cells drawn as
    one blob stay one blob (8-connectivity)."""
    images = sorted((folder / "images").glob("*.png"))
    if not images:
        raise CtcLiveError(f"{folder}: no images/*.png (BBBC030 data set expected there)")
    out = []
    for path in images:
        mask_path = folder / "masks" / path.name
        if mask_path.is_file():
            truth, _ = ndi.label(read_grey(mask_path) > 0, structure=np.ones((3, 3)))
            out.append((path.stem, read_grey(path), truth))
    return out


def score(
    data: list[tuple[str, np.ndarray, np.ndarray]],
    config: SegmentationConfig,
    method: str,
    pixel_size_um: float = PIXEL_SIZE_UM,
) -> MatchScore:
    """Summed IoU ≥ 0.5 matches over the images; true blobs below the smallest cell size are
    annotation specks (the masks hold a few 1-pixel dots) and are not counted."""
    min_area = math.pi * (config.min_diameter_um / 2 / pixel_size_um) ** 2
    total = MatchScore(0, 0, 0)
    for _, image, truth in data:
        labels, _ = segment_image(image, config, pixel_size_um, method)
        total = total + match_score(labels, truth, min_area)
    return total
