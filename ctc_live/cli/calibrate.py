"""`ctc-live calibrate`: add int8 calibration crops to a model file that has none."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="store int8 calibration crops in a model file (weights unchanged)",
        description="Models written by `ctc-live train` carry calibration crops already; this "
        "adds them to an older model so it can run with classifier.precision: int8. Use "
        "crops like those the model was trained on, best its training data.",
    )
    p.add_argument("--model", type=Path, required=True, help="model .safetensors (card beside)")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder with CTC/ and WBC/ (the model's training data)")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from ctc_live.training.run import add_calibration

    card = add_calibration(args.model, args.data)
    print(f"calibration crops from {args.data} stored in {args.model} (card {card})")
    return 0
