"""`midas-train`: a thin click command over train.loop.train / train_folds."""

from __future__ import annotations

import logging
import os
import sys

import click

from pipeline import __version__
from pipeline.cli import config_option, field_default, option
from pipeline.config import ConfigError, TrainConfig, load_config, parse_set
from pipeline.format import ShardError


def _d(name: str) -> str:
    return field_default(TrainConfig, name)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="midas-train")
@option("--shards", show_default=_d("shards"), help="build-shards output.")
@option("--fold", type=int, show_default=_d("fold"), help="K: test on part K, train on the rest.")
@option("--folds", show_default="--fold alone", help="Run several folds and report mean/std, e.g. 1-5.")
@option("--epochs", type=int, show_default=_d("epochs"), help="Epochs.")
@option("--batch-size", type=int, show_default=_d("batch_size"), help="Clips per batch per rank.")
@option("--lr", type=float, show_default=_d("lr"), help="Peak AdamW learning rate.")
@option("--accum-steps", type=int, show_default=_d("accum_steps"), help="Gradient accumulation steps.")
@option("--out", show_default=_d("out"), help="Output directory (one foldK/ per fold).")
@option("--model", type=click.Choice(["resnet18_transformer", "r2plus1d"]), show_default=_d("model"),
        help="Backbone.")
@option("--width", type=int, show_default=_d("width"), help="Channels of the first stage (64 = ResNet-18).")
@option("--loss", type=click.Choice(["soft", "hard"]), show_default=_d("loss"),
        help="soft (cross-entropy on the targets) or hard (on the label).")
@option("--mix-mode", show_default="midas", help="midas (soft labels, mixed) | mixup (one-hot, mixed) | soft (soft, "
        "not mixed) | none (one-hot, not mixed); a comma list runs each arm, e.g. midas,mixup,soft,none.")
@click.option("--mix/--no-mix", default=None, help="Old spelling: --mix = --mix-mode midas, --no-mix = soft.")
@option("--alpha", type=float, show_default=_d("alpha"), help="lam ~ Beta(alpha, alpha).")
@click.option("--offline-mixed", is_flag=True, default=None, help="Add shards/mixed/fold=K to the training data.")
@option("--val-fraction", type=float, show_default=_d("val_fraction"),
        help="Hold out this fraction of the training clips (seeded, by clip); its UAR chooses the reported epoch "
        "(0: the last epoch is the result).")
@option("--pretrained", show_default="none", help="A local state dict to start from.")
@click.option("--resume", is_flag=True, default=None, help="Continue from <out>/foldK/last.pt (an error if missing).")
@option("--device", type=click.Choice(["auto", "cpu", "gpu"]), show_default=_d("device"),
        help="Where to train (auto: the GPU if one is visible).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@option("--py-workers", type=int, show_default=_d("py_workers"),
        help="Reader processes per rank (0 = from the rank's CPUs).")
@option("--num-threads", type=int, show_default=_d("num_threads"),
        help="DALI CPU threads per rank (0 = from the rank's CPUs).")
@option("--seed", type=int, show_default=_d("seed"), help="Random seed (epoch order, mixing, weights).")
@option("--max-steps", type=int, show_default=_d("max_steps"),
        help="Cap optimizer steps per epoch (0 = no cap; smoke runs).")
@config_option("train")
@click.option("--set", "sets", multiple=True, help="Override any field: --set warmup_epochs=2")
def main(shards, fold, folds, epochs, batch_size, lr, accum_steps, out, model, width, loss, mix_mode, mix, alpha,
         offline_mixed, val_fraction, pretrained, resume, device, compile_, py_workers, num_threads, seed, max_steps,
         config, sets) -> None:
    """Train a DFER model on midas-prep shards, MIDAS mixing on the device.

    \b
    Examples:
        midas-train --config quick                     # a first run on the make-sample shards, ~1 min on a CPU
        midas-train --shards shards --fold 1 --epochs 1 --out runs/try
        midas-train --config dfew --folds 1-5 --mix-mode midas,mixup,soft,none
        torchrun --nproc_per_node 8 --nnodes 2 ... --no-python midas-train --shards /shared/shards --fold 1
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
    except KeyboardInterrupt:  # one line, no traceback: what was saved and how to go on
        if int(os.environ.get("RANK", "0")) == 0:
            where = f"{cfg.out}/<arm>/fold<K>/last.pt" if several else f"{cfg.out}/fold{cfg.fold}/last.pt"
            click.echo(f"\nmidas-train: interrupted; run the same command with --resume to continue from the last "
                       f"finished epoch ({where})", err=True)
        sys.exit(130)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if several:
        click.echo(f"\nmidas-train done: folds {', '.join(map(str, result['folds']))}, mix mode(s) "
                   f"{', '.join(result['arms'])}; metrics on part K of each fold ({result['selected_by']})\n")
        click.echo(result["table"])
        click.echo(f"  table: {cfg.out}/summary.md and {cfg.out}/summary.json")
        return
    r = result
    chance = 1 / r["test_classes_present"]
    lines = [f"\nmidas-train done: fold {r['fold']}, mix mode {r['mix_mode']}, {r['epochs']} epoch(s)"]
    if "best_epoch" in r:
        lines.append(f"  chosen epoch: {r['best_epoch']} (best validation UAR {r['val_uar']:.4f}, "
                     f"{r['val_clips']} validation clips)")
        lines.append(f"  test (part {r['fold']}), chosen epoch {r['epoch']}:  UAR {r['test_uar']:.4f}  "
                     f"WAR {r['test_war']:.4f}")
        lines.append(f"  test (part {r['fold']}), last epoch {r['last']['epoch']}:    UAR {r['last']['test_uar']:.4f}  "
                     f"WAR {r['last']['test_war']:.4f}")
    else:
        lines.append(f"  test (part {r['fold']}), last epoch {r['epoch']}:  UAR {r['test_uar']:.4f}  "
                     f"WAR {r['test_war']:.4f}")
    lines.append(f"  chance level:  UAR {chance:.4f} ({r['test_classes_present']} classes among the {r['test_clips']} "
                 "test clips)")
    lines += soft_label_lines(r, cfg.clear_share)
    first, last = r["history"][0], r["history"][-1]
    lines.append(f"  train loss: {first['train_loss']:.4f} (epoch 1) -> {last['train_loss']:.4f} (epoch "
                 f"{last['epoch']})   test loss: {last['test_loss']:.4f}")
    lines.append(f"  report:  {cfg.out}/fold{r['fold']}/report.json")
    lines.append(f"  metrics: {cfg.out}/fold{r['fold']}/metrics.jsonl")
    click.echo("\n".join(lines))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def soft_label_lines(r: dict, clear_share: float) -> list[str]:
    """The end-of-run lines of the soft-label metrics of the reported epoch (train.metrics.soft_label_metrics)."""
    if "test_ece" not in r:
        return []
    share = f"{100 * clear_share:g}%"
    return [f"  against the votes:  ECE {_fmt(r['test_ece'])}  vote NLL {_fmt(r['test_vote_nll'])}  "
            f"KL {_fmt(r['test_vote_kl'])}",
            f"  clear clips (top class >= {share} of the votes): {r['test_clear_n']}  UAR {_fmt(r['test_clear_uar'])}  "
            f"WAR {_fmt(r['test_clear_war'])}",
            f"  ambiguous clips: {r['test_ambiguous_n']}  UAR {_fmt(r['test_ambiguous_uar'])}  "
            f"WAR {_fmt(r['test_ambiguous_war'])}"]


if __name__ == "__main__":  # pragma: no cover
    main()
