"""`ctc-live build-dataset`: crop datasets for training, from the simulator or from
multi-channel images labelled by fluorescence."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build-dataset",
        help="make a CTC/ WBC/ crop dataset with manifest.csv and contact sheets",
        description="Either --sim N (simulated cells with ground-truth labels, N per class) or "
        "--images FILE... (TIFFs with a bright-field channel and fluorescence channels; "
        "each single cell labelled by its viability and CTC-marker signals).",
    )
    p.add_argument("out", type=Path, help="dataset folder to create")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sim", type=int, metavar="N", help="N simulated cells per class")
    src.add_argument("--images", type=Path, nargs="+", metavar="FILE",
                     help="multi-channel TIFFs, (C, H, W) or (T, C, H, W)")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (simulation, camera and segmentation settings)")
    p.add_argument("--channels", default="bf=0,marker=1",
                   help="channel indices, e.g. bf=0,viability=1,marker=2 (default bf=0,marker=1)")
    p.add_argument("--marker-threshold", type=float, default=None,
                   help="CTC-marker signal (counts above background) for CTC; default Otsu")
    p.add_argument("--viability-threshold", type=float, default=None,
                   help="viability signal (counts above background) for live; default Otsu")
    p.add_argument("--ctc-fraction", type=float, default=0.5,
                   help="--sim: share of CTCs among simulated cells (default 0.5)")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from ctc_live.config import load_config
    from ctc_live.errors import CtcLiveError
    from ctc_live.training.build import ChannelMap, build_from_images, build_from_simulator

    config = load_config(args.config)
    if args.out.exists() and any(args.out.iterdir()):
        raise CtcLiveError(f"{args.out}: folder exists and is not empty; choose a new one")
    if args.sim is not None:
        if args.sim < 1:
            raise CtcLiveError("--sim needs at least 1 cell per class")
        stats = build_from_simulator(config, args.out, args.sim, args.ctc_fraction)
        print(f"{stats['CTC']} CTC + {stats['WBC']} WBC crops from {stats['frames']} frames "
              f"({stats['scene_seconds']} s of scene); skipped: {stats['not_single']} not "
              f"single, {stats['ambiguous']} ambiguous, {stats['debris']} debris, "
              f"{stats['unmatched']} unmatched")
    else:
        stats = build_from_images(args.images, args.out, ChannelMap.parse(args.channels), config,
                                  args.marker_threshold, args.viability_threshold)
    for sheet in stats["contact_sheets"]:
        print(f"contact sheet: {sheet}")
    return 0
