"""The on-disk contract, in one place: names, format version, path helpers, index.json parsing.

    <out>/index.json                          format version, full config, one entry per shard file
    <out>/clips.parquet                       one row per indexed clip (status, face stats)
    <out>/rejects.parquet                     one row per clip that could not be processed
    <out>/webdataset/part{P}-{NNNNNN}.tar     tars alone in their folder (any webdataset reader takes it)
    <out>/webdataset-idx/part{P}-{NNNNNN}.idx DALI's index of each tar (listed in index.json)
    <out>/parquet/part={P}/{NNNNNN}.parquet   hive-style: pyarrow, DuckDB, Ray see a `part` column
    <out>/mixed/fold={K}/                     mix-offline output: index.json, webdataset/copy{C}-{NNNNNN}.tar,
                                              webdataset-idx/copy{C}-{NNNNNN}.idx, parquet/copy={C}/{NNNNNN}.parquet
    <out>/_state/                             plan.json and one done-file per finished shard (resume)

A sample is `<key>.frames.npy` (uint8 T x H x W x 3 RGB), `<key>.soft.npy` (float32 [C],
sums to 1) and `<key>.json`. The write stage (pipeline.write) and every reader
(pipeline.read, the loader, verify, inspect) stand on this module; neither imports the other.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "CLIPS_NAME",
    "REJECTS_NAME",
    "STATE_DIR",
    "PLAN_NAME",
    "FORMAT_DIRS",
    "IDX_DIR",
    "MIXED_DIR",
    "SHARD_DIRS",
    "FRAMES_COMPRESSIONS",
    "MEMBERS",
    "TMP_SUFFIX",
    "ShardError",
    "shard_name",
    "is_shard_name",
    "shard_path",
    "idx_path",
    "shard_files",
    "fold_dirname",
    "mixed_dir",
    "mixed_rel",
    "mixed_indexes",
    "shard_dirs",
    "entry_files",
    "resolve_inside",
    "is_inside",
    "is_removable",
    "entry_paths",
    "sample_nbytes",
    "npy_bytes",
    "read_index",
    "json_or_none",
]

FORMAT_VERSION = 2  # 2: .idx in webdataset-idx/, hive-style parquet/part=P/ and mixed/fold=K/, large_binary frames
INDEX_NAME = "index.json"
CLIPS_NAME = "clips.parquet"
REJECTS_NAME = "rejects.parquet"
STATE_DIR = "_state"
PLAN_NAME = f"{STATE_DIR}/plan.json"
FORMAT_DIRS = {"webdataset": "webdataset", "parquet": "parquet"}
IDX_DIR = "webdataset-idx"  # beside webdataset/, so a glob over webdataset/* sees only tars
MIXED_DIR = "mixed"
SHARD_DIRS = (FORMAT_DIRS["webdataset"], IDX_DIR, FORMAT_DIRS["parquet"])  # every folder holding shard files
FRAMES_COMPRESSIONS = ("none", "zstd", "lz4", "snappy")  # Parquet codecs for the frames column
MEMBERS = ("frames.npy", "json", "soft.npy")  # the members of every sample, in tar order
TMP_SUFFIX = ".tmp"  # every file is written as NAME.tmp, then renamed
_SHARD = re.compile(r"(part|copy)(\d+)-(\d{6,})", re.ASCII)  # part{P}-{NNNNNN} (build), copy{C}-{NNNNNN} (mix)


class ShardError(RuntimeError):
    """Shards are missing, incomplete or do not match their index.json (fatal)."""


def shard_name(part: int, index: int) -> str:
    return f"part{part}-{index:06d}"


def is_shard_name(name: Any) -> bool:
    """`name` is a planned shard's name (part{P}-{NNNNNN} or copy{C}-{NNNNNN}): the only names
    cleanup and repair turn into file names when they read them from a plan or done-file."""
    return isinstance(name, str) and _SHARD.fullmatch(name) is not None


def shard_path(fmt: str, shard: str) -> str:
    """The file of planned shard `shard` in format `fmt`, relative to its output directory.

    webdataset/part1-000003.tar, parquet/part=1/000003.parquet (mixed: parquet/copy=0/000003.parquet):
    the Parquet folder names are hive partitions, so readers pointed at parquet/ get the column.
    A name that is not a shard name (a garbled plan or done-file) is a ShardError."""
    m = _SHARD.fullmatch(shard) if isinstance(shard, str) else None
    if m is None:
        raise ShardError(f"shard name {shard!r} is not part{{P}}-{{NNNNNN}} or copy{{C}}-{{NNNNNN}}")
    if fmt == "webdataset":
        return f"{FORMAT_DIRS[fmt]}/{shard}.tar"
    return f"{FORMAT_DIRS[fmt]}/{m[1]}={int(m[2])}/{m[3]}.parquet"


def idx_path(shard: str) -> str:
    """The DALI index of a tar shard, relative to its output directory (readers take it from index.json)."""
    return f"{IDX_DIR}/{shard}.idx"


def shard_files(shard: str, fmt: str) -> list[str]:
    """Relative paths of one planned shard's files in format `fmt`: the shard file (and a tar's .idx)."""
    files = [shard_path(fmt, shard)]
    if fmt == "webdataset":
        files.append(idx_path(shard))
    return files


def fold_dirname(fold: int) -> str:
    """The folder of fold K's mixed shards inside mix-offline's output: fold=K (hive-style)."""
    return f"fold={fold}"


def mixed_rel(fold: int) -> str:
    """mix-offline's default output folder of fold K, relative to the shards: mixed/fold=K."""
    return f"{MIXED_DIR}/{fold_dirname(fold)}"


def mixed_dir(root: str | Path, fold: int) -> Path:
    return Path(root) / mixed_rel(fold)


def mixed_indexes(root: str | Path) -> list[Path]:
    """index.json of every mixed fold under `root`, in fold order."""
    found = [p for p in Path(root).glob(f"{MIXED_DIR}/fold=*/{INDEX_NAME}") if p.parent.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name[5:]))


def shard_dirs(out: Path) -> list[Path]:
    """Every existing folder of `out` that holds shard files (the hive partitions included)."""
    dirs = [out / d for d in SHARD_DIRS if (out / d).is_dir()]
    parquet = out / FORMAT_DIRS["parquet"]
    if parquet.is_dir():
        dirs += sorted(p for p in parquet.iterdir() if p.is_dir() and "=" in p.name)
    return dirs


def entry_files(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file index entries list: the shard files and their .idx."""
    files = [(e["path"], e["bytes"]) for e in entries]
    return files + [(e["idx"]["path"], e["idx"]["bytes"]) for e in entries if "idx" in e]


def resolve_inside(root: str | Path, rel: Any, source: str | Path, entry: str, fix: str) -> Path:
    """`root / rel`, when `rel` is a relative path that stays inside `root` once symlinks are followed.

    Every path read from a file (index.json entries and their .idx, done-files, plan shard
    names, mixed folds) goes through here before anything opens or deletes it: a hand-edited
    `../x`, an absolute path, or a symlink under `root` that leads out of it is a ShardError
    naming `source` (the file it came from), `entry` (which entry) and `fix` (what to do).
    Returns the path unresolved, so a symlink inside `root` is unlinked, never its target."""
    base = Path(root).resolve()
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        why = "is not a relative path inside"
    elif Path(rel).is_absolute():
        why = "is an absolute path, not one inside"
    else:
        try:
            target = (base / rel).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            target = None
        if target is not None and base in target.parents:
            return Path(root) / rel
        why = ("climbs out of" if ".." in Path(rel).parts else
               "is a symlink loop inside" if target is None else "leads (through a symlink) out of")
    raise ShardError(f"{source}: {entry} names {rel!r}, which {why} {root}; midas-prep reads and deletes only "
                     f"inside its output, so it was neither read nor deleted: {fix}")


def is_inside(root: str | Path, rel: Any) -> bool:
    """resolve_inside as a yes/no, for cleanup: an entry that leads out of `root` is left alone."""
    try:
        resolve_inside(root, rel, "", "", "")
    except ShardError:
        return False
    return True


def is_removable(root: str | Path, rel: Any) -> bool:
    """`root / rel` may be deleted by cleanup: a relative path whose folder resolves inside `root`.
    The file itself may be a symlink (one planted at a name we write): unlinking removes the link,
    never what it points to; a folder symlinked out of `root` makes every file under it off limits."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute():
        return False
    if Path(rel).name in ("", ".", ".."):
        return False
    base = Path(root).resolve()
    try:
        folder = (base / rel).parent.resolve()
    except (OSError, RuntimeError):
        return False
    return folder == base or base in folder.parents


def entry_paths(root: str | Path, entry: Any, source: str | Path, fix: str) -> list[Path]:
    """The files one index.json (or done-file) entry lists, each checked by resolve_inside:
    [shard file] or [tar, its .idx]."""
    if not isinstance(entry, dict):
        raise ShardError(f"{source}: shard entry {str(entry)[:60]!r} is not an object; {fix}")
    what = f"the {entry.get('format')} entry of shard {entry.get('shard')!r}"
    paths = [resolve_inside(root, entry.get("path"), source, f"{what}, path", fix)]
    if "idx" in entry:
        idx = entry["idx"].get("path") if isinstance(entry["idx"], dict) else entry["idx"]
        paths.append(resolve_inside(root, idx, source, f"{what}, idx path", fix))
    return paths


def sample_nbytes(num_frames: int, frame_size: int, num_classes: int = 7) -> int:
    """Upper estimate of one sample's bytes in a tar: frames + soft + json + 3 headers."""
    return num_frames * frame_size * frame_size * 3 + 4 * num_classes + 3 * (512 + 512) + 2 * 128 + 512


def npy_bytes(a: np.ndarray) -> bytes:
    """The .npy encoding of an array (no pickling)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def read_index(out: Path, remedy: str = "") -> dict[str, Any] | None:
    """index.json of `out`, None if there is none; a file that is not an index is a ShardError
    naming it and `remedy`, the command that fixes it (readers go through pipeline.read.load_index)."""
    path = Path(out) / INDEX_NAME
    if not path.is_file():
        return None
    if not is_inside(out, INDEX_NAME):  # a symlink out: its paths would be taken as ours
        raise ShardError(f"{path} is a symlink out of {out}, not an index midas-prep wrote; it was not read: "
                         f"delete that link and rebuild, or point at the folder it leads to")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
            raise ValueError("not an index.json object with a shards list")
    except (ValueError, UnicodeDecodeError) as e:
        remedy = remedy or f"`midas-prep verify {out} --repair` rewrites it or names the command that rebuilds it"
        raise ShardError(f"{path} is not a valid index ({e}); {remedy}") from None
    return doc


def json_or_none(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or not JSON (cleanup and repair read what they can)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
