"""DFER metrics as the literature reports them: UAR (mean per-class recall) and WAR (accuracy)."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics"]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 C x C; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def classification_metrics(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict:
    """UAR over the classes present in `labels` (chance level: 1 / classes_present), WAR, per-class recall
    (None if absent), confusion."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    assert labels.shape == preds.shape and labels.size > 0, f"{labels.shape} labels vs {preds.shape} predictions"
    cm = confusion_matrix(labels, preds, len(classes))
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(classes)), where=support > 0)
    return {
        "uar": float(recall[support > 0].mean()),
        "war": float((labels == preds).mean()),
        "recall": {c: (float(r) if s > 0 else None) for c, r, s in zip(classes, recall, support, strict=True)},
        "confusion": cm.tolist(),
        "n": int(labels.size),
        "classes_present": int((support > 0).sum()),
    }
