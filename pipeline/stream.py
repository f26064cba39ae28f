"""Stream stage: shards -> NVIDIA DALI -> training batches, MIDAS mixing on the device.

Reading. An epoch is one permutation of every sample of the split, seeded by
(seed, epoch), cut into `num_shards` disjoint slices (one per rank). DALI's
fn.readers.webdataset reads tars in sequence and shuffles only inside a read-ahead
buffer, so a batch would hold clips of one or two shards (one part); instead a parallel
fn.external_source reads each sample at its .idx byte offsets (WebDataset) or its row
group (Parquet), which gives a shuffle across all shards and parts with the same bytes.
The source runs per sample, so one batch is read by all reader processes at once, `prefetch`
batches ahead (a batch-mode source reads a whole batch in one process); reader and thread
counts are sized from the CPUs of the rank (`auto_workers`).

The graph. `midas_graph` is a plain function (tests run it over known inputs): a random
resized crop and brightness/contrast jitter, one draw per clip (every frame alike), in
uint8; then MIDAS: fn.batch_permutation pairs every sample with another of the same
batch, fn.random.beta draws one lam per pair, frames and soft labels are mixed with that
lam; then crop_mirror_normalize flips (one draw per sample), normalises and lays out float
N x C x T x H x W. One graph: `.gpu()` moves the batch to the device when a GPU is used
(random.beta and batch_permutation are CPU-only operators, so lam and the permutation are
drawn on the CPU and lam is copied over); with no GPU the same graph runs in a CPU-only
pipeline (device_id=None). Evaluation neither mixes nor augments.

Splits. "test" is part K; "train" the other parts; with val_fraction > 0, "val" is that fraction
of the training parts' clips (seeded, by clip id, so the same clips in both formats), left out
of "train" together with every offline-mixed sample made from one of them. `labels="onehot"`
turns each sample's target into the one-hot of its label before mixing (mixup's targets).

Resume. Pipelines are built with enable_checkpointing: `state_dict()` holds the DALI
checkpoint (source position and every RNG) and `MidasLoader.from_state_dict` rebuilds the
pipeline from it, so a restored loader continues the epoch with the same batches and draws.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError, StreamConfig
from pipeline.datasets.records import clip_id_of_key
from pipeline.format import (
    INDEX_NAME,
    MIXED_DIR,
    ShardError,
    entry_files,
    entry_paths,
    mixed_dir,
    mixed_rel,
    resolve_inside,
)
from pipeline.read import check_files, load_idx, open_index, outside_fix, read_sample, sample_spec
from pipeline.remote import is_remote, local_dir, pull

__all__ = ["list_samples", "choose_val_clips", "epoch_order", "ShardSource", "midas_graph", "create_loader",
           "MidasLoader", "resolve_device", "auto_workers", "bench_loader", "guard_reader"]

logger = logging.getLogger(__name__)
# How reader processes start: "auto" spawns them for a GPU loader or once CUDA is initialised in this
# process (DALI refuses to fork then), and forks them otherwise (spawning costs ~1-3 s a loader).
_START_METHOD = "auto"


def _start_method(device: str) -> str:
    if _START_METHOD != "auto":
        return _START_METHOD
    from nvidia.dali import backend

    return "spawn" if device == "gpu" or backend.IsDriverInitialized() else "fork"


def resolve_device(device: str) -> str:
    """"auto" -> "gpu" when an NVIDIA GPU is visible, else "cpu"."""
    if device != "auto":
        return device
    return "gpu" if shutil.which("nvidia-smi") and Path("/dev/nvidia0").exists() else "cpu"


def _select(index: dict[str, Any], cfg: StreamConfig, fmt: str) -> list[dict[str, Any]]:
    """The shard entries of the split: part K (test), else the training parts (val clips are among them)."""
    entries = [e for e in index["shards"] if e["format"] == fmt]
    if index.get("kind") == "mixed":
        return entries
    if cfg.split == "test":
        return [e for e in entries if e["part"] == cfg.fold]
    return [e for e in entries if e["part"] != cfg.fold and (e["part"] != 0 or cfg.include_unassigned)]


def choose_val_clips(clip_ids: list[str], fraction: float, seed: int, fold: int) -> set[str]:
    """The validation clips: round(fraction * n) of the training parts' n clips (at least 1, at most n - 1),
    a permutation seeded by (seed, fold) of the sorted clip ids: the same clips for WebDataset and Parquet."""
    ids = sorted(set(clip_ids))
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    if n < 1:
        raise ShardError(f"fold {fold}: {len(ids)} training clip(s) cannot be split into train and val; "
                         "drop --val-fraction")
    order = np.random.default_rng([seed, fold]).permutation(len(ids))
    return {ids[i] for i in order[:n]}


def _sample_clips(fmt: str, path: str, samples: list[tuple[str, str, str, Any]], mixed: bool) -> list[list[str]]:
    """The clip ids each sample is made of: [its clip id], or a mixed sample's source clip ids (from its json)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["json"] if mixed else ["clip_id"])
        if not mixed:
            return [[c] for c in table.column("clip_id").to_pylist()]
        metas = [json.loads(j) for j in table.column("json").to_pylist()]
    elif not mixed:
        return [[clip_id_of_key(key)] for key, *_ in samples]  # a built sample's key encodes its clip id
    else:
        metas = []
        with open(path, "rb") as f:
            for _, _, _, members in samples:
                f.seek(members["json"][0])
                metas.append(json.loads(f.read(members["json"][1])))
    out = []
    for meta in metas:
        if not isinstance(meta, dict) or not isinstance(meta.get("sources"), list):
            raise ShardError(f"{path}: a mixed sample's json does not name its sources; re-run mix-offline")
        out.append([str(src["clip_id"]) for src in meta["sources"]])
    return out


def _split_val(shards: list[tuple[dict[str, Any], list[tuple[str, str, str, Any]], bool]], cfg: StreamConfig,
               fmt: str) -> list[tuple[dict[str, Any], list[tuple[str, str, str, Any]], bool]]:
    """Keep the samples of split "val" (val clips only, no mixed sample) or "train" (no val clip, and no
    offline-mixed sample with a val clip among its sources)."""
    clips = [_sample_clips(fmt, rows[0][2], rows, mixed) if rows else [] for _, rows, mixed in shards]
    candidates = [c[0] for (e, _, mixed), cs in zip(shards, clips, strict=True)
                  if not mixed and e["part"] not in (0, cfg.fold) for c in cs]
    val = choose_val_clips(candidates, cfg.val_fraction, cfg.val_seed, cfg.fold)
    out = []
    for (e, rows, mixed), cs in zip(shards, clips, strict=True):
        if cfg.split == "val":
            keep = [s for s, c in zip(rows, cs, strict=True) if not mixed and c[0] in val]
        else:
            keep = [s for s, c in zip(rows, cs, strict=True) if not val.intersection(c)]
        out.append((e, keep, mixed))
    return out


def list_samples(cfg: StreamConfig) -> list[tuple[str, str, str, Any]]:
    """Every sample of the split as (key, format, absolute shard path, where), in shard order."""
    root = local_dir(cfg.shards)  # a remote URI is read through this node's cache
    if is_remote(cfg.shards):
        pull(cfg.shards, root, [INDEX_NAME])
    index = open_index(root)
    formats = {e["format"] for e in index["shards"]}
    fmt = cfg.format if cfg.format != "auto" else ("webdataset" if "webdataset" in formats else "parquet")
    if fmt not in formats:
        raise ShardError(f"{root} has no {fmt} shards (it has {sorted(formats)})")
    sources = [(root, _select(index, cfg, fmt))]
    if cfg.offline_mixed and cfg.split == "train":
        resolve_inside(root, mixed_rel(cfg.fold), root / MIXED_DIR, f"the folder of fold {cfg.fold}",
                       "remove that symlink; mix-offline writes the mixed folds inside the shards")
        mroot = mixed_dir(root, cfg.fold)
        if is_remote(cfg.shards):
            pull(f"{cfg.shards.rstrip('/')}/{mixed_rel(cfg.fold)}", mroot, [INDEX_NAME])
        if not (mroot / INDEX_NAME).is_file():
            raise ShardError(f"{mroot} holds no mixed shards: run `midas-prep mix-offline --shards {root} --fold "
                             f"{cfg.fold}` first, or train without offline_mixed (--set offline_mixed=false)")
        mindex = open_index(mroot)
        if sample_spec(mindex) != sample_spec(index):
            raise ShardError(f"{mroot} holds samples of {sample_spec(mindex)}, {root} of {sample_spec(index)}: "
                             f"re-run `midas-prep mix-offline --shards {root} --fold {cfg.fold} --overwrite`")
        sources.append((mroot, _select(mindex, cfg, fmt)))
    # every listed path stays inside its folder before anything is fetched, measured or read
    paths = {id(e): entry_paths(base, e, base / INDEX_NAME, outside_fix(base)) for base, entries in sources
             for e in entries}
    if is_remote(cfg.shards):
        for base, entries in sources:
            rel_base = base.relative_to(root).as_posix()
            uri = cfg.shards.rstrip("/") + ("" if rel_base == "." else "/" + rel_base)
            pull(uri, base, [p for p, _ in entry_files(entries)])
    for base, entries in sources:  # a missing or truncated shard is named before any reading starts
        problems = check_files(base, entries, sha256=False)
        if problems:
            raise ShardError(f"{len(problems)} shard problem(s); run `midas-prep verify {root}`: "
                             + "; ".join(problems[:5]))
    # per shard: (entry, its samples, whether they come from the mixed folder)
    shards: list[tuple[dict[str, Any], list[tuple[str, str, str, Any]], bool]] = []
    for n, (base, entries) in enumerate(sources):
        for e in sorted(entries, key=lambda e: e["path"]):
            path = str(paths[id(e)][0].resolve())
            if fmt == "webdataset":
                rows = [(key, fmt, path, members) for key, members in load_idx(paths[id(e)][-1], base)]
            else:
                rows = [(f"{e['path']}#{row}", fmt, path, row) for row in range(e["samples"])]
            shards.append((e, rows, n > 0))
    if cfg.val_fraction > 0 and cfg.split != "test":
        shards = _split_val(shards, cfg, fmt)
    samples = [s for _, rows, _ in shards for s in rows]
    if not samples:
        raise ShardError(f"{root}: fold {cfg.fold} {cfg.split} split is empty")
    return samples


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's sample order: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask, which cgroups and launchers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(cfg: StreamConfig, device: str) -> tuple[int, int, int]:
    """(num_threads, py_workers, prefetch) for this rank; a config value of 0 means "size it from the machine".

    The CPUs of a node are shared by its LOCAL_WORLD_SIZE ranks, unless the launcher already
    bound each rank to its own subset. On a GPU the DALI threads have little to do (random
    draws, the permutation) and the reader processes are the work; on the CPU the DALI
    threads run the augmentation and mixing, the readers only read and check the bytes.
    """
    cpus, local = _cpus(), max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    bound = local > 1 and cpus * local <= (os.cpu_count() or cpus)
    per_rank = cpus if bound else max(1, cpus // local)
    if device == "gpu":
        threads, workers, prefetch = min(4, per_rank), max(1, per_rank - 2), 4
    else:
        threads, workers, prefetch = per_rank, max(1, per_rank // 2), 2
    return cfg.num_threads or threads, cfg.py_workers or workers, cfg.prefetch or prefetch


# --- reader processes end with the process that made the loader ---------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_S = 0.5  # how often a reader checks that its parent is still there
_guarded = 0  # the pid of this process once its guard is up
_forking: tuple[int, bool] | None = None  # (owner pid, parent-death signal) while MidasLoader forks its readers


def guard_reader(owner: int, pdeathsig: bool) -> None:
    """Make this reader process end when `owner`, the process that built the loader, ends (kill -9 too).

    DALI's reader processes do not notice on their own: after a kill -9 of the trainer they stayed
    alive under init, ignoring SIGTERM. Two guards: the kernel's parent-death signal (Linux; it
    fires when the *thread* that started the reader exits, so it is asked for only when the loader
    was built on the main thread) and a watchdog thread that polls the parent pid and exits the
    moment it changes (any POSIX system). Idempotent; does nothing in `owner` itself."""
    global _guarded
    me = os.getpid()
    if me in (owner, _guarded):
        return
    _guarded = me
    with contextlib.suppress(ValueError):  # Ctrl-C is the trainer's to handle: readers end with it, silently
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != owner:  # the owner died before the guard was up: nothing would signal it now
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(owner,), name="midas-reader-watchdog", daemon=True).start()


def _watch_parent(owner: int) -> None:
    while os.getppid() == owner:
        time.sleep(_WATCH_S)
    os._exit(1)  # no cleanup to run: a reader only reads, and its parent is gone


def _after_fork_in_child() -> None:
    """Readers forked by MidasLoader guard themselves before running anything else."""
    if _forking is not None:
        guard_reader(*_forking)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ShardSource:
    """Per-sample callable for a parallel fn.external_source; pickled into the reader processes.

    Sample j of batch b of epoch e is order[rank][b*N + j] where order[rank] is this rank's
    slice of epoch_order(...), so each batch is spread over every reader process. Raises
    StopIteration for every sample past the epoch's last batch. DALI's per-sample mode only
    delivers whole batches, so a partial last batch (unless drop_last) is padded by repeating
    its own samples, flagged in the third column of the index output; MidasLoader cuts the
    padding off (mixing partners inside the padding are copies of real members of the batch).
    """

    def __init__(self, samples: list[tuple[str, str, str, Any]], batch_size: int, seed: int, shuffle: bool,
                 shard_id: int, num_shards: int, drop_last: bool, labels: str = "soft",
                 spec: dict[str, tuple[int, ...]] | None = None) -> None:
        self.samples = samples
        self.labels = labels
        self.spec = spec  # sample_spec of index.json: every sample's shape and dtype is checked against it
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last = drop_last
        self.labels = labels
        self._files: dict[str, Any] = {}
        self._order: tuple[int, np.ndarray] | None = None
        self._owner = os.getpid()  # the reader processes die with this one (guard_reader)
        self._pdeathsig = threading.current_thread() is threading.main_thread()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_order")} | {"_files": {},
                                                                                           "_order": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if os.getppid() == self._owner:  # unpickled in a reader the loader's process spawned
            guard_reader(self._owner, self._pdeathsig)

    def rank_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = epoch_order(len(self.samples), self.seed, epoch, self.shuffle)[self.shard_id :: self.num_shards]
            if self.drop_last:  # every rank runs the same number of steps (DDP would hang otherwise)
                order = order[: len(self.samples) // self.num_shards]
            self._order = (epoch, order)
        return self._order[1]

    def rank_samples(self) -> int:
        """Samples in this rank's slice of an epoch (before batching)."""
        if self.drop_last:
            return len(self.samples) // self.num_shards
        return len(range(self.shard_id, len(self.samples), self.num_shards))

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.rank_samples() // self.batch_size
        return -(-self.rank_samples() // self.batch_size)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Sample i: (frames uint8 T x H x W x 3, label float32 [C], json); no unpickling.

        The label is the soft vote histogram, or with labels="onehot" the one-hot of the clip's
        label (of the histogram's argmax when the clip has none), before any mixing."""
        key, fmt, path, where = self.samples[i]
        name = f"{path} sample {key}" if fmt == "webdataset" else f"{path} row {where}"
        frames, soft, meta = read_sample(self._files, fmt, path, where, name, self.spec)
        if self.labels == "onehot":
            label = int(meta.get("label", -1))
            hot = np.zeros_like(soft)
            hot[label if 0 <= label < len(soft) else int(np.argmax(soft))] = 1.0
            soft = hot
        return frames, soft, meta

    def __call__(self, info: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample `info.idx_in_batch` of batch `info.iteration` of epoch `info.epoch_idx`:
        (frames, label, [sample position, hard label, 1 if padding else 0])."""
        if _guarded != os.getpid():  # the first call in a reader process
            guard_reader(self._owner, self._pdeathsig)
        if info.iteration >= self.batches_per_epoch():
            raise StopIteration
        order = self.rank_order(info.epoch_idx)
        lo = info.iteration * self.batch_size
        pos = lo + info.idx_in_batch
        pad = pos >= len(order)
        if pad:  # partial last batch: repeat its own samples
            pos = lo + (pos - lo) % (len(order) - lo)
        i = int(order[pos])
        x, y, meta = self.read(i)
        # position in list_samples (for audits and tests), the hard label (-1 = none), the padding flag
        return x, y, np.array([i, meta.get("label", -1), int(pad)], dtype=np.int64)


def _one_line(e: BaseException, shards: str) -> BaseException:
    """A damaged sample met in a DALI reader process comes back as a long DALI traceback holding the
    reader's ShardError: that one line (it names the shard and sample), with the fix. Anything
    else is returned as it is."""
    text = str(e)
    marker = "ShardError: "
    if marker not in text:
        return e
    line = text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
    line = line.replace("; run `midas-prep verify`", "")
    return ShardError(f"{line}; stop and run `midas-prep verify {shards} --repair` (it rebuilds that shard)")


def midas_graph(frames: Any, soft: Any, cfg: StreamConfig, device: str, training: bool,
                frame_size: int) -> tuple[Any, ...]:
    """The training graph over a batch of uint8 FHWC clips and float32 soft labels.

    Returns (frames float N x C x T x H x W normalised, soft, lam, perm); lam and perm are
    None in evaluation, which neither mixes nor augments, and on the device with device="gpu".
    Crop and brightness/contrast are drawn per source clip and stay in uint8 (a quarter of the
    memory traffic of float), as timm applies Mixup to an already augmented batch; the mirror flip is drawn per mixed
    sample inside crop_mirror_normalize, which also normalises and transposes in one pass.
    """
    from nvidia.dali import fn, types

    if device == "gpu":
        frames, soft = frames.gpu(), soft.gpu()
    x = frames
    if training and cfg.augment:
        j = cfg.jitter
        interp = types.INTERP_NN if cfg.crop_interp == "nn" else types.INTERP_LINEAR
        x = fn.random_resized_crop(x, size=[frame_size, frame_size], random_area=list(cfg.crop_area),
                                   random_aspect_ratio=[3 / 4, 4 / 3], interp_type=interp)  # one crop, all T frames
        x = fn.brightness_contrast(x, brightness=fn.random.uniform(range=[1 - j, 1 + j]),
                                   contrast=fn.random.uniform(range=[1 - j, 1 + j]))
    lam = perm = None
    if training and cfg.mix:
        # MIDAS: x~ = lam x_i + (1 - lam) x_perm(i), y~ likewise; one lam per pair, all frames.
        perm = fn.batch_permutation(no_fixed_points=True)  # CPU-only operator
        lam = fn.random.beta(alpha=cfg.alpha, beta=cfg.alpha)  # CPU-only operator
        if cfg.mix_prob < 1.0:
            keep = fn.cast(fn.random.coin_flip(probability=1.0 - cfg.mix_prob), dtype=types.FLOAT)
            lam = keep + (1.0 - keep) * lam  # unmixed samples get lam = 1
        lam_d = lam.gpu() if device == "gpu" else lam
        x = lam_d * x + (1.0 - lam_d) * fn.permute_batch(x, indices=perm)  # uint8 in, float32 out
        soft = lam_d * soft + (1.0 - lam_d) * fn.permute_batch(soft, indices=perm)
        if device == "gpu":  # debug outputs on the device: DALI pins lam (it feeds .gpu()), which DLPack refuses
            lam, perm = lam_d, perm.gpu()
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    mirror = fn.random.coin_flip() if training and cfg.augment else 0
    x = fn.crop_mirror_normalize(x, mirror=mirror, mean=mean, std=std, output_layout="CFHW", dtype=types.FLOAT)
    return x, soft, lam, perm


class MidasLoader:
    """Iterate batches of one rank: {"frames": N x C x T x H x W float, "soft": N x C,
    "sample": N x 2 int64 (position in list_samples, hard label or -1)} as torch tensors.

    One `for` loop = one epoch; a loop left early continues where it stopped. `state_dict()`
    and `MidasLoader.from_state_dict(state)` resume inside an epoch. The reader processes are
    spawned, not forked, so loaders can be made after CUDA is initialised (a model already on
    the GPU, a GPU pipeline already built), several in one process; a script that makes one
    needs the usual `if __name__ == "__main__":` guard."""

    def __init__(self, cfg: StreamConfig, checkpoint: str | None = None, _debug_outputs: bool = False) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.training = cfg.split == "train"
        drop = (cfg.last_batch or ("drop" if self.training else "partial")) == "drop"
        self.samples = list_samples(cfg)
        index = open_index(local_dir(cfg.shards))
        self.frame_size = int(index["sample"]["frame_size"])
        self.num_threads, self.py_workers, self.prefetch = auto_workers(cfg, self.device)
        self._it: Any = None
        self.source = ShardSource(self.samples, cfg.batch_size, cfg.seed, self.training, cfg.shard_id,
                                  cfg.num_shards, drop, cfg.labels, spec=sample_spec(index))
        self._debug = _debug_outputs
        self.pipe: Any = None
        if len(self):  # an empty epoch is an error when iterated (a loader made only to list samples is fine)
            self._build(checkpoint)

    def _build(self, checkpoint: str | None) -> None:
        from nvidia.dali import fn, pipeline_def

        cfg, device, training, debug = self.cfg, self.device, self.training, self._debug
        index = open_index(local_dir(cfg.shards))["sample"]
        clip_bytes = int(index.get("num_frames", 16)) * self.frame_size**2 * 3

        @pipeline_def(batch_size=cfg.batch_size, num_threads=self.num_threads,
                      device_id=cfg.device_id if device == "gpu" else None, seed=cfg.seed + 7919 * cfg.shard_id,
                      py_num_workers=self.py_workers, py_start_method=_start_method(device),
                      prefetch_queue_depth=self.prefetch, enable_checkpointing=True)
        def pipe():  # noqa: ANN202 - DALI graph
            frames, soft, idx = fn.external_source(source=self.source, num_outputs=3, batch=False, parallel=True,
                                                   prefetch_queue_depth=self.prefetch, layout=["FHWC", "", ""],
                                                   bytes_per_sample_hint=clip_bytes + 4096)
            x, y, lam, perm = midas_graph(frames, soft, cfg, device, training, self.frame_size)
            if not debug:
                return x, y, idx
            return x, y, idx, lam if lam is not None else idx, perm if perm is not None else idx

        self.pipe = pipe(checkpoint=checkpoint) if checkpoint else pipe()
        # build() forks the reader processes. A forked reader inherits every object of this process, and
        # a cycle collection there would run the __del__ of an old, unreferenced DALI pipeline, which
        # waits forever for threads the child does not have: collect first, then freeze what is left so
        # a reader's collector never looks at the parent's objects.
        gc.collect()
        gc.freeze()
        global _forking
        self.source._pdeathsig = threading.current_thread() is threading.main_thread()  # the forking thread
        _forking = (self.source._owner, self.source._pdeathsig)  # forked readers guard themselves at once
        try:
            self.pipe.build()
        finally:
            _forking = None
            gc.unfreeze()
        self.output_map = ["frames", "soft", "sample"] + (["lam", "perm"] if debug else [])

    def __len__(self) -> int:
        return self.source.batches_per_epoch()

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.check_not_empty()
        if self._it is None:
            self._it = DALIGenericIterator([self.pipe], self.output_map, last_batch_policy=LastBatchPolicy.PARTIAL,
                                           auto_reset=False, prepare_first_batch=False)
        try:
            for batch in self._it:
                yield self._unpad(batch[0])  # one pipeline per rank
        except Exception as e:  # noqa: BLE001 - DALI re-raises a reader's error as a bare Exception
            one = _one_line(e, self.cfg.shards)
            if one is e:
                raise
            raise one from None
        self._it.reset()  # only after a whole epoch: a loop left early resumes where it stopped

    def check_not_empty(self) -> None:
        """ConfigError naming the split size when an epoch holds no batch (iterating calls it: an empty
        epoch would make `while steps < n: for batch in loader` loop forever); call it to fail early."""
        if len(self):
            return
        cfg = self.cfg
        rank = (f" ({self.source.rank_samples()} on rank {cfg.shard_id} of {cfg.num_shards})"
                if cfg.num_shards > 1 else "")
        fits = self.source.rank_samples()  # the largest batch this rank's share fills
        fix = (f": use a batch size of {fits} or less (bench-loader and midas-train: --batch-size {fits}; "
               f"StreamConfig: batch_size={fits}, or last_batch=\"partial\" to keep a partial batch)" if fits else
               ": this rank has no sample; use fewer ranks or more data")
        raise ConfigError(
            f"{cfg.shards}: the fold {cfg.fold} {cfg.split} split has {len(self.samples)} samples{rank}, fewer than "
            f"one batch of {cfg.batch_size}{fix}")

    def _unpad(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Cut the padding of a partial last batch off; "sample" keeps (position, hard label)."""
        idx = batch["sample"]
        if int(idx[-1, 2]) == 0:  # padding only ever sits at the end of the last batch
            batch["sample"] = idx[:, :2]
            return batch
        n = int((idx[:, 2] == 0).sum())
        out = {k: v[:n] for k, v in batch.items()}
        out["sample"] = idx[:n, :2]
        if "perm" in out and self.training and self.cfg.mix:  # a partner in the padding is a copy of row j % n
            out["perm"] = out["perm"] % n
        return out
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the DALI checkpoint (source position, RNG states) and the config."""
        self.check_not_empty()
        ckpt = self._it.checkpoints()[0] if self._it is not None else self.pipe.checkpoint()
        return {"checkpoint": ckpt, "config": dict(self.cfg.__dict__)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], _debug_outputs: bool = False) -> MidasLoader:
        """A loader that continues exactly where the one that saved `state` stood."""
        cfg = StreamConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
        return cls(cfg, checkpoint=state["checkpoint"], _debug_outputs=_debug_outputs)


def bench_loader(cfg: StreamConfig, batches: int) -> dict[str, float]:
    """Time `batches` batches (after one warm-up batch): clips/s and MB/s of clip bytes delivered."""
    loader = MidasLoader(cfg)
    n = clips = 0
    nbytes = 0
    t0 = None
    while n < batches + 1:
        for batch in loader:
            if t0 is None:
                t0 = time.perf_counter()  # the first batch pays pipeline start-up
            else:
                clips += batch["frames"].shape[0]
                nbytes += batch["frames"][0].numel() * batch["frames"].shape[0]  # uint8 bytes per clip
            n += 1
            if n >= batches + 1:
                break
    if loader.device == "gpu":
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - (t0 or time.perf_counter())
    return {"batches": batches, "batch_size": cfg.batch_size, "clips": clips, "seconds": dt,
            "clips_per_s": clips / dt if dt else 0.0, "mb_per_s": nbytes / 1e6 / dt if dt else 0.0,
            "device": loader.device, "py_workers": loader.py_workers, "num_threads": loader.num_threads,
            "prefetch": loader.prefetch}


def create_loader(shards: str = "shards", fold: int = 1, split: str = "train", batch_size: int = 32,
                  mix: bool = True, alpha: float = 0.8, offline_mixed: bool = False, device: str = "auto",
                  shard_id: int = 0, num_shards: int = 1, **kwargs: Any) -> MidasLoader:
    """The loader of one rank: `for batch in loader: batch["frames"], batch["soft"]`."""
    cfg = StreamConfig(shards=shards, fold=fold, split=split, batch_size=batch_size, mix=mix, alpha=alpha,
                       offline_mixed=offline_mixed, device=device, shard_id=shard_id, num_shards=num_shards,
                       **kwargs)
    return MidasLoader(cfg)
