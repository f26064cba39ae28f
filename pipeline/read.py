"""Read what the write stage wrote: index.json, file checks, random access to samples.

Arrays are read with pickling off and nothing is extracted to a path taken from a tar:
members are read at the byte offsets the DALI index (.idx) records.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.write import INDEX_NAME, npy_bytes, read_index

__all__ = ["ShardError", "open_index", "check_files", "SampleReader", "parse_idx", "decode_members",
           "decode_parquet_row", "read_sample"]

logger = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """Shards are missing, incomplete or do not match their index.json (fatal)."""


def open_index(shards: str | Path) -> dict[str, Any]:
    """index.json of a finished build, or ShardError saying what is wrong."""
    shards = Path(shards)
    index = read_index(shards)
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
    """Problems with the listed files (missing, size, sha256), each naming the file."""
    problems = []
    for e in entries:
        files = [e] + ([e["idx"]] if "idx" in e else [])
        for f in files:
            p = Path(shards) / f["path"]
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != f["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes, index.json says {f['bytes']}")
            elif sha256 and _sha256(p) != f["sha256"]:
                problems.append(f"{p}: sha256 differs from index.json (the file changed or is corrupt)")
    return problems


def parse_idx(text: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """DALI webdataset index (v1.2) -> per sample (key, {ext: (offset, size)})."""
    lines = text.splitlines()
    head = lines[0].split()
    assert head[0] == "v1.2", f"unsupported DALI index version {head[0]}"
    samples = []
    for line in lines[1:]:
        parts = line.split()
        key = parts[3][: parts[3].index(".")]
        samples.append((key, {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}))
    assert len(samples) == int(head[1]), f"index lists {head[1]} samples but has {len(samples)} lines"
    return samples


def decode_members(frames_npy: bytes, soft_npy: bytes, json_bytes: bytes, where: str
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One sample's members -> (frames, soft, meta), checked against the crc32 its json records.

    Raises ShardError naming `where` (shard and sample) when a member is corrupt.
    """
    try:
        meta = json.loads(json_bytes)
    except (UnicodeDecodeError, ValueError) as e:
        raise ShardError(f"{where}: json member is corrupt ({e}); run `midas-prep verify`") from e
    crc = meta.get("crc32") if isinstance(meta, dict) else None
    if crc:
        for ext, data in (("frames.npy", frames_npy), ("soft.npy", soft_npy)):
            if zlib.crc32(data) != crc.get(ext):
                raise ShardError(f"{where}: {ext} fails its crc32 (the shard is corrupt); run `midas-prep verify`")
    try:
        frames = np.load(io.BytesIO(frames_npy), allow_pickle=False)
        soft = np.load(io.BytesIO(soft_npy), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"{where}: an array member does not load ({e}); run `midas-prep verify`") from e
    return frames, soft, meta


def decode_parquet_row(row: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A Parquet sample row (frames, soft, json columns) -> (frames, soft, meta), crc-checked."""
    soft_npy = npy_bytes(np.asarray(row["soft"], np.float32))  # the column holds values; crc32 is of the .npy
    return decode_members(row["frames"], soft_npy, row["json"].encode(), where)


def read_sample(files: dict[str, Any], fmt: str, path: str, where: Any, name: str
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One sample at its place in a shard: tar members at their .idx offsets (`where` =
    {ext: (offset, size)}), or a Parquet row group (`where` = its index). `files` caches the
    open files of this process; `name` says which sample in errors."""
    if fmt == "webdataset":
        f = files.get(path) or files.setdefault(path, open(path, "rb"))

        def member(ext: str) -> bytes:
            f.seek(where[ext][0])
            return f.read(where[ext][1])

        return decode_members(member("frames.npy"), member("soft.npy"), member("json"), name)
    import pyarrow.parquet as pq

    pf = files.get(path) or files.setdefault(path, pq.ParquetFile(path))
    row = pf.read_row_group(where, columns=["frames", "soft", "json"]).to_pylist()[0]  # one sample per group
    return decode_parquet_row(row, name)


class SampleReader:
    """Random access to samples by key, from tar shards (via .idx offsets) or Parquet shards."""

    def __init__(self, shards: str | Path, index: dict[str, Any]) -> None:
        self.root = Path(shards)
        self._where: dict[str, tuple[str, Any]] = {}
        tars = [e for e in index["shards"] if e["format"] == "webdataset"]
        if tars:
            for e in tars:
                for key, members in parse_idx((self.root / e["idx"]["path"]).read_text()):
                    self._where[key] = ("webdataset", (e["path"], members))
        else:
            import pyarrow.parquet as pq

            for e in index["shards"]:
                keys = pq.read_table(self.root / e["path"], columns=["key"]).column("key").to_pylist()
                for row, key in enumerate(keys):
                    self._where[key] = ("parquet", (e["path"], row))
        self._files: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return sorted(self._where)

    def read(self, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(frames uint8 T x H x W x 3, soft float32 [C], json meta) of one sample."""
        fmt, (path, where) = self._where[key]
        return read_sample(self._files, fmt, str(self.root / path), where, f"{self.root / path} sample {key}")

    def close(self) -> None:
        for f in self._files.values():
            if hasattr(f, "close"):
                f.close()
        self._files.clear()
