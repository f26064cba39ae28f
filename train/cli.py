"""`midas-train`: a thin click command over train.loop.train / train_folds."""

from __future__ import annotations

import json
import logging
import os

import click

from pipeline import __version__
from pipeline.config import ConfigError, TrainConfig, load_config, parse_set
from pipeline.read import ShardError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="midas-train")
@click.option("--shards", help="build-shards output (default: ./shards).")
@click.option("--fold", type=int, help="K: evaluate on part K, train on the rest (default 1).")
@click.option("--folds", help="Run several folds and report mean/std, e.g. 1-5.")
@click.option("--epochs", type=int, help="Epochs (default 20).")
@click.option("--batch-size", type=int, help="Clips per batch per rank (default 32).")
@click.option("--lr", type=float, help="Peak AdamW learning rate (default 5e-4).")
@click.option("--accum-steps", type=int, help="Gradient accumulation steps (default 1).")
@click.option("--out", help="Output directory (default runs/midas).")
@click.option("--model", type=click.Choice(["resnet18_transformer", "r2plus1d"]), help="Backbone.")
@click.option("--width", type=int, help="Channels of the first stage (64 = ResNet-18).")
@click.option("--loss", type=click.Choice(["soft", "hard"]), help="soft (vote histograms, default) or hard.")
@click.option("--mix/--no-mix", default=None, help="MIDAS mixing in the loader (default on); --no-mix: baseline.")
@click.option("--alpha", type=float, help="lam ~ Beta(alpha, alpha) (default 0.8).")
@click.option("--offline-mixed", is_flag=True, default=None, help="Add shards/mixed/foldK to the training data.")
@click.option("--pretrained", help="A local state dict to start from.")
@click.option("--resume", is_flag=True, default=None, help="Continue from <out>/foldK/last.pt.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Default auto.")
@click.option("--seed", type=int, help="Default 0.")
@click.option("--max-steps", type=int, help="Cap optimizer steps per epoch (smoke runs).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False),
              help="YAML, e.g. configs/train/dfew.yaml")
@click.option("--set", "sets", multiple=True, help="Override any field: --set warmup_epochs=2")
def main(shards, fold, folds, epochs, batch_size, lr, accum_steps, out, model, width, loss, mix, alpha,
         offline_mixed, pretrained, resume, device, seed, max_steps, config, sets) -> None:
    """Train a DFER model on midas-prep shards, MIDAS mixing on the device.

    \b
    Examples:
        midas-train --shards shards --fold 1 --epochs 1 --out runs/try
        midas-train --config configs/train/dfew.yaml --folds 1-5
        torchrun --nproc_per_node 8 --nnodes 2 ... -m train --shards /shared/shards --fold 1
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flags = {"shards": shards, "fold": fold, "folds": folds, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "accum_steps": accum_steps, "out": out, "model": model, "width": width, "loss": loss, "mix": mix,
             "alpha": alpha, "offline_mixed": offline_mixed, "pretrained": pretrained, "resume": resume,
             "device": device, "seed": seed, "max_steps": max_steps}
    try:
        cfg: TrainConfig = load_config(TrainConfig, config, parse_set(sets) | flags)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    from train.loop import train, train_folds

    try:
        result = train_folds(cfg) if cfg.folds else train(cfg)
    except ShardError as e:
        raise click.ClickException(str(e)) from e
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if cfg.folds:
        click.echo(f"\nmidas-train done: folds {result['folds']}\n"
                   f"  UAR {result['uar_mean']:.4f} +- {result['uar_std']:.4f}   "
                   f"WAR {result['war_mean']:.4f} +- {result['war_std']:.4f}\n  summary: {cfg.out}/summary.json")
    else:
        click.echo(f"\nmidas-train done: fold {result['fold']}, {result['epochs']} epoch(s)\n"
                   f"  best epoch {result['best_epoch']}: UAR {result['uar']:.4f}, WAR {result['war']:.4f}\n"
                   f"  metrics: {cfg.out}/fold{result['fold']}/metrics.jsonl\n"
                   + json.dumps(result["history"][-1]))


if __name__ == "__main__":  # pragma: no cover
    main()
