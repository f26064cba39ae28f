"""`midas-prep`: thin click commands over the library functions.

Each command parses options, resolves the config once (defaults < --config YAML <
flags and --set), calls one library function, and prints a one-screen summary.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.config import BuildConfig, ConfigError, load_config, parse_set
from pipeline.errors import LayoutError

logger = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _load(cls: type, config: str | None, sets: tuple[str, ...], flags: dict[str, Any]) -> Any:
    try:
        return load_config(cls, config, parse_set(sets) | flags)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e


def _bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True, file=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="midas-prep")
def main() -> None:
    """Preprocess DFER video datasets into training shards and augment them with MIDAS."""


@main.command("build-shards")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", help="Output directory (default: ./shards).")
@click.option("--source", type=click.Choice(["videos", "frames", "auto"]), help="DFEW clip source (default auto).")
@click.option("--dataset-kind", type=click.Choice(["auto", "dfew", "manifest"]), help="Adapter (default auto).")
@click.option("--num-frames", type=int, help="T, frames per clip (default 16).")
@click.option("--frame-size", type=int, help="S, crops are S x S (default 112).")
@click.option("--detector", type=click.Choice(["retinaface", "mtcnn", "none"]), help="Face detector.")
@click.option("--format", "fmt", type=click.Choice(["webdataset", "parquet", "both"]), help="Shard format.")
@click.option("--shard-size-mb", type=float, help="Target shard size in MB (default 256).")
@click.option("--workers", type=int, help="Clips processed at once (default: all cores).")
@click.option("--ray-address", help="Join this Ray cluster (default: RAY_ADDRESS, else local Ray).")
@click.option("--limit", type=int, help="Only the first N clips (quick trials).")
@click.option("--overwrite", is_flag=True, default=None, help="Rebuild instead of resuming.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), help="YAML config file.")
@click.option("--set", "sets", multiple=True, help="Override any field: --set align.detect_every=4")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def build_shards_cmd(dataset: Path, out: str | None, source: str | None, dataset_kind: str | None,
                     num_frames: int | None, frame_size: int | None, detector: str | None, fmt: str | None,
                     shard_size_mb: float | None, workers: int | None, ray_address: str | None,
                     limit: int | None, overwrite: bool | None, config: str | None, sets: tuple[str, ...],
                     verbose: bool) -> None:
    """Build aligned fixed-length clip shards from DATASET (a DFEW copy or a manifest).

    \b
    Example:
        midas-prep build-shards dfew/                 # -> ./shards
        midas-prep build-shards dfew/ --out /data/shards --frame-size 224 --workers 8
    """
    from pipeline.build import BuildError, build_shards

    _setup_logging(verbose)
    cfg: BuildConfig = _load(BuildConfig, config, sets, {
        "dataset_root": str(dataset), "write.out": out, "index.source": source, "index.dataset": dataset_kind,
        "decode.num_frames": num_frames, "align.frame_size": frame_size, "align.detector": detector,
        "write.format": fmt, "write.shard_size_mb": shard_size_mb, "ray.workers": workers,
        "ray.address": ray_address, "index.limit": limit, "write.overwrite": overwrite,
    })
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = _bar(total, "decode+align")
        bar.update(done - bar.n)

    try:
        s = build_shards(cfg, on_progress=progress)
    except (LayoutError, BuildError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if bar is not None:
            bar.close()
    rejected = ", ".join(f"{k} {v}" for k, v in s.rejected.items() if v) or "none"
    click.echo(
        f"\nbuild-shards done: {s.out}\n"
        f"  clips indexed     {s.clips}  (+{s.unannotated} files without annotation, skipped)\n"
        f"  clips written     {s.written}\n"
        f"  rejected by stage {rejected}  (see {Path(s.out) / 'rejects.parquet'})\n"
        f"  shards            {s.shards} ({s.shards_resumed} already complete, resumed), {s.files} files, "
        f"{s.bytes / 1e6:.1f} MB\n"
        f"  time              {s.seconds:.1f} s, {s.clips_per_s:.2f} clips/s processed this run"
    )


@main.command("make-sample")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--clips", type=int, default=60, show_default=True, help="Number of clips.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--frames/--no-frames", default=True, show_default=True, help="Also write Clip/clip_224x224 frames.")
def make_sample_cmd(directory: Path, clips: int, seed: int, frames: bool) -> None:
    """Write a small DFEW-layout dataset of real mp4 clips made from a real face photo.

    \b
    Example:
        midas-prep make-sample dfew/ && midas-prep build-shards dfew/
    """
    from pipeline.sample import make_sample

    if clips < 5:
        raise click.UsageError(f"--clips {clips}: need at least 5 clips (one per DFEW fold)")
    bar = _bar(clips, "make-sample")
    try:
        s = make_sample(directory, clips=clips, seed=seed, with_frames=frames, progress=lambda n: bar.update(1))
    finally:
        bar.close()
    click.echo(
        f"\nmake-sample done: {s.root}\n"
        f"  clips             {s.clips} ({s.single_labelled} single-labelled, in the 5 test folds)\n"
        f"  without a face    {len(s.no_face)}: {', '.join(s.no_face)}\n"
        f"  corrupt files     {len(s.corrupt)}: {', '.join(s.corrupt)}\n"
        f"next: midas-prep build-shards {directory}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
