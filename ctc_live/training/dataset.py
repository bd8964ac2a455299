"""Crop datasets on disk: one folder per class (``CTC/``, ``WBC/``) plus ``manifest.csv``.

This is the common image-folder convention, so other tools read the same folders. Crops are
PNG or TIFF, 8- or 16-bit, of any size; ``read_dataset`` also accepts folders without a
manifest (e.g. crops exported from an imaging flow cytometer).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ctc_live.classification.networks import CLASSES
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MANIFEST_FIELDS = ["crop_file", "source", "frame", "centroid_x_px", "centroid_y_px",
                   "diameter_um", "label", "label_source"]


@dataclass
class CropDataset:
    crops: list[np.ndarray]
    labels: np.ndarray                       # 0 = WBC, 1 = CTC (index into CLASSES)
    files: list[str]
    root: Path | None = None
    label_sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(CLASSES)}

    def summary(self) -> dict:
        shapes = sorted({c.shape for c in self.crops})
        dtypes = sorted({str(c.dtype) for c in self.crops})
        return {
            "path": str(self.root) if self.root else None,
            "crops": len(self),
            "per_class": self.counts(),
            "crop_shapes": [list(s) for s in shapes[:5]] + (["…"] if len(shapes) > 5 else []),
            "dtypes": dtypes,
            "label_sources": sorted(set(self.label_sources)) or ["class folders"],
        }


def read_dataset(root: Path) -> CropDataset:
    root = Path(root)
    if not root.is_dir():
        raise CtcLiveError(f"{root}: dataset folder not found")
    folders = {p.name.upper(): p for p in root.iterdir() if p.is_dir()}
    missing = [c for c in CLASSES if c not in folders]
    if missing:
        raise CtcLiveError(f"{root}: dataset needs one folder per class ({', '.join(CLASSES)}); "
                           f"missing {', '.join(missing)}")
    sources = _manifest_sources(root)
    crops, labels, files, label_sources = [], [], [], []
    for label, name in enumerate(CLASSES):
        paths = sorted(p for p in folders[name].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise CtcLiveError(f"{folders[name]}: no crop images (.png, .tif, .tiff)")
        for p in paths:
            crops.append(read_crop(p))
            labels.append(label)
            rel = str(p.relative_to(root))
            files.append(rel)
            label_sources.append(sources.get(rel, "class folder"))
    log.info("read %d crops from %s: %s", len(crops), root,
             ", ".join(f"{c} {n}" for c, n in zip(CLASSES, np.bincount(labels, minlength=2))))
    return CropDataset(crops, np.array(labels, dtype=np.int64), files, root, label_sources)


def read_crop(path: Path) -> np.ndarray:
    """One crop as a 2-D array in its own dtype; colour images become their channel mean."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CtcLiveError(f"{path}: cannot read image (corrupted or not PNG/TIFF?)")
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.ndim != 2 or min(img.shape) < 4:
        raise CtcLiveError(f"{path}: expected a 2-D crop of at least 4×4 px, got {img.shape}")
    return img


def _manifest_sources(root: Path) -> dict[str, str]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "crop_file" not in reader.fieldnames:
            raise CtcLiveError(f"{manifest}: expected a header with a crop_file column")
        return {row["crop_file"]: row.get("label_source") or "manifest" for row in reader}


def to_uint16(crop: np.ndarray) -> np.ndarray:
    """Stretch a crop's own range to 16 bits: an affine map, so the classifier's per-crop
    standardisation sees the same image it would have seen live."""
    crop = np.asarray(crop, dtype=np.float64)
    lo, hi = float(crop.min()), float(crop.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.round((crop - lo) * scale).astype(np.uint16)


class DatasetWriter:
    """Writes crops into class folders and their rows into manifest.csv."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for c in CLASSES:
            (self.root / c).mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.crops: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}

    def add(self, crop: np.ndarray, label: str, source: str, frame: int, centroid_px: tuple,
            diameter_um: float, label_source: str) -> None:
        n = len(self.crops[label])
        name = f"{label}/{label.lower()}_{n:05d}.png"
        if not cv2.imwrite(str(self.root / name), to_uint16(crop)):
            raise CtcLiveError(f"{self.root / name}: cannot write crop")
        self.crops[label].append(crop)
        self.rows.append({
            "crop_file": name, "source": source, "frame": frame,
            "centroid_x_px": f"{centroid_px[0]:.2f}", "centroid_y_px": f"{centroid_px[1]:.2f}",
            "diameter_um": f"{diameter_um:.2f}", "label": label, "label_source": label_source,
        })

    def count(self, label: str) -> int:
        return len(self.crops[label])

    def close(self) -> list[Path]:
        """Write manifest.csv and one contact sheet per class; returns the sheets' paths."""
        with (self.root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        sheets = []
        for c in CLASSES:
            if self.crops[c]:
                path = self.root / f"contact_sheet_{c}.png"
                contact_sheet(self.crops[c], path, f"{c}: {len(self.crops[c])} crops")
                sheets.append(path)
        log.info("dataset %s: %s", self.root,
                 ", ".join(f"{c} {len(v)}" for c, v in self.crops.items()))
        return sheets


def contact_sheet(crops: list[np.ndarray], path: Path, title: str, columns: int = 12,
                  max_crops: int = 144, tile: int = 40) -> None:
    """A grid of the first crops, each resized to ``tile`` px and stretched to its own range
    (1st-99th percentile), for a person to review."""
    shown = crops[:max_crops]
    rows = max(1, -(-len(shown) // columns))
    gap = 2
    sheet = np.ones((rows * (tile + gap), columns * (tile + gap)), np.float32)
    for i, crop in enumerate(shown):
        c = cv2.resize(np.asarray(crop, np.float32), (tile, tile), interpolation=cv2.INTER_AREA)
        lo, hi = np.percentile(c, (1, 99))
        r, k = divmod(i, columns)
        y, x = r * (tile + gap), k * (tile + gap)
        sheet[y:y + tile, x:x + tile] = np.clip((c - lo) / (hi - lo if hi > lo else 1), 0, 1)
    fig = plt.figure(figsize=(sheet.shape[1] / 50, sheet.shape[0] / 50 + 0.4), dpi=100)
    ax = fig.add_axes((0, 0, 1, sheet.shape[0] / (sheet.shape[0] + 20)))
    ax.imshow(sheet, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, y=0.995, fontsize=10)
    fig.savefig(path)
    plt.close(fig)
