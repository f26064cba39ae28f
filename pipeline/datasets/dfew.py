"""DFEW adapter: annotation.xlsx (or .csv) votes + the 5 test-fold split files + clips.

Copies of DFEW in the wild differ: csv instead of xlsx, `single_labeled` spellings,
frame names `1.jpg` or `00001_00001.jpg`, zero-padded or plain ids. Names are matched
case- and punctuation-insensitively; when the layout is not recognised the error lists
every missing piece at once.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.config import IndexConfig
from pipeline.datasets.records import IndexResult, check_votes, make_clip, make_reject, normalise_id
from pipeline.errors import LayoutError

__all__ = ["index_dfew", "VIDEO_EXTENSIONS", "FRAME_EXTENSIONS"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_ID_HEADERS = ("order", "videoname", "video", "clipid", "clip", "id", "name")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _child(parent: Path, *names: str, want_dir: bool = True) -> Path | None:
    """The child of `parent` whose normalised name is one of `names` (first match wins)."""
    if not parent.is_dir():
        return None
    children = {_norm(p.name): p for p in sorted(parent.iterdir()) if p.is_dir() == want_dir}
    for n in names:
        if _norm(n) in children:
            return children[_norm(n)]
    return None


def _read_table(path: Path) -> list[list[Any]]:
    """Rows of an .xlsx (first sheet) or .csv file, header included."""
    if path.suffix.lower() == ".xlsx":
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f)]


def _find_annotation(root: Path) -> Path | None:
    ann_dir = _child(root, "Annotation", "Annotations")
    if ann_dir is None:
        return None
    files = [p for p in sorted(ann_dir.iterdir()) if p.is_file() and p.suffix.lower() in (".xlsx", ".csv")]
    files.sort(key=lambda p: (not p.stem.lower().startswith("annotation"), p.suffix.lower() != ".xlsx", p.name))
    return files[0] if files else None


def _find_test_sets(root: Path) -> tuple[dict[int, Path], list[str]]:
    """{fold: set_K.csv} of the test split dir, and the missing pieces."""
    split_dir = _child(root, "EmoLabel_DataSplit", "EmoLabelDataSplit", "DataSplit", "Split")
    if split_dir is None:
        return {}, ["EmoLabel_DataSplit/"]
    tests = [p for p in sorted(split_dir.iterdir()) if p.is_dir() and _norm(p.name).startswith("test")]
    tests.sort(key=lambda p: "single" not in _norm(p.name))
    if not tests:
        return {}, [f"{split_dir.name}/test(single-labeled)/"]
    sets: dict[int, Path] = {}
    for p in sorted(tests[0].iterdir()):
        m = re.fullmatch(r"set_?(\d+)\.csv", p.name.lower())
        if m:
            sets[int(m.group(1))] = p
    missing = [f"{split_dir.name}/{tests[0].name}/set_{k}.csv" for k in range(1, 6) if k not in sets]
    return sets, missing


def _read_split(path: Path) -> list[tuple[str, int | None]]:
    """(clip_id, 1-based label or None) per row of a video_name,label csv."""
    out = []
    for i, row in enumerate(_read_table(path)):
        if not row or not str(row[0]).strip():
            continue
        if i == 0 and not re.fullmatch(r"\d+(\.0+)?", str(row[0]).strip()):
            continue  # header
        label = None
        if len(row) > 1 and re.fullmatch(r"\d+(\.0+)?", str(row[1]).strip()):
            label = int(float(row[1]))
        out.append((normalise_id(str(row[0])), label))
    return out


def _list_sources(clip_dir: Path | None, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """{clip_id: relative path} of raw videos and of frame folders."""
    videos: dict[str, str] = {}
    frames: dict[str, str] = {}
    if clip_dir is None:
        return videos, frames
    orig = _child(clip_dir, "original", "videos", "video")
    if orig is not None:
        for p in sorted(orig.iterdir()):
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
                cid = normalise_id(p.stem)
                if cid not in videos or p.suffix.lower() == ".mp4":
                    videos[cid] = p.relative_to(root).as_posix()
    frame_dirs = [p for p in sorted(clip_dir.iterdir()) if p.is_dir() and _norm(p.name).startswith("clip")]
    frame_dirs.sort(key=lambda p: _norm(p.name) != "clip224x224")
    if frame_dirs:
        for p in sorted(frame_dirs[0].iterdir()):
            if p.is_dir():
                frames[normalise_id(p.name)] = p.relative_to(root).as_posix()
    return videos, frames


def index_dfew(root: Path, cfg: IndexConfig) -> IndexResult:
    """DFEW directory -> clips (votes, soft, label, part, source) and index rejects."""
    if len(cfg.classes) != 7:
        raise LayoutError(f"DFEW has 7 classes; index.classes has {len(cfg.classes)}: {cfg.classes}")
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a directory")
    missing: list[str] = []
    ann_path = _find_annotation(root)
    if ann_path is None:
        missing.append("Annotation/annotation.xlsx (or annotation.csv)")
    sets, missing_sets = _find_test_sets(root)
    missing += missing_sets
    clip_dir = _child(root, "Clip", "Clips")
    videos, frames = _list_sources(clip_dir, root)
    if cfg.source in ("videos", "auto") and not videos and (cfg.source == "videos" or not frames):
        missing.append("Clip/original/*.mp4 (raw clips)")
    if cfg.source == "frames" and not frames or cfg.source == "auto" and not videos and not frames:
        missing.append("Clip/clip_224x224/<clip>/ (frame folders)")
    if missing:
        raise LayoutError(
            f"{root} is not a recognised DFEW copy; missing: " + "; ".join(missing)
            + ". Expected Annotation/annotation.xlsx, EmoLabel_DataSplit/test(single-labeled)/set_1..5.csv"
            " and Clip/original/ or Clip/clip_224x224/ (see README, 'Dataset layouts')."
        )
    assert ann_path is not None
    rows = _read_table(ann_path)
    if not rows:
        raise LayoutError(f"{ann_path} is empty")
    header = [_norm(str(h)) if h is not None else "" for h in rows[0]]
    id_col = next((header.index(h) for h in _ID_HEADERS if h in header), None)
    class_cols: list[int] = []
    for name in cfg.classes:
        col = next((i for i, h in enumerate(header) if re.sub(r"\d", "", h) == name), None)
        if col is None:
            raise LayoutError(f"{ann_path}: no vote column for class {name!r}; header is {rows[0]!r}")
        class_cols.append(col)
    if id_col is None:
        raise LayoutError(f"{ann_path}: no clip id column (order / video_name); header is {rows[0]!r}")
    label_col = header.index("label") if "label" in header else None

    # Parts: the test set of fold K is part K.
    folds_of: dict[str, list[int]] = defaultdict(list)
    split_label: dict[str, int] = {}
    for k, path in sorted(sets.items()):
        for cid, lab in _read_split(path):
            folds_of[cid].append(k)
            if lab is not None:
                split_label[cid] = lab

    result = IndexResult()
    seen_rows: dict[str, list[int]] = defaultdict(list)
    for rownum, row in enumerate(rows[1:], start=2):
        if not row or all(v is None or str(v).strip() == "" for v in row):
            continue
        raw_id = row[id_col] if id_col < len(row) else None
        if raw_id is None or str(raw_id).strip() == "":
            result.rejects.append(make_reject("", "", "index", f"{ann_path.name} row {rownum}: no clip id"))
            continue
        seen_rows[normalise_id(str(raw_id))].append(rownum)

    duplicated = {cid for cid, rs in seen_rows.items() if len(rs) > 1}
    for cid in sorted(duplicated):
        result.rejects.append(
            make_reject(cid, "", "index", f"duplicate clip id in {ann_path.name} rows {seen_rows[cid]}")
        )
    annotated: set[str] = set()
    for rownum, row in enumerate(rows[1:], start=2):
        if not row or all(v is None or str(v).strip() == "" for v in row):
            continue
        raw_id = row[id_col] if id_col < len(row) else None
        if raw_id is None or str(raw_id).strip() == "":
            continue
        cid = normalise_id(str(raw_id))
        annotated.add(cid)
        if cid in duplicated:
            continue
        kind, source = _pick_source(cid, videos, frames, cfg.source)
        try:
            votes, soft = check_votes([row[c] if c < len(row) else None for c in class_cols], 7)
        except ValueError as e:
            result.rejects.append(make_reject(cid, source, "index", f"{ann_path.name} row {rownum}: {e}"))
            continue
        if votes is None:
            result.rejects.append(
                make_reject(cid, source, "index", f"{ann_path.name} row {rownum}: votes are not whole numbers")
            )
            continue
        folds = folds_of.get(cid, [])
        if len(folds) > 1:
            result.rejects.append(make_reject(cid, source, "index", f"listed in test folds {folds}"))
            continue
        if not source:
            looked = "Clip/original" if cfg.source == "videos" else (
                "Clip/clip_224x224" if cfg.source == "frames" else "Clip/original, Clip/clip_224x224")
            result.rejects.append(make_reject(cid, "", "index", f"annotated clip has no file (looked in {looked})"))
            continue
        label = _label(row, label_col, split_label.get(cid))
        result.clips.append(make_clip(cid, source, kind, votes, soft, label, folds[0] if folds else 0))

    chosen = videos if cfg.source == "videos" or (cfg.source == "auto" and videos) else frames
    result.unannotated = sorted(set(chosen) - annotated)
    if result.unannotated:
        logger.warning("%d clip files have no annotation row and are skipped", len(result.unannotated))
    return result


def _pick_source(cid: str, videos: dict[str, str], frames: dict[str, str], mode: str) -> tuple[str, str]:
    if mode in ("videos", "auto") and cid in videos:
        return "video", videos[cid]
    if mode in ("frames", "auto") and cid in frames:
        return "frames", frames[cid]
    return "", ""


def _label(row: list[Any], label_col: int | None, split_label: int | None) -> int:
    """0-based label, -1 when the clip is not single-labelled (DFEW label 0)."""
    value: Any = row[label_col] if label_col is not None and label_col < len(row) else None
    try:
        lab = int(float(value)) if value is not None and str(value).strip() != "" else None
    except ValueError:
        lab = None
    if lab is None or lab == 0:
        lab = split_label if split_label else 0
    return lab - 1 if 1 <= lab <= 7 else -1
