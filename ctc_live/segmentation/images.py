"""Reading still images for segmentation: PNG or TIFF, 8 or 16 bit, grey or colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ctc_live.errors import CtcLiveError


def read_grey(path: str | Path) -> np.ndarray:
    """The image at ``path`` as a 2-D grey array (uint8, uint16 or float32).

    Raises CtcLiveError naming the file when it cannot be read, is empty or is not one image.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            image = tifffile.imread(path)
        else:
            with Image.open(path) as opened:
                image = np.asarray(opened)
    except FileNotFoundError:
        raise CtcLiveError(f"{path}: no such file") from None
    except (OSError, ValueError, UnidentifiedImageError, tifffile.TiffFileError) as exc:
        raise CtcLiveError(f"{path}: cannot read as an image: {exc}") from None
    image = np.squeeze(image)
    if image.size == 0:
        raise CtcLiveError(f"{path}: the image is empty")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        image = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if image.ndim != 2:
        raise CtcLiveError(
            f"{path}: expected one grey or RGB image, got an array of shape {image.shape}"
        )
    if image.dtype == bool or image.dtype.kind not in "uif":
        image = image.astype(np.uint8)
    if float(image.max()) == float(image.min()):
        raise CtcLiveError(f"{path}: the image is blank (every pixel is {image.flat[0]})")
    return image
