"""`ctc-live evaluate`: a trained model's metrics and ROC on any crop dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a crop dataset: accuracy, balanced accuracy, F1, AUC, ROC",
    )
    p.add_argument("--model", type=Path, required=True, help="model .safetensors (card beside)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder with CTC/ and WBC/")
    p.add_argument("--out", type=Path, default=None,
                   help="write metrics.json, roc.png and misclassified.txt here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["float32", "int8"], default="float32",
                   help="int8: quantised on the CPU with the model's calibration crops "
                   "(default float32)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ctc_live.training.run import evaluate

    m = evaluate(args.model, args.data, args.out, args.device, args.precision)
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
    (tn, fp), (fn, tp) = m["confusion"]
    print(f"{m['n']} crops ({m['data']['per_class']}), {m['precision']}: accuracy "
          f"{m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"F1 {m['f1']:.3f}, AUC {auc}")
    print(f"confusion: WBC→WBC {tn}, WBC→CTC {fp}, CTC→WBC {fn}, CTC→CTC {tp}")
    if args.out:
        print(f"written to {args.out}")
    return 0
