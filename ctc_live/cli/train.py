"""`ctc-live train`: the paper's cross-validated training protocol on a crop dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier with 5-fold cross-validation, write reports and the model",
        description="Cross-validate (the paper's protocol), then fit the final model on all the "
        "data. RUN_DIR receives metrics.json, report.md, learning_curves.png, roc.png, "
        "tsne.png, train.log and MODEL.safetensors with its card MODEL.json.",
    )
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder with CTC/ and WBC/ crop folders (manifest.csv optional)")
    p.add_argument("--model", choices=["compact", "resnet50"], default="compact",
                   help="network (default compact)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                   help="folder for the reports and the model")
    p.add_argument("--name", default="model", help="model file stem in RUN_DIR (default model)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--per-class", type=int, default=1000,
                   help="augmented crops per class per fold, train + validation (default 1000)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share (0.2)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: 1e-4 resnet50 as the paper, 1e-3 compact)")
    p.add_argument("--batch-size", type=int, default=16, help="mini-batch size (default 16)")
    p.add_argument("--epochs", type=int, default=None,
                   help="most epochs (default: 30 resnet50, 40 compact)")
    p.add_argument("--patience", type=int, default=10,
                   help="early stopping: epochs without a better validation loss (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--init-weights", type=Path, default=None, metavar="FILE",
                   help="resnet50 only: ImageNet checkpoint (torchvision names; .pth or "
                   ".safetensors) for the convolutional body")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training (default: 1 compact, all resnet50)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ctc_live.training.protocol import TrainSettings
    from ctc_live.training.run import train

    settings = TrainSettings(
        model=args.model, folds=args.folds, per_class=args.per_class,
        val_fraction=args.val_fraction, lr=args.lr, batch_size=args.batch_size,
        max_epochs=args.epochs, patience=args.patience, seed=args.seed,
        init_weights=args.init_weights, threads=args.threads,
    )
    m = train(args.data, args.out, settings, args.name)
    mean = m["mean"]
    auc = "n/a" if mean["auc"] is None else f"{mean['auc']:.3f}"
    print(f"{settings.folds}-fold CV ({settings.model}): accuracy {mean['accuracy']:.3f}, "
          f"balanced accuracy {mean['balanced_accuracy']:.3f}, F1 {mean['f1']:.3f}, AUC {auc}")
    print(f"model: {args.out / (args.name + '.safetensors')}   report: {args.out / 'report.md'}")
    return 0
