"""build-shards: index -> decode + align (Ray tasks) -> write (Ray tasks), resumable.

The driver indexes the dataset and plans the shards before any Ray work (fatal errors
come first), then keeps two clip tasks per worker in flight (one running, one queued, so
a worker never waits on the driver). A clip task decodes and aligns a run of one shard's
clips (one clip for a small job, up to 8 for a large one) and returns small metadata to
the driver and the crops into Ray's object store; once every clip of a planned shard is
back, a write task turns the crops into shard files, renamed into place, and a done-file
in _state/. The driver rewrites index.json after every shard. A re-run skips shards whose
done-file and files are present (resume).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.align import align_frames, get_detector
from pipeline.cluster import init_ray, shutdown_ray
from pipeline.config import AlignConfig, BuildConfig, DecodeConfig, config_to_dict, with_added_fields
from pipeline.datasets.records import (
    FINGERPRINT_FIELDS,
    changed_since,
    sample_key,
    source_fingerprint,
    source_root,
)
from pipeline.decode import check_frame_size, check_video_size, decode_clip
from pipeline.errors import ClipRejected
from pipeline.faults import fault_point
from pipeline.format import (
    CLIPS_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    REJECTS_NAME,
    STATE_DIR,
    entry_files,
    is_inside,
    sample_nbytes,
)
from pipeline.index import index_dataset
from pipeline.lock import OutputLocked, hold_output
from pipeline.remote import delete_keys, is_remote, local_dir, pull, push, remote_sizes
from pipeline.write import (
    atomic_write,
    check_room,
    encode_sample,
    estimate_bytes,
    foreign_at_our_names,
    left_files,
    load_done,
    owned_bytes,
    owned_files,
    plan_shards,
    remove_outputs,
    remove_temporaries,
    say_left,
    write_clips_table,
    write_index,
    write_rejects_table,
    write_shard_files,
)

__all__ = ["BuildError", "BuildSummary", "build_shards", "plan_build", "process_clip", "process_clips", "write_shard"]

logger = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """Fatal: bad output dir, mismatched resume, a failed task, or no clip written."""


@dataclass
class BuildSummary:
    out: str
    clips: int = 0  # clips the index accepted
    unannotated: int = 0  # files with no annotation row (skipped)
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by stage: index, decode, align
    shards: int = 0  # planned shards with at least one sample
    shards_resumed: int = 0  # already complete from an earlier run
    files: int = 0
    bytes: int = 0
    processed: int = 0  # clips decoded and aligned in this run
    changed: list[str] = field(default_factory=list)  # clips changed since their shard was built: rebuilt
    not_checked: int = 0  # clips of shards built before fingerprints were recorded
    left: list[str] = field(default_factory=list)  # files --overwrite left: not provably written by midas-prep
    seconds: float = 0.0

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def process_clip(root: str, clip: dict[str, Any], dcfg: DecodeConfig, acfg: AlignConfig) -> tuple[dict, Any]:
    """Decode + align one clip -> (result row, uint8 T x S x S x 3 crops or None if rejected).

    The row carries the clip's fingerprint (records.source_fingerprint), taken before decoding:
    what the shard was built from, so a re-run and verify see a changed clip."""
    fp = source_fingerprint(root, clip)
    row, crops = _process_clip(root, clip, dcfg, acfg)
    return row | fp, crops


def _process_clip(root: str, clip: dict[str, Any], dcfg: DecodeConfig, acfg: AlignConfig) -> tuple[dict, Any]:
    try:
        if dcfg.decoder == "decord":
            check_video_size(Path(root), clip)
        frames = decode_clip(Path(root), clip, dcfg)
        check_frame_size(frames, clip["clip_id"], clip["source"], clip["source_kind"])
        fault_point("build.decoded", clip["clip_id"])
        crops, stats = align_frames(frames, get_detector(acfg), acfg, clip["clip_id"])
    except ClipRejected as e:
        return {"clip_id": clip["clip_id"], "status": "rejected", "stage": e.stage, "error": e.reason}, None
    return {"clip_id": clip["clip_id"], "status": "written", **stats}, crops


def process_clips(root: str, clips: list[dict[str, Any]], dcfg: DecodeConfig, acfg: AlignConfig
                  ) -> tuple[list[dict], list[Any]]:
    """process_clip over a run of one shard's clips (one Ray task, so that Ray's per-task cost is
    shared): -> (result rows, crops or None per clip). A rejected clip costs that clip alone."""
    rows, crops = [], []
    for clip in clips:
        row, frames = process_clip(root, clip, dcfg, acfg)
        rows.append(row)
        crops.append(frames)
    return rows, crops


def write_shard(out: str, shard: dict[str, Any], clips: list[dict], results: list[dict],
                formats: tuple[str, ...], remote: str, parquet: dict[str, Any], *batches: Any) -> dict[str, Any]:
    """Write one planned shard's files and its done-file; returns the done-file's content.

    `batches` are the crops lists of process_clips over the shard's clips, in order (None: rejected).
    With a `remote` output the files are then uploaded (data, then the done-file) and the
    local copies of the data dropped. `parquet` = {"classes", "frames_compression"} of the Parquet files."""
    frames = [f for batch in batches for f in batch]
    assert len(frames) == len(clips), f"{shard['name']}: {len(frames)} crops for {len(clips)} clips"
    samples = []
    for clip, res, crops in zip(clips, results, frames, strict=True):
        if res["status"] != "written":
            continue
        meta = {"clip_id": clip["clip_id"], "label": clip["label"], "part": clip["part"], "votes": clip["votes"]}
        samples.append(encode_sample(sample_key(clip["clip_id"]), crops, np.asarray(clip["soft"], np.float32), meta))
    entries = write_shard_files(Path(out), shard["name"], shard["part"], samples, formats, **parquet)
    state = {"shard": shard["name"], "part": shard["part"], "entries": entries,
             "results": [dict(r, shard=shard["name"]) for r in results]}
    atomic_write(Path(out) / STATE_DIR / f"{shard['name']}.json", json.dumps(state, sort_keys=True).encode())
    if remote:
        publish_shard(Path(out), remote, state)
    return state


def publish_shard(out: Path, remote: str, state: dict[str, Any]) -> None:
    """Upload a finished shard (data files, then its done-file) and drop the local data."""
    data = [p for p, _ in entry_files(state["entries"])]
    push(out, remote, [*data, f"{STATE_DIR}/{state['shard']}.json"])
    for rel in data:
        (out / rel).unlink(missing_ok=True)


def _prepare_out(out: Path, cfg: BuildConfig) -> list[str]:
    """Make `out` writable and, with --overwrite, delete what the previous build there can be proven
    to have written (write.owned_files: its own _state/ records); -> the files --overwrite left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test.tmp"
        probe.unlink(missing_ok=True)  # a leftover, or a symlink planted there: never written through
        probe.open("xb").close()
        probe.unlink()
    except OSError as e:
        raise BuildError(f"output directory {out} is not writable: {_why_not_writable(e)}") from e
    left: list[str] = []
    if cfg.write.overwrite:
        removed = remove_outputs(out)
        mixed = out / "mixed"
        if mixed.is_dir() and not mixed.is_symlink():  # made from the old shards: it goes too
            with hold_output(mixed):
                for fold in sorted(p for p in mixed.iterdir() if p.is_dir() and is_inside(out, f"mixed/{p.name}")):
                    removed += remove_outputs(fold)
            if not any(mixed.iterdir()):
                mixed.rmdir()
        left = left_files(out)
        logger.info("--overwrite: removed %d files of the previous build", removed)
        if left:
            logger.warning("%s", say_left(f"--overwrite of {out}", left))
    removed = remove_temporaries(out)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)
    return left


def _why_not_writable(e: OSError) -> str:
    """A read-only folder or file system says so, not "free space" (EROFS, EACCES, EPERM)."""
    import errno

    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"it is read-only ({e.strerror}): make it writable or choose another --out"
    return str(e)


def _no_clips(cfg: BuildConfig, rejects: list[dict[str, Any]]) -> BuildError:
    reasons = Counter(r["error"].split(": ", 1)[-1] for r in rejects).most_common(3)
    said = "; ".join(f"{n} x {why}" for why, n in reasons) or "no clip listed"
    return BuildError(f"{cfg.dataset_root}: no usable clip in the index ({len(rejects)} rejected rows; "
                      f"most common reasons: {said})")


def _check_writable(out: Path) -> None:
    """The dry run's stand-in for _prepare_out: the nearest existing folder must take new files."""
    import os

    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise BuildError(f"output directory {out} is not writable: {p} is not a writable folder")


def remove_remote_outputs(uri: str) -> int:
    """--overwrite of a remote output: delete the objects build-shards / mix-offline wrote there
    (owned_files of the output and of each mixed/<fold>/ under it, read from the remote's own
    index.json and _state/), never the whole prefix; -> objects deleted."""
    sizes = remote_sizes(uri)
    roots = {""}
    for k in sizes:
        for suffix in (INDEX_NAME, f"{STATE_DIR}/plan.json"):
            if k.startswith("mixed/") and k.endswith("/" + suffix):
                roots.add(k[: -len(suffix)])  # mixed/<fold>/
    keys: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for root in sorted(roots):
            meta = [k[len(root):] for k in sizes if k.startswith(root)
                    and (k[len(root):] == INDEX_NAME or k[len(root):].startswith(f"{STATE_DIR}/"))]
            pull(f"{uri.rstrip('/')}/{root}" if root else uri, Path(tmp) / root, meta)
            mine = {k[len(root):]: n for k, n in sizes.items() if k.startswith(root)}
            keys |= {root + f for f in owned_files(Path(tmp) / root, mine)}
    return delete_keys(uri, sorted(keys & set(sizes)))


def _plan_config(cfg: BuildConfig) -> dict[str, Any]:
    """What a resume must match: the output config, with the dataset by its absolute path (the
    same dataset named from another directory is the same build; repair runs from anywhere)."""
    return cfg.output_config() | {"dataset_root": str(Path(cfg.dataset_root).resolve())}


def _check_plan(out: Path, cfg: BuildConfig, plan: list[dict[str, Any]], write: bool = True) -> None:
    """The plan on disk must match this run's, or resuming would mix two builds (the dry run checks, no write)."""
    path = out / STATE_DIR / "plan.json"
    doc = {"config": _plan_config(cfg), "shards": plan, "format_version": FORMAT_VERSION}
    fix = (f"--overwrite does not delete a file it cannot prove it wrote: move {path} away or choose another --out"
           if cfg.write.overwrite else f"pass --overwrite to rebuild {out}")
    if path.is_symlink():  # never read through (a link out of the output)
        raise BuildError(f"{path} is a symlink, not a plan midas-prep wrote; {fix}")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict) or not {"config", "shards"} <= set(old):
                raise ValueError("not a build plan")
        except ValueError as e:
            raise BuildError(f"{path} is unreadable ({e}); {fix}") from None
        if old.get("format_version", 1) != FORMAT_VERSION:
            raise BuildError(f"{out} holds a build of format version {old.get('format_version', 1)}; this "
                             f"midas-prep writes version {FORMAT_VERSION} (the shard layout changed): "
                             "pass --overwrite to rebuild it or choose another --out")
        stored = with_added_fields(old["config"])
        if stored != doc["config"]:
            diffs = _diff(stored, doc["config"])
            diffs = diffs[:8] + [f"{len(diffs) - 8} more"] * (len(diffs) > 8)
            raise BuildError(
                f"{out} holds a build with another config ({'; '.join(diffs)}); "
                "pass --overwrite to rebuild it or choose another --out"
            )
        if old["shards"] != plan:
            raise BuildError(
                f"{out} holds a build of a different clip list (the dataset changed since); "
                "pass --overwrite to rebuild it or choose another --out"
            )
        return
    if write:
        atomic_write(path, json.dumps(doc, sort_keys=True).encode())


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} on disk, {b!r} now"]


def _load_done(out: Path, plan: list[dict[str, Any]], sizes: dict[str, int] | None = None,
               level: int = logging.WARNING) -> dict[str, dict[str, Any]]:
    """Done-files of planned shards whose files are all present with the recorded size
    (on the local disk, or in `sizes`, the listing of a remote output); an incomplete one is logged at `level`."""
    states = {shard["name"]: load_done(out, shard["name"], sizes, level) for shard in plan}
    return {name: state for name, state in states.items() if state is not None}


def _drop_changed(cfg: BuildConfig, states: dict[str, dict], clips: dict[str, dict]) -> tuple[list[str], int]:
    """Take out of `states` (the shards a resume keeps) every shard holding a clip that changed since
    it was built: its annotation row, or its file's size, or its mtime and content hash. Those shards
    are rebuilt (not refused: the rest of the build stays valid). -> (["<clip> (what changed)"],
    clips not checked: their shard was built before fingerprints were recorded)."""
    root = source_root(cfg.dataset_root)
    changed: list[str] = []
    unchecked = 0
    for name in sorted(states):
        mine = []
        for r in states[name].get("results", []):
            clip = clips.get(r.get("clip_id"))
            why = changed_since(root, clip, r) if clip is not None else "not in the index any more"
            if why is None:
                unchecked += 1
            elif why:
                mine.append(f"{r.get('clip_id')} ({why})")
        if mine:
            logger.warning("shard %s is rebuilt: %d clip(s) changed since it was built: %s", name, len(mine),
                           ", ".join(mine[:5]))
            del states[name]
            changed += mine
    if unchecked:
        logger.info("%d clips were built before fingerprints were recorded: not checked for changes", unchecked)
    return changed, unchecked


def _check_room(cfg: BuildConfig, out: Path, todo: list[dict[str, Any]], reclaim: int = 0) -> dict[str, int]:
    """Refuse (BuildError) when the shards left to write do not fit on the disk of `out` (with
    `reclaim` bytes an --overwrite will delete first); -> {"bytes_needed", "bytes_free"} for the
    dry run. A remote output is written through the local cache a few shards at a time: no check."""
    nbytes = sample_nbytes(cfg.decode.num_frames, cfg.align.frame_size, len(cfg.index.classes))
    need = estimate_bytes(sum(len(s["clip_ids"]) for s in todo), len(todo), nbytes, cfg.write.formats)
    if is_remote(cfg.write.out):
        return {"bytes_needed": need}
    free, why = check_room(out, need - reclaim)
    if why:
        raise BuildError(f"{why}: {sum(len(s['clip_ids']) for s in todo)} clips x {len(cfg.write.formats)} "
                         f"format(s) x {nbytes / 1e6:.2f} MB a sample; free space there, choose another --out, "
                         "or write one --format")
    return {"bytes_needed": need, "bytes_free": free}


def _index_doc(cfg: BuildConfig, states: dict[str, dict], counts: dict[str, Any], complete: bool) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "clips",
        "created_by": f"midas-prep {__version__}",
        "config": config_to_dict(cfg) | {"ray": None},  # where and how fast it ran is not part of the data
        # repair finds the source by the absolute path, whatever directory it is run from
        "dataset": {"root": str(Path(cfg.dataset_root).resolve()), "given": str(cfg.dataset_root)},
        "classes": list(cfg.index.classes),
        "sample": {"num_frames": cfg.decode.num_frames, "frame_size": cfg.align.frame_size,
                   "members": ["frames.npy", "json", "soft.npy"]},
        "shards": [e for s in states.values() for e in s["entries"]],
        "counts": counts,
        "complete": complete,
    }


def plan_build(cfg: BuildConfig, rebuild_level: int = logging.WARNING) -> dict[str, Any]:
    """What build-shards would do (--dry-run): index and plan, no Ray, nothing written.

    Makes the refusals the real run would make before its first clip: no usable clip, an
    output that cannot be written, a build of another config or clip list in --out. A shard
    found incomplete is logged at `rebuild_level` (verify --repair expects it: INFO)."""
    index = index_dataset(cfg.dataset_root, cfg.index)
    if not index.clips:
        raise _no_clips(cfg, index.rejects)
    plan = plan_shards(index.clips, cfg.write.shard_size_mb,
                       sample_nbytes(cfg.decode.num_frames, cfg.align.frame_size, len(cfg.index.classes)))
    out = local_dir(cfg.write.out)
    _check_writable(out)
    done: dict[str, dict] = {}
    if not cfg.write.overwrite:  # the same refusal the real run would make
        _check_plan(out, cfg, plan, write=False)
        done = _load_done(out, plan, level=rebuild_level)
    changed, _ = _drop_changed(cfg, done, {c["clip_id"]: c for c in index.clips})
    reclaim = owned_bytes(out) if cfg.write.overwrite and out.is_dir() else 0  # what --overwrite deletes first
    room = _check_room(cfg, out, [s for s in plan if s["name"] not in done], reclaim)
    parts = Counter(c["part"] for c in index.clips)
    missing = _missing_files(index.rejects)
    return {"dataset": str(cfg.dataset_root), "out": str(out), "clips": len(index.clips),
            "unannotated": len(index.unannotated), "rejected_at_index": len(index.rejects),
            "clips_per_part": {str(k): v for k, v in sorted(parts.items())}, "shards_planned": len(plan),
            "shards_done": len(done),
            "clips_to_process": sum(len(s["clip_ids"]) for s in plan if s["name"] not in done),
            "formats": list(cfg.write.formats), "num_frames": cfg.decode.num_frames,
            "frame_size": cfg.align.frame_size, "detector": cfg.align.detector, **room,
            **({"clips_changed": f"{len(changed)}, rebuilt: " + _first(changed)} if changed else {}),
            **({"files_missing": f"{len(missing)}: " + _first(missing)} if missing else {})}


def _first(names: list[str], n: int = 5) -> str:
    """The first few of `names` and how many more: one line however long the list."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _missing_files(rejects: list[dict[str, Any]]) -> list[str]:
    """Index rejects whose file is not there (a manifest path, an annotated DFEW clip): the dry
    run names them, for a manifest whose paths are all wrong must not look like a plan."""
    keys = ("no video file or frame folder", "has no file", "file not found")
    return [r["source"] or r["clip_id"] for r in rejects if any(k in r["error"] for k in keys)]


def build_shards(cfg: BuildConfig, on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    """Build the shards of `cfg.dataset_root` into `cfg.write.out`; resumes an interrupted run.

    `on_progress(done, total)` is called as clips finish. Raises LayoutError or BuildError
    (fatal); per-clip failures end in rejects.parquet.
    """
    _check_writable(local_dir(cfg.write.out))  # before the lock file, so the message says what is wrong
    try:
        with hold_output(local_dir(cfg.write.out)):
            try:
                return _build_shards(cfg, on_progress)
            except (BuildError, OSError):  # a full disk: the temporaries of the shards in flight go too
                with contextlib.suppress(OSError):
                    remove_temporaries(local_dir(cfg.write.out))
                raise
    except OutputLocked as e:
        raise BuildError(str(e)) from None
    except OSError as e:  # a full disk, a vanished mount: what is written stays valid, a re-run resumes
        raise BuildError(f"cannot write to {cfg.write.out}: {e}; the shards written so far are kept and a re-run "
                         "resumes") from e


def _build_shards(cfg: BuildConfig, on_progress: Callable[[int, int], None] | None) -> BuildSummary:
    t0 = time.perf_counter()
    remote = cfg.write.out if is_remote(cfg.write.out) else ""
    out = local_dir(cfg.write.out)  # a remote output is built in this node's cache and uploaded shard by shard
    summary = BuildSummary(out=cfg.write.out)
    index = index_dataset(cfg.dataset_root, cfg.index)
    summary.clips, summary.unannotated = len(index.clips), len(index.unannotated)
    if not index.clips:
        raise _no_clips(cfg, index.rejects)
    summary.left = _prepare_out(out, cfg)
    sizes = None
    if remote:
        if cfg.write.overwrite:
            remove_remote_outputs(remote)
        sizes = remote_sizes(remote)
        pull(remote, out, [k for k in sizes if k.startswith(f"{STATE_DIR}/")], sizes)
    plan = plan_shards(index.clips, cfg.write.shard_size_mb,
                       sample_nbytes(cfg.decode.num_frames, cfg.align.frame_size, len(cfg.index.classes)))
    _check_plan(out, cfg, plan, write=False)
    states = _load_done(out, plan, sizes)
    summary.changed, summary.not_checked = _drop_changed(cfg, states, {c["clip_id"]: c for c in index.clips})
    summary.shards_resumed = len(states)
    todo = [s for s in plan if s["name"] not in states]
    _check_room(cfg, out, todo)  # refused before the plan is written: a build that does not fit leaves nothing
    foreign = [] if remote else foreign_at_our_names(out, [s["name"] for s in plan])
    if foreign:
        raise BuildError(f"{out} holds {len(foreign)} file(s) at names build-shards writes that it cannot prove it "
                         f"wrote (no _state/plan.json of its own): {', '.join(foreign[:5])}; nothing was changed: "
                         "move them away or choose another --out")
    _check_plan(out, cfg, plan)
    if remote:
        push(out, remote, [f"{STATE_DIR}/plan.json"])
    clips_by_id = {c["clip_id"]: c for c in index.clips}
    index_rejects = {"index": len(index.rejects)}

    def counts() -> dict[str, Any]:
        results = [r for s in states.values() for r in s["results"]]
        stages = Counter(r["stage"] for r in results if r["status"] == "rejected")
        return {"clips": len(index.clips), "unannotated": len(index.unannotated),
                "written": sum(r["status"] == "written" for r in results),
                "rejected": dict(sorted((index_rejects | dict(stages)).items()))}

    if todo:
        _run_shards(cfg, out, todo, clips_by_id, states, counts, summary, on_progress, remote)

    results = {r["clip_id"]: r for s in states.values() for r in s["results"]}
    rows = []
    for c in index.clips:
        r = results[c["clip_id"]]
        rows.append(c | {k: r.get(k) for k in ("status", "shard", "face_tried", "face_frames", "face_score",
                                                *FINGERPRINT_FIELDS)})
    write_clips_table(out, rows)
    rejects = list(index.rejects) + [
        {"clip_id": r["clip_id"], "source": clips_by_id[r["clip_id"]]["source"], "stage": r["stage"],
         "error": r["error"]}
        for r in results.values() if r["status"] == "rejected"
    ]
    write_rejects_table(out, rejects)
    final = counts()
    write_index(out, _index_doc(cfg, states, final, complete=True))
    if remote:  # the tables, then index.json last: readers trust what the index lists
        push(out, remote, [CLIPS_NAME, REJECTS_NAME, INDEX_NAME])

    summary.written = final["written"]
    summary.rejected = final["rejected"]
    entries = [e for s in states.values() for e in s["entries"]]
    summary.shards = sum(1 for s in states.values() if s["entries"])
    summary.files = len(entries)
    summary.bytes = sum(e["bytes"] + e.get("idx", {}).get("bytes", 0) for e in entries)
    summary.out = cfg.write.out
    summary.seconds = time.perf_counter() - t0
    if summary.written == 0:
        said = ", ".join(f"{n} at {stage}" for stage, n in summary.rejected.items() if n)
        raise BuildError(f"no clip could be written: rejected {said}; the reasons are in {out / REJECTS_NAME}")
    return summary


_DEATHS = 3  # worker deaths a clip is given (its run's included) before it is rejected


def _worker_died_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose worker process died (a crash, a kill, the OOM killer)."""
    names = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _died_row(root: str, clip: dict[str, Any], e: BaseException) -> dict[str, Any]:
    """The reject of a clip whose worker process died twice while processing it (alone in its task)."""
    what = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return {"clip_id": clip["clip_id"], "status": "rejected", "stage": "decode",
            "error": f"{clip['source']}: the worker process died while decoding/aligning this clip "
                     f"({type(e).__name__}: {what}); a decoder crash on this file: check or re-encode it",
            **source_fingerprint(root, clip)}


def _clips_per_task(total: int, workers: int) -> int:
    """Clips per Ray task: one for a small job (every worker busy to the end), up to 8 for a large
    one (Ray's per-task cost shared, ~16 tasks per worker still balance the load)."""
    return max(1, min(8, total // (16 * workers)))


def _runs(todo: list[dict], per_task: int, workers: int) -> list[tuple[str, list[str]]]:
    """Runs of up to per_task clips of one shard, in plan order (a task never spans two shards).
    With `workers`, the runs shrink towards the end, each at most 1/(4 x workers) of the clips left
    to go (guided self-scheduling): the workers end together, instead of one idling through the
    other's last 8-clip run (~1.5 s of 720p originals)."""
    left = sum(len(s["clip_ids"]) for s in todo)
    runs = []
    for s in todo:
        ids, i = s["clip_ids"], 0
        while i < len(ids):
            k = min(per_task, max(1, left // (4 * workers))) if workers else per_task
            run = ids[i : i + k]
            runs.append((s["name"], run))
            i += k
            left -= len(run)
    return runs


def _run_shards(cfg: BuildConfig, out: Path, todo: list[dict], clips_by_id: dict[str, dict],
                states: dict[str, dict], counts: Callable[[], dict], summary: BuildSummary,
                on_progress: Callable[[int, int], None] | None, remote: str) -> None:
    import ray

    workers, started = init_ray(cfg.ray.address, cfg.ray.workers)
    # Crash isolation: Ray does not retry a clip task (max_retries=0); the driver does. A task whose
    # worker process dies re-runs each of its clips alone, and a clip whose worker dies _DEATHS times
    # (in its run, then alone, twice: a task queued behind a crashing one on the same worker dies with
    # it without having run) is rejected with that reason, the build going on: one decoder crash
    # costs one clip, not the clips of its run, nor the build.
    process = ray.remote(num_returns=2, max_retries=0)(process_clips)
    tries: Counter[str] = Counter()
    suspects: list[tuple[str, list[str]]] = []  # (shard, [clip]) to re-run alone, popped from the end
    writer = ray.remote(max_retries=3)(write_shard)
    root = str(source_root(cfg.dataset_root))  # a manifest's paths are relative to its folder
    out_s = str(out.resolve())
    total = sum(len(s["clip_ids"]) for s in todo)
    per_task = cfg.ray.clips_per_task or _clips_per_task(total, workers)
    queue = _runs(todo, per_task, workers if not cfg.ray.clips_per_task else 0)
    queue.reverse()  # popped from the end
    shard_of = {s["name"]: s for s in todo}
    pending: dict[Any, tuple[str, list[str], Any]] = {}  # rows ref -> (shard, clip_ids, crops ref)
    got: dict[str, list[tuple[int, list[dict], Any]]] = {s["name"]: [] for s in todo}  # shard -> its runs
    writes: dict[Any, str] = {}
    parquet = {"classes": tuple(cfg.index.classes), "frames_compression": cfg.write.frames_compression}
    died = _worker_died_errors(ray)
    lost = tuple(getattr(ray.exceptions, n) for n in ("ObjectLostError", "OwnerDiedError")
                 if hasattr(ray.exceptions, n))  # ObjectReconstructionFailedError is an ObjectLostError
    done = 0
    try:
        while queue or suspects or pending or writes:
            while len(pending) < 2 * workers:  # one queued behind each running: no idle gap
                # a clip whose worker died runs alone and one at a time: never queued behind another suspect
                if suspects and not any(len(v[1]) == 1 and tries[v[1][0]] for v in pending.values()):
                    name, ids = suspects.pop()
                elif queue:
                    name, ids = queue.pop()
                else:
                    break
                rows_ref, crops_ref = process.remote(root, [clips_by_id[c] for c in ids], cfg.decode, cfg.align)
                pending[rows_ref] = (name, ids, crops_ref)
            ready, _ = ray.wait(list(pending) + list(writes), num_returns=1)
            for ref in ready:
                if ref in writes:
                    name = writes.pop(ref)
                    try:
                        states[name] = ray.get(ref)
                    except (ray.exceptions.RayTaskError, *lost) as e:
                        if not isinstance(e, lost) and not isinstance(getattr(e, "cause", None), lost):
                            raise
                        # A node died holding crops of this shard: Ray does not rebuild them (clip tasks are
                        # not retried, see above), so the shard's clips are processed again.
                        logger.info("crops of shard %s were lost with a node: processing its clips again", name)
                        ids_all = shard_of[name]["clip_ids"]
                        queue += [(name, ids_all[i : i + per_task]) for i in range(0, len(ids_all), per_task)][::-1]
                        got[name] = []
                        done -= len(ids_all)
                        continue
                    write_index(out, _index_doc(cfg, states, counts(), complete=False))
                    if remote:
                        push(out, remote, [INDEX_NAME])
                    fault_point("build.shard_done")
                    continue
                name, ids, crops_ref = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except died as e:
                    with contextlib.suppress(*died):  # fetched once: Ray prints no "unhandled error" for it
                        ray.get(crops_ref)
                    tries.update(ids)
                    if len(ids) > 1 or tries[ids[0]] < _DEATHS:  # which clip killed the worker: each one alone
                        logger.info("a worker died on %d clip(s) (%s ...): re-running them one per task",
                                    len(ids), ids[0])
                        suspects += [(name, [c]) for c in reversed(ids)]
                        continue
                    rows = [_died_row(root, clips_by_id[ids[0]], e)]
                    crops_ref = ray.put([None])
                for _ in ids:
                    fault_point("build.clip_done")
                    done += 1
                    if on_progress:
                        on_progress(done, total)
                shard = shard_of[name]
                got[name].append((shard["clip_ids"].index(ids[0]), rows, crops_ref))
                if sum(len(r) for _, r, _ in got[name]) == len(shard["clip_ids"]):
                    runs = sorted(got.pop(name), key=lambda run: run[0])
                    results = [row for _, r, _ in runs for row in r]
                    clips = [clips_by_id[c] for c in shard["clip_ids"]]
                    writes[writer.remote(out_s, shard, clips, results, cfg.write.formats, remote, parquet,
                                         *[c for _, _, c in runs])] = name
            summary.processed = done
    except ray.exceptions.RayTaskError as e:
        raise BuildError(f"a build task failed; the shards written so far are kept and a re-run resumes: "
                         f"{e.cause if hasattr(e, 'cause') else e}") from e
    finally:
        shutdown_ray(started)
