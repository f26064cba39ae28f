"""The trainer on make-sample shards, on the CPU: loss, metrics, exact resume, torchrun with gloo, the
protocol (part K chooses nothing; a validation split carved by clip), the four mix-mode arms, user errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from pipeline.config import ConfigError, MixConfig, RayConfig, StreamConfig, TrainConfig, load_config
from pipeline.format import INDEX_NAME
from pipeline.read import open_index, parse_idx, read_sample
from pipeline.stream import MidasLoader, list_samples
from pipeline.write import encode_sample, write_index, write_shard_files
from train.loop import SOFT_KEYS, TrainError, loader_resources, soft_cross_entropy, stream_config, train, train_folds
from train.metrics import classification_metrics
from train.model import ModelConfig, create_model, use_channels_last

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
    for r in rows:  # every metric names its split
        assert 0 <= r["test_uar"] <= 1 and 0 <= r["test_war"] <= 1 and len(r["test_confusion"]) == 7
        assert r["test_n"] > 0 and r["test_loss"] > 0 and not {"uar", "war", "loss", "n"} & set(r)
    # no validation split: the last epoch is the result, part K chose nothing
    assert report["selected_by"] == "last epoch" and report["epoch"] == 2 and "best_epoch" not in report
    assert (report["test_uar"], report["test_war"]) == (rows[1]["test_uar"], rows[1]["test_war"])
    assert report["test_clips"] == rows[1]["test_n"] and report["test_classes_present"] >= 1
    assert json.loads((out / "fold1/report.json").read_text())["epoch"] == 2
    config = yaml.safe_load((out / "fold1/config.yaml").read_text())
    # one truth: the config holds the mix mode the run used (mix_mode "" + mix true before it was resolved)
    assert config["epochs"] == 2 and config["mix_mode"] == report["mix_mode"] == rows[0]["mix_mode"] == "midas"
    assert config["mix"] is True


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
    for key in ("train_loss", "test_loss", "test_uar", "test_war", "lr"):
        assert resumed[1][key] == pytest.approx(full[1][key], rel=1e-5, abs=1e-6), key
    assert resumed[1]["test_confusion"] == full[1]["test_confusion"]


def test_midas_train_cli_runs_with_no_other_flag(built, tmp_path):
    from train.cli import main

    res = CliRunner().invoke(main, ["--shards", str(built[0]), "--fold", "1", "--epochs", "1", "--out",
                                    str(tmp_path / "run"), "--set", "width=8", "--set", "py_workers=1",
                                    "--batch-size", "4", "--compile", "--set", "compile_backend=eager"])
    assert res.exit_code == 0, res.output
    assert "test (part 1), last epoch 1:  UAR" in res.output and (tmp_path / "run/fold1/metrics.jsonl").is_file()
    assert not any(line.lstrip().startswith("{") for line in res.output.splitlines())  # every line labelled
    res = CliRunner().invoke(main, ["--shards", str(tmp_path / "none"), "--epochs", "1", "--out",
                                    str(tmp_path / "run-none")])
    assert res.exit_code != 0 and "index.json not found" in res.output


def test_torchrun_two_cpu_ranks_see_disjoint_halves(built, tmp_path):
    """The documented spelling, `torchrun --no-python midas-train`, from a directory holding a user's own
    train.py (common in research repositories): `torchrun -m train` would run that file instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    (tmp_path / "train.py").write_text("raise SystemExit('the user train.py ran')\n")
    bindir = Path(sys.executable).parent
    midas_train = str(bindir / "midas-train") if (bindir / "midas-train").exists() else "midas-train"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "--no-python", midas_train, "--shards", str(built[0]), "--fold", "2", "--epochs", "1",
           "--out", str(tmp_path / "run"), "--batch-size", "2", "--device", "cpu", "--set", "width=8",
           "--set", "py_workers=1", "--set", "log_samples=true", "--set", "tensorboard=false"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    tmp_path = tmp_path / "run"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = [json.loads((tmp_path / f"fold2/samples_rank{r}_epoch1.json").read_text()) for r in (0, 1)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert abs(len(seen[0]) - len(seen[1])) == 0
    rows = [json.loads(line) for line in (tmp_path / "fold2/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["clips"] == len(seen[0]) + len(seen[1])


def test_channels_last_gives_the_same_logits():
    for arch in ("resnet18_transformer", "r2plus1d"):
        torch.manual_seed(0)
        model = create_model(ModelConfig(arch=arch, width=8, num_frames=4, dropout=0.0)).eval()
        x = torch.randn(2, 3, 4, 32, 32)
        with torch.no_grad():
            ref = model(x)
            got = use_channels_last(model)(x)
        assert torch.allclose(ref, got, atol=1e-5), arch
        assert any(p.dim() >= 4 and not p.is_contiguous() for p in model.parameters())


def test_user_errors_are_one_line_without_traceback(built, tmp_path):
    """--resume with no checkpoint names the path; a training split smaller than a batch names its size."""
    from train.cli import main

    base = ["--shards", str(built[0]), "--fold", "1", "--epochs", "1", "--out", str(tmp_path / "run"),
            "--set", "width=8", "--py-workers", "1"]
    res = CliRunner().invoke(main, base + ["--resume"])
    assert res.exit_code == 1, res.output
    assert f"no checkpoint at {tmp_path / 'run' / 'fold1' / 'last.pt'}" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # nothing started
    n = len(list_samples(StreamConfig(shards=str(built[0]), fold=1)))
    res = CliRunner().invoke(main, base + ["--batch-size", "32"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"the training split has {n} clip(s)" in res.output and f"lower --batch-size to {n} or less" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with pytest.raises(TrainError, match="no checkpoint at"):
        train_folds(_cfg(built, tmp_path / "none", folds="1,2", resume=True))
    with pytest.raises(ConfigError, match="mix_mode"):
        TrainConfig(mix_mode="midas,cutmix")
    with pytest.raises(ConfigError, match="offline_mixed goes with mix_mode midas"):
        TrainConfig(mix_mode="mixup", offline_mixed=True)
    with pytest.raises(ConfigError, match="conflicts"):
        TrainConfig(mix=False, mix_mode="midas")
    assert TrainConfig(mix=False).arms() == ["soft"] and TrainConfig().arms() == ["midas"]
    compare = load_config(TrainConfig, "dfew-compare")  # a shipped config, by name
    assert compare.arms() == ["midas", "mixup", "soft", "none"] and compare.fold_list() == [1, 2, 3, 4, 5]


def test_loader_resources_come_from_the_rank_s_cpus(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    workers, threads = loader_resources(TrainConfig())
    assert workers >= 1 and threads >= 1 and (workers + threads < cpus or cpus < 3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))  # one CPU per rank: the least there is
    assert loader_resources(TrainConfig()) == (1, 1)
    assert loader_resources(TrainConfig(py_workers=5, num_threads=3)) == (5, 3)


def _rows(loader: MidasLoader) -> dict[str, torch.Tensor]:
    batch = next(iter(loader))
    return {k: v.cpu() for k, v in batch.items()}


@pytest.mark.parametrize("arm", ["midas", "mixup", "soft", "none"])
def test_mix_mode_arms_give_the_labels_they_promise(built, arm):
    cfg = _cfg(built, Path("unused"), mix_mode=arm, batch_size=6, py_workers=1)
    stream = stream_config(cfg, "train")
    loader = MidasLoader(stream, _debug_outputs=True)
    b = _rows(loader)
    samples = list_samples(stream)
    files: dict = {}
    votes, labels = [], []
    for i in b["sample"][:, 0].tolist():
        key, fmt, path, where = samples[i]
        _, soft, meta = read_sample(files, fmt, path, where, key)
        votes.append(soft)
        labels.append(meta["label"] if meta["label"] >= 0 else int(np.argmax(soft)))
    votes = torch.tensor(np.stack(votes))
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 7).float()
    base = votes if arm in ("midas", "soft") else onehot
    assert not torch.equal(votes, onehot)  # the sample's vote histograms are not one-hot: the arms differ
    if arm in ("midas", "mixup"):
        lam, perm = b["lam"].reshape(-1, 1), b["perm"].long()
        assert ((lam > 0) & (lam < 1)).all() and not torch.equal(perm, torch.arange(len(perm)))
        assert torch.allclose(b["soft"], lam * base + (1 - lam) * base[perm], atol=1e-5)
    else:
        assert torch.allclose(b["soft"], base, atol=1e-6)  # each sample's own target: not mixed
    if arm == "none":
        assert torch.equal(b["soft"].argmax(1), torch.tensor(labels)) and torch.equal(b["soft"].sum(1), torch.ones(6))


def test_val_split_is_carved_by_clip_from_the_training_parts(built):
    shards = str(built[0])
    for fmt in ("webdataset", "parquet"):
        cfg = StreamConfig(shards=shards, fold=2, format=fmt)
        full = list_samples(cfg)
        tr = list_samples(replace(cfg, val_fraction=0.3))
        va = list_samples(replace(cfg, val_fraction=0.3, split="val"))
        test = list_samples(replace(cfg, split="test"))
        keys = {s[0]: s for s in full}
        assert not {s[0] for s in tr} & {s[0] for s in va} and {s[0] for s in tr} | {s[0] for s in va} == set(keys)
        assert len(va) == round(0.3 * len(full))
        assert not {s[2] for s in va} & {s[2] for s in test}  # never part K
        clip = {}
        for split, rows in (("train", tr), ("val", va)):
            files: dict = {}
            clip[split] = sorted(read_sample(files, *s[1:], s[0])[2]["clip_id"] for s in rows)
        if fmt == "webdataset":
            wds = clip
        else:
            assert clip == wds  # the same clips whatever the format
    other = list_samples(StreamConfig(shards=shards, fold=2, split="val", val_fraction=0.3, val_seed=1))
    assert {s[0] for s in other} != {s[0] for s in list_samples(StreamConfig(shards=shards, fold=2, split="val",
                                                                             val_fraction=0.3, format="webdataset"))}


def test_offline_mixed_samples_of_a_val_clip_are_not_trained_on(built, ray_session, tmp_path):
    from pipeline.mix import mix_offline

    shards = tmp_path / "shards"
    shutil.copytree(built[0], shards, ignore=shutil.ignore_patterns("mixed"))  # other tests may have mixed there
    mix_offline(MixConfig(shards=str(shards), fold=1, copies=1, seed=2), RayConfig(workers=1))
    for fmt in ("webdataset", "parquet"):
        cfg = StreamConfig(shards=str(shards), fold=1, offline_mixed=True, val_fraction=0.3, format=fmt)
        val_clips = {read_sample({}, *s[1:], s[0])[2]["clip_id"] for s in list_samples(replace(cfg, split="val"))}
        files: dict = {}
        metas = [read_sample(files, *s[1:], s[0])[2] for s in list_samples(cfg)]
        mixed = [m for m in metas if "sources" in m]
        plain = [m for m in metas if "sources" not in m]
        every = list_samples(replace(cfg, val_fraction=0))
        all_mixed = [m for m in (read_sample(files, *s[1:], s[0])[2] for s in every) if "sources" in m]
        assert mixed and len(mixed) < len(all_mixed)  # some mixed samples had a val source and were left out
        assert not {src["clip_id"] for m in mixed for src in m["sources"]} & val_clips
        assert plain and not {m["clip_id"] for m in plain} & val_clips


def _shuffle_part_labels(src: Path, dst: Path, part: int, seed: int) -> int:
    """A copy of a build whose part-`part` labels (label, votes, soft) are permuted among its clips, in
    every format, with index.json updated: what a leak of the test labels into training would change."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mixed"))
    index = open_index(dst)
    formats = tuple(sorted({e["format"] for e in index["shards"]}))
    tars = sorted((e for e in index["shards"] if e["format"] == "webdataset" and e["part"] == part),
                  key=lambda e: e["path"])
    files: dict = {}
    shards = []
    for e in tars:
        rows = [read_sample(files, "webdataset", str(dst / e["path"]), members, key)
                for key, members in parse_idx((dst / e["idx"]["path"]).read_text())]
        shards.append((e["shard"], [(m["clip_id"], x, y, m) for x, y, m in rows]))
    for f in files.values():
        f.close()
    flat = [r for _, rows in shards for r in rows]
    perm = np.random.default_rng(seed).permutation(len(flat))
    while len(flat) > 1 and (perm == np.arange(len(flat))).all():
        perm = np.random.default_rng(seed := seed + 1).permutation(len(flat))
    new = {r[0]: flat[j] for r, j in zip(flat, perm, strict=True)}
    entries = [e for e in index["shards"] if e["part"] != part]
    for name, rows in shards:
        samples = []
        for clip_id, x, _, meta in rows:
            _, _, y, other = new[clip_id]
            meta = {k: v for k, v in meta.items() if k != "crc32"} | {"label": other["label"], "votes": other["votes"]}
            samples.append(encode_sample(clip_id, x, y, meta))
        entries += write_shard_files(dst, name, part, samples, formats)
    write_index(dst, index | {"shards": entries})
    assert (dst / INDEX_NAME).is_file()
    return sum(r[3]["label"] != new[r[0]][3]["label"] for r in flat)  # clips whose label changed


def test_part_k_labels_choose_nothing(built, tmp_path):
    """With a validation split, shuffling part K's labels before training changes no choice: the same
    chosen epoch, the same training and validation numbers, the same predictions on part K."""
    shuffled = tmp_path / "shuffled"
    assert _shuffle_part_labels(built[0], shuffled, part=1, seed=0) >= 2
    reports = {}
    for name, shards in (("orig", built[0]), ("shuffled", shuffled)):
        cfg = _cfg((shards,), tmp_path / name, epochs=2, max_steps=2, val_fraction=0.3, lr=5e-3)
        reports[name] = train(cfg)
    a, b = reports["orig"], reports["shuffled"]
    assert a["selected_by"] == "best validation UAR" and a["epoch"] == a["best_epoch"]
    assert a["best_epoch"] == b["best_epoch"] and a["val_uar"] == b["val_uar"]
    best = max(a["history"], key=lambda h: (h["val_uar"], -h["epoch"]))
    assert a["best_epoch"] == best["epoch"]  # chosen by validation UAR alone
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k in ("train_loss", "val_uar", "val_war", "val_loss"):
            assert ha[k] == pytest.approx(hb[k], rel=1e-6), k
    rows = {n: [json.loads(line) for line in (tmp_path / n / "fold1/metrics.jsonl").read_text().splitlines()]
            for n in reports}
    for ra, rb in zip(rows["orig"], rows["shuffled"], strict=True):
        pred_a = np.array(ra["test_confusion"]).sum(0)  # column sums: how often each class was predicted
        pred_b = np.array(rb["test_confusion"]).sum(0)
        assert (pred_a == pred_b).all() and ra["test_n"] == rb["test_n"]


def test_folds_and_arms_write_one_table(built, tmp_path):
    cfg = _cfg(built, tmp_path / "cmp", folds="1,2", mix_mode="midas,none", epochs=1, max_steps=1)
    summary = train_folds(cfg)
    assert [r["mix_mode"] for r in summary["rows"]] == ["midas", "none"]
    for row in summary["rows"]:
        reports = summary["reports"][row["mix_mode"]]
        assert [r["fold"] for r in reports] == [1, 2] and all(r["mix_mode"] == row["mix_mode"] for r in reports)
        assert row["test_uar_mean"] == pytest.approx(np.mean([r["test_uar"] for r in reports]))
        assert row["test_war_std"] == pytest.approx(np.std([r["test_war"] for r in reports]))
        for k in (1, 2):
            assert (tmp_path / "cmp" / row["mix_mode"] / f"fold{k}/report.json").is_file()
    table = (tmp_path / "cmp/summary.md").read_text()
    assert "| midas | 1,2 |" in table and "| none | 1,2 |" in table and "last epoch" in table
    assert json.loads((tmp_path / "cmp/summary.json").read_text())["arms"] == ["midas", "none"]
    # the soft-label metrics (tests/test_metrics.py checks their values): metrics.jsonl, report.json, summary
    for row in summary["rows"]:
        arm = row["mix_mode"]
        reports = summary["reports"][arm]
        for r in reports:
            run = tmp_path / "cmp" / arm / f"fold{r['fold']}"
            record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            saved = json.loads((run / "report.json").read_text())
            for k in SOFT_KEYS:
                assert saved[f"test_{k}"] == record[f"test_{k}"] == r[f"test_{k}"], k
            assert record["test_clear_n"] + record["test_ambiguous_n"] == record["test_n"]
            assert 0 <= record["test_ece"] <= 1 and 0 <= record["test_vote_kl"] <= record["test_vote_nll"]
            assert record["test_vote_nll"] == pytest.approx(record["test_loss"], rel=1e-3)  # the soft CE on votes
        assert row["test_ece_mean"] == pytest.approx(np.mean([r["test_ece"] for r in reports]))
        assert row["test_clear_n"] == sum(r["test_clear_n"] for r in reports)
        assert (f"| {arm} | {row['test_ece_mean']:.4f} | {row['test_vote_nll_mean']:.4f} | "
                f"{row['test_vote_kl_mean']:.4f} |") in table
    assert "| mix mode | ECE | vote NLL | KL |" in table


# -- on a GPU (skipped without one): a prebuilt shard directory, no decord or Ray needed there -------------
GPU_SHARDS = os.environ.get("MIDAS_GPU_SHARDS", "/tmp/data/shards")


def _gpu_train(args: list[str]) -> subprocess.CompletedProcess:
    """midas-train in a fresh process (CUDA starts uninitialised, as on a cluster node)."""
    if not (Path(GPU_SHARDS) / INDEX_NAME).is_file():
        pytest.skip(f"no prebuilt shards at {GPU_SHARDS} (set MIDAS_GPU_SHARDS)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    return subprocess.run([sys.executable, "-m", "train", "--shards", GPU_SHARDS, *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.gpu
def test_gpu_one_epoch_with_no_extra_flag_then_resume(tmp_path):
    res = _gpu_train(["--fold", "1", "--epochs", "1", "--out", str(tmp_path)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "device cuda:0" in res.stderr and "test (part 1), last epoch 1:" in res.stdout
    res = _gpu_train(["--fold", "1", "--epochs", "2", "--out", str(tmp_path), "--resume"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed fold 1 at epoch 2" in res.stderr
    rows = [json.loads(line) for line in (tmp_path / "fold1/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.mark.gpu
def test_gpu_val_split_mixup_compiled(tmp_path):
    """Three loaders (train, val, test) in one process, torch.compile, bf16 and channels_last (defaults)."""
    res = _gpu_train(["--fold", "1", "--epochs", "1", "--out", str(tmp_path), "--val-fraction", "0.2",
                      "--mix-mode", "mixup", "--compile", "--batch-size", "16", "--max-steps", "2"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "fold1/report.json").read_text())
    assert report["mix_mode"] == "mixup" and report["selected_by"] == "best validation UAR"
