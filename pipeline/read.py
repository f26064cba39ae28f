"""Read what the write stage wrote: index.json, file checks, random access to samples.

Arrays are read with pickling off and nothing is extracted to a path taken from a tar:
members are read at the byte offsets the DALI index (.idx) records, and an index naming a
member with a folder (`../x`, `/x`) is refused. Every sample is checked against its crc32
and against the shape and dtype index.json records; every failure is a ShardError naming
the file (and sample) and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.format import (
    FORMAT_VERSION,
    INDEX_NAME,
    MEMBERS,
    MIXED_DIR,
    STATE_DIR,
    ShardError,
    entry_paths,
    npy_bytes,
    read_index,
)

__all__ = ["load_index", "open_index", "outside_fix", "check_files", "SampleReader", "parse_idx", "load_idx",
           "sample_spec", "check_arrays", "decode_members", "decode_parquet_row", "read_sample"]

logger = logging.getLogger(__name__)


def _remedy(root: Path, overwrite: bool = False) -> str:
    """The command that rebuilds the output folder `root` (a build, or a mixed fold)."""
    flag = " --overwrite" if overwrite else ""
    if root.parent.name == MIXED_DIR and root.name.startswith("fold="):
        return f"`midas-prep mix-offline --shards {root.parent.parent} --fold {root.name[5:]}{flag}`"
    return f"`midas-prep build-shards DATASET --out {root}{flag}`"


def outside_fix(root: Path) -> str:
    """What to do about an index.json of `root` that lists a path outside it (hand-edited or planted)."""
    top = root.parent.parent if root.parent.name == MIXED_DIR and root.name.startswith("fold=") else root
    return (f"`midas-prep verify {top} --repair` rewrites {root / INDEX_NAME} from {root / STATE_DIR}/ "
            f"(or rebuild with {_remedy(root, overwrite=True)})")


def load_index(root: str | Path) -> dict[str, Any] | None:
    """index.json of `root` (None when absent), refused with a ShardError saying what to do
    when it is not JSON or was written by another format version."""
    root = Path(root)
    path = root / INDEX_NAME
    index = read_index(root, f"re-run {_remedy(root)}: it resumes, keeps the finished shards and rewrites index.json")
    if index is None:
        return None
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(f"{path} is format version {version}; this midas-prep reads version {FORMAT_VERSION} "
                         f"(the shard layout changed): rebuild with {_remedy(root, overwrite=True)}")
    return index


def open_index(shards: str | Path) -> dict[str, Any]:
    """index.json of a finished build, or ShardError saying what is wrong."""
    shards = Path(shards)
    index = load_index(shards)
    if index is None:
        raise ShardError(f"{shards / INDEX_NAME} not found: run `midas-prep build-shards DATASET --out {shards}` first")
    if not index.get("complete"):
        raise ShardError(f"{shards} is an unfinished build (index.json complete=false): re-run build-shards to resume")
    return index


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_files(shards: Path, entries: list[dict[str, Any]], sha256: bool = True) -> list[str]:
    """Problems with the listed files (missing, size, sha256), each naming the file.

    A listed path that leads out of `shards` is a ShardError (resolve_inside): nothing outside
    is opened, not even to be measured."""
    shards = Path(shards)
    problems = []
    for e in entries:
        paths = entry_paths(shards, e, shards / INDEX_NAME, outside_fix(shards))
        for f, p in zip([e] + ([e["idx"]] if "idx" in e else []), paths, strict=True):
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != f["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes, index.json says {f['bytes']}")
            elif sha256 and _sha256(p) != f["sha256"]:
                problems.append(f"{p}: sha256 differs from index.json (the file changed or is corrupt)")
    return problems


def _safe_key(key: str) -> bool:
    """A sample key is a plain name: no folder, no absolute path, no `..`, not hidden."""
    return bool(key) and "/" not in key and "\\" not in key and not key.startswith(".") and "\x00" not in key


def parse_idx(text: str, where: str = "DALI index") -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """DALI webdataset index (v1.2) -> per sample (key, {ext: (offset, size)}).

    Raises ShardError naming `where` for anything else than what write_tar writes: another
    version, a wrong count, a member named with a folder (`../x`, `/x`), a sample whose
    members have different keys or are not frames.npy, json and soft.npy."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        raise ShardError(f"{where}: not a DALI index v1.2 (first line {lines[0][:40] if lines else ''!r})")
    samples = []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ShardError(f"{where} line {n}: expected 4 fields per member, got {len(parts)}")
        members: dict[str, tuple[int, int]] = {}
        keys = set()
        for i in range(0, len(parts), 4):
            ext, offset, size, name = parts[i : i + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise ShardError(f"{where} line {n}: offset {offset!r} and size {size!r} are not numbers")
            if not name.endswith("." + ext) or not _safe_key(name[: -len(ext) - 1]):
                raise ShardError(f"{where} line {n}: member {name!r} is not <key>.{ext} with a plain key "
                                 "(a folder or `..` in a member name is refused)")
            keys.add(name[: -len(ext) - 1])
            members[ext] = (int(offset), int(size))
        if len(keys) != 1 or sorted(members) != sorted(MEMBERS):
            raise ShardError(f"{where} line {n}: sample members {sorted(members)} of keys {sorted(keys)}; "
                             f"expected {list(MEMBERS)} of one key")
        samples.append((keys.pop(), members))
    if len(samples) != int(head[1]):
        raise ShardError(f"{where}: lists {head[1]} samples but has {len(samples)} lines")
    return samples


def load_idx(path: str | Path, root: str | Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """parse_idx of the file `path` of the output folder `root`; ShardError names the fix."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: unreadable DALI index ({e}); run `midas-prep verify {root} --repair`") from None
    try:
        return parse_idx(text, str(path))
    except ShardError as e:
        raise ShardError(f"{e}; run `midas-prep verify {root} --repair` to rebuild its shard") from None


def sample_spec(index: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes every sample of `index` has: frames (T, S, S, 3) uint8, soft (C,) float32."""
    t, s = int(index["sample"]["num_frames"]), int(index["sample"]["frame_size"])
    return {"frames": (t, s, s, 3), "soft": (len(index["classes"]),)}


def check_arrays(frames: np.ndarray, soft: np.ndarray, spec: dict[str, tuple[int, ...]] | None) -> str:
    """What is wrong with a decoded sample ("" when nothing): shapes and dtypes against
    `spec` (sample_spec), the soft label a distribution."""
    if spec is not None and (frames.dtype != np.uint8 or frames.shape != spec["frames"]):
        return f"frames are {frames.dtype} {frames.shape}, index.json says uint8 {spec['frames']}"
    if spec is not None and (soft.dtype != np.float32 or soft.shape != spec["soft"]):
        return f"soft is {soft.dtype} {soft.shape}, index.json says float32 {spec['soft']}"
    if soft.dtype.kind != "f" or not np.isfinite(soft).all() or abs(float(soft.sum()) - 1.0) > 1e-4 or (soft < 0).any():
        return f"soft label {soft.tolist()} is not a distribution (non-negative, sums to 1)"
    return ""


def decode_members(frames_npy: bytes, soft_npy: bytes, json_bytes: bytes, where: str,
                   spec: dict[str, tuple[int, ...]] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One sample's members -> (frames, soft, meta), checked against the crc32 its json records
    and, with `spec` (sample_spec of index.json), against the shapes and dtypes.

    Raises ShardError naming `where` (shard and sample) when a member is corrupt.
    """
    try:
        meta = json.loads(json_bytes)
    except (UnicodeDecodeError, ValueError) as e:
        raise ShardError(f"{where}: json member is corrupt ({e}); run `midas-prep verify`") from None
    crc = meta.get("crc32") if isinstance(meta, dict) else None
    if crc:
        for ext, data in (("frames.npy", frames_npy), ("soft.npy", soft_npy)):
            if zlib.crc32(data) != crc.get(ext):
                raise ShardError(f"{where}: {ext} fails its crc32 (the shard is corrupt); run `midas-prep verify`")
    try:
        frames = np.load(io.BytesIO(frames_npy), allow_pickle=False)
        soft = np.load(io.BytesIO(soft_npy), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ShardError(f"{where}: an array member does not load ({why}); run `midas-prep verify`") from None
    msg = check_arrays(frames, soft, spec)
    if msg:
        raise ShardError(f"{where}: {msg}; run `midas-prep verify`")
    return frames, soft, meta


def decode_parquet_row(row: dict[str, Any], where: str, spec: dict[str, tuple[int, ...]] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A Parquet sample row (frames, soft, json columns) -> (frames, soft, meta), checked."""
    if row.get("frames") is None or row.get("soft") is None or row.get("json") is None:
        raise ShardError(f"{where}: a null frames, soft or json cell; run `midas-prep verify`")
    if not isinstance(row["frames"], bytes) or not isinstance(row["json"], str) or not isinstance(row["soft"], list):
        kinds = ", ".join(f"{k} {type(row[k]).__name__}" for k in ("frames", "soft", "json"))
        raise ShardError(f"{where}: not the Parquet schema midas-prep writes (columns {kinds}; expected frames "
                         "binary, soft list<float>, json string); run `midas-prep verify`")
    try:
        soft_npy = npy_bytes(np.asarray(row["soft"], np.float32))  # the column holds values; crc32 is of the .npy
    except (TypeError, ValueError) as e:
        raise ShardError(f"{where}: the soft cell is not a list of numbers ({e}); run `midas-prep verify`") from None
    return decode_members(row["frames"], soft_npy, row["json"].encode(), where, spec)


def read_sample(files: dict[str, Any], fmt: str, path: str, where: Any, name: str,
                spec: dict[str, tuple[int, ...]] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One sample at its place in a shard: tar members at their .idx offsets (`where` =
    {ext: (offset, size)}), or a Parquet row group (`where` = its index). `files` caches the
    open files of this process; `name` says which sample in errors; `spec` (sample_spec)
    is the shape and dtype every sample must have."""
    if fmt == "webdataset":
        missing = [ext for ext in MEMBERS if ext not in where]
        if missing:
            raise ShardError(f"{name}: the DALI index lists no {missing} member; run `midas-prep verify`")
        f = files.get(path) or files.setdefault(path, open(path, "rb"))

        def member(ext: str) -> bytes:
            f.seek(where[ext][0])
            data = f.read(where[ext][1])
            if len(data) != where[ext][1]:
                raise ShardError(f"{name}: {ext} ends past the end of the tar; run `midas-prep verify`")
            return data

        return decode_members(member("frames.npy"), member("soft.npy"), member("json"), name, spec)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = files.get(path) or files.setdefault(path, pq.ParquetFile(path))
        rows = pf.read_row_group(where, columns=["frames", "soft", "json"]).to_pylist()  # one sample per group
    except (pa.ArrowException, OSError, IndexError, KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{name}: unreadable Parquet row group ({type(e).__name__}: {str(e)[:200]}); not the "
                         "Parquet shard midas-prep writes; run `midas-prep verify`") from None
    if len(rows) != 1:
        raise ShardError(f"{name}: row group holds {len(rows)} rows, expected 1; run `midas-prep verify`")
    return decode_parquet_row(rows[0], name, spec)


def index_sha256s(shards: str | Path) -> dict[str, str]:
    """{path: sha256} of every index.json under `shards` a reader reads (the build's and each mixed
    fold's): a run records them, and a rewrite during the run (mix-offline --overwrite) is seen."""
    root = Path(shards)
    out: dict[str, str] = {}
    for p in [root / INDEX_NAME, *sorted(root.glob(f"{MIXED_DIR}/fold=*/{INDEX_NAME}"))]:
        with contextlib.suppress(OSError):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class SampleReader:
    """Random access to samples by key, from tar shards (via .idx offsets) or Parquet shards."""

    def __init__(self, shards: str | Path, index: dict[str, Any]) -> None:
        self.root = Path(shards)
        self.spec = sample_spec(index)
        self._where: dict[str, tuple[str, Any]] = {}
        source, fix = self.root / INDEX_NAME, outside_fix(self.root)
        tars = [e for e in index["shards"] if e["format"] == "webdataset"]
        if tars:
            for e in tars:
                idx = entry_paths(self.root, e, source, fix)[-1]  # [tar, .idx]
                for key, members in load_idx(idx, self.root):
                    self._where[key] = ("webdataset", (e["path"], members))
        else:
            import pyarrow.parquet as pq

            for e in index["shards"]:
                path = entry_paths(self.root, e, source, fix)[0]
                keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
                for row, key in enumerate(keys):
                    self._where[key] = ("parquet", (e["path"], row))
        self._files: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return sorted(self._where)

    def read(self, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(frames uint8 T x H x W x 3, soft float32 [C], json meta) of one sample."""
        if key not in self._where:
            raise ShardError(f"{self.root}: no sample {key!r} in the shards index.json lists; "
                             f"run `midas-prep verify {self.root}`")
        fmt, (path, where) = self._where[key]
        return read_sample(self._files, fmt, str(self.root / path), where, f"{self.root / path} sample {key}",
                           self.spec)

    def close(self) -> None:
        for f in self._files.values():
            if hasattr(f, "close"):
                f.close()
        self._files.clear()
