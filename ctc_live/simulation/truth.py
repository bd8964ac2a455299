"""Ground truth of a simulated stream, saved beside its recording as JSON.

Each cell's trajectory is a straight line at constant velocity, so its entry time, start
position and velocity give its position at any scene time: ``x = x_start + v (t - t_enter)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctc_live.errors import CtcLiveError
from ctc_live.simulation.scene import Cell, FlowScene

FORMAT = "ctc-live ground truth 1"
FIELDS = ("id", "kind", "diameter_um", "y_um", "velocity_um_s", "t_enter_s", "x_start_um")


def truth_path(recording: str | Path) -> Path:
    """``run.ome.tif`` → ``run.truth.json``."""
    path = Path(recording)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".truth.json")


def write_truth(scene: FlowScene, path: str | Path, until_s: float) -> int:
    """Save every cell that entered up to scene time ``until_s``; returns how many."""
    scene.generate_until(until_s)
    cells = [c for c in scene.cells if c.t_enter_s <= until_s]
    sim = scene.config.simulation
    doc = {
        "format": FORMAT,
        "seed": sim.seed,
        "until_s": until_s,
        "pixel_size_um": scene.pixel_size_um,
        "channel_center_um": scene.channel_center_um,
        "channel_width_um": scene.channel_width_um,
        "cells": [{f: getattr(c, f) for f in FIELDS} for c in cells],
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return len(cells)


def read_truth(path: str | Path) -> list[Cell]:
    """The saved cells."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CtcLiveError(f"{path}: cannot read ground truth: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CtcLiveError(f"{path}: not a ctc-live ground truth file (expected {FORMAT!r})")
    try:
        return [Cell(**{f: c[f] for f in FIELDS}) for c in doc["cells"]]
    except (KeyError, TypeError) as exc:
        raise CtcLiveError(f"{path}: malformed cell entry: missing {exc}") from None
