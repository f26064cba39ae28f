"""The trainer on make-sample shards, on the CPU: loss, metrics, exact resume, torchrun with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from pipeline.config import TrainConfig
from train.loop import soft_cross_entropy, train
from train.metrics import classification_metrics
from train.model import ModelConfig, create_model

CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


def _cfg(built, out: Path, **kw) -> TrainConfig:
    base = dict(shards=str(built[0]), fold=1, epochs=2, batch_size=2, width=8, out=str(out), lr=2e-3,
                py_workers=1, tensorboard=False, seed=3)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("arch", ["resnet18_transformer", "r2plus1d"])
def test_models_take_loader_layout(arch):
    model = create_model(ModelConfig(arch=arch, width=8, num_frames=16))
    assert model(torch.randn(2, 3, 16, 112, 112)).shape == (2, 7)


def test_soft_cross_entropy_is_sum_of_minus_y_log_p():
    logits = torch.randn(4, 7)
    y = torch.softmax(torch.randn(4, 7), 1)
    expect = -(y * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(soft_cross_entropy(logits, y), expect)
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 0]), 7).float()
    assert torch.allclose(soft_cross_entropy(logits, onehot), torch.nn.functional.cross_entropy(logits,
                                                                                          onehot.argmax(1)))


def test_uar_war_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 7, 500))
    m = classification_metrics(y, p, CLASSES)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["war"] == pytest.approx(accuracy_score(y, p))
    y2, p2 = y[y != 6], p[y != 6]  # a class absent from the test part does not count in UAR
    assert classification_metrics(y2, p2, CLASSES)["uar"] == pytest.approx(balanced_accuracy_score(y2, p2))
    assert classification_metrics(y2, p2, CLASSES)["recall"]["fear"] is None


@pytest.fixture(scope="module")
def two_epochs(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    return out, train(_cfg(built, out))


def test_two_epochs_with_mixing_loss_goes_down_and_metrics_are_written(two_epochs):
    out, report = two_epochs
    rows = [json.loads(line) for line in (out / "fold1/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    for r in rows:
        assert 0 <= r["uar"] <= 1 and 0 <= r["war"] <= 1 and len(r["confusion"]) == 7 and r["n"] > 0
    assert report["best_epoch"] in (1, 2) and (out / "fold1/report.json").is_file()
    assert (out / "fold1/config.yaml").read_text().count("epochs: 2") == 1


def test_resume_after_epoch_one_gives_the_same_epoch_two(built, two_epochs, tmp_path):
    full_out, _ = two_epochs
    cfg = _cfg(built, tmp_path / "resumed", epochs=1)
    train(cfg)
    ckpt = torch.load(tmp_path / "resumed/fold1/last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and isinstance(ckpt["loaders"][0], (bytes, str))
    train(replace(cfg, epochs=2, resume=True))
    full = [json.loads(line) for line in (full_out / "fold1/metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "resumed/fold1/metrics.jsonl").read_text().splitlines()]
    assert len(resumed) == 2
    for key in ("train_loss", "loss", "uar", "war", "lr"):
        assert resumed[1][key] == pytest.approx(full[1][key], rel=1e-5, abs=1e-6), key
    assert resumed[1]["confusion"] == full[1]["confusion"]


def test_midas_train_cli_runs_with_no_other_flag(built, tmp_path):
    from train.cli import main

    res = CliRunner().invoke(main, ["--shards", str(built[0]), "--fold", "1", "--epochs", "1", "--out",
                                    str(tmp_path / "run"), "--set", "width=8", "--set", "py_workers=1",
                                    "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "best epoch 1: UAR" in res.output and (tmp_path / "run/fold1/metrics.jsonl").is_file()
    res = CliRunner().invoke(main, ["--shards", str(tmp_path / "none"), "--epochs", "1", "--out",
                                    str(tmp_path / "run-none")])
    assert res.exit_code != 0 and "index.json not found" in res.output


def test_torchrun_two_cpu_ranks_see_disjoint_halves(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "train", "--shards", str(built[0]), "--fold", "2", "--epochs", "1", "--out", str(tmp_path),
           "--batch-size", "2", "--device", "cpu", "--set", "width=8", "--set", "py_workers=1",
           "--set", "log_samples=true", "--set", "tensorboard=false"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = [json.loads((tmp_path / f"fold2/samples_rank{r}_epoch1.json").read_text()) for r in (0, 1)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert abs(len(seen[0]) - len(seen[1])) == 0
    rows = [json.loads(line) for line in (tmp_path / "fold2/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["clips"] == len(seen[0]) + len(seen[1])
