"""Figures and the written report of a training run or an evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

log = logging.getLogger(__name__)

# The paper's published figures (Wang et al., Sci Rep 10:12226, 2020).
PAPER = {
    "cell line (HCT-116) vs WBC": {"accuracy": 0.975},
    "patients (RCC) CTC vs WBC": {"accuracy": 0.884, "f1": 0.89, "auc": 0.923},
}


def plot_learning_curves(histories: list[list[dict]], path: Path, title: str) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for k, hist in enumerate(histories, start=1):
        ep = [h["epoch"] for h in hist]
        colour = f"C{k - 1}"
        ax_loss.plot(ep, [h["loss"] for h in hist], color=colour, label=f"fold {k} train")
        ax_loss.plot(ep, [h["val_loss"] for h in hist], color=colour, ls="--",
                     label=f"fold {k} val")
        ax_acc.plot(ep, [h["accuracy"] for h in hist], color=colour)
        ax_acc.plot(ep, [h["val_accuracy"] for h in hist], color=colour, ls="--")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (solid train, dashed val)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (solid train, dashed val)",
               ylim=(0.4, 1.01))
    ax_loss.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(curves: list[tuple[str, dict]], path: Path, title: str) -> None:
    """``curves``: (label, metrics) pairs; each metrics dict holds roc and auc."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, m in curves:
        if m.get("auc") is None:
            continue
        ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], label=f"{label} (AUC {m['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate (WBC called CTC)", ylabel="true positive rate (CTC found)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tsne(features: np.ndarray, labels: np.ndarray, path: Path, title: str,
              seed: int = 0) -> dict:
    """t-SNE map as in the paper (perplexity 50, learning rate 100), smaller sets permitting."""
    from sklearn.manifold import TSNE

    perplexity = min(50.0, (len(features) - 1) / 3)
    emb = TSNE(n_components=2, perplexity=perplexity, learning_rate=100.0, init="pca",
               random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, (name, colour) in enumerate([("WBC", "tab:blue"), ("CTC", "tab:red")]):
        sel = labels == c
        ax.scatter(emb[sel, 0], emb[sel, 1], s=6, c=colour, label=f"{name} ({int(sel.sum())})",
                   alpha=0.7)
    ax.set(title=f"{title}\nperplexity {perplexity:g}, learning rate 100",
           xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"points": len(features), "perplexity": perplexity, "learning_rate": 100.0}


def write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def training_report(metrics: dict, data_summary: dict, settings: dict, model_file: str) -> str:
    mean, std = metrics["mean"], metrics["std"]
    folds = metrics["folds"]
    lines = [
        f"# Training report: {settings['model']}",
        "",
        (f"Data: `{data_summary['path']}` — {data_summary['crops']} crops "
        f"({', '.join(f'{k} {v}' for k, v in data_summary['per_class'].items())}); labels from "
        f"{', '.join(data_summary['label_sources'])}."),
        "",
        (f"Protocol: {settings['folds']}-fold stratified cross-validation (shuffled, seed "
        f"{settings['seed']}); in each fold the training part is split "
        f"{round(100 * (1 - settings['val_fraction']))}/{round(100 * settings['val_fraction'])} "
        f"into train/validation and augmented (rotation, shear ±{settings['shear_deg']}°, flips, "
        f"shift ±{settings['shift_px']} px) to {settings['per_class']} crops per class; "
        f"cross-entropy, Adam lr {settings['lr']:g} with cosine decay, batch "
        f"{settings['batch_size']}, at most {settings['max_epochs']} epochs, early stopping "
        f"(patience {settings['patience']}) on validation loss."),
        "",
        "## Cross-validated results beside the paper's",
        "",
        "| | accuracy | balanced accuracy | F1 | AUC |",
        "| --- | --- | --- | --- | --- |",
        (f"| **ours** ({settings['model']}, mean ± sd over folds) | "
        f"{_pct(mean['accuracy'])} ± {_pct(std['accuracy'])} | "
        f"{_pct(mean['balanced_accuracy'])} ± {_pct(std['balanced_accuracy'])} | "
        f"{_num(mean['f1'])} | {_num(mean['auc'])} |"),
    ]
    for name, p in PAPER.items():
        lines.append(f"| paper: {name} | {_pct(p.get('accuracy'))} | n/a | "
                     f"{_num(p.get('f1'))} | {_num(p.get('auc'))} |")
    lines += [
        "",
        ("The paper's figures come from its own data (HCT-116 cells, and 95 crops from two RCC "
        "patients); ours come from the data named above, so the rows compare protocols, not "
        "cells."),
        "",
        "## Per fold",
        "",
        ("| fold | test crops | accuracy | balanced | F1 | AUC | confusion [[TN, FP], [FN, TP]] "
        "| best epoch |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in folds:
        lines.append(f"| {f['fold']} | {f['test_size']} | {_pct(f['accuracy'])} | "
                     f"{_pct(f['balanced_accuracy'])} | {_num(f['f1'])} | {_num(f['auc'])} | "
                     f"{f['confusion']} | {f['best_epoch']} |")
    lines += [
        "",
        "## Figures",
        "",
        "![learning curves](learning_curves.png)",
        "![ROC](roc.png)",
        "![t-SNE](tsne.png)",
        "",
        f"Final model fitted on all the data: `{model_file}` (card beside it).",
        "",
    ]
    return "\n".join(lines)
