"""`midas-train`: a thin click command over train.loop.train / train_folds."""

from __future__ import annotations

import logging
import os

import click

from pipeline import __version__
from pipeline.config import ConfigError, TrainConfig, load_config, parse_set
from pipeline.format import ShardError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="midas-train")
@click.option("--shards", help="build-shards output (default: ./shards).")
@click.option("--fold", type=int, help="K: test on part K, train on the rest (default 1).")
@click.option("--folds", help="Run several folds and report mean/std, e.g. 1-5.")
@click.option("--epochs", type=int, help="Epochs (default 20).")
@click.option("--batch-size", type=int, help="Clips per batch per rank (default 32).")
@click.option("--lr", type=float, help="Peak AdamW learning rate (default 5e-4).")
@click.option("--accum-steps", type=int, help="Gradient accumulation steps (default 1).")
@click.option("--out", help="Output directory (default runs/midas).")
@click.option("--model", type=click.Choice(["resnet18_transformer", "r2plus1d"]),
              help="Backbone (default resnet18_transformer).")
@click.option("--width", type=int, help="Channels of the first stage (default 64 = ResNet-18).")
@click.option("--loss", type=click.Choice(["soft", "hard"]), help="soft (cross-entropy on the targets, default) or "
              "hard (on the label).")
@click.option("--mix-mode", help="midas (soft labels, mixed; default) | mixup (one-hot, mixed) | soft (soft, "
              "not mixed) | none (one-hot, not mixed); a comma list runs each arm, e.g. midas,mixup,soft,none.")
@click.option("--mix/--no-mix", default=None, help="Old spelling: --mix = --mix-mode midas, --no-mix = soft.")
@click.option("--alpha", type=float, help="lam ~ Beta(alpha, alpha) (default 0.8).")
@click.option("--offline-mixed", is_flag=True, default=None, help="Add shards/mixed/fold=K to the training data.")
@click.option("--val-fraction", type=float, help="Hold out this fraction of the training clips (seeded, by clip); "
              "its UAR chooses the reported epoch (default 0: the last epoch is the result).")
@click.option("--pretrained", help="A local state dict to start from.")
@click.option("--resume", is_flag=True, default=None, help="Continue from <out>/foldK/last.pt (an error if missing).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Default auto.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model (default off).")
@click.option("--py-workers", type=int, help="Reader processes per rank (default 0 = from the rank's CPUs).")
@click.option("--num-threads", type=int, help="DALI CPU threads per rank (default 0 = from the rank's CPUs).")
@click.option("--seed", type=int, help="Default 0.")
@click.option("--max-steps", type=int, help="Cap optimizer steps per epoch (default 0 = no cap; smoke runs).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False),
              help="YAML, e.g. configs/train/dfew.yaml")
@click.option("--set", "sets", multiple=True, help="Override any field: --set warmup_epochs=2")
def main(shards, fold, folds, epochs, batch_size, lr, accum_steps, out, model, width, loss, mix_mode, mix, alpha,
         offline_mixed, val_fraction, pretrained, resume, device, compile_, py_workers, num_threads, seed, max_steps,
         config, sets) -> None:
    """Train a DFER model on midas-prep shards, MIDAS mixing on the device.

    \b
    Examples:
        midas-train --shards shards --fold 1 --epochs 1 --out runs/try
        midas-train --config configs/train/dfew.yaml --folds 1-5 --mix-mode midas,mixup,soft,none
        torchrun --nproc_per_node 8 --nnodes 2 ... -m train --shards /shared/shards --fold 1
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)  # progress and results
    if mix is not None and mix_mode is None and not any(s.startswith("mix_mode=") for s in sets):
        mix_mode = "midas" if mix else "soft"
    flags = {"shards": shards, "fold": fold, "folds": folds, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "accum_steps": accum_steps, "out": out, "model": model, "width": width, "loss": loss,
             "mix": mix, "mix_mode": mix_mode, "alpha": alpha, "offline_mixed": offline_mixed,
             "val_fraction": val_fraction, "pretrained": pretrained, "resume": resume, "device": device,
             "compile": compile_, "py_workers": py_workers, "num_threads": num_threads, "seed": seed,
             "max_steps": max_steps}
    try:
        given = {k: v for k, v in flags.items() if v is not None}  # a flag left out must not hide a --set
        cfg: TrainConfig = load_config(TrainConfig, config, parse_set(sets) | given)
        several = bool(cfg.folds) or len(cfg.arms()) > 1
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    from train.loop import TrainError, train, train_folds

    try:
        result = train_folds(cfg) if several else train(cfg)
    except (ShardError, TrainError) as e:
        raise click.ClickException(str(e)) from e
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if several:
        click.echo(f"\nmidas-train done: folds {', '.join(map(str, result['folds']))}, mix mode(s) "
                   f"{', '.join(result['arms'])}; metrics on part K of each fold ({result['selected_by']})\n")
        click.echo(result["table"])
        click.echo(f"  table: {cfg.out}/summary.md and {cfg.out}/summary.json")
        return
    r = result
    lines = [f"\nmidas-train done: fold {r['fold']}, mix mode {r['mix_mode']}, {r['epochs']} epoch(s)"]
    if "best_epoch" in r:
        lines.append(f"  chosen epoch: {r['best_epoch']} (best validation UAR {r['val_uar']:.4f}, "
                     f"{r['val_clips']} validation clips)")
        lines.append(f"  test (part {r['fold']}), chosen epoch {r['epoch']}:  UAR {r['uar']:.4f}  WAR {r['war']:.4f}")
        lines.append(f"  test (part {r['fold']}), last epoch {r['last']['epoch']}:    UAR {r['last']['uar']:.4f}  "
                     f"WAR {r['last']['war']:.4f}")
    else:
        lines.append(f"  test (part {r['fold']}), last epoch {r['epoch']}:  UAR {r['uar']:.4f}  WAR {r['war']:.4f}")
    last = r["history"][-1]
    lines.append(f"  train loss (last epoch): {last['train_loss']:.4f}   test loss: {last['loss']:.4f}")
    lines.append(f"  report:  {cfg.out}/fold{r['fold']}/report.json")
    lines.append(f"  metrics: {cfg.out}/fold{r['fold']}/metrics.jsonl")
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    main()
