"""The soft-label metrics against numbers worked out by hand (not by the code under test). That an evaluation
writes them into metrics.jsonl, report.json and the comparison's summary is checked by the run that
tests/test_train.py::test_folds_and_arms_write_one_table makes anyway (no second training run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.metrics import expected_calibration_error, soft_label_metrics

CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]

# Four clips, three classes used (the other four get probability 0 and no votes).
# Votes of 10 annotators; clips 0 and 2 are clear (top class >= 8 of 10), 1 and 3 ambiguous.
VOTES = np.array([[8, 2, 0, 0, 0, 0, 0],
                  [5, 5, 0, 0, 0, 0, 0],
                  [0, 0, 10, 0, 0, 0, 0],
                  [0, 4, 6, 0, 0, 0, 0]], dtype=np.float64)
PROBS = np.array([[0.9, 0.1, 0, 0, 0, 0, 0],
                  [0.2, 0.7, 0.1, 0, 0, 0, 0],
                  [0.25, 0.25, 0.5, 0, 0, 0, 0],
                  [0.1, 0.6, 0.3, 0, 0, 0, 0]])
LABELS = np.array([0, 0, 2, 2])  # predictions (argmax): 0, 1, 2, 1 -> right, wrong, right, wrong


def test_ece_by_hand():
    # top-class confidences 0.9, 0.7, 0.5, 0.6 fall in bins (0.8667, 0.9333], (0.6667, 0.7333], (0.4667, 0.5333],
    # (0.5333, 0.6]: one clip each, so ECE = 1/4 (|1 - 0.9| + |0 - 0.7| + |1 - 0.5| + |0 - 0.6|) = 1.9 / 4
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(0.475)
    # two clips in one bin (0.9 and 0.88, one right): |1/2 - 0.89| = 0.39 for that bin, weight 2/3;
    # a third clip at 0.3 (bin (0.2667, 0.3333]), right: |1 - 0.3| = 0.7, weight 1/3
    probs = np.array([[0.9, 0.1, 0.0], [0.88, 0.12, 0.0], [0.3, 0.25, 0.45]])
    labels = np.array([0, 1, 2])  # right, wrong, right (confidence 0.45: bin (0.4, 0.4667])
    assert expected_calibration_error(probs, labels) == pytest.approx(2 / 3 * 0.39 + 1 / 3 * 0.55)
    # a perfectly calibrated split: confidence 1, always right
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_vote_nll_and_kl_by_hand():
    m = soft_label_metrics(PROBS, VOTES, LABELS, CLASSES)
    nll = [-(0.8 * math.log(0.9) + 0.2 * math.log(0.1)),
           -(0.5 * math.log(0.2) + 0.5 * math.log(0.7)),
           -math.log(0.5),
           -(0.4 * math.log(0.6) + 0.6 * math.log(0.3))]
    entropy = [-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), -math.log(0.5), 0.0,
               -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))]
    assert m["vote_nll"] == pytest.approx(sum(nll) / 4)
    assert m["vote_kl"] == pytest.approx(sum(n - h for n, h in zip(nll, entropy, strict=True)) / 4)
    # the same, clip by clip on paper: 0.044403 + 0.289909 + 0.693147 + 0.253702 = 1.281161, / 4
    assert m["vote_kl"] == pytest.approx(0.320290, abs=1e-5)
    same = soft_label_metrics(VOTES / 10, VOTES, LABELS, CLASSES)  # a prediction equal to the votes: KL 0
    assert same["vote_kl"] == pytest.approx(0.0, abs=1e-9)


def test_clear_and_ambiguous_split_by_hand():
    m = soft_label_metrics(PROBS, VOTES, LABELS, CLASSES, clear_share=0.8)
    # clear: clips 0 (label 0, right) and 2 (label 2, right); ambiguous: 1 (label 0, wrong), 3 (label 2, wrong)
    assert (m["clear_n"], m["clear_uar"], m["clear_war"]) == (2, 1.0, 1.0)
    assert (m["ambiguous_n"], m["ambiguous_uar"], m["ambiguous_war"]) == (2, 0.0, 0.0)
    m = soft_label_metrics(PROBS, VOTES, LABELS, CLASSES, clear_share=0.5)  # now 0, 1, 2, 3 all clear
    assert (m["clear_n"], m["ambiguous_n"], m["ambiguous_uar"]) == (4, 0, None)
    assert m["clear_uar"] == pytest.approx(0.5) and m["clear_war"] == pytest.approx(0.5)  # class 0: 1/2, class 2: 1/2
    # votes stored as float32 shares (the shards' soft labels): 8 of 10 is still clear at 0.8
    m = soft_label_metrics(PROBS, (VOTES / 10).astype(np.float32), LABELS, CLASSES, clear_share=0.8)
    assert m["clear_n"] == 2
