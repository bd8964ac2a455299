"""`ctc-live segment`: segment still images and write labels, a cell table and an overlay."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment still images (PNG/TIFF): labels, cell table, overlay",
        description=(
            "For each image write DIR/<stem>_labels.tif (uint16, 0 = background), "
            "DIR/<stem>_cells.csv (one row per cell) and DIR/<stem>_overlay.png (outlines: "
            "green single cell, orange clump or odd shape, blue cut by the frame edge). "
            "An image that cannot be read is reported and the others are still processed."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument(
        "--pixel-size",
        type=float,
        required=True,
        metavar="UM",
        help="pixel size in µm at the sample",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--method",
        choices=["realtime", "reference"],
        default=None,
        help="segmentation method (default: the config's, realtime)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file whose segmentation section is used (default: built-in)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctc_live.config import SegmentationConfig, load_config
    from ctc_live.segmentation import segment_image
    from ctc_live.segmentation.images import read_grey
    from ctc_live.segmentation.outputs import write_outputs

    if not args.pixel_size > 0:
        raise CtcLiveError(f"--pixel-size must be a positive number of µm, got {args.pixel_size}")
    config = load_config(args.config).segmentation if args.config else SegmentationConfig()
    failed = 0
    for path in args.images:
        try:
            image = read_grey(path)
        except CtcLiveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        labels, cells = segment_image(image, config, args.pixel_size, args.method)
        write_outputs(args.out, path.stem, image, labels, cells)
        single = sum(c.single_cell for c in cells)
        print(f"{path}: {len(cells)} cells ({single} single) -> {args.out}/{path.stem}_*")
    if failed:
        print(f"{failed} of {len(args.images)} images could not be read", file=sys.stderr)
        return 2
    return 0
