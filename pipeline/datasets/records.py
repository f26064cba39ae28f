"""Clip records shared by every dataset adapter: what a clips-table row holds and how
votes become soft labels."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "IndexResult", "make_clip", "make_reject", "check_votes", "clean_id", "normalise_id", "first_rows",
    "natural_key", "sample_key", "source_root", "annotation_sha256", "source_fingerprint", "changed_since",
    "FINGERPRINT_FIELDS",
    "clip_id_of_key", "mixed_key",
]

_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class IndexResult:
    """An adapter's output: valid clips, index-stage rejects, files with no annotation."""

    clips: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)


def clean_id(raw: object) -> str:
    """The one id rule of every adapter: a clip id is its cell's text with the whitespace around
    it stripped (" x1 " and "x1" are one clip; inner spaces are kept). Applied before duplicates
    are counted, so two rows that name one clip are caught, never written as two samples."""
    return "" if raw is None else str(raw).strip()


def first_rows(ids: list[tuple[int, str]]) -> dict[int, str]:
    """{row number: why} for every row whose (clean) id an earlier row already has: the later
    duplicate is rejected, its reason naming both rows; the first row stays."""
    first: dict[str, int] = {}
    later: dict[int, str] = {}
    for rownum, cid in ids:
        if not cid:
            continue
        if cid in first:
            later[rownum] = (f"duplicate clip id {cid!r}: row {first[cid]} already names this clip (ids are "
                             f"compared with spaces around them stripped); row {rownum} is skipped, row "
                             f"{first[cid]} kept")
        else:
            first[cid] = rownum
    return later


def normalise_id(name: str) -> str:
    """DFEW ids appear as 1, 00001, 00001.mp4: all-digit ids become 5-digit zero-padded."""
    stem = clean_id(name)
    if re.fullmatch(r"\d+(\.0+)?", stem):  # spreadsheets turn 00001 into 1 or 1.0
        return f"{int(float(stem)):05d}"
    return stem


def sample_key(clip_id: str) -> str:
    """The WebDataset/Parquet sample key of a clip: clip_id with every byte outside [A-Za-z0-9_-]
    percent-encoded (UTF-8), e.g. "a b.c" -> "a%20b%2Ec".

    Why: a tar member is `<key>.<ext>` and readers (DALI, webdataset, verify) cut the key at the
    first dot, and DALI's .idx is whitespace-separated, so a dot, space or tab in a key breaks
    them. The encoding is deterministic and injective ('%' itself is encoded), so two clip ids
    never share a key; ids of letters, digits, '-' and '_' (all of DFEW) keep their key. The
    sample's json keeps the original clip_id.
    """
    if not clip_id:
        raise ValueError("empty clip id")
    return "".join(c if c in _KEY_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in clip_id)


def clip_id_of_key(key: str) -> str:
    """The clip id a built sample's key stands for (the inverse of sample_key)."""
    from urllib.parse import unquote

    return unquote(key, errors="strict")


def mixed_key(clip_a: str, clip_b: str, copy: int) -> str:
    """Key of a mix-offline sample: `<a>_<b>_c<copy>` of the two sample keys, with '_' inside them
    encoded (%5F) so that the three parts cannot run into each other (a_b + c vs a + b_c)."""
    a, b = (sample_key(c).replace("_", "%5F") for c in (clip_a, clip_b))
    return f"{a}_{b}_c{copy}"


def natural_key(name: str) -> tuple[int, str]:
    """Sort frame files by their last number: 1.jpg < 2.jpg < 10.jpg, 00001_00002.jpg ..."""
    nums = re.findall(r"\d+", name)
    return (int(nums[-1]) if nums else -1, name)


MAX_VOTE = 1e6  # per class: no annotation has a million raters; 1e308 would overflow the sums downstream


def check_votes(values: list[Any], num_classes: int) -> tuple[list[int] | None, list[float]]:
    """Validate one row of per-class votes (or probabilities) -> (votes or None, soft).

    Raises ValueError with the reason for a bad row: missing, NaN, inf, negative, over MAX_VOTE,
    a sum that overflows, all zero.
    Integer counts are kept as votes; fractional values are probabilities (votes None).
    """
    if len(values) != num_classes:
        raise ValueError(f"expected {num_classes} vote values, got {len(values)}")
    floats: list[float] = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError("missing votes")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"votes are not numbers: {values!r}") from None
        if math.isnan(f) or math.isinf(f):
            raise ValueError(f"votes contain NaN or inf: {values!r}")
        if f < 0:
            raise ValueError(f"negative votes: {values!r}")
        if f > MAX_VOTE:
            raise ValueError(f"votes too large ({v!r} > {MAX_VOTE:g} per class, not a vote count): {values!r}")
        floats.append(f)
    total = math.fsum(floats)
    if not math.isfinite(total):
        raise ValueError(f"votes sum to {total} (overflow): {values!r}")
    if total <= 0:
        raise ValueError("all votes are zero")
    votes = [int(f) for f in floats] if all(f == int(f) for f in floats) else None
    soft = [f / total for f in floats]
    return votes, soft


def make_clip(
    clip_id: str, source: str, kind: str, votes: list[int] | None, soft: list[float], label: int, part: int
) -> dict[str, Any]:
    """One clips-table row; `source` is relative to the dataset root, `kind` video|frames."""
    return {
        "clip_id": clip_id,
        "source": source,
        "source_kind": kind,
        "votes": votes,
        "soft": soft,
        "label": label,
        "part": part,
    }


def make_reject(clip_id: str, source: str, stage: str, error: str) -> dict[str, Any]:
    return {"clip_id": clip_id, "source": source, "stage": stage, "error": error}


# --- what a build was made from (a changed dataset is detected) ----------------------------------------------

FINGERPRINT_FIELDS = ("annotation_sha256", "source_bytes", "source_mtime_ns", "source_sha256")
_EDGE = 1 << 20  # the first and the last MiB of a file are hashed: a re-encoded or replaced clip differs there


def source_root(dataset_root: str | Path) -> Path:
    """The folder clip sources are relative to: the dataset folder, or a manifest file's folder."""
    p = Path(dataset_root).resolve()
    return p.parent if p.is_file() else p


def annotation_sha256(clip: dict[str, Any]) -> str:
    """Hash of a clip's index row (votes, soft label, label, part, source): an edited annotation
    row changes it."""
    import hashlib
    import json

    keys = ("clip_id", "source", "source_kind", "votes", "soft", "label", "part")
    return hashlib.sha256(json.dumps({k: clip.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


def _edges(path: Path, sha: Any) -> None:
    with open(path, "rb") as f:
        sha.update(f.read(_EDGE))
        size = f.seek(0, 2)
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            sha.update(f.read(_EDGE))


def source_fingerprint(root: str | Path, clip: dict[str, Any], content: bool = True) -> dict[str, Any]:
    """{annotation_sha256, source_bytes, source_mtime_ns, source_sha256} of a clip as it is now.

    A video: its size, mtime_ns and the sha256 of its first and last MiB. A frame folder: the
    sum of its files' sizes, the latest mtime_ns, the sha256 of every file's name, size and edges.
    A source that is not there has None for the file fields. `content=False` skips the hash."""
    import hashlib

    fp: dict[str, Any] = {"annotation_sha256": annotation_sha256(clip), "source_bytes": None,
                          "source_mtime_ns": None, "source_sha256": None}
    path = Path(root) / clip["source"]
    try:
        if path.is_file():
            st = path.stat()
            fp["source_bytes"], fp["source_mtime_ns"] = st.st_size, st.st_mtime_ns
            if content:
                sha = hashlib.sha256()
                _edges(path, sha)
                fp["source_sha256"] = sha.hexdigest()
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            stats = [p.stat() for p in files]
            fp["source_bytes"] = sum(s.st_size for s in stats)
            fp["source_mtime_ns"] = max([s.st_mtime_ns for s in stats], default=path.stat().st_mtime_ns)
            if content:
                sha = hashlib.sha256()
                for p, s in zip(files, stats, strict=True):
                    sha.update(f"{p.name}\0{s.st_size}\0".encode())
                    _edges(p, sha)
                fp["source_sha256"] = sha.hexdigest()
    except OSError:
        pass
    return fp


def changed_since(root: str | Path, clip: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """What changed in a clip since `recorded` (its fingerprint at build time): a few words, "" when
    nothing did, None when nothing was recorded (a build made before fingerprints: not checked).

    Size and mtime equal: unchanged, nothing is read. An mtime that moved (a copied dataset) is
    only a change when the content hash differs too."""
    if not recorded or recorded.get("annotation_sha256") is None:
        return None
    if annotation_sha256(clip) != recorded["annotation_sha256"]:
        return "annotation row changed"
    now = source_fingerprint(root, clip, content=False)
    if now["source_bytes"] is None and recorded.get("source_bytes") is not None:
        return "source file missing"
    if now["source_bytes"] != recorded.get("source_bytes"):
        return f"source size {recorded.get('source_bytes')} -> {now['source_bytes']} bytes"
    if now["source_mtime_ns"] == recorded.get("source_mtime_ns"):
        return ""
    if source_fingerprint(root, clip)["source_sha256"] != recorded.get("source_sha256"):
        return "source content changed"
    return ""
