"""Classification metrics as the paper reports them, per fold and averaged."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "f1", "auc")


def classification_metrics(y_true: np.ndarray, p_ctc: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, F1 (CTC positive), confusion matrix, ROC and AUC."""
    y_true = np.asarray(y_true)
    pred = (np.asarray(p_ctc) >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    fpr, tpr = roc_curve(y_true, p_ctc)[:2] if both else (np.array([]), np.array([]))
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "auc": float(roc_auc_score(y_true, p_ctc)) if both else None,
        # rows: true WBC, CTC; columns: predicted WBC, CTC
        "confusion": confusion_matrix(y_true, pred, labels=[0, 1]).tolist(),
        "roc": {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]},
    }


def mean_metrics(folds: list[dict]) -> dict:
    mean, std = {}, {}
    for key in SUMMARY_KEYS:
        values = [f[key] for f in folds if f.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = float(np.std(values)) if values else None
    mean["confusion"] = np.sum([f["confusion"] for f in folds], axis=0).tolist()
    return {"mean": mean, "std": std}
