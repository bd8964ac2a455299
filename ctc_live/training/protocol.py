"""The paper's training protocol: 5-fold cross-validation, augmentation to N per class,
80/20 train/validation split, cross-entropy, Adam, early stopping; then a final fit on all data.

Two choices go beyond the paper, for stability on small, imbalanced real sets: the validation
part is split off the originals *before* augmentation (so no augmented copy of a validation
cell is trained on and early stopping sees unseen cells), and every epoch draws a fresh,
class-balanced set of augmented crops instead of one fixed augmented set; the learning rate
follows a cosine decay and the best-validation weights are kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from ctc_live.classification.inference import torch_threads
from ctc_live.classification.modelfile import load_init_weights
from ctc_live.classification.networks import (
    INPUT_SIZE,
    build_network,
    normalisation_card,
    prepare,
)
from ctc_live.errors import CtcLiveError
from ctc_live.training.dataset import CropDataset
from ctc_live.training.metrics import classification_metrics

log = logging.getLogger(__name__)

# Per-architecture defaults: the paper's Adam 1e-4 for the (pretrained) ResNet-50; the compact
# network learns from scratch and converges in a few minutes of CPU at 1e-3 with cosine decay.
# A batch of 16 crops through the compact network is too little work to split across cores:
# one thread was 3-10x faster per step than two on the shared 2-core machine (threads: 0 = all).
ARCH_DEFAULTS = {
    "resnet50": {"lr": 1e-4, "max_epochs": 30, "threads": 0},
    "compact": {"lr": 1e-3, "max_epochs": 40, "threads": 1},
}


@dataclass
class TrainSettings:
    model: str = "compact"
    folds: int = 5
    per_class: int = 1000
    val_fraction: float = 0.2
    lr: float | None = None
    batch_size: int = 16
    max_epochs: int | None = None
    patience: int = 10
    seed: int = 0
    shear_deg: float = 10.0
    shift_px: float = 1.5
    init_weights: Path | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.model not in ARCH_DEFAULTS:
            raise CtcLiveError(f"unknown model {self.model!r}: expected "
                               f"{' or '.join(ARCH_DEFAULTS)}")
        if self.folds < 2:
            raise CtcLiveError(f"folds must be at least 2, got {self.folds}")
        if not 0 < self.val_fraction < 1:
            raise CtcLiveError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.per_class < 2 or self.batch_size < 2:
            raise CtcLiveError("per_class and batch_size must be at least 2")
        if self.init_weights is not None and self.model != "resnet50":
            raise CtcLiveError("--init-weights is for the resnet50 (an ImageNet checkpoint)")
        defaults = ARCH_DEFAULTS[self.model]
        self.lr = self.lr if self.lr is not None else defaults["lr"]
        self.max_epochs = self.max_epochs if self.max_epochs is not None else defaults["max_epochs"]
        self.threads = self.threads if self.threads is not None else defaults["threads"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["init_weights"] = str(self.init_weights) if self.init_weights else None
        return d


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def new_network(settings: TrainSettings) -> nn.Module:
    model = build_network(settings.model)
    if settings.init_weights is not None:
        load_init_weights(model, settings.init_weights)
    return model


def normalisation(settings: TrainSettings) -> dict:
    return normalisation_card(settings.model, imagenet=settings.init_weights is not None)


def prepare_dataset(ds: CropDataset, settings: TrainSettings) -> torch.Tensor:
    return prepare(ds.crops, INPUT_SIZE[settings.model], normalisation(settings))


def augment(x: torch.Tensor, settings: TrainSettings, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (any angle), shear, horizontal/vertical flips and a small shift."""
    n, size = x.shape[0], x.shape[-1]
    angle = torch.rand(n, generator=gen) * 2 * math.pi
    shear = (torch.rand(n, generator=gen) * 2 - 1) * math.tan(math.radians(settings.shear_deg))
    flip_x = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * settings.shift_px / size)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    sh = torch.zeros(n, 2, 2)
    sh[:, 0, 0] = flip_x
    sh[:, 0, 1] = shear * flip_y
    sh[:, 1, 1] = flip_y
    theta = torch.cat([rot @ sh, shift.unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, cycling through shuffled originals evenly."""
    picks = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise CtcLiveError("a training split has no crops of one class: too few crops")
        reps = -(-per_class // len(idx))
        picks.append(np.concatenate([rng.permutation(idx) for _ in range(reps)])[:per_class])
    return rng.permutation(np.concatenate(picks))


def fit(x: torch.Tensor, y: np.ndarray, settings: TrainSettings, seed: int,
        label: str) -> FitResult:
    """Train one network on (x, y) with an internal 80/20 split for early stopping."""
    with torch_threads(settings.threads):
        return _fit(x, y, settings, seed, label)


def _fit(x: torch.Tensor, y: np.ndarray, settings: TrainSettings, seed: int,
         label: str) -> FitResult:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    tr, va = train_test_split(np.arange(len(y)), test_size=settings.val_fraction,
                              stratify=y, random_state=seed)
    n_train = max(1, round(settings.per_class * (1 - settings.val_fraction)))
    n_val = max(1, settings.per_class - n_train)
    vi = balanced_indices(y[va], n_val, rng)
    x_val = augment(x[va][vi], settings, gen)
    y_val = torch.as_tensor(y[va][vi])

    model = new_network(settings).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps_per_epoch = -(-2 * n_train // settings.batch_size)
    total = steps_per_epoch * settings.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    best = (math.inf, 0, None)
    history = []
    start = time.perf_counter()
    for epoch in range(1, settings.max_epochs + 1):
        t0 = time.perf_counter()
        ti = tr[balanced_indices(y[tr], n_train, rng)]
        xb_all = augment(x[ti], settings, gen).contiguous(memory_format=torch.channels_last)
        yb_all = torch.as_tensor(y[ti])
        model.train()
        loss_sum, correct = 0.0, 0
        for s in range(0, len(ti), settings.batch_size):
            xb, yb = xb_all[s:s + settings.batch_size], yb_all[s:s + settings.batch_size]
            if len(xb) < 2:  # BatchNorm needs two samples
                continue
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(xb)
            correct += int((out.argmax(1) == yb).sum())
        val_loss, val_acc = _evaluate(model, x_val, y_val)
        row = {"epoch": epoch, "loss": loss_sum / len(ti), "accuracy": correct / len(ti),
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": sched.get_last_lr()[0],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info("%s epoch %d/%d  loss %.4f acc %.3f  val_loss %.4f val_acc %.3f  lr %.2g  %.1fs",
                 label, epoch, settings.max_epochs, row["loss"], row["accuracy"], val_loss,
                 val_acc, row["lr"], row["seconds"])
        if val_loss < best[0] - 1e-4:
            best = (val_loss, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= settings.patience:
            log.info("%s early stop at epoch %d (best %d, val_loss %.4f)", label, epoch, best[1],
                     best[0])
            break
    model.load_state_dict(best[2])
    model.eval()
    return FitResult(model, history, best[1], time.perf_counter() - start)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        out = torch.cat([model(x[s:s + 256]) for s in range(0, len(x), 256)])
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def predict_tensor(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return np.concatenate([torch.softmax(model(x[s:s + 256]), 1)[:, 1].numpy()
                               for s in range(0, len(x), 256)])


def cross_validate(ds: CropDataset, settings: TrainSettings) -> tuple[list[dict], torch.Tensor]:
    """The paper's k-fold protocol; returns one record per fold (metrics, history, test set)."""
    counts = ds.counts()
    if min(counts.values()) < settings.folds * 2:
        raise CtcLiveError(f"too few crops for {settings.folds}-fold cross-validation: "
                           f"{counts} (need at least {settings.folds * 2} per class)")
    x = prepare_dataset(ds, settings)
    y = ds.labels
    folds = []
    skf = StratifiedKFold(settings.folds, shuffle=True, random_state=settings.seed)
    for k, (train_idx, test_idx) in enumerate(skf.split(np.zeros(len(y)), y), start=1):
        res = fit(x[train_idx], y[train_idx], settings, settings.seed + k,
                  f"fold {k}/{settings.folds}")
        p = predict_tensor(res.model, x[test_idx])
        m = classification_metrics(y[test_idx], p)
        log.info("fold %d/%d: test accuracy %.3f, balanced %.3f, F1 %.3f, AUC %s (%d crops, "
                 "%.0fs)", k, settings.folds, m["accuracy"], m["balanced_accuracy"], m["f1"],
                 "n/a" if m["auc"] is None else f"{m['auc']:.3f}", len(test_idx), res.seconds)
        folds.append({"fold": k, "test_size": len(test_idx), "best_epoch": res.best_epoch,
                      "seconds": round(res.seconds, 1), **m, "history": res.history})
    return folds, x
