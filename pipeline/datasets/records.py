"""Clip records shared by every dataset adapter: what a clips-table row holds and how
votes become soft labels."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IndexResult", "make_clip", "make_reject", "check_votes", "normalise_id", "natural_key", "sample_key",
    "clip_id_of_key", "mixed_key",
]

_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class IndexResult:
    """An adapter's output: valid clips, index-stage rejects, files with no annotation."""

    clips: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)


def normalise_id(name: str) -> str:
    """DFEW ids appear as 1, 00001, 00001.mp4: all-digit ids become 5-digit zero-padded."""
    stem = name.strip()
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


def check_votes(values: list[Any], num_classes: int) -> tuple[list[int] | None, list[float]]:
    """Validate one row of per-class votes (or probabilities) -> (votes or None, soft).

    Raises ValueError with the reason for a bad row: missing, NaN, negative, all zero.
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
        floats.append(f)
    total = sum(floats)
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
