"""MIDAS: mixup for soft-labelled video (Kawamura et al., "MIDAS: Mixing Ambiguous Data
with Soft Labels for Dynamic Facial Expression Recognition", WACV 2024, arXiv 2503.00202).

    lam ~ Beta(alpha, alpha)
    x~[t] = lam * x_i[t] + (1 - lam) * x_j[t]   for every frame t (one lam per pair)
    y~    = lam * y_i    + (1 - lam) * y_j       (y = soft label, the vote histogram / votes)

`sample_lam`, `mix_frames` and `mix_soft` are the numpy reference the DALI graph is tested
against. `mix_offline` writes `copies` mixed samples per training clip of each fold to
<shards>/mixed/fold={K}/ (hive-style, see pipeline.write), in the formats of the originals,
resumable and byte-for-byte reproducible from the seed whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.cluster import init_ray, shutdown_ray
from pipeline.config import MixConfig, RayConfig, config_to_dict
from pipeline.datasets.records import mixed_key, sample_key
from pipeline.faults import fault_point
from pipeline.format import (
    CLIPS_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    MIXED_DIR,
    STATE_DIR,
    ShardError,
    entry_files,
    fold_dirname,
    is_inside,
    json_or_none,
    resolve_inside,
    sample_nbytes,
)
from pipeline.lock import OutputLocked, hold_output
from pipeline.read import SampleReader, check_files, load_index, open_index
from pipeline.remote import is_remote, local_dir, pull, push, remote_sizes
from pipeline.write import (
    atomic_write,
    check_room,
    encode_sample,
    estimate_bytes,
    foreign_at_our_names,
    left_files,
    load_done,
    owned_bytes,
    remove_outputs,
    remove_temporaries,
    say_left,
    write_fix,
    write_index,
    write_shard_files,
)

__all__ = ["sample_lam", "mix_frames", "mix_soft", "pair_partners", "plan_mix", "mix_offline", "MixSummary",
           "dry_run_mix"]

logger = logging.getLogger(__name__)


def sample_lam(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """lam ~ Beta(alpha, alpha), float64 [size]."""
    return rng.beta(alpha, alpha, size=size)


def mix_frames(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """uint8 T x H x W x 3 pair -> round(lam * a + (1 - lam) * b), one lam for every frame.

    cv2.addWeighted computes exactly that in float and rounds to uint8, with no float
    temporaries: 3x the speed of the numpy expression, which the tests hold it to.
    """
    import cv2

    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, (
        f"cannot mix clips of shapes {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    assert 0.0 <= lam <= 1.0, f"lam={lam} is outside [0, 1]"
    rows = a.shape[0] * a.shape[1]
    out = cv2.addWeighted(a.reshape(rows, -1), lam, b.reshape(rows, -1), 1.0 - lam, 0.0)
    return out.reshape(a.shape)


def mix_soft(ya: np.ndarray, yb: np.ndarray, lam: float) -> np.ndarray:
    """lam * ya + (1 - lam) * yb, computed in float64 and stored as float32."""
    return (lam * ya.astype(np.float64) + (1.0 - lam) * yb.astype(np.float64)).astype(np.float32)


def pair_partners(rng: np.random.Generator, clips: list[str], pool: list[str]) -> list[str]:
    """A partner j != i from `pool` for every clip i of `clips` (a subset of pool).

    One random permutation of the pool read as a single cycle: each clip's partner is the
    next clip in the shuffled order. No clip is its own partner and no two clips of
    `clips` share a partner.
    """
    assert len(pool) >= 2, f"need at least 2 clips to pair, got {len(pool)}"
    order = [pool[k] for k in rng.permutation(len(pool))]
    nxt = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    return [nxt[c] for c in clips]


def plan_mix(clips: list[dict[str, Any]], cfg: MixConfig, per_shard: int) -> dict[int, list[dict[str, Any]]]:
    """{fold: planned shards}, each shard a list of pairs (i, j, lam, copy), from (seed, fold, copy).

    Fold K's training clips are every written clip of parts other than K and 0; partners
    come from them (plus part 0 with include_unassigned), never from part K.
    """
    folds = [cfg.fold] if cfg.fold else sorted({c["part"] for c in clips if c["part"] > 0})
    plan: dict[int, list[dict[str, Any]]] = {}
    for k in folds:
        train = sorted(c["clip_id"] for c in clips if c["part"] not in (0, k))
        pool = sorted(train + [c["clip_id"] for c in clips if c["part"] == 0]) if cfg.include_unassigned else train
        if len(train) < 2:
            raise ShardError(f"fold {k} has {len(train)} training clip(s); mixing needs at least 2")
        shards = []
        for copy in range(cfg.copies):
            rng = np.random.default_rng([cfg.seed, k, copy])
            partners = pair_partners(rng, train, pool)
            lams = sample_lam(rng, cfg.alpha, len(train))
            pairs = [{"i": i, "j": j, "lam": float(lam), "copy": copy} for i, j, lam in zip(train, partners, lams,
                                                                                       strict=True)]
            for n, start in enumerate(range(0, len(pairs), per_shard)):
                shards.append({"name": f"copy{copy}-{n:06d}", "fold": k, "copy": copy,
                               "pairs": pairs[start : start + per_shard]})
        plan[k] = shards
    return plan


def write_mixed_shard(shards: str, out: str, index: dict[str, Any], shard: dict[str, Any], seed: int,
                      formats: tuple[str, ...], src_remote: str = "", out_remote: str = "",
                      frames_compression: str = "zstd") -> dict[str, Any]:
    """Mix one planned shard's pairs from the source shards and write it; returns its done-file.

    With remote sources this node first pulls them into its cache (once: sizes are checked);
    with a remote output the shard is uploaded when written."""
    if src_remote:
        pull_source(src_remote, index)
    reader = SampleReader(shards, index)
    samples = []
    try:
        for p in shard["pairs"]:
            xa, ya, ma = reader.read(sample_key(p["i"]))
            xb, yb, mb = reader.read(sample_key(p["j"]))
            lam = p["lam"]
            soft = mix_soft(ya, yb, lam)
            key = mixed_key(p["i"], p["j"], p["copy"])
            meta = {"clip_id": key, "label": -1, "part": 0, "votes": None, "fold": shard["fold"],
                    "copy": p["copy"], "seed": seed, "lam": lam,
                    "sources": [{"clip_id": ma["clip_id"], "part": ma["part"], "weight": lam},
                                {"clip_id": mb["clip_id"], "part": mb["part"], "weight": 1.0 - lam}]}
            samples.append(encode_sample(key, mix_frames(xa, xb, lam), soft, meta))
    finally:
        reader.close()
    entries = write_shard_files(Path(out), shard["name"], 0, samples, formats, tuple(index["classes"]),
                                frames_compression)
    for e in entries:
        e["fold"], e["copy"] = shard["fold"], shard["copy"]
    state = {"shard": shard["name"], "entries": entries, "lams": [p["lam"] for p in shard["pairs"]]}
    atomic_write(Path(out) / STATE_DIR / f"{shard['name']}.json", json.dumps(state, sort_keys=True).encode())
    if out_remote:
        from pipeline.build import publish_shard

        publish_shard(Path(out), out_remote, state)
    return state


def pull_source(uri: str, index: dict[str, Any]) -> Path:
    """Bring a remote build's shards (every listed file) and clips.parquet into this node's cache."""
    rels = [CLIPS_NAME, INDEX_NAME] + [p for p, _ in entry_files(index["shards"])]
    local = local_dir(uri)
    pull(uri, local, rels)
    return local


def dry_run_mix(cfg: MixConfig) -> dict[str, Any]:
    """What mix-offline would do (--dry-run): plans and writes nothing, but makes the refusals the
    real run makes before its first shard (not a build-shards output, missing or resized source
    files, mixed shards of another config in the output); the sha256 of the sources is left to the run."""
    import pyarrow.parquet as pq

    shards = local_dir(cfg.shards)
    if is_remote(cfg.shards):
        pull(cfg.shards, shards, [INDEX_NAME, CLIPS_NAME])
    index = open_index(shards)
    if index.get("kind") != "clips":
        raise ShardError(f"{shards} holds {index.get('kind')!r} shards; mix-offline mixes a build-shards output")
    if not is_remote(cfg.shards):
        problems = check_files(shards, index["shards"], sha256=False)
        if problems:
            raise ShardError(f"{len(problems)} source shard problem(s), run `midas-prep verify {shards}`: "
                             + "; ".join(problems[:5]))
    clips = [c for c in pq.read_table(shards / "clips.parquet").to_pylist() if c["status"] == "written"]
    per_shard = _per_shard(cfg, index)
    plan = plan_mix(clips, cfg, per_shard)
    out_uri = cfg.out or (cfg.shards.rstrip("/") + "/" + MIXED_DIR)
    out = local_dir(out_uri)
    conf = config_to_dict(cfg) | {"source_index_sha256": _sha(index)}
    states = _resumable(out, plan, conf, cfg.overwrite)
    todo = [s for k, v in plan.items() for s in v if s["name"] not in states[k]]
    room = _check_room(cfg, out, index, todo, remote=is_remote(out_uri))
    return {"shards": cfg.shards, "out": out_uri, "folds": sorted(plan),
            "samples_per_fold": {str(k): sum(len(s["pairs"]) for s in v) for k, v in plan.items()},
            "shards_planned": sum(len(v) for v in plan.values()),
            "shards_done": sum(len(v) for v in states.values()),
            "alpha": cfg.alpha, "copies": cfg.copies, "seed": cfg.seed, "formats": list(cfg.formats), **room}


def _per_shard(cfg: MixConfig, index: dict[str, Any]) -> int:
    """Mixed samples per shard (part of the plan: it must not change, or a resume would not match)."""
    return max(1, int(cfg.shard_size_mb * 1e6) // sample_nbytes(index["sample"]["num_frames"],
                                                                 index["sample"]["frame_size"]))


def _nbytes(index: dict[str, Any]) -> int:
    """Upper estimate of one sample's bytes (format.sample_nbytes) for the samples of `index`."""
    return sample_nbytes(index["sample"]["num_frames"], index["sample"]["frame_size"], len(index["classes"]))


def _resumable(out: Path, plan: dict[int, list[dict[str, Any]]], conf: dict[str, Any], overwrite: bool,
               sizes: dict[int, dict[str, int] | None] | None = None) -> dict[int, dict[str, dict]]:
    """Per fold, the done-files of the shards a resume keeps (none with `overwrite`); writes nothing.

    Refuses (ShardError) a fold folder that leads out of `out` (a planted symlink) and, unless
    `overwrite`, mixed shards of another config in it."""
    states: dict[int, dict[str, dict]] = {}
    for k, shards_k in plan.items():
        resolve_inside(out, fold_dirname(k), out, f"the folder of fold {k}",
                       "remove that symlink; mix-offline writes each fold inside its --out")
        states[k] = {}
        if overwrite:
            continue
        fout = _fold_out(out, k)
        why = _plan_conflict(fout, conf, shards_k)
        if why:
            raise ShardError(why)
        for s in shards_k:
            state = load_done(fout, s["name"], (sizes or {}).get(k))
            if state is not None:
                states[k][s["name"]] = state
    return states


def _check_room(cfg: MixConfig, out: Path, index: dict[str, Any], todo: list[dict[str, Any]],
                remote: bool) -> dict[str, int]:
    """Refuse (ShardError) when the mixed shards left to write do not fit on the disk of `out`
    (with what --overwrite deletes first); -> {"bytes_needed", "bytes_free"}. A remote output is
    written through the local cache a few shards at a time: no check."""
    samples = sum(len(s["pairs"]) for s in todo)
    need = estimate_bytes(samples, len(todo), _nbytes(index), cfg.formats)
    if remote:
        return {"bytes_needed": need}
    reclaim = 0
    if cfg.overwrite:  # what --overwrite deletes before it writes
        reclaim = sum(owned_bytes(_fold_out(out, k)) for k in sorted({s["fold"] for s in todo}))
    free, why = check_room(out, need - reclaim)
    if why:
        raise ShardError(f"{why}: {samples} mixed samples ({cfg.copies} copies of each training clip) x "
                         f"{len(cfg.formats)} format(s) x {_nbytes(index) / 1e6:.2f} MB a sample; free space there, "
                         "lower --copies, mix one --fold, write one --format, or choose another --out")
    return {"bytes_needed": need, "bytes_free": free}


@dataclass
class MixSummary:
    out: str
    folds: list[int] = field(default_factory=list)
    samples: int = 0
    shards: int = 0
    shards_resumed: int = 0
    bytes: int = 0  # bytes written this run
    seconds: float = 0.0
    lam_quantiles: dict[str, float] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # files --overwrite left: not provably written by midas-prep

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _fold_out(out: Path, fold: int) -> Path:
    """Fold K's folder under mix-offline's output (<shards>/mixed by default): fold=K."""
    return out / fold_dirname(fold)


def mix_offline(cfg: MixConfig, ray_cfg: RayConfig | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> MixSummary:
    """Write MIDAS-mixed copies of every fold's training set; resumes an interrupted run."""
    out = local_dir(cfg.out or (cfg.shards.rstrip("/") + "/mixed"))
    if not is_remote(cfg.shards):
        open_index(local_dir(cfg.shards))  # no source, no output folder made (not even an empty shards/)
    try:
        with hold_output(out):
            try:
                return _mix_offline(cfg, ray_cfg, on_progress)
            except (ShardError, OSError):  # a full disk: no temporary of a shard in flight stays
                with contextlib.suppress(OSError):
                    for fold in out.glob("fold=*"):
                        if fold.is_dir() and is_inside(out, fold.name):
                            remove_temporaries(fold)
                raise
    except OutputLocked as e:
        raise ShardError(str(e)) from None
    except OSError as e:
        raise ShardError(f"cannot write the mixed shards: {e}; the finished shards are kept and no temporary is "
                         f"left: {write_fix(e)}") from e


def _mix_offline(cfg: MixConfig, ray_cfg: RayConfig | None,
                 on_progress: Callable[[int, int], None] | None) -> MixSummary:
    t0 = time.perf_counter()
    src_remote = cfg.shards if is_remote(cfg.shards) else ""
    out_uri = cfg.out or (cfg.shards.rstrip("/") + "/" + MIXED_DIR)
    out_remote = out_uri if is_remote(out_uri) else ""
    shards = local_dir(cfg.shards)
    out = local_dir(out_uri)
    if src_remote:
        pull(src_remote, shards, [INDEX_NAME])
        remote_index = load_index(shards)
        if remote_index is not None:
            pull_source(src_remote, remote_index)
    index = open_index(shards)
    if index.get("kind") != "clips":
        raise ShardError(f"{shards} holds {index.get('kind')!r} shards; mix-offline mixes a build-shards output")
    problems = check_files(shards, index["shards"], sha256=True)
    if problems:
        raise ShardError(f"{len(problems)} source shard problem(s), run `midas-prep verify {shards}`: "
                         + "; ".join(problems[:5]))
    import pyarrow.parquet as pq

    clips = [c for c in pq.read_table(shards / "clips.parquet").to_pylist() if c["status"] == "written"]
    _check_sources(shards, index, clips)
    per_shard = _per_shard(cfg, index)
    plan = plan_mix(clips, cfg, per_shard)
    summary = MixSummary(out=out_uri, folds=sorted(plan))
    total = sum(len(s["pairs"]) for shards_k in plan.values() for s in shards_k)

    conf = config_to_dict(cfg) | {"source_index_sha256": _sha(index)}
    # First what is done and whether the rest fits (nothing written), then the folders are prepared.
    sizes: dict[int, dict[str, int] | None] = {}
    if out_remote and not cfg.overwrite:
        for k in plan:
            sizes[k] = remote_sizes(f"{out_remote}/{fold_dirname(k)}")
            pull(f"{out_remote}/{fold_dirname(k)}", _fold_out(out, k),
                 [r for r in sizes[k] if r.startswith(f"{STATE_DIR}/")], sizes[k])
    states = _resumable(out, plan, conf, cfg.overwrite, sizes)
    todo = [(k, s) for k, shards_k in plan.items() for s in shards_k if s["name"] not in states[k]]
    _check_room(cfg, out, index, [s for _, s in todo], remote=bool(out_remote))
    for k, shards_k in plan.items():
        fout = _fold_out(out, k)
        fold_uri = f"{out_remote}/{fout.name}" if out_remote else ""
        if cfg.overwrite:
            remove_outputs(fout)
            left = left_files(fout) if fout.is_dir() else []
            if left:
                logger.warning("%s", say_left(f"--overwrite of {fout}", left))
                summary.left += [f"{fout.name}/{f}" for f in left]
            if fold_uri:
                from pipeline.build import remove_remote_outputs

                remove_remote_outputs(fold_uri)
        fout.mkdir(parents=True, exist_ok=True)
        remove_temporaries(fout)
        foreign = [] if fold_uri else foreign_at_our_names(fout, [s["name"] for s in shards_k])
        if foreign:
            raise ShardError(f"{fout} holds {len(foreign)} file(s) at names mix-offline writes that it cannot prove "
                             f"it wrote (no _state/plan.json of its own): {', '.join(foreign[:5])}; nothing was "
                             "changed: move them away or choose another --out")
        if cfg.overwrite and _plan_conflict(fout, conf, shards_k):  # what is left is not a plan of ours
            raise ShardError(f"{fout / STATE_DIR / 'plan.json'} is not a plan mix-offline can prove it wrote; "
                             "--overwrite does not delete it: move it away or choose another --out")
        _check_plan(fout, conf, shards_k)
        if fold_uri:
            push(fout, fold_uri, [f"{STATE_DIR}/plan.json"])
    summary.shards_resumed = sum(len(v) for v in states.values())

    done = sum(len(s["pairs"]) for k, shards_k in plan.items() for s in shards_k if s["name"] in states[k])
    if on_progress:
        on_progress(done, total)
    if todo:
        import ray

        workers, started = init_ray((ray_cfg or RayConfig()).address, (ray_cfg or RayConfig()).workers)
        task = ray.remote(max_retries=3)(write_mixed_shard)
        index_ref = ray.put(index)
        pending: dict[Any, tuple[int, dict]] = {}
        queue = list(todo)
        failed: Any = None  # the first failed task: no new one starts, the ones in flight finish
        try:
            while queue or pending:
                while queue and len(pending) < workers:
                    k, s = queue.pop(0)
                    ref = task.remote(str(shards.resolve()), str(_fold_out(out, k).resolve()), index_ref, s,
                                      cfg.seed, cfg.formats, src_remote,
                                      f"{out_remote}/{_fold_out(out, k).name}" if out_remote else "",
                                      cfg.frames_compression)
                    pending[ref] = (k, s)
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    k, s = pending.pop(ref)
                    try:
                        state = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # each task removes its own temporaries
                        failed = failed or e
                        queue.clear()
                        continue
                    states[k][s["name"]] = state
                    summary.bytes += sum(e["bytes"] + e.get("idx", {}).get("bytes", 0) for e in state["entries"])
                    done += len(s["pairs"])
                    if on_progress:
                        on_progress(done, total)
                    _write_fold_index(_fold_out(out, k), k, conf, states[k], complete=False, index=index)
                    if out_remote:
                        push(_fold_out(out, k), f"{out_remote}/{_fold_out(out, k).name}", [INDEX_NAME])
                    fault_point("build.shard_done")
        finally:
            shutdown_ray(started)
        if failed is not None:
            cause = getattr(failed, "cause", None)
            if isinstance(cause, ShardError):  # a damaged source: its own message, no remote traceback
                raise ShardError(str(cause)) from None
            if isinstance(cause, OSError):  # a full disk: which file, how much room was left
                raise ShardError(f"cannot write the mixed shards: {cause}; the finished shards are kept and no "
                                 f"temporary is left: {write_fix(cause)}") from None
            raise ShardError(f"a mix task failed; finished shards are kept and a re-run resumes: {failed}") from failed

    lams = []
    for k in plan:
        _write_fold_index(_fold_out(out, k), k, conf, states[k], complete=True, index=index)
        if out_remote:
            push(_fold_out(out, k), f"{out_remote}/{_fold_out(out, k).name}", [INDEX_NAME])
        lams += [lam for s in states[k].values() for lam in s["lams"]]
        summary.shards += sum(1 for s in states[k].values() if s["entries"])
    summary.samples = total
    summary.lam_quantiles = {f"q{int(q * 100):02d}": float(np.quantile(lams, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_sources(shards: Path, index: dict[str, Any], clips: list[dict[str, Any]]) -> None:
    """Every written clip is a sample the source shards hold (read from the .idx or the key
    column, which also refuses a garbled .idx or a member named `../x`), before any task runs."""
    reader = SampleReader(shards, index)
    try:
        missing = sorted(c["clip_id"] for c in clips if sample_key(c["clip_id"]) not in set(reader.keys()))
    finally:
        reader.close()
    if missing:
        raise ShardError(f"{shards}: clips.parquet lists {len(missing)} written clip(s) the shards do not hold "
                         f"({', '.join(missing[:5])}); run `midas-prep verify {shards}`")


def _sha(index: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(index["shards"], sort_keys=True).encode()).hexdigest()


def _plan_conflict(fout: Path, conf: dict[str, Any], shards: list[dict[str, Any]]) -> str:
    """Why fout's mixed shards cannot be resumed with this plan ("" = they can, or there are none)."""
    path = fout / STATE_DIR / "plan.json"
    ignore = ("overwrite", "out", "shards", "fold")  # a fold's plan depends on (seed, fold, copy) only
    mine = {k: v for k, v in conf.items() if k not in ignore}
    if not path.is_file() and not path.is_symlink():
        return ""
    old = json_or_none(path) if is_inside(fout, f"{STATE_DIR}/plan.json") else None
    if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
        return (f"{path} is not a mix plan (garbled, or a link out of {fout}); pass --overwrite to rebuild "
                f"{fout} or choose another --out")
    if old.get("format_version", 1) != FORMAT_VERSION:
        return (f"{fout} holds mixed shards of format version {old.get('format_version', 1)}, this midas-prep "
                f"writes version {FORMAT_VERSION}; pass --overwrite to rebuild them or choose another --out")
    if old == {"config": mine, "shards": shards, "format_version": FORMAT_VERSION}:
        return ""
    diffs = [f"{k}: {old['config'].get(k)!r} on disk, {v!r} now" for k, v in mine.items()
             if old["config"].get(k) != v]
    return (f"{fout} holds mixed shards of another config or source "
            f"({'; '.join(diffs) or 'the source shards changed'}); pass --overwrite to replace them "
            "or choose another --out")


def _check_plan(fout: Path, conf: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    why = _plan_conflict(fout, conf, shards)
    if why:
        raise ShardError(why)
    path = fout / STATE_DIR / "plan.json"
    if not path.is_file():
        ignore = ("overwrite", "out", "shards", "fold")
        doc = {"config": {k: v for k, v in conf.items() if k not in ignore}, "shards": shards,
               "format_version": FORMAT_VERSION}
        atomic_write(path, json.dumps(doc, sort_keys=True).encode())


def _write_fold_index(fout: Path, fold: int, conf: dict[str, Any], states: dict[str, dict], complete: bool,
                      index: dict[str, Any]) -> None:
    write_index(fout, {
        "classes": index["classes"],
        "sample": index["sample"],
        "format_version": FORMAT_VERSION,
        "kind": "mixed",
        "created_by": f"midas-prep {__version__}",
        "fold": fold,
        "config": conf,
        "shards": [e for s in states.values() for e in s["entries"]],
        "counts": {"samples": sum(len(s["lams"]) for s in states.values())},
        "complete": complete,
    })
