"""Files written for a segmented still image: labels, a table of cells, an overlay."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ctc_live.segmentation.edges import to_uint8
from ctc_live.segmentation.regions import CSV_FIELDS, CellRecord

# Outline colours (BGR): single cells green, clumps and odd shapes orange, cells cut by the
# frame edge blue.
SINGLE = (0, 200, 0)
NOT_SINGLE = (0, 140, 255)
AT_EDGE = (255, 120, 0)


def write_outputs(
    out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, cells: list[CellRecord]
) -> list[Path]:
    """Write ``<stem>_labels.tif``, ``<stem>_cells.csv`` and ``<stem>_overlay.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / f"{stem}_labels.tif",
        out_dir / f"{stem}_cells.csv",
        out_dir / f"{stem}_overlay.png",
    ]
    tifffile.imwrite(paths[0], labels.astype(np.uint16), compression="zlib")
    with paths[1].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cell in cells:
            row = cell.row()
            row["bbox"] = " ".join(map(str, row["bbox"]))
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    cv2.imwrite(str(paths[2]), overlay(image, labels, cells))
    return paths


def overlay(image: np.ndarray, labels: np.ndarray, cells: list[CellRecord]) -> np.ndarray:
    """BGR picture of the image with each cell's outline and label id."""
    picture = cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2BGR)
    for cell in cells:
        x, y, w, h = cell.bbox
        inside = (labels[y : y + h, x : x + w] == cell.label).astype(np.uint8)
        contours, _ = cv2.findContours(
            inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x, y)
        )
        colour = AT_EDGE if cell.touches_edge else SINGLE if cell.single_cell else NOT_SINGLE
        cv2.drawContours(picture, contours, -1, colour, 1)
        cv2.putText(
            picture,
            str(cell.label),
            (x + w, max(y, 8)),
            cv2.FONT_HERSHEY_PLAIN,
            0.7,
            colour,
            1,
            cv2.LINE_AA,
        )
    return picture


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else value
