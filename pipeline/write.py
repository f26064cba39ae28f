"""Write stage: samples -> shard files, index.json, clips and rejects tables, cleanup.

The names and layout come from pipeline.format. Every file is written under a temporary
name and renamed when complete, and its bytes depend only on the plan and the samples: tar
members are sorted with a fixed mtime/owner, JSON is dumped with sorted keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.faults import fault_point
from pipeline.format import (
    CLIPS_NAME,
    FORMAT_DIRS,
    FORMAT_VERSION,
    FRAMES_COMPRESSIONS,
    INDEX_NAME,
    PLAN_NAME,
    REJECTS_NAME,
    SHARD_DIRS,
    STATE_DIR,
    TMP_SUFFIX,
    ShardError,
    entry_files,
    entry_paths,
    idx_path,
    is_inside,
    is_removable,
    is_shard_name,
    json_or_none,
    npy_bytes,
    shard_files,
    shard_name,
    shard_path,
)

__all__ = [
    "plan_shards",
    "encode_sample",
    "write_tar",
    "write_parquet",
    "write_shard_files",
    "entries_present",
    "load_done",
    "WriteFailed",
    "atomic_write",
    "write_index",
    "write_clips_table",
    "write_rejects_table",
    "owned_files",
    "owned_bytes",
    "proven_plan",
    "left_files",
    "say_left",
    "foreign_at_our_names",
    "write_fix",
    "remove_temporaries",
    "remove_outputs",
    "estimate_bytes",
    "free_bytes",
    "check_room",
    "human_bytes",
]

logger = logging.getLogger(__name__)

_TAR_MTIME = 0  # fixed, so the same samples give the same tar bytes


def plan_shards(clips: Iterable[dict[str, Any]], shard_size_mb: float, nbytes: int) -> list[dict[str, Any]]:
    """Group clips by part (ascending), clip_id order inside a part, `samples_per_shard` each.

    The plan depends only on the clips table and the config, never on worker timing:
    a rejected clip leaves its shard one sample short, it does not move the boundary.
    """
    per_shard = max(1, int(shard_size_mb * 1e6) // nbytes)
    by_part: dict[int, list[str]] = {}
    for c in clips:
        by_part.setdefault(int(c["part"]), []).append(c["clip_id"])
    plan = []
    for part in sorted(by_part):
        ids = sorted(by_part[part])
        for k, start in enumerate(range(0, len(ids), per_shard)):
            plan.append({"name": shard_name(part, k), "part": part, "clip_ids": ids[start : start + per_shard]})
    return plan


def encode_sample(key: str, frames: np.ndarray, soft: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """One sample as tar members plus the fields Parquet stores as columns."""
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, (
        f"frames of {key} must be uint8 T x H x W x 3, got {frames.dtype} {frames.shape}"
    )
    soft = np.asarray(soft, dtype=np.float32)
    assert abs(float(soft.sum()) - 1.0) < 1e-4, f"soft label of {key} sums to {soft.sum()}"
    frames_npy, soft_npy = npy_bytes(frames), npy_bytes(soft)
    # Per-sample checksums, so a reader that sees one sample (the loader) still catches a flipped byte.
    meta = meta | {"crc32": {"frames.npy": zlib.crc32(frames_npy), "soft.npy": zlib.crc32(soft_npy)}}
    return {
        "__key__": key,
        "frames.npy": frames_npy,
        "soft.npy": soft_npy,
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
        "meta": meta,
        "soft": soft,
        "shape": tuple(frames.shape),
    }


def write_tar(fileobj: Any, samples: list[dict[str, Any]]) -> bytes:
    """Write the tar of encoded samples to `fileobj`; returns its DALI index (what `wds2idx` writes, v1.2)."""
    lines = []
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.copybufsize = 1 << 22  # one write per member instead of 16 KiB pieces
        for s in samples:
            parts = []
            for ext in ("frames.npy", "json", "soft.npy"):  # sorted member order
                data = s[ext]
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                info.mtime = _TAR_MTIME
                info.mode = 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                offset_data = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(data))
                parts.append(f"{ext} {offset_data} {info.size} {info.name}")
            lines.append(" ".join(parts))
    return (f"v1.2 {len(samples)}\n" + "".join(line + "\n" for line in lines)).encode()


def _sample_schema(shape: tuple[int, ...], classes: tuple[str, ...], frames_compression: str) -> Any:
    """Columns of a Parquet shard, with key-value metadata saying what `frames` holds.

    `part` is not a column: it is the hive folder (parquet/part=P/), and pyarrow refuses a
    dataset whose files and folders both define it. `frames` is large_binary (64-bit offsets),
    so a shard over 2 GiB writes and reads."""
    import pyarrow as pa

    frames = {"encoding": "npy", "dtype": "uint8", "shape": list(shape), "layout": "THWC", "color": "RGB",
              "compression": frames_compression, "decode": "numpy.load(io.BytesIO(cell), allow_pickle=False)"}
    meta = {"midas.format_version": str(FORMAT_VERSION), "midas.frames": json.dumps(frames, sort_keys=True),
            "midas.soft": json.dumps({"dtype": "float32", "classes": list(classes), "sums_to": 1}, sort_keys=True),
            "midas.classes": json.dumps(list(classes))}
    return pa.schema([
        ("key", pa.string()),
        ("clip_id", pa.string()),
        ("label", pa.int16()),
        ("votes", pa.list_(pa.int32())),
        ("soft", pa.list_(pa.float32())),
        ("frames", pa.large_binary()),  # the same .npy bytes as the tar member
        ("json", pa.string()),  # the whole sample json (part; mixed samples: sources and lam)
    ], metadata=meta)


# Compression by real column path: a list column's values live in `<name>.list.element`, and
# pyarrow ignores a setting under the bare name.
_SMALL_COLUMNS = ("key", "clip_id", "label", "votes.list.element", "soft.list.element", "json")


def write_parquet(fileobj: Any, samples: list[dict[str, Any]], classes: tuple[str, ...] = (),
                  frames_compression: str = "zstd") -> None:
    """One Parquet file, one row group per sample: the loader reads a sample by its row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert frames_compression in FRAMES_COMPRESSIONS, f"frames compression {frames_compression!r}"
    schema = _sample_schema(samples[0]["shape"], tuple(classes), frames_compression)
    meta = [s["meta"] for s in samples]
    columns = {
        "key": [s["__key__"] for s in samples],
        "clip_id": [m.get("clip_id") for m in meta],
        "label": [m.get("label", -1) for m in meta],
        "votes": [m.get("votes") for m in meta],
        "soft": [s["soft"].tolist() for s in samples],
        "json": [s["json"].decode() for s in samples],
    }
    frames = [s["frames.npy"] for s in samples]
    # One buffer for the big column (one memcpy) instead of converting 600 KB bytes objects one by one.
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in frames], out=offsets[1:])
    frames_arr = pa.Array.from_buffers(pa.large_binary(), len(frames),
                                       [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(frames))])
    arrays = {f.name: frames_arr if f.name == "frames" else pa.array(columns[f.name], type=f.type) for f in schema}
    table = pa.table(arrays, schema=schema)
    pq.write_table(
        table, fileobj, row_group_size=1, use_dictionary=False,
        compression={"frames": frames_compression.upper(), **{c: "ZSTD" for c in _SMALL_COLUMNS}},
        write_statistics=["key", "clip_id", "label"],
    )


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through (one pass, no copy)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        fault_point("write.data")  # a disk that fills up in the middle of a file
        self.sha.update(data)
        self.nbytes += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self.f.flush()

    @property
    def closed(self) -> bool:
        return self.f.closed


def _open_tmp(tmp: Path) -> Any:
    """A fresh `<name>.tmp` for writing. A leftover of a killed run is replaced, and a symlink
    planted under that name is removed, never written through ("x" does not follow one)."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    return open(tmp, "xb")


class WriteFailed(OSError):
    """A write that failed (a full disk), its message naming the file and the room left there."""


def _write_failed(e: OSError, path: Path) -> OSError:
    """A failed write as one line naming the file and the room left where it goes (a full disk)."""
    if isinstance(e, WriteFailed):  # already named (the .idx of a tar)
        return e
    try:
        room = f"{human_bytes(free_bytes(path.parent))} free there"
    except OSError:
        room = "free space unknown"
    return WriteFailed(e.errno, f"{e.strerror or e} writing {path} ({room})")


def _write_atomic(path: Path, fill: Callable[[Any], Any], point: str = "") -> tuple[Any, int, str]:
    """Call fill(file) on `<path>.tmp`, fsync, rename to `path`: nothing partial ever has a
    final name, and a failed write (a full disk) removes its temporary and names `path`.
    Returns (fill's result, bytes, sha256)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with _open_tmp(tmp) as f:
            w = _HashingWriter(f)
            result = fill(w)
            f.flush()
            os.fsync(f.fileno())
        if point:
            fault_point(point)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_failed(e, path) from None
    return result, w.nbytes, w.sha.hexdigest()


def atomic_write(path: Path, data: bytes, point: str = "") -> None:
    """Write `data` to `path` atomically (temp name, fsync, rename)."""
    _write_atomic(path, lambda f: f.write(data), point)


def write_shard_files(
    out: Path, shard: str, part: int, samples: list[dict[str, Any]], formats: tuple[str, ...],
    classes: tuple[str, ...] = (), frames_compression: str = "zstd",
) -> list[dict[str, Any]]:
    """Write one planned shard in every format; returns its index.json entries.

    An empty shard (every clip rejected) writes no file and returns no entry. `classes`
    and `frames_compression` go into the Parquet files (metadata and the frames codec).
    """
    entries: list[dict[str, Any]] = []
    if not samples:
        return entries
    for fmt in formats:
        rel = shard_path(fmt, shard)
        entry: dict[str, Any] = {"path": rel, "format": fmt, "part": part, "shard": shard, "samples": len(samples)}
        if fmt == "webdataset":
            # The tar is written under a temp name, then its .idx, then the tar is renamed:
            # a visible .tar always has its .idx.
            tar_tmp = out / (rel + TMP_SUFFIX)
            try:
                with _open_tmp(tar_tmp) as f:
                    w = _HashingWriter(f)
                    idx = write_tar(w, samples)
                    f.flush()
                    os.fsync(f.fileno())
                idx_rel = idx_path(shard)
                _, idx_bytes, idx_sha = _write_atomic(out / idx_rel, lambda f, idx=idx: f.write(idx))
                fault_point("write.shard_tmp")
                os.replace(tar_tmp, out / rel)
            except OSError as e:
                tar_tmp.unlink(missing_ok=True)
                raise _write_failed(e, out / rel) from None
            entry |= {"bytes": w.nbytes, "sha256": w.sha.hexdigest(),
                      "idx": {"path": idx_rel, "bytes": idx_bytes, "sha256": idx_sha}}
        else:
            _, nbytes, sha = _write_atomic(
                out / rel, lambda f: write_parquet(f, samples, classes, frames_compression), "write.shard_tmp")
            entry |= {"bytes": nbytes, "sha256": sha}
        entries.append(entry)
    return entries


def entries_present(out: Path, entries: list[dict[str, Any]], sizes: dict[str, int] | None = None) -> bool:
    """Every listed file is there with its recorded size: on the local disk, or in `sizes`
    (the listing of a remote output)."""
    if sizes is not None:
        return all(sizes.get(p) == n for p, n in entry_files(entries))
    return all((out / p).is_file() and (out / p).stat().st_size == n for p, n in entry_files(entries))


def load_done(out: Path, shard: str, sizes: dict[str, int] | None = None,
              level: int = logging.WARNING) -> dict[str, Any] | None:
    """The done-file of planned shard `shard` when it is whole and every file it lists is there
    (inside `out`, with the recorded size; on the local disk or in `sizes`); else None, and the
    shard is written again. A done-file that is garbled or lists a path outside `out` is
    never followed: a warning names it and why (logged at `level`: a repair expects damaged shards)."""
    rel = f"{STATE_DIR}/{shard}.json"
    path = out / rel
    if not path.is_file() and not path.is_symlink():
        return None
    state = json_or_none(path) if is_inside(out, rel) else None
    try:
        if not is_inside(out, rel):
            raise ShardError(f"{path}: a symlink out of {out}, not followed")
        if not isinstance(state, dict) or not isinstance(state.get("entries"), list):
            raise ShardError(f"{path}: not a done-file")
        for e in state["entries"]:
            entry_paths(out, e, path, "the shard is written again")
        present = entries_present(out, state["entries"], sizes)
    except (ShardError, KeyError, TypeError) as e:  # garbled: the shard is built again
        logger.log(level, "%s; rebuilding shard %s", e if isinstance(e, ShardError) else f"{path}: garbled ({e})",
                   shard)
        return None
    if not present:
        logger.log(level, "shard %s is incomplete on disk; rebuilding it", shard)
        return None
    return state


def write_index(out: Path, doc: dict[str, Any]) -> None:
    doc = dict(doc)
    doc["shards"] = sorted(doc["shards"], key=lambda e: (e["format"], e["part"], e["path"]))
    atomic_write(Path(out) / INDEX_NAME, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode(),
                 "write.index_tmp")


def _table_bytes(rows: list[dict[str, Any]], schema: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def write_clips_table(out: Path, rows: list[dict[str, Any]]) -> None:
    """clips.parquet: one row per indexed clip, sorted by clip_id."""
    import pyarrow as pa

    schema = pa.schema([
        ("clip_id", pa.string()),
        ("source", pa.string()),
        ("source_kind", pa.string()),
        ("votes", pa.list_(pa.int32())),
        ("soft", pa.list_(pa.float32())),
        ("label", pa.int16()),  # 0-based class index, -1 = not single-labelled
        ("part", pa.int8()),  # DFEW test fold 1..5 the clip belongs to, 0 = none
        ("status", pa.string()),  # written | rejected
        ("shard", pa.string()),  # planned shard name
        ("face_tried", pa.int16()),  # frames run through the detector
        ("face_frames", pa.int16()),  # of those, frames with a face
        ("face_score", pa.float32()),  # mean detection score over face_frames (NaN: no detector)
        # what the clip was built from (records.source_fingerprint): verify and a re-run detect a change
        ("annotation_sha256", pa.string()),  # the index row (votes, label, part, source)
        ("source_bytes", pa.int64()),  # the video's size, or a frame folder's files' total
        ("source_mtime_ns", pa.int64()),
        ("source_sha256", pa.string()),  # first and last MiB (a frame folder: every file's)
    ])
    keys = [f.name for f in schema]
    rows = sorted(rows, key=lambda r: r["clip_id"])
    atomic_write(Path(out) / CLIPS_NAME, _table_bytes([{k: r.get(k) for k in keys} for r in rows], schema))


def write_rejects_table(out: Path, rows: list[dict[str, Any]]) -> None:
    """rejects.parquet: clip_id, source, stage (index|decode|align|write), error."""
    import pyarrow as pa

    schema = pa.schema([("clip_id", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                        ("error", pa.string())])
    rows = sorted(rows, key=lambda r: (r["clip_id"], r["stage"], r["error"]))
    atomic_write(Path(out) / REJECTS_NAME, _table_bytes(
        [{k: r.get(k) for k in ("clip_id", "source", "stage", "error")} for r in rows], schema))


def _json_inside(out: Path, rel: str) -> Any:
    """json_or_none of `out / rel`, or None when that path leads out of `out` (a planted symlink)."""
    return json_or_none(out / rel) if is_inside(out, rel) else None


_OUR_NAMES = (INDEX_NAME, CLIPS_NAME, REJECTS_NAME, PLAN_NAME)  # the fixed names build-shards/mix-offline write


def proven_plan(out: Path) -> dict[str, Any] | None:
    """`out`/_state/plan.json when it is a plan midas-prep wrote (a regular file inside `out`, a
    config, a shard list, a format version this midas-prep knows), else None: then nothing under
    `out` is provably ours, and no command deletes or replaces anything there."""
    out = Path(out)
    if (out / PLAN_NAME).is_symlink() or not is_inside(out, PLAN_NAME):
        return None
    plan = json_or_none(out / PLAN_NAME)
    if not isinstance(plan, dict) or not isinstance(plan.get("config"), dict) or not isinstance(
            plan.get("shards"), list):
        return None
    version = plan.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        return None
    return plan


def _recorded(out: Path, shard: str, rel: Any, nbytes: Any, sizes: dict[str, int] | None) -> bool:
    """A file a done-file of planned shard `shard` records: in a shard folder, named after the
    shard, and holding the recorded size (what the writer wrote, not a user's file put there)."""
    if not isinstance(rel, str) or not isinstance(nbytes, int) or not is_removable(out, rel):
        return False
    if Path(rel).parts[0] not in SHARD_DIRS or not (shard in rel or shard_path("parquet", shard) == rel):
        return False
    if sizes is not None:
        return sizes.get(rel) == nbytes
    p = out / rel
    return p.is_file() and not p.is_symlink() and p.stat().st_size == nbytes


def owned_files(out: Path, sizes: dict[str, int] | None = None) -> set[str]:
    """Relative paths under `out` that build-shards or mix-offline can prove it wrote there.

    The proof is its own records in _state/: a plan midas-prep wrote (proven_plan); without one,
    nothing under `out` is ours. With one: the fixed names (index.json, clips.parquet,
    rejects.parquet, the plan), the done-file and the layout's file names of every planned shard
    (a killed run may have renamed one into place before its done-file), and the files a done-file
    records with their size (`sizes`: the listing of a remote output). index.json's entries prove
    nothing: it is a file anyone can write, and a path it lists is never deleted for being listed.

    Only paths that stay inside `out` are returned (is_removable): a symlink planted at one of our
    names is returned (deleting it removes the link only), a name that is not a shard name is no name."""
    out = Path(out)
    plan = proven_plan(out)
    if plan is None:
        return set()
    files = set(_OUR_NAMES)
    shards = {s.get("name") for s in plan["shards"] if isinstance(s, dict) and is_shard_name(s.get("name"))}
    for name in sorted(shards):
        done = f"{STATE_DIR}/{name}.json"
        files.add(done)
        files.update(f for fmt in FORMAT_DIRS for f in shard_files(name, fmt))
        state = _json_inside(out, done)
        if isinstance(state, dict) and isinstance(state.get("entries"), list):
            for e in state["entries"]:
                if not isinstance(e, dict):
                    continue
                idx = e.get("idx") if isinstance(e.get("idx"), dict) else {}
                for rel, nbytes in ((e.get("path"), e.get("bytes")), (idx.get("path"), idx.get("bytes"))):
                    if _recorded(out, name, rel, nbytes, sizes):
                        files.add(rel)
    return {f for f in files if is_removable(out, f)}


def left_files(out: Path, skip: Iterable[str] = ()) -> list[str]:
    """Files under `out` (relative, sorted) a cleanup left because it cannot prove it wrote them;
    `skip`: folders handled on their own (a mixed fold), and the lock file."""
    from pipeline.lock import LOCK_NAME

    out = Path(out)
    skip = tuple(skip)
    left = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel_dir = Path(dirpath).relative_to(out)
        dirnames[:] = sorted(d for d in dirnames if (rel_dir / d).as_posix() not in skip)
        left += [(rel_dir / f).as_posix() for f in filenames if (rel_dir / f).as_posix() != LOCK_NAME]
    return sorted(left)


def say_left(what: str, left: list[str], n: int = 5) -> str:
    """'<what> left 2 files it did not write: a, b' (the first few named), "" when none."""
    if not left:
        return ""
    more = f" and {len(left) - n} more" if len(left) > n else ""
    return (f"{what} left {len(left)} file{'s' if len(left) > 1 else ''} it cannot prove it wrote, untouched: "
            + ", ".join(left[:n]) + more)


def write_fix(e: OSError) -> str:
    """What to do about a failed write: a read-only folder or file system (EROFS, EACCES, EPERM) is
    not a full disk, and "free space" would send a user the wrong way."""
    import errno

    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the output is read-only ({e.strerror}): make it writable or choose another --out, then re-run"
    return "free space and re-run, it resumes"


def foreign_at_our_names(out: Path, shard_names: Iterable[str]) -> list[str]:
    """Files at names a build or mix would write (fixed names, the planned shards' files and
    done-files) that `out` does not prove are ours: writing there would replace a user's file."""
    out = Path(out)
    if proven_plan(out) is not None:
        return []
    names = list(_OUR_NAMES)
    for name in shard_names:
        names += [f"{STATE_DIR}/{name}.json", *(f for fmt in FORMAT_DIRS for f in shard_files(name, fmt))]
    return [n for n in names if (out / n).exists() or (out / n).is_symlink()]


def owned_bytes(out: Path) -> int:
    """Bytes of the files owned_files names under `out`: what an --overwrite deletes before it writes."""
    return sum(p.stat().st_size for p in (Path(out) / f for f in owned_files(out)) if p.is_file())


def remove_temporaries(out: Path) -> int:
    """Delete the `<name>.tmp` files a killed run left beside the files it writes; returns how many.

    Only temporaries of our own file names in a folder our plan proves are touched (owned_files):
    a user's `thesis.tmp` next to the shards stays, and so does anything a symlink leads to."""
    n = 0
    for rel in sorted(owned_files(out)):
        tmp = Path(out) / (rel + TMP_SUFFIX)
        if (tmp.is_file() or tmp.is_symlink()) and is_removable(out, rel + TMP_SUFFIX):
            tmp.unlink()
            n += 1
    return n


def remove_outputs(out: Path) -> int:
    """--overwrite: delete what build-shards / mix-offline can prove it wrote under `out` (owned_files
    and their temporaries), then the folders that this left empty; returns the files deleted.

    Files of others in the same folders stay, and so do their folders."""
    out = Path(out)
    n = remove_temporaries(out)
    dirs: set[Path] = set()
    for rel in sorted(owned_files(out)):
        path = out / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
            n += 1
        dirs.update(p for p in path.parents if p != out and out in p.parents)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    return n


# --- room on the disk -----------------------------------------------------------------------------------------

SPACE_MARGIN = 0.05  # the estimate is an upper bound already; this covers what else writes to the disk
_SHARD_OVERHEAD = 32 * 1024  # per shard file: a tar's end blocks and record padding, a Parquet footer
_META_PER_SAMPLE = 2048  # per sample: its .idx line, Parquet row-group metadata, its row in the tables
_META_PER_SHARD = 8192  # per shard: its done-file and index.json entries


def estimate_bytes(samples: int, shards: int, nbytes: int, formats: tuple[str, ...] | list[str]) -> int:
    """Upper estimate of the bytes `shards` shards holding `samples` samples of `nbytes` each
    (format.sample_nbytes: T x S x S x 3 + headers) take in every format of `formats`.

    Parquet frames are counted as the tar holds them, uncompressed: zstd gains a little on
    face crops, and an estimate must not come out short."""
    per_format = samples * nbytes + shards * _SHARD_OVERHEAD
    return per_format * len(formats) + samples * _META_PER_SAMPLE + shards * _META_PER_SHARD


def free_bytes(path: Path) -> int:
    """Bytes free to this user on the filesystem of `path` (its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_room(out: Path, need: int) -> tuple[int, str]:
    """(bytes free at `out`, "" when `need` bytes and the margin fit there, else a sentence saying
    how much is needed and how much is free; the caller adds what to do)."""
    free = free_bytes(out)
    if need * (1 + SPACE_MARGIN) <= free:
        return free, ""
    return free, (f"{out} needs about {human_bytes(need)} (+{SPACE_MARGIN:.0%} margin) and its disk has "
                  f"{human_bytes(free)} free")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as `df -H` prints them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
