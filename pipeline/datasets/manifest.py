"""Generic manifest adapter for other datasets (MAFW, FERV39k, your own).

A CSV or Parquet file with one row per clip:

    path                 video file or frame folder, relative to the manifest's directory (an absolute
                         path is taken as given)
    <class> x C          one column per class of `index.classes` (votes or probabilities)
    clip_id (optional)   defaults to the path's stem
    part | fold (opt.)   test fold 1..5 the clip belongs to (0 or empty = none)
    label (optional)     0-based class index or class name; default: the unique argmax, else -1;
                         any other value rejects the row

CSV cells may be separated by ',', ';' or tab. Clip ids may hold any character (spaces, dots,
tabs): shards key samples by `records.sample_key(clip_id)`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.config import IndexConfig
from pipeline.datasets.dfew import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, read_csv
from pipeline.datasets.records import IndexResult, check_votes, clean_id, first_rows, make_clip, make_reject
from pipeline.errors import LayoutError

__all__ = ["index_manifest"]

logger = logging.getLogger(__name__)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows as dicts; CSV cells stay text so ids like 00012 keep their zeros."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix.lower() == ".csv":
        rows = [r for r in read_csv(path) if any(c.strip() for c in r)]  # ',', ';' or tab separated
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        return [dict(zip(header, r + [""] * (len(header) - len(r)), strict=False)) for r in rows[1:]]
    raise LayoutError(f"manifest {path} must be a .csv or .parquet file")


def _int_or_none(v: Any) -> int | None:
    if v is None or str(v).strip() == "":
        return None
    s = str(v).strip()
    if not re.fullmatch(r"-?\d+(\.0+)?", s):
        raise ValueError(f"not an integer: {v!r}")
    return int(float(s))


def index_manifest(path: Path, cfg: IndexConfig) -> IndexResult:
    """Manifest file -> clips and index rejects; sources are resolved beside the manifest."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"manifest {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise LayoutError(f"manifest {path} has no rows")
    cols = set(rows[0])
    missing = [c for c in ("path", *cfg.classes) if c not in cols]
    if missing:
        raise LayoutError(
            f"manifest {path} lacks columns {missing}; it needs 'path' and one column per class "
            f"({', '.join(cfg.classes)}), optionally clip_id, part (or fold), label"
        )
    part_col = "part" if "part" in cols else ("fold" if "fold" in cols else None)
    base = path.parent
    result = IndexResult()
    ids = [(rownum, clean_id(row.get("clip_id")) or Path(clean_id(row["path"])).stem)
           for rownum, row in enumerate(rows, start=2)]
    duplicate = first_rows(ids)  # one id rule (records.clean_id), counted before anything else
    for (rownum, cid), row in zip(ids, rows, strict=True):
        rel = clean_id(row["path"])
        where = f"{path.name} row {rownum}"
        if not cid:
            result.rejects.append(make_reject("", rel, "index", f"{where}: no path or clip_id"))
            continue
        if rownum in duplicate:
            result.rejects.append(make_reject(cid, rel, "index", f"{where}: {duplicate[rownum]}"))
            continue
        try:
            votes, soft = check_votes([row.get(c) for c in cfg.classes], len(cfg.classes))
            part = _int_or_none(row.get(part_col)) if part_col else None
        except ValueError as e:
            result.rejects.append(make_reject(cid, rel, "index", f"{where}: {e}"))
            continue
        part = part or 0
        if not 0 <= part <= 5:
            result.rejects.append(make_reject(cid, rel, "index", f"{where}: part {part} not in 0..5"))
            continue
        src = base / rel
        if src.is_file() and src.suffix.lower() in VIDEO_EXTENSIONS:
            kind = "video"
        elif src.is_dir() and any(p.suffix.lower() in FRAME_EXTENSIONS for p in src.iterdir()):
            kind = "frames"
        else:
            result.rejects.append(make_reject(cid, rel, "index", f"{where}: no video file or frame folder at {rel}"))
            continue
        try:
            label = _label(row.get("label"), soft, cfg.classes)
        except ValueError as e:
            result.rejects.append(make_reject(cid, rel, "index", f"{where}: {e}"))
            continue
        # Sources are stored relative to the manifest's directory (the dataset root).
        result.clips.append(make_clip(cid, rel, kind, votes, soft, label, part))
    return result


def _label(value: Any, soft: list[float], classes: tuple[str, ...]) -> int:
    if value is not None and str(value).strip() != "":
        s = str(value).strip()
        if s in classes:
            return classes.index(s)
        if re.fullmatch(r"-?\d+(\.0*)?", s) and -1 <= int(float(s)) < len(classes):
            return int(float(s))
        raise ValueError(f"label {value!r} is neither a class index -1..{len(classes) - 1} nor a class name "
                         f"({', '.join(classes)})")
    top = max(soft)
    return soft.index(top) if soft.count(top) == 1 else -1
