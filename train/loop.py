"""Train a DFER model on midas-prep shards: setup, loop, eval, checkpoint (top to bottom).

One process per GPU (or one CPU process) under torchrun; each rank reads its own slice of
every epoch from the DALI loader, which mixes MIDAS pairs on the device. The loaders are
built before any CUDA work (DALI cannot fork its reader processes once CUDA is initialised).

Protocol. Part K (the test fold) is evaluated after every epoch but never chooses anything:
the result is the last epoch's metrics. With `val_fraction` > 0 a validation split is carved
out of the training parts (seeded, by clip; offline-mixed samples made from a val clip are
left out of training) and its UAR chooses the reported epoch, whose part-K metrics are
reported. `mix_mode` names the arm of the MIDAS comparison: midas (soft labels, mixed),
mixup (one-hot labels, the same mixing), soft (soft labels, no mixing), none (one-hot, no mixing).

Outputs: metrics to <out>/fold{K}/metrics.jsonl (and TensorBoard), report.json, a checkpoint
every epoch that `resume` continues exactly: model, optimiser, scheduler, loader position
(DALI checkpoint) and torch RNG. Every metric names its split (train_loss, test_uar, val_uar, ...),
and config.yaml holds the run's resolved config (its one mix_mode), as report.json does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from pipeline.config import StreamConfig, TrainConfig, config_to_dict
from pipeline.read import index_sha256s, open_index
from pipeline.stream import MidasLoader, list_samples, resolve_device
from train.metrics import classification_metrics, soft_label_metrics
from train.model import ModelConfig, create_model, use_channels_last

__all__ = ["TrainError", "train", "train_folds", "soft_cross_entropy", "stream_config", "loader_resources"]

logger = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A run that cannot start as asked (no checkpoint to resume, a split smaller than a batch): one line."""


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """sum_c -y_c log p_c, averaged over the batch: the targets are the vote histograms."""
    return -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _setup_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun (no CUDA work yet)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "gpu" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def loader_resources(cfg: TrainConfig) -> tuple[int, int]:
    """(reader processes, DALI threads) per rank: the configured values, or sized from the CPUs this
    process may use shared by the ranks of this node (one CPU left for the training loop itself)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    threads = cfg.num_threads or max(1, min(4, per_rank // 8))
    workers = cfg.py_workers or max(1, min(64, per_rank - threads - 1))
    return workers, threads


def _arm(cfg: TrainConfig) -> str:
    arms = cfg.arms()
    if len(arms) != 1:
        raise TrainError(f"train() runs one mix mode, got {cfg.mix_mode!r}; use train_folds for several")
    return arms[0]


def stream_config(cfg: TrainConfig, split: str = "train", shard_id: int = 0, num_shards: int = 1,
                  device: str = "cpu", device_id: int = 0) -> StreamConfig:
    """The loader config of one split of this run: the arm sets labels (soft | onehot) and mixing;
    val and test splits never mix, augment or read offline-mixed samples, and keep soft labels."""
    arm = _arm(cfg)
    workers, threads = loader_resources(cfg)
    stream = StreamConfig(shards=cfg.shards, fold=cfg.fold, batch_size=cfg.batch_size,
                          mix=arm in ("midas", "mixup"), labels="onehot" if arm in ("mixup", "none") else "soft",
                          alpha=cfg.alpha, mix_prob=cfg.mix_prob, offline_mixed=cfg.offline_mixed,
                          include_unassigned=cfg.include_unassigned, device=device, device_id=device_id,
                          shard_id=shard_id, num_shards=num_shards, seed=cfg.seed, py_workers=workers,
                          num_threads=threads, val_fraction=cfg.val_fraction, val_seed=cfg.val_seed)
    if split == "train":
        return stream
    return replace(stream, split=split, mix=False, augment=False, offline_mixed=False, labels="soft")


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, cfg.epochs * steps_per_epoch)

    def f(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    return f


def _load_pretrained(model: torch.nn.Module, path: str) -> None:
    """A local state dict: the whole model's, or a ResNet-18's (torchvision names) for the encoder."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # data, never code
    target = model
    if not any(k.startswith(("encoder.", "stem.", "blocks.")) for k in state) and hasattr(model, "encoder"):
        target = model.encoder
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = target.load_state_dict(state, strict=False)
    logger.info("loaded %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: MidasLoader, device: torch.device, world: int,
             classes: list[str], amp: bool, bar: Any = None, clear_share: float = 0.8) -> dict[str, Any]:
    """Predictions on one evaluation split (each rank its slice, gathered), metrics on every rank alike:
    UAR/WAR and the soft-label metrics against each clip's votes (train.metrics.soft_label_metrics);
    `bar` (a progress bar in clips) advances by every batch of every rank."""
    model.eval()
    labels, preds, losses, probs, votes = [], [], [], [], []
    for batch in loader:
        if bar is not None:
            bar.update(len(batch["frames"]) * world)
        x, soft, sample = batch["frames"].to(device, non_blocking=True), batch["soft"].to(device), batch["sample"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        losses.append(float(soft_cross_entropy(logits, soft)) * len(x))
        lab = sample[:, 1].numpy()
        lab = np.where(lab >= 0, lab, soft.argmax(1).cpu().numpy())  # manifests without a label: argmax
        labels.append(lab)
        preds.append(logits.argmax(1).cpu().numpy())
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        votes.append(soft.float().cpu().numpy())
    parts = _gather((np.concatenate(labels), np.concatenate(preds), sum(losses), np.concatenate(probs),
                     np.concatenate(votes)), world)
    y = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    m = classification_metrics(y, p, classes)
    m["loss"] = sum(q[2] for q in parts) / len(y)
    m |= soft_label_metrics(np.concatenate([q[3] for q in parts]), np.concatenate([q[4] for q in parts]), y, classes,
                            clear_share)
    model.train()
    if bar is not None:
        bar.close()
    return m


def _check_split(stream: StreamConfig, cfg: TrainConfig, world: int) -> int:
    """Clips of the training split; a TrainError when a rank's share is less than one optimizer step."""
    n = len(list_samples(stream))
    per_rank = n // world
    need = cfg.batch_size * cfg.accum_steps
    if per_rank < need:
        most = per_rank // cfg.accum_steps
        fix = f"lower --batch-size to {most} or less" if most else "use fewer ranks or more data"
        raise TrainError(f"fold {cfg.fold}: the training split has {n} clip(s) ({per_rank} per rank), fewer than one "
                         f"step of --batch-size {cfg.batch_size} x accum_steps {cfg.accum_steps}; {fix}")
    return n


def _check_eval_split(stream: StreamConfig, world: int) -> int:
    """Clips of an evaluation split; every rank needs at least one (an empty slice has no batch to end on)."""
    n = len(list_samples(stream))
    if n < world:
        more = " or a larger --val-fraction" if stream.split == "val" else ""
        raise TrainError(f"fold {stream.fold}: the {stream.split} split has {n} clip(s), fewer than the {world} "
                         f"ranks; run with fewer ranks{more}")
    return n


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train fold `cfg.fold` with one mix mode; returns the report (see the module docstring)."""
    arm = _arm(cfg)
    # -- setup, no CUDA yet ------------------------------------------------------------------
    device_kind = resolve_device(cfg.device)
    rank, world, local_rank = _setup_distributed(device_kind)
    amp = cfg.amp and device_kind == "gpu"
    channels_last = cfg.channels_last and device_kind == "gpu"
    out = Path(cfg.out) / f"fold{cfg.fold}"
    index = open_index(cfg.shards)
    inputs = index_sha256s(cfg.shards)  # what this run reads: a rewrite during the run is reported
    classes = list(index["classes"])
    sample = index["sample"]
    ckpt_path = out / "last.pt"
    state = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: no checkpoint at {ckpt_path}; check --out and --fold, or run without --resume")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # data, never code; no CUDA
        if len(state["loaders"]) != world:
            raise TrainError(f"{ckpt_path} was written by {len(state['loaders'])} ranks; resume it with as many "
                             f"(this run has {world})")
    stream = stream_config(cfg, "train", rank, world, device_kind, local_rank)
    n_train = _check_split(stream, cfg, world)
    cfg = replace(cfg, mix_mode=arm, mix=arm in ("midas", "mixup"))  # one truth: the arm this run is, not "" + mix
    eval_streams = {split: stream_config(cfg, split, rank, world, device_kind, local_rank)
                    for split in (("test", "val") if cfg.val_fraction > 0 else ("test",))}
    eval_sizes = {split: _check_eval_split(split_stream, world) for split, split_stream in eval_streams.items()}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=True))

    # -- loaders: before any CUDA work, so DALI may still fork its readers ----------------------
    train_loader = MidasLoader(stream, checkpoint=state["loaders"][rank]) if state else MidasLoader(stream)
    eval_loaders = {split: MidasLoader(split_stream) for split, split_stream in eval_streams.items()}
    steps_per_epoch = len(train_loader) // cfg.accum_steps
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)

    # -- model (CUDA from here on) ----------------------------------------------------------------
    device = torch.device(f"cuda:{local_rank}" if device_kind == "gpu" else "cpu")
    if device_kind == "gpu":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank; weights are synced by DDP at start
    mcfg = ModelConfig(arch=cfg.model, num_classes=len(classes), num_frames=sample["num_frames"], width=cfg.width,
                       temporal_layers=cfg.temporal_layers, dropout=cfg.dropout)
    model = create_model(mcfg)
    if cfg.pretrained:
        _load_pretrained(model, cfg.pretrained)
    if state:
        model.load_state_dict(state["model"])
    model = model.to(device)
    if channels_last:
        use_channels_last(model)
    if cfg.compile:
        model.compile(backend=cfg.compile_backend)  # in place: state_dict keys stay the same
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_kind == "gpu" else None
                                                    ) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    start_epoch, history = 0, []
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"][rank])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if rank == 0:
            logger.info("resumed fold %d at epoch %d from %s", cfg.fold, start_epoch + 1, ckpt_path)
    writer = _tensorboard(out) if cfg.tensorboard and rank == 0 else None
    mixing = arm in ("midas", "mixup")
    if rank == 0 and start_epoch < cfg.epochs:
        logger.info("fold %d, mix mode %s: %d training clips, %d step(s) of %d x %d rank(s) per epoch, device %s",
                    cfg.fold, arm, n_train, steps_per_epoch, cfg.batch_size * cfg.accum_steps, world, device)

    # -- loop --------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        ddp.train()
        seen: list[int] = []
        total, count, step = 0.0, 0, 0
        batches = iter(train_loader)
        bar = _progress(f"fold {cfg.fold} epoch {epoch + 1}/{cfg.epochs}",
                        steps_per_epoch * cfg.accum_steps * cfg.batch_size * world, rank != 0)
        while step < steps_per_epoch:
            for micro in range(cfg.accum_steps):
                batch = next(batches)
                x = batch["frames"].to(device, non_blocking=True)
                soft = batch["soft"].to(device, non_blocking=True)
                seen += batch["sample"][:, 0].tolist()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = ddp(x)
                if cfg.loss == "soft":  # against the targets of the arm: soft or one-hot, mixed or not
                    loss = soft_cross_entropy(logits, soft)
                else:  # hard labels: the clip's label; for mixed or unlabelled samples the target's argmax
                    label = batch["sample"][:, 1].to(device, non_blocking=True)
                    use = (label >= 0) & torch.tensor(not mixing, device=device)
                    loss = F.cross_entropy(logits.float(), torch.where(use, label, soft.argmax(1)))
                # no all-reduce on the accumulation steps before the last one
                sync = micro == cfg.accum_steps - 1 or world == 1
                with ddp.no_sync() if not sync else contextlib.nullcontext():
                    (loss / cfg.accum_steps).backward()
                total += float(loss.detach()) * len(x)
                count += len(x)
                bar.update(len(x) * world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}", refresh=False)
        bar.close()
        for _ in batches:  # finish the epoch so the loader's next epoch starts clean
            pass
        train_time = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "mix_mode": arm, "train_loss": total / max(count, 1),
                  "lr": scheduler.get_last_lr()[0], "steps": step, "clips": count * world,
                  "train_seconds": train_time, "clips_per_s": count * world / train_time}
        for split, loader in eval_loaders.items():  # every metric named by its split: test_uar, val_loss, ...
            bar = _progress(f"fold {cfg.fold} epoch {epoch + 1}/{cfg.epochs} {split}", eval_sizes[split], rank != 0)
            t1 = time.perf_counter()
            metrics = evaluate(model, loader, device, world, classes, amp, bar, cfg.clear_share)
            record |= {f"{split}_{k}": v for k, v in metrics.items()} | {f"{split}_seconds": time.perf_counter() - t1}
        history.append({k: record[k] for k in HISTORY_KEYS if k in record})
        if cfg.log_samples:
            (out / f"samples_rank{rank}_epoch{epoch + 1}.json").write_text(json.dumps(sorted(seen)))
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            if writer is not None:
                for k in ("test_uar", "test_war", "test_loss", "train_loss", "lr", "clips_per_s", "val_uar",
                          "val_war", "val_loss"):
                    if k in record:
                        writer.add_scalar(k, record[k], epoch + 1)
                writer.flush()
            val_text = f", val UAR {record['val_uar']:.4f}" if "val_uar" in record else ""
            logger.info("fold %d epoch %d/%d: train loss %.4f, %.1f clips/s; test UAR %.4f, WAR %.4f%s", cfg.fold,
                        epoch + 1, cfg.epochs, record["train_loss"], record["clips_per_s"], record["test_uar"],
                        record["test_war"], val_text)
        # every rank's loader and RNG position, gathered so any rank count can resume
        loader_states = _gather(train_loader.state_dict()["checkpoint"], world)
        rng = _gather(torch.get_rng_state(), world)
        if rank == 0:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                    "loaders": loader_states, "rng": rng,
                    "config": config_to_dict(cfg), "model_config": asdict(mcfg)}
            tmp = out / "last.pt.tmp"
            torch.save(ckpt, tmp)
            os.replace(tmp, ckpt_path)  # never a half-written checkpoint under the final name
        if world > 1:
            dist.barrier()
    report = make_report(cfg.fold, arm, history) | {"inputs": inputs}
    changed = inputs_changed(inputs, index_sha256s(cfg.shards))
    if changed:
        report["inputs_changed"] = changed
        logger.warning("the shards changed while this run read them (%s): its batches may mix two builds; "
                       "re-run once nothing rewrites %s", "; ".join(changed[:3]), cfg.shards)
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if writer is not None:
        writer.close()
    del train_loader, eval_loaders  # DALI pipelines and their reader processes go now, not at exit
    return report


# What report.json's history keeps of each epoch's metrics.jsonl record.
SOFT_KEYS = ("ece", "vote_nll", "vote_kl", "clear_uar", "clear_war", "clear_n", "ambiguous_uar", "ambiguous_war",
             "ambiguous_n")  # train.metrics.soft_label_metrics, per evaluated split
HISTORY_KEYS = ("epoch", "train_loss", "test_uar", "test_war", "test_loss", "test_n", "test_classes_present",
                *(f"test_{k}" for k in SOFT_KEYS), "val_uar", "val_war", "val_loss", "val_n",
                *(f"val_{k}" for k in SOFT_KEYS))


def inputs_changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The index.json files whose sha256 differs between the start and the end of a run (or that
    appeared or went): e.g. mix-offline --overwrite rewrote a fold while the trainer read it."""
    return [f"{p} {'rewritten' if p in after and p in before else 'removed' if p in before else 'added'}"
            for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)]


def make_report(fold: int, arm: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of a run: the last epoch's part-K metrics; with a validation split, those of the epoch
    with the best validation UAR (the first on ties). Part K never chooses anything."""
    last = history[-1]
    n_val = last.get("val_n", 0)
    if n_val:
        chosen = max(history, key=lambda h: (h["val_uar"], -h["epoch"]))
        selected_by = "best validation UAR"
    else:
        chosen, selected_by = last, "last epoch"
    report = {"fold": fold, "mix_mode": arm, "epochs": len(history), "selected_by": selected_by,
              "epoch": chosen["epoch"], "test_uar": chosen["test_uar"], "test_war": chosen["test_war"],
              "test_clips": last["test_n"], "test_classes_present": last["test_classes_present"],
              "last": {"epoch": last["epoch"], "test_uar": last["test_uar"], "test_war": last["test_war"]},
              "history": history}
    for k in SOFT_KEYS:  # the soft-label metrics of the reported epoch (and of the last), beside UAR/WAR
        if f"test_{k}" in chosen:
            report[f"test_{k}"] = chosen[f"test_{k}"]
            report["last"][f"test_{k}"] = last[f"test_{k}"]
    if n_val:
        report |= {"best_epoch": chosen["epoch"], "val_uar": chosen["val_uar"], "val_war": chosen["val_war"],
                   "val_clips": n_val}
        report |= {f"val_{k}": chosen[f"val_{k}"] for k in SOFT_KEYS if f"val_{k}" in chosen}
    return report


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(desc: str, total: int, disable: bool) -> Any:
    """A tqdm bar in clips (its rate is clips/s) on rank 0; redrawn less often when not a terminal."""
    if disable:
        return _NoBar()
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True, mininterval=0.5 if tty else 30)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out / "tb"))


def _run_out(cfg: TrainConfig, arm: str, several_arms: bool) -> str:
    return str(Path(cfg.out) / arm) if several_arms else cfg.out


def train_folds(cfg: TrainConfig) -> dict[str, Any]:
    """Every arm (mix mode) x every fold, one run each, then one table of UAR/WAR mean and std per arm:
    <out>/summary.json and <out>/summary.md. With several arms each runs under <out>/<arm>/fold{K}."""
    arms, folds = cfg.arms(), cfg.fold_list()
    several = len(arms) > 1
    runs = [(arm, k) for arm in arms for k in folds]
    resume = {run: cfg.resume and (Path(_run_out(cfg, run[0], several)) / f"fold{run[1]}" / "last.pt").is_file()
              for run in runs}
    if cfg.resume and not any(resume.values()):
        first = Path(_run_out(cfg, arms[0], several)) / f"fold{folds[0]}" / "last.pt"
        raise TrainError(f"--resume: no checkpoint at {first} (nor for any other fold or arm of this run); "
                         "check --out, or run without --resume")
    reports: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for arm, k in runs:
        if cfg.resume and not resume[(arm, k)]:
            logger.info("mix mode %s fold %d has no checkpoint yet: it starts from epoch 1", arm, k)
        run = replace(cfg, fold=k, folds="", mix_mode=arm, out=_run_out(cfg, arm, several), resume=resume[(arm, k)])
        reports[arm].append(train(run))
    rows = []
    for arm in arms:
        row: dict[str, Any] = {"mix_mode": arm, "folds": folds}
        for key in ("test_uar", "test_war", *(f"test_{k}" for k in SOFT_KEYS if not k.endswith("_n"))):
            values = [r.get(key) for r in reports[arm]]  # a group (clear, ambiguous) may be empty in a fold
            have = np.array([v for v in values if v is not None], dtype=np.float64)
            row |= {key: values, f"{key}_mean": float(have.mean()) if have.size else None,
                    f"{key}_std": float(have.std()) if have.size else None}
        for key in ("test_clear_n", "test_ambiguous_n"):  # clips in each group, over all folds
            row[key] = sum(int(r.get(key, 0)) for r in reports[arm])
        rows.append(row)
    selected_by = reports[arms[0]][0]["selected_by"]
    summary = {"folds": folds, "arms": arms, "selected_by": selected_by, "rows": rows, "reports": reports,
               "table": summary_table(rows, selected_by)}
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        (Path(cfg.out) / "summary.md").write_text(summary["table"])
    return summary


def summary_table(rows: list[dict[str, Any]], selected_by: str) -> str:
    """Markdown: one row per arm, UAR and WAR on part K as mean +- std over the folds (population std), then
    the soft-label metrics (means over the folds): ECE, vote NLL, KL(votes || prediction), and UAR/WAR on the
    clear and on the ambiguous clips with the number of clips in each group (summed over the folds)."""

    def pct(r: dict[str, Any], key: str) -> str:
        return "-" if r.get(f"{key}_mean") is None else f"{100 * r[f'{key}_mean']:.2f}"

    def num(r: dict[str, Any], key: str) -> str:
        return "-" if r.get(f"{key}_mean") is None else f"{r[f'{key}_mean']:.4f}"

    lines = [f"UAR and WAR (%) on part K of each fold ({selected_by}), mean +- std over the folds.", "",
             "| mix mode | folds | UAR (%) | WAR (%) |", "| --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['mix_mode']} | {','.join(map(str, r['folds']))} | {100 * r['test_uar_mean']:.2f} +- "
                     f"{100 * r['test_uar_std']:.2f} | {100 * r['test_war_mean']:.2f} +- "
                     f"{100 * r['test_war_std']:.2f} |")
    lines += ["", "Soft-label metrics on part K against the annotators' votes, mean over the folds: ECE (15 bins, "
              "top class), vote NLL and KL(votes || prediction) (nats), UAR / WAR (%) of the clear clips (top "
              "class >= clear_share of the votes) and of the ambiguous rest, with their clip counts.", "",
              "| mix mode | ECE | vote NLL | KL | clear UAR / WAR (%) | clear clips | ambiguous UAR / WAR (%) "
              "| ambiguous clips |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "test_ece_mean" not in r:
            continue
        lines.append(f"| {r['mix_mode']} | {num(r, 'test_ece')} | {num(r, 'test_vote_nll')} | "
                     f"{num(r, 'test_vote_kl')} | {pct(r, 'test_clear_uar')} / {pct(r, 'test_clear_war')} | "
                     f"{r['test_clear_n']} | {pct(r, 'test_ambiguous_uar')} / {pct(r, 'test_ambiguous_war')} | "
                     f"{r['test_ambiguous_n']} |")
    return "\n".join(lines) + "\n"
