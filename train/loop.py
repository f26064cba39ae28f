"""Train a DFER model on midas-prep shards: setup, loop, eval, checkpoint (top to bottom).

One process per GPU (or one CPU process) under torchrun; each rank reads its own slice of
every epoch from the DALI loader, which mixes MIDAS pairs on the device. Evaluation on
part K after every epoch, metrics to <out>/metrics.jsonl (and TensorBoard), a checkpoint
every epoch that `resume` continues exactly: model, optimiser, scheduler, AMP scaler,
loader position (DALI checkpoint) and torch RNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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
from pipeline.read import open_index
from pipeline.stream import MidasLoader, resolve_device
from train.metrics import classification_metrics
from train.model import ModelConfig, create_model

__all__ = ["train", "train_folds", "soft_cross_entropy"]

logger = logging.getLogger(__name__)


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """sum_c -y_c log p_c, averaged over the batch: the targets are the vote histograms."""
    return -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _setup_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "gpu" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


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
    logger.warning("loaded %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: MidasLoader, device: torch.device, world: int,
             classes: list[str], amp: bool) -> dict[str, Any]:
    """Predictions on part K (each rank its slice, gathered), metrics on every rank alike."""
    model.eval()
    labels, preds, losses = [], [], []
    for batch in loader:
        x, soft, sample = batch["frames"].to(device), batch["soft"].to(device), batch["sample"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        losses.append(float(soft_cross_entropy(logits, soft)) * len(x))
        lab = sample[:, 1].numpy()
        lab = np.where(lab >= 0, lab, soft.argmax(1).cpu().numpy())  # manifests without a label: argmax
        labels.append(lab)
        preds.append(logits.argmax(1).cpu().numpy())
    parts = _gather((np.concatenate(labels), np.concatenate(preds), sum(losses)), world)
    y = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    m = classification_metrics(y, p, classes)
    m["loss"] = sum(q[2] for q in parts) / len(y)
    model.train()
    return m


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train fold `cfg.fold`; returns the final report (best epoch by UAR, its metrics)."""
    # -- setup ---------------------------------------------------------------------------
    device_kind = resolve_device(cfg.device)
    rank, world, local_rank = _setup_distributed(device_kind)
    device = torch.device(f"cuda:{local_rank}" if device_kind == "gpu" else "cpu")
    if device_kind == "gpu":
        torch.cuda.set_device(device)
    amp = cfg.amp and device_kind == "gpu"
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank; weights are synced by DDP at start
    out = Path(cfg.out) / f"fold{cfg.fold}"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=True))
    index = open_index(cfg.shards)
    classes = list(index["classes"])
    sample = index["sample"]
    stream = StreamConfig(shards=cfg.shards, fold=cfg.fold, batch_size=cfg.batch_size, mix=cfg.mix,
                          alpha=cfg.alpha, mix_prob=cfg.mix_prob, offline_mixed=cfg.offline_mixed,
                          include_unassigned=cfg.include_unassigned, device=device_kind, device_id=local_rank,
                          shard_id=rank, num_shards=world, seed=cfg.seed, py_workers=cfg.py_workers)
    mcfg = ModelConfig(arch=cfg.model, num_classes=len(classes), num_frames=sample["num_frames"], width=cfg.width,
                       temporal_layers=cfg.temporal_layers, dropout=cfg.dropout)
    model = create_model(mcfg).to(device)
    if cfg.pretrained:
        _load_pretrained(model, cfg.pretrained)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_kind == "gpu" else None
                                                    ) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # -- data and resume -----------------------------------------------------------------------
    ckpt_path = out / "last.pt"
    state = None
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # data, never code
    if state and len(state["loaders"]) != world:
        raise ValueError(f"{ckpt_path} was written by {len(state['loaders'])} ranks; resume it with as many "
                         f"(this run has {world})")
    train_loader = MidasLoader(stream, checkpoint=state["loaders"][rank]) if state else MidasLoader(stream)
    eval_loader = MidasLoader(replace(stream, split="test", mix=False, augment=False, offline_mixed=False))
    steps_per_epoch = len(train_loader) // cfg.accum_steps
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    assert steps_per_epoch > 0, (f"fold {cfg.fold}: {len(train_loader)} batches of {cfg.batch_size} per rank "
                                 f"is less than accum_steps={cfg.accum_steps}; lower --batch-size")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    start_epoch, history = 0, []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"][rank])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if rank == 0:
            logger.warning("resumed fold %d at epoch %d", cfg.fold, start_epoch + 1)
    writer = _tensorboard(out) if cfg.tensorboard and rank == 0 else None

    # -- loop --------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        ddp.train()
        seen: list[int] = []
        total, count, step = 0.0, 0, 0
        batches = iter(train_loader)
        while step < steps_per_epoch:
            for micro in range(cfg.accum_steps):
                batch = next(batches)
                x, soft = batch["frames"].to(device), batch["soft"].to(device)
                seen += batch["sample"][:, 0].tolist()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = ddp(x)
                if cfg.loss == "soft":
                    loss = soft_cross_entropy(logits, soft)
                else:  # hard labels: the clip's label; for mixed or unlabelled samples the soft argmax
                    label = batch["sample"][:, 1].to(device)
                    use = (label >= 0) & torch.tensor(not cfg.mix, device=device)
                    loss = F.cross_entropy(logits.float(), torch.where(use, label, soft.argmax(1)))
                # no all-reduce on the accumulation steps before the last one
                sync = micro == cfg.accum_steps - 1 or world == 1
                with ddp.no_sync() if not sync else contextlib.nullcontext():
                    (loss / cfg.accum_steps).backward()
                total += float(loss.detach()) * len(x)
                count += len(x)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
        for _ in batches:  # finish the epoch so the loader's next epoch starts clean
            pass
        train_time = time.perf_counter() - t0
        metrics = evaluate(model, eval_loader, device, world, classes, amp)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": scheduler.get_last_lr()[0],
                  "steps": step, "clips": count * world, "train_seconds": train_time,
                  "clips_per_s": count * world / train_time, **metrics}
        history.append({k: record[k] for k in ("epoch", "uar", "war", "loss", "train_loss")})
        if cfg.log_samples:
            (out / f"samples_rank{rank}_epoch{epoch + 1}.json").write_text(json.dumps(sorted(seen)))
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            if writer is not None:
                for k in ("uar", "war", "loss", "train_loss", "lr", "clips_per_s"):
                    writer.add_scalar(k, record[k], epoch + 1)
                writer.flush()
            logger.warning("fold %d epoch %d/%d: train loss %.4f, UAR %.4f, WAR %.4f, %.1f clips/s", cfg.fold,
                           epoch + 1, cfg.epochs, record["train_loss"], record["uar"], record["war"],
                           record["clips_per_s"])
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
    best = max(history, key=lambda h: h["uar"])
    report = {"fold": cfg.fold, "best_epoch": best["epoch"], "uar": best["uar"], "war": best["war"],
              "epochs": len(history), "history": history}
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if writer is not None:
        writer.close()
    return report


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out / "tb"))


def train_folds(cfg: TrainConfig) -> dict[str, Any]:
    """The 5-fold protocol (or any list of folds): one run per fold, then mean and std of UAR/WAR."""
    reports = [train(replace(cfg, fold=k, folds="")) for k in cfg.fold_list()]
    uar = np.array([r["uar"] for r in reports])
    war = np.array([r["war"] for r in reports])
    summary = {"folds": [r["fold"] for r in reports], "uar_mean": float(uar.mean()), "uar_std": float(uar.std()),
               "war_mean": float(war.mean()), "war_std": float(war.std()), "reports": reports}
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary
