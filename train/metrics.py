"""DFER metrics as the literature reports them, UAR (mean per-class recall) and WAR (accuracy), and the
soft-label metrics that judge a model against the annotators' votes rather than one label: expected
calibration error, the vote distributions' NLL and KL(votes || prediction), and UAR/WAR on clear and on
ambiguous clips (docs/training.md, "Soft-label metrics")."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics", "expected_calibration_error", "soft_label_metrics",
           "ECE_BINS"]

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


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


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE on the top class: clips binned by their top probability into `bins` equal-width bins
    ((0, 1/B], (1/B, 2/B], ...), sum over bins of (clips in bin / all clips) x |accuracy - mean confidence|."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def soft_label_metrics(probs: np.ndarray, votes: np.ndarray, labels: np.ndarray, classes: list[str],
                       clear_share: float = 0.8) -> dict:
    """The metrics of predicted distributions `probs` (N x C, rows sum to 1) against the vote distributions
    `votes` (N x C, rows sum to 1) and the labels: `ece`; `vote_nll` = mean over clips of -sum_c v_c log q_c;
    `vote_kl` = mean of sum_c v_c log(v_c / q_c) (0 log 0 = 0); UAR/WAR/count of the clear clips (the top
    class holds at least `clear_share` of the votes) and of the ambiguous rest (None for an empty group)."""
    probs, votes = np.asarray(probs, np.float64), np.asarray(votes, np.float64)
    labels = np.asarray(labels, np.int64)
    votes = votes / votes.sum(axis=1, keepdims=True)
    logq = np.log(np.clip(probs, 1e-12, None))
    nll = -(votes * logq).sum(axis=1)
    logv = np.log(np.where(votes > 0, votes, 1.0))
    kl = (votes * (logv - logq)).sum(axis=1)
    out = {"ece": expected_calibration_error(probs, labels), "vote_nll": float(nll.mean()),
           "vote_kl": float(kl.mean())}
    clear = votes.max(axis=1) >= clear_share - 1e-6  # 8 of 10 votes in float32 is still >= 0.8
    preds = probs.argmax(axis=1)
    for name, group in (("clear", clear), ("ambiguous", ~clear)):
        n = int(group.sum())
        m = classification_metrics(labels[group], preds[group], classes) if n else {"uar": None, "war": None}
        out |= {f"{name}_uar": m["uar"], f"{name}_war": m["war"], f"{name}_n": n}
    return out
