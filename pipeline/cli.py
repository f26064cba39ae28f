"""`midas-prep`: thin click commands over the library functions.

Each command parses options, resolves the config once (defaults < --config YAML <
flags and --set), calls one library function, and prints a one-screen summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from pipeline import __version__
from pipeline.config import (
    AlignConfig,
    BuildConfig,
    ConfigError,
    DecodeConfig,
    IndexConfig,
    MixConfig,
    WriteConfig,
    load_config,
    parse_set,
    shipped_configs,
)
from pipeline.errors import LayoutError

logger = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _load(cls: type, config: str | None, sets: tuple[str, ...], flags: dict[str, Any]) -> Any:
    """defaults < YAML < --set < flags given: a flag left out (None) must not hide a --set of its field."""
    try:
        given = {k: v for k, v in flags.items() if v is not None}
        return load_config(cls, config, parse_set(sets) | given)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e


def _plain(counts: dict[str, int], notes: dict[str, str] | None = None) -> str:
    """{'align': 3, 'decode': 1} -> '3 at align (no face), 1 at decode'; 'none' when empty."""
    notes = notes or {}
    parts = [f"{n} at {k}" + (f" ({notes[k]})" if k in notes else "") for k, n in counts.items() if n]
    return ", ".join(parts) or "none"


def _words(items: Any) -> str:
    """['webdataset', 'parquet'] -> 'webdataset, parquet'; {'1': 3} -> '1: 3'."""
    if isinstance(items, dict):
        return ", ".join(f"{k}: {_words(v)}" for k, v in items.items()) or "none"
    if isinstance(items, (list, tuple)):
        return ", ".join(map(str, items)) or "none"
    return str(items)


def _bar(total: int, desc: str, unit: str = "clip") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


class _Progress:
    """`on_progress(done, total)` for a library call: a tqdm bar opened on the first report."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = _bar(total, self.desc, self.unit)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def field_default(cls: type, name: str) -> str:
    """A config field's default as the help shows it ([default: X]), so help and config cannot drift.
    midas-train shows its defaults the same way (train/cli.py)."""
    return str(getattr(cls, name))


class DefaultOption(click.Option):
    """Shows a string show_default like any other default: [default: all cores], not [default: (all cores)]."""

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra


def option(*args: Any, **kwargs: Any) -> Any:
    """click.option whose default is shown as [default: X]; the value itself stays None when not given, so a
    flag left out never hides the config file's or --set's value of its field."""
    return click.option(*args, cls=DefaultOption, **kwargs)


CONFIG_HELP = "YAML config file, or the name of a shipped config (found from any directory): {names}."


def config_option(section: str) -> Any:
    """--config: a path or a shipped config's name (`--config dfew`), resolved by pipeline.config.find_config."""
    return click.option("--config", "config", metavar="FILE|NAME",
                        help=CONFIG_HELP.format(names=", ".join(shipped_configs(section))))


_version = click.version_option(__version__, "--version", prog_name="midas-prep")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@_version
def main() -> None:
    """Preprocess DFER video datasets into training shards and augment them with MIDAS."""
    from pipeline.cluster import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM ends a command like Ctrl-C: Ray shut down, the output lock released


def _interrupted(progress: _Progress) -> NoReturn:
    """Ctrl-C: one line, no traceback, exit 130. The library's `finally` blocks have shut Ray down and released
    the lock; the interpreter's own exit is skipped, since Ray's C++ threads, hit by the same SIGINT, could
    crash it (a segfault seen after the line was printed)."""
    progress.close()
    click.echo("\nmidas-prep: interrupted; finished shards are kept, and running the same command again resumes",
               err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


@main.command("build-shards")
@_version
@click.argument("dataset", type=click.Path(path_type=Path))
@option("--out", show_default=field_default(WriteConfig, "out"), help="Output directory.")
@option("--source", type=click.Choice(["videos", "frames", "auto"]), show_default=field_default(IndexConfig, "source"),
        help="DFEW clip source: videos (Clip/original), frames (Clip/clip_224x224), auto (videos first).")
@option("--dataset-kind", type=click.Choice(["auto", "dfew", "manifest"]),
        show_default=field_default(IndexConfig, "dataset"), help="Dataset adapter.")
@option("--num-frames", type=int, show_default=field_default(DecodeConfig, "num_frames"),
        help="T, frames per clip.")
@option("--frame-size", type=int, show_default=field_default(AlignConfig, "frame_size"),
        help="S, aligned crops are S x S.")
@option("--detector", type=click.Choice(["retinaface", "mtcnn", "none"]),
        show_default=field_default(AlignConfig, "detector"), help="Face detector (none: input is already cropped).")
@option("--format", "fmt", type=click.Choice(["webdataset", "parquet", "both"]),
        show_default=field_default(WriteConfig, "format"), help="Shard format.")
@option("--shard-size-mb", type=float, show_default=field_default(WriteConfig, "shard_size_mb"),
        help="Target shard size in MB.")
@option("--frames-compression", type=click.Choice(["none", "zstd", "lz4", "snappy"]),
        show_default=field_default(WriteConfig, "frames_compression"), help="Parquet codec of the frames column.")
@option("--workers", type=int, show_default="all cores", help="Clips processed at once.")
@option("--ray-address", show_default="RAY_ADDRESS, else a local Ray", help="Join this Ray cluster.")
@option("--limit", type=int, show_default="all clips", help="Only the first N clips (quick trials).")
@click.option("--overwrite", is_flag=True, default=None, help="Rebuild instead of resuming (also removes mixed/).")
@config_option("build")
@click.option("--set", "sets", multiple=True,
              help="Override any field (repeatable); a flag given explicitly wins: --set align.detect_every=4")
@click.option("--dry-run", is_flag=True, help="Index and plan only: print what would be built, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def build_shards_cmd(dataset: Path, out: str | None, source: str | None, dataset_kind: str | None,
                     num_frames: int | None, frame_size: int | None, detector: str | None, fmt: str | None,
                     shard_size_mb: float | None, frames_compression: str | None, workers: int | None,
                     ray_address: str | None, limit: int | None, overwrite: bool | None, config: str | None,
                     sets: tuple[str, ...], dry_run: bool, as_json: bool, verbose: bool) -> None:
    """Build aligned fixed-length clip shards from DATASET (a DFEW copy or a manifest).

    \b
    Example:
        midas-prep build-shards dfew/                 # -> ./shards
        midas-prep build-shards dfew/ --out /data/shards --frame-size 224 --workers 8
    """
    from pipeline.build import BuildError, build_shards, plan_build

    _setup_logging(verbose)
    cfg: BuildConfig = _load(BuildConfig, config, sets, {
        "dataset_root": str(dataset), "write.out": out, "index.source": source, "index.dataset": dataset_kind,
        "decode.num_frames": num_frames, "align.frame_size": frame_size, "align.detector": detector,
        "write.format": fmt, "write.shard_size_mb": shard_size_mb, "write.frames_compression": frames_compression,
        "ray.workers": workers,
        "ray.address": ray_address, "index.limit": limit, "write.overwrite": overwrite,
    })
    if dry_run:
        try:
            plan = plan_build(cfg)
        except (LayoutError, BuildError) as e:
            raise click.ClickException(str(e)) from e
        _echo_plan("build-shards --dry-run", plan, as_json)
        return
    progress = _Progress("decode+align", "clip")
    try:
        s = build_shards(cfg, on_progress=progress)
    except (LayoutError, BuildError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        _interrupted(progress)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(s) | {"clips_per_s": s.clips_per_s}, sort_keys=True))
        return
    from pipeline.remote import local_dir

    rejected = _plain(s.rejected, _reject_notes(local_dir(s.out)))
    click.echo(
        f"\nbuild-shards done: {s.out}\n"
        f"  clips indexed     {s.clips}  (+{s.unannotated} files without annotation, skipped)\n"
        f"  clips written     {s.written}\n"
        f"  rejected          {rejected}  (reasons in {Path(s.out) / 'rejects.parquet'})\n"
        f"  shards            {s.shards} ({s.shards_resumed} already complete, resumed), {s.files} files, "
        f"{s.bytes / 1e6:.1f} MB\n"
        f"  time              {s.seconds:.1f} s, {s.clips_per_s:.2f} clips/s processed this run"
    )
    if s.changed:
        more = f" and {len(s.changed) - 5} more" if len(s.changed) > 5 else ""
        click.echo(f"  changed clips     {len(s.changed)} changed since their shards were built, shards rebuilt: "
                   f"{', '.join(s.changed[:5])}{more}")
    if s.not_checked:
        click.echo(f"  not checked       {s.not_checked} clips of shards built before midas-prep recorded "
                   "fingerprints (rebuild with --overwrite to record them)")


_SHORT_REASONS = (("no face", "no face"), ("truncated or corrupt", "truncated or corrupt file"),
                  ("file not found", "file not found"), ("empty file", "empty file"),
                  ("detector failed", "detector failed"), ("has no file", "no file"),
                  ("no video file", "no file"), ("unreadable image", "unreadable image"),
                  ("worker process died", "worker crashed"), ("too small to hold a face", "too small"),
                  ("0-frame video", "empty video"), ("audio-only", "audio only"), ("duplicate clip id", "duplicate id"),
                  ("has 2 files", "two files"))


def _reject_notes(out: Path) -> dict[str, str]:
    """Per stage, the kinds of reasons in <out>/rejects.parquet in words ({'align': 'no face'})."""
    from pipeline.format import REJECTS_NAME

    path = out / REJECTS_NAME
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    kinds: dict[str, dict[str, int]] = {}
    for r in pq.read_table(path, columns=["stage", "error"]).to_pylist():
        short = next((word for key, word in _SHORT_REASONS if key in (r["error"] or "")), "other")
        kinds.setdefault(r["stage"], {}).setdefault(short, 0)
        kinds[r["stage"]][short] += 1
    notes = {}
    for stage, k in kinds.items():
        if set(k) != {"other"}:
            notes[stage] = k.popitem()[0] if len(k) == 1 else ", ".join(f"{n} {w}" for w, n in k.items())
    return notes


def _echo_plan(title: str, plan: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan, sort_keys=True))
        return
    from pipeline.write import SPACE_MARGIN, human_bytes

    click.echo(f"{title}: nothing written")
    for k, v in plan.items():
        if k == "bytes_needed":  # an upper estimate: every format, Parquet frames counted uncompressed
            v = f"{human_bytes(v)} at most, to write (+{SPACE_MARGIN:.0%} margin kept free)"
        elif k == "bytes_free":
            v = f"{human_bytes(v)} on the output's disk"
        click.echo(f"  {k.replace('_', ' '):<18}{_words(v)}")


@main.command("mix-offline")
@_version
@option("--shards", show_default=field_default(MixConfig, "shards"), help="build-shards output to mix.")
@option("--out", show_default="<shards>/mixed", help="Output directory.")
@option("--alpha", type=float, show_default=field_default(MixConfig, "alpha"),
        help="lam ~ Beta(alpha, alpha); 0.8 is the MIDAS paper's.")
@option("--copies", type=int, show_default=field_default(MixConfig, "copies"),
        help="Mixed samples per training clip of a fold.")
@option("--fold", show_default="all", help="Fold K (1..5) or 'all'.")
@option("--seed", type=int, show_default=field_default(MixConfig, "seed"), help="Random seed: same seed, same bytes.")
@click.option("--include-unassigned", is_flag=True, default=None, help="Also pair with clips in no fold (part 0).")
@option("--format", "fmt", type=click.Choice(["webdataset", "parquet", "both"]),
        show_default=field_default(MixConfig, "format"), help="Output format.")
@option("--shard-size-mb", type=float, show_default=field_default(MixConfig, "shard_size_mb"),
        help="Target shard size in MB.")
@option("--workers", type=int, show_default="all cores", help="Shards mixed at once.")
@option("--ray-address", show_default="RAY_ADDRESS, else a local Ray", help="Join this Ray cluster.")
@click.option("--overwrite", is_flag=True, default=None, help="Rebuild instead of resuming.")
@config_option("mix")
@click.option("--set", "sets", multiple=True,
              help="Override any field (repeatable); a flag given explicitly wins: --set alpha=0.4")
@click.option("--dry-run", is_flag=True, help="Check the source, the output and the plan: write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def mix_offline_cmd(shards: str | None, out: str | None, alpha: float | None, copies: int | None, fold: str | None,
                    seed: int | None, include_unassigned: bool | None, fmt: str | None, shard_size_mb: float | None,
                    workers: int | None, ray_address: str | None, overwrite: bool | None, config: str | None,
                    sets: tuple[str, ...], dry_run: bool, as_json: bool, verbose: bool) -> None:
    """Write MIDAS-mixed copies of each fold's training clips to <shards>/mixed/fold=K/.

    \b
    Example:
        midas-prep mix-offline --copies 2               # ./shards -> ./shards/mixed/fold=1..5
        midas-prep mix-offline --fold 1 --alpha 0.4 --seed 7 --include-unassigned --out shards-a04
    """
    from pipeline.config import RayConfig
    from pipeline.format import ShardError
    from pipeline.mix import dry_run_mix, mix_offline

    _setup_logging(verbose)
    if fold is not None and fold != "all" and not fold.isdigit():
        raise click.UsageError(f"--fold {fold!r}: expected 1..5 or 'all'")
    cfg: MixConfig = _load(MixConfig, config, sets, {
        "shards": shards, "out": out, "alpha": alpha, "copies": copies,
        "fold": None if fold is None else (0 if fold == "all" else int(fold)), "seed": seed,
        "include_unassigned": include_unassigned, "format": fmt, "shard_size_mb": shard_size_mb,
        "overwrite": overwrite,
    })
    ray_cfg = _load(RayConfig, None, (), {"workers": workers, "address": ray_address})
    if dry_run:
        try:
            _echo_plan("mix-offline --dry-run", dry_run_mix(cfg), as_json)
        except ShardError as e:
            raise click.ClickException(str(e)) from e
        return
    progress = _Progress("mix", "sample")
    try:
        s = mix_offline(cfg, ray_cfg, on_progress=progress)
    except ShardError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        _interrupted(progress)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(s) | {"mb_per_s": s.mb_per_s}, sort_keys=True))
        return
    q = s.lam_quantiles
    click.echo(
        f"\nmix-offline done: {s.out}\n"
        f"  folds             {', '.join(map(str, s.folds))}\n"
        f"  samples           {s.samples} mixed ({cfg.copies} per training clip)\n"
        f"  shards            {s.shards} ({s.shards_resumed} already complete, resumed)\n"
        f"  lam quantiles     5% {q['q05']:.3f}  25% {q['q25']:.3f}  50% {q['q50']:.3f}  75% {q['q75']:.3f}"
        f"  95% {q['q95']:.3f}  (alpha {cfg.alpha})\n"
        f"  time              {s.seconds:.1f} s, {s.mb_per_s:.1f} MB/s written this run"
    )


@main.command("verify")
@_version
@click.argument("shards", default="shards")
@click.option("--repair", is_flag=True, help="Rebuild only the damaged shards from the source dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def verify_cmd(shards: str, repair: bool, as_json: bool) -> None:
    """Check every shard listed in SHARDS/index.json (and mixed/fold=*/index.json).

    Size, sha256, readability, sample count, the .idx, and every sample's arrays (shape,
    dtype, crc32, soft label sums to 1). Exit 1 if anything is wrong.

    \b
    Example:
        midas-prep verify shards
        midas-prep verify shards --repair
    """

    from pipeline.build import BuildError
    from pipeline.format import ShardError
    from pipeline.verify import repair_shards, verify_shards

    _setup_logging(False)
    try:
        report = verify_shards(shards)
        rebuilt: list[str] = []
        if repair and not report.ok:
            rebuilt = repair_shards(shards, report)
            before = report
            report = verify_shards(shards)
    except (ShardError, BuildError, LayoutError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "files": report.files, "samples": report.samples,
                               "problems": [str(p) for p in report.problems], "rebuilt": rebuilt,
                               "notes": report.notes}, sort_keys=True))
    else:
        if rebuilt:
            click.echo(f"repaired {len(rebuilt)} shard(s): {', '.join(rebuilt)} "
                       f"({len(before.problems)} problem(s) before)")
        for note in report.notes:
            click.echo(f"NOTE {note}")
        for p in report.problems[:50]:
            click.echo(f"PROBLEM {p}")
        if len(report.problems) > 50:
            click.echo(f"... and {len(report.problems) - 50} more")
        click.echo(f"verify {shards}: {len(report.indexes)} index(es), {report.files} files, {report.samples} "
                   f"samples: {'OK' if report.ok else str(len(report.problems)) + ' problem(s)'}")
        if not report.ok and not repair:
            click.echo(f"fix: midas-prep verify {shards} --repair  (rebuilds only the damaged shards)")
    if not report.ok:
        sys.exit(1)


@main.command("inspect")
@_version
@click.argument("shards", default="shards", type=click.Path(path_type=Path))
@click.option("--png", "png", default="inspect.png", type=click.Path(path_type=Path),
              help="Contact sheet; the stats figure goes beside it as <name>-stats.png.")
@click.option("--clips", type=int, default=6, help="Random clips on the contact sheet.")
@click.option("--seed", type=int, default=0, help="Random seed for the clips picked.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def inspect_cmd(shards: Path, png: Path, clips: int, seed: int, as_json: bool) -> None:
    """Contact sheet of random clips (and mixed samples beside their sources), a stats figure
    (labels, vote entropy, face-detection rate, rejects) and a text summary.

    \b
    Example:
        midas-prep inspect shards --png inspect.png
    """
    from pipeline.format import ShardError
    from pipeline.inspect import inspect_shards

    try:
        r = inspect_shards(shards, png, clips=clips, seed=seed)
    except ShardError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
        return
    ent, face = r["vote_entropy_bits"], r["face_detection_rate"]
    click.echo(
        f"inspect {shards}: {r['written']} of {r['clips']} clips written; rejected: "
        f"{_plain(r['rejected_by_stage'], _reject_notes(Path(shards)))}\n"
        f"  labels            {_words(r['labels'])}\n"
        f"  vote entropy      mean {ent['mean']:.2f} bits, median {ent['median']:.2f}, {ent['unanimous']} unanimous\n"
        f"  face detection    mean rate {face['mean']:.2f} over {face['clips']} clips "
        f"({face['rejected_no_face']} rejected for no face count as 0), lowest {face['min']:.2f}\n"
        f"  pictures          {r['contact_sheet']}, {r['stats']}"
    )


@main.command("bench-loader")
@_version
@click.argument("shards", default="shards")
@click.option("--fold", type=int, default=1, help="Fold K: train on every part but K.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              help="Where DALI runs (auto: the GPU if one is visible).")
@click.option("--batches", type=int, default=50, help="Batches timed (after one warm-up).")
@click.option("--batch-size", type=int, default=32, help="Clips per batch.")
@click.option("--no-mix", is_flag=True, help="Turn MIDAS mixing off.")
@click.option("--format", "fmt", type=click.Choice(["auto", "webdataset", "parquet"]), default="auto",
              help="Shard format to read (auto: webdataset when present).")
@click.option("--py-workers", type=int, default=0, help="Reader processes (0 = auto: from the CPUs available).")
@click.option("--num-threads", type=int, default=0, help="DALI threads (0 = auto).")
@click.option("--prefetch", type=int, default=0, help="Batches read ahead (0 = auto).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def bench_loader_cmd(shards: str, fold: int, device: str, batches: int, batch_size: int, no_mix: bool, fmt: str,
                     py_workers: int, num_threads: int, prefetch: int, as_json: bool) -> None:
    """Measure the DALI training loader (MIDAS on): clips/s and MB/s.

    \b
    Example:
        midas-prep bench-loader shards --fold 1 --device cpu --batches 20
    """

    from pipeline.config import ConfigError, StreamConfig
    from pipeline.format import ShardError
    from pipeline.stream import bench_loader

    try:
        cfg = StreamConfig(shards=str(shards), fold=fold, device=device, batch_size=batch_size, mix=not no_mix,
                           format=fmt, py_workers=py_workers, num_threads=num_threads, prefetch=prefetch)
        r = bench_loader(cfg, batches)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    except ShardError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
    else:
        click.echo(f"bench-loader {shards} fold {fold} on {r['device']}: {r['clips']} clips in {r['seconds']:.2f} s"
                   f" = {r['clips_per_s']:.1f} clips/s, {r['mb_per_s']:.1f} MB/s (batch {r['batch_size']}, "
                   f"{r['py_workers']} readers, {r['num_threads']} threads, {r['prefetch']} ahead)")


@main.command("make-sample")
@_version
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--clips", type=int, default=60, help="Number of clips.")
@click.option("--seed", type=int, default=0, help="Random seed (same seed, same bytes).")
@click.option("--frames/--no-frames", default=True, help="Also write Clip/clip_224x224 frames.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def make_sample_cmd(directory: Path, clips: int, seed: int, frames: bool, as_json: bool) -> None:
    """Write a small DFEW-layout dataset of real mp4 clips made from a real face photo; each face makes the
    expression of its clip's votes, so a first training run can learn the classes.

    \b
    Example:
        midas-prep make-sample dfew/ && midas-prep build-shards dfew/
    """
    from pipeline.tools.make_sample import MIN_CLIPS, SampleDirRefused, claim_sample_dir, make_sample

    if clips < MIN_CLIPS:
        raise click.UsageError(f"--clips {clips}: need at least {MIN_CLIPS} clips (2 without a face, 1 corrupt, "
                               "3 with fixed roles, and one single-labelled clip per test fold)")
    try:
        claim_sample_dir(directory)
    except SampleDirRefused as e:
        raise click.ClickException(str(e)) from None
    bar = _bar(clips, "make-sample")
    try:
        s = make_sample(directory, clips=clips, seed=seed, with_frames=frames, progress=lambda n: bar.update(1))
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(s) | {"root": str(s.root)}, sort_keys=True))
        return
    click.echo(
        f"\nmake-sample done: {s.root}\n"
        f"  clips             {s.clips} ({s.single_labelled} single-labelled, in the 5 test folds)\n"
        f"  without a face    {len(s.no_face)}: {', '.join(s.no_face)}\n"
        f"  corrupt files     {len(s.corrupt)}: {', '.join(s.corrupt)}\n"
        f"next: midas-prep build-shards {directory}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
