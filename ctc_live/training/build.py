"""Building crop datasets: from the simulator (ground-truth labels) or from multi-channel
images labelled by fluorescence, the way the paper labelled its cells."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from skimage.filters import threshold_otsu

from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.training.dataset import DatasetWriter

log = logging.getLogger(__name__)

# Frames are sampled this far apart in scene time, so each cell is seen in a few frames
# while crossing the field and the next frame can pick up cells the last one missed.
SIM_FRAME_STEP_S = 0.02
MAX_SIM_SECONDS = 3600.0


def build_from_simulator(config: Config, out: Path, per_class: int,
                         ctc_fraction: float = 0.5) -> dict:
    """One crop per simulated cell, labelled by the scene's ground truth, until ``per_class``
    crops of each class. Only detections the segmenter calls single cells, not touching the
    image edge, and matched unambiguously to one CTC or WBC are kept."""
    from ctc_live.segmentation.flow import FlowSegmenter
    from ctc_live.simulation import FlowScene

    config = config.model_copy(deep=True)
    config.simulation.ctc_fraction = ctc_fraction
    scene = FlowScene(config)
    segmenter = FlowSegmenter(config)
    writer = DatasetWriter(out)
    seen: set[int] = set()
    stats = {"frames": 0, "detections": 0, "unmatched": 0, "debris": 0, "not_single": 0,
             "ambiguous": 0}
    half_exposure_s = config.camera.exposure_ms / 2000.0
    frame = 0
    t = 0.0
    while min(writer.count("CTC"), writer.count("WBC")) < per_class:
        if t > MAX_SIM_SECONDS:
            raise CtcLiveError(f"simulator gave too few cells after {MAX_SIM_SECONDS:.0f} s "
                               f"of scene time: {writer.count('CTC')} CTC, "
                               f"{writer.count('WBC')} WBC")
        records = segmenter.process(scene.render(t), frame)
        stats["frames"] += 1
        cells = scene.visible_cells(t + half_exposure_s)
        for rec in records:
            stats["detections"] += 1
            if not rec.single_cell or rec.touches_edge:
                stats["not_single"] += 1
                continue
            cell, why = _match(rec, cells, t + half_exposure_s)
            if cell is None:
                stats[why] += 1
                continue
            if cell.id in seen:
                continue
            label = cell.kind.upper()
            if writer.count(label) >= per_class:
                continue
            seen.add(cell.id)
            writer.add(rec.crop, label, f"simulator seed {config.simulation.seed}", frame,
                       (rec.x_px, rec.y_px), rec.diameter_um, "simulator ground truth")
        frame += 1
        t += SIM_FRAME_STEP_S
    sheets = writer.close()
    stats |= {"CTC": writer.count("CTC"), "WBC": writer.count("WBC"),
              "scene_seconds": round(t, 2), "contact_sheets": [str(s) for s in sheets]}
    log.info("simulated dataset: %s", stats)
    return stats


def _match(rec, cells: list, t_s: float) -> tuple[object | None, str]:
    """The one scene cell under a detection's centroid, or None and the reason."""
    near = []
    for c in cells:
        d = np.hypot(c.x_um(t_s) - rec.x_um, c.y_um - rec.y_um)
        if d < max(c.diameter_um / 2, 3.0):
            near.append((d, c))
    if not near:
        return None, "unmatched"
    if len(near) > 1:
        return None, "ambiguous"
    cell = near[0][1]
    if cell.kind == "debris":
        return None, "debris"
    return cell, ""


@dataclass
class ChannelMap:
    brightfield: int
    marker: int
    viability: int | None = None

    @classmethod
    def parse(cls, text: str) -> ChannelMap:
        """'bf=0,marker=2,viability=1' → indices along the image's channel axis."""
        names = {"bf": "brightfield", "brightfield": "brightfield", "marker": "marker",
                 "viability": "viability"}
        values = {}
        for part in text.split(","):
            key, _, idx = part.partition("=")
            if key.strip() not in names or not idx.strip().isdigit():
                raise CtcLiveError(f"--channels {text!r}: expected e.g. bf=0,viability=1,marker=2")
            values[names[key.strip()]] = int(idx)
        if "brightfield" not in values or "marker" not in values:
            raise CtcLiveError(f"--channels {text!r}: needs at least bf= and marker=")
        return cls(**values)


def read_multichannel(path: Path, channels: ChannelMap) -> list[np.ndarray]:
    """Images (C, H, W), one per time point or z plane, from a TIFF (C,H,W) or (T,C,H,W)."""
    try:
        data = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise CtcLiveError(f"{path}: cannot read as a TIFF image: {exc}") from None
    need = max(i for i in (channels.brightfield, channels.marker, channels.viability)
               if i is not None) + 1
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4 or data.shape[1] < need:
        raise CtcLiveError(f"{path}: expected (channels, H, W) or (T, channels, H, W) with at "
                           f"least {need} channels, got shape {data.shape}")
    return list(data)


def build_from_images(paths: list[Path], out: Path, channels: ChannelMap, config: Config,
                      marker_threshold: float | None = None,
                      viability_threshold: float | None = None) -> dict:
    """Segment each bright-field channel; label single cells by their fluorescence.

    A cell's signal in a channel is its mean inside its segmented outline minus the image's
    median (the background). Live = viability signal ≥ threshold (every cell when no viability
    channel); CTC = live and marker ≥ threshold; WBC = live and below. Thresholds default to
    Otsu's on the cells' own signals. Prints how many cells fell in each bin.
    """
    from ctc_live.segmentation import segment_image

    cells = []  # (crop, marker, viability, source, frame, record)
    for path in paths:
        for t, stack in enumerate(read_multichannel(Path(path), channels)):
            labels, records = segment_image(stack[channels.brightfield].astype(np.float32),
                                            config.segmentation, config.camera.pixel_size_um,
                                            frame_number=t)
            marker = _signals(stack[channels.marker], labels, records)
            viab = (_signals(stack[channels.viability], labels, records)
                    if channels.viability is not None else [np.inf] * len(records))
            for rec, m, v in zip(records, marker, viab):
                cells.append((rec, m, v, str(path), t))
    singles = [c for c in cells if c[0].single_cell and not c[0].touches_edge]
    if len(singles) < 2:
        raise CtcLiveError(f"only {len(singles)} single cells found in {len(paths)} image(s)")
    m_values = np.array([c[1] for c in singles])
    v_values = np.array([c[2] for c in singles])
    if viability_threshold is None:
        viability_threshold = (float(threshold_otsu(v_values)) if channels.viability is not None
                               else -np.inf)
    live = v_values >= viability_threshold
    if marker_threshold is None:
        marker_threshold = float(threshold_otsu(m_values[live])) if live.sum() > 1 else 0.0
    writer = DatasetWriter(out)
    bins = {"segmented": len(cells), "not single / at edge": len(cells) - len(singles),
            "dead (viability below)": int((~live).sum()), "CTC (live, marker+)": 0,
            "WBC (live, marker-)": 0}
    for (rec, m, _, source, t), is_live in zip(singles, live):
        if not is_live:
            continue
        label = "CTC" if m >= marker_threshold else "WBC"
        bins[f"{label} (live, marker{'+' if label == 'CTC' else '-'})"] += 1
        writer.add(rec.crop, label, source, t, (rec.x_px, rec.y_px), rec.diameter_um,
                   f"fluorescence: marker {'>=' if label == 'CTC' else '<'} "
                   f"{marker_threshold:.1f}")
    sheets = writer.close()
    print(f"thresholds: marker {marker_threshold:.1f}, viability "
          f"{'none' if channels.viability is None else f'{viability_threshold:.1f}'} "
          "(counts above the image median)")
    for name, n in bins.items():
        print(f"  {name:26s} {n}")
    return {"bins": bins, "marker_threshold": marker_threshold,
            "viability_threshold": None if channels.viability is None else viability_threshold,
            "contact_sheets": [str(s) for s in sheets]}


def _signals(channel: np.ndarray, labels: np.ndarray, records: list) -> list[float]:
    channel = channel.astype(np.float32)
    background = float(np.median(channel))
    out = []
    for rec in records:
        x, y, w, h = rec.bbox
        mask = labels[y:y + h, x:x + w] == rec.label
        values = channel[y:y + h, x:x + w][mask]
        out.append(float(values.mean()) - background if values.size else 0.0)
    return out
