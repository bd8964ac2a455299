"""`ctc-live train` and `ctc-live evaluate`: a whole run, from a dataset folder to a report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ctc_live.classification.inference import load_classifier, torch_threads
from ctc_live.classification.modelfile import load_model, save_model
from ctc_live.classification.networks import INPUT_SIZE
from ctc_live.classification.quantisation import calibration_crops
from ctc_live.logs import log_to_file
from ctc_live.training.dataset import read_dataset
from ctc_live.training.metrics import classification_metrics, mean_metrics
from ctc_live.training.protocol import (
    TrainSettings,
    cross_validate,
    fit,
    normalisation,
)
from ctc_live.training.report import (
    plot_learning_curves,
    plot_roc,
    plot_tsne,
    training_report,
    write_json,
)

log = logging.getLogger(__name__)

TSNE_MAX_POINTS = 1500


def train(data_dir: Path, out_dir: Path, settings: TrainSettings,
          model_name: str = "model") -> dict:
    """Cross-validate, fit the final model on all data, write reports; returns metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = log_to_file(out_dir / "train.log")
    try:
        with torch_threads(settings.threads):
            return _train(Path(data_dir), out_dir, settings, model_name)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _train(data_dir: Path, out_dir: Path, settings: TrainSettings, model_name: str) -> dict:
    start = time.perf_counter()
    ds = read_dataset(data_dir)
    summary = ds.summary()
    log.info("training %s on %s with %d threads", settings.model, summary["per_class"],
             torch.get_num_threads())
    folds, x = cross_validate(ds, settings)
    agg = mean_metrics(folds)
    log.info("cross-validated: accuracy %.3f ± %.3f, balanced %.3f, F1 %.3f, AUC %s",
             agg["mean"]["accuracy"], agg["std"]["accuracy"], agg["mean"]["balanced_accuracy"],
             agg["mean"]["f1"], agg["mean"]["auc"])

    final = fit(x, ds.labels, settings, settings.seed, "final model")
    model_path = out_dir / f"{model_name}.safetensors"
    card = {
        "architecture": settings.model,
        "input_size": INPUT_SIZE[settings.model],
        "normalisation": normalisation(settings),
        "training_data": summary,
        "training": settings.to_dict() | {"final_best_epoch": final.best_epoch},
        "cv_metrics": {k: agg[k] for k in ("mean", "std")} | {"folds": settings.folds},
    }
    calibration = calibration_crops(ds.crops, ds.labels, INPUT_SIZE[settings.model],
                                    seed=settings.seed)
    save_model(final.model, model_path, card, calibration)

    metrics = {
        "model": settings.model,
        "data": summary,
        "settings": settings.to_dict(),
        **agg,
        "folds": [{k: v for k, v in f.items() if k != "history"} for f in folds],
        "final": {"best_epoch": final.best_epoch, "seconds": round(final.seconds, 1)},
    }
    plot_learning_curves([f["history"] for f in folds], out_dir / "learning_curves.png",
                         f"{settings.model}: {settings.folds}-fold learning curves")
    plot_roc([(f"fold {f['fold']}", f) for f in folds], out_dir / "roc.png",
             f"{settings.model}: ROC per fold (mean AUC {_fmt(agg['mean']['auc'])})")
    clf = load_classifier(model_path, device="cpu")
    pick = _subsample(ds.labels, TSNE_MAX_POINTS, settings.seed)
    feats = clf.features([ds.crops[i] for i in pick])
    metrics["tsne"] = plot_tsne(feats, ds.labels[pick], out_dir / "tsne.png",
                                f"t-SNE of the training set's features ({settings.model})",
                                settings.seed)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_json(metrics, out_dir / "metrics.json")
    write_json({"folds": [{"fold": f["fold"], "history": f["history"]} for f in folds],
                "final": final.history}, out_dir / "history.json")
    (out_dir / "report.md").write_text(
        training_report(metrics | {"folds": folds}, summary, settings.to_dict(),
                        model_path.name), encoding="utf-8")
    log.info("run written to %s in %.0f s", out_dir, metrics["seconds"])
    return metrics


def evaluate(model_path: Path, data_dir: Path, out_dir: Path | None = None,
             device: str = "auto", precision: str = "float32") -> dict:
    clf = load_classifier(model_path, device, precision)
    ds = read_dataset(data_dir)
    p = clf.predict(ds.crops)
    m = classification_metrics(ds.labels, p, clf.threshold)
    result = {"model": str(model_path), "architecture": clf.card["architecture"],
              "precision": precision, "threshold": clf.threshold, "data": ds.summary(), **m}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(result, out_dir / "metrics.json")
        plot_roc([(Path(model_path).name, m)], out_dir / "roc.png",
                 f"ROC on {Path(data_dir).name}")
        wrong = [ds.files[i] for i in np.flatnonzero((p >= clf.threshold) != ds.labels)]
        (out_dir / "misclassified.txt").write_text("\n".join(wrong) + "\n", encoding="utf-8")
    return result


def add_calibration(model_path: Path, data_dir: Path, source: str | None = None) -> Path:
    """Re-save a model file with int8 calibration crops drawn from ``data_dir`` (best its
    training data); weights and card are kept. Returns the card's path."""
    model, card, _ = load_model(Path(model_path))
    ds = read_dataset(data_dir)
    calibration = calibration_crops(ds.crops, ds.labels, card["input_size"])
    return save_model(model, Path(model_path), card, calibration, source or str(data_dir))


def _subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(labels) <= n:
        return np.arange(len(labels))
    return np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
