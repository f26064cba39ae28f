"""DFEW adapter: annotation.xlsx (or .csv) votes + the 5 test-fold split files + clips.

Copies of DFEW in the wild differ: csv instead of xlsx, `single_labeled` spellings,
frame names `1.jpg` or `00001_00001.jpg`, zero-padded or plain ids. Names are matched
case- and punctuation-insensitively; when the layout is not recognised the error lists
every missing piece at once.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.config import IndexConfig
from pipeline.datasets.records import (
    IndexResult,
    check_votes,
    clean_id,
    first_rows,
    make_clip,
    make_reject,
    normalise_id,
)
from pipeline.errors import LayoutError

__all__ = ["index_dfew", "read_csv", "VIDEO_EXTENSIONS", "FRAME_EXTENSIONS"]

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


class _Table:
    """Rows of an .xlsx (first sheet) or .csv file, header included, and where xlsx formulas lack values."""

    def __init__(self, rows: list[list[Any]], uncached: dict[tuple[int, int], str] | None = None) -> None:
        self.rows = rows
        self.uncached = uncached or {}  # (row index, column index) -> cell name ("D5") of a formula with no value


def _read_table(path: Path) -> _Table:
    if path.suffix.lower() == ".xlsx":
        return _read_xlsx(path)
    return _Table(read_csv(path))


def _read_xlsx(path: Path) -> _Table:
    """Cached values (`data_only`); a second pass finds the cells whose formula has no saved value
    (files written by scripts such as openpyxl): they read as None, which is not "missing votes"."""
    import openpyxl
    from openpyxl.utils import get_column_letter

    def rows(data_only: bool) -> list[list[Any]]:
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=data_only)
        except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException ...: not a workbook
            raise LayoutError(f"{path}: cannot be read as an xlsx workbook ({type(e).__name__}: {e}); "
                              "re-save it from Excel/LibreOffice or export it to csv") from None
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()

    values = rows(True)
    uncached: dict[tuple[int, int], str] = {}
    if any(v is None for r in values for v in r):
        for i, r in enumerate(rows(False)):
            for j, v in enumerate(r):
                if v is not None and (not isinstance(v, (str, int, float)) or str(v).startswith("=")):
                    if i < len(values) and (j >= len(values[i]) or values[i][j] is None):
                        uncached[(i, j)] = f"{get_column_letter(j + 1)}{i + 1}"
    return _Table(values, uncached)


def read_csv(path: Path) -> list[list[str]]:
    """Rows of a csv separated by ',', ';' or tab: the first separator that splits every non-empty row into
    2+ fields (spreadsheets in some locales save ';'); a file no separator splits is read as one column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LayoutError(f"{path}: not a UTF-8 text csv ({e}); export it again as csv (UTF-8)") from None
    except OSError as e:
        raise LayoutError(f"{path}: cannot be read ({e})") from None
    parsed: list[list[str]] = []
    for delim in (",", ";", "\t"):
        try:
            parsed = list(csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True))
        except csv.Error:
            continue
        full = [r for r in parsed if any(c.strip() for c in r)]
        if full and all(len(r) >= 2 for r in full):
            return parsed
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise LayoutError(f"{path}: not a readable csv ({e}); export it again as csv") from None


def _find_annotation(root: Path) -> Path | None:
    ann_dir = _child(root, "Annotation", "Annotations")
    if ann_dir is None:
        return None
    files = [p for p in sorted(ann_dir.iterdir()) if p.is_file() and p.suffix.lower() in (".xlsx", ".csv")]
    files.sort(key=lambda p: (not p.stem.lower().startswith("annotation"), p.suffix.lower() != ".xlsx", p.name))
    return files[0] if files else None


def _find_test_sets(root: Path, which: str = "test") -> tuple[dict[int, Path], list[str]]:
    """{fold: set_K.csv} of the test (or train) split dir, and the missing pieces."""
    split_dir = _child(root, "EmoLabel_DataSplit", "EmoLabelDataSplit", "DataSplit", "Split")
    if split_dir is None:
        return {}, ["EmoLabel_DataSplit/"]
    tests = [p for p in sorted(split_dir.iterdir()) if p.is_dir() and _norm(p.name).startswith(which)]
    tests.sort(key=lambda p: "single" not in _norm(p.name))
    if not tests:
        return {}, [f"{split_dir.name}/{which}(single-labeled)/"]
    sets: dict[int, Path] = {}
    for p in sorted(tests[0].iterdir()):
        m = re.fullmatch(r"set_?(\d+)\.csv", p.name.lower())
        if m:
            sets[int(m.group(1))] = p
    missing = [f"{split_dir.name}/{tests[0].name}/set_{k}.csv" for k in range(1, 6) if k not in sets]
    return sets, missing


_SPLIT_ID_HEADERS = frozenset(_ID_HEADERS + ("file", "filename", "videoid", "path"))
_MAX_LISTED = 5


def _fail(what: str, problems: list[str], hint: str) -> None:
    """One LayoutError line for a list of problems (the first few named, the rest counted)."""
    if problems:
        more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise LayoutError(f"{what}: " + "; ".join(problems[:_MAX_LISTED]) + more + f". {hint}")


def _int_cell(v: Any) -> int | None:
    """An integer-valued cell (3, 3.0, "3", " 3.0 ") -> int; empty -> None; anything else raises ValueError."""
    if v is None or str(v).strip() == "":
        return None
    if isinstance(v, bool) or not re.fullmatch(r"[+-]?\d+(\.0*)?", str(v).strip()):
        raise ValueError(v)
    return int(float(str(v).strip()))


def _read_split(path: Path, label_range: range, test: bool = True) -> list[tuple[int, str, int | None]]:
    """(row number, clip_id, 1-based label or None) per row of a `video_name,label` split file.

    A header is recognised by its names (video_name / label ...), not by "the first cell is not a
    number", so non-numeric clip ids are kept. Bad labels, blank ids and an empty test fold raise
    LayoutError."""
    rows = _read_table(path).rows
    out: list[tuple[int, str, int | None]] = []
    problems: list[str] = []
    first = True
    for rownum, row in enumerate(rows, start=1):
        cells = ["" if v is None else str(v) for v in row]
        if not any(c.strip() for c in cells):
            continue
        if first:
            first = False
            if _norm(cells[0]) in _SPLIT_ID_HEADERS or (len(cells) > 1 and _norm(cells[1]) in ("label", "emotion")):
                continue
        if not cells[0].strip():
            problems.append(f"row {rownum}: no clip id in the first column ({cells!r})")
            continue
        label = None
        if len(cells) > 1:
            try:
                label = _int_cell(cells[1])
            except ValueError:
                label = -999
            if label is not None and label not in label_range:
                problems.append(f"row {rownum}: label {cells[1]!r} of clip {cells[0]!r} is not one of "
                                f"{label_range.start}..{label_range.stop - 1}")
                continue
        out.append((rownum, normalise_id(cells[0]), label))
    _fail(str(path), problems, "Each row must be `video_name,label` with a 1-based DFEW label")
    if not out and test:
        raise LayoutError(f"{path}: no clips: this test fold would be empty. A test split file lists one "
                          "`video_name,label` row per clip (separated by ',', ';' or tab); restore the file")
    return out


def _list_sources(clip_dir: Path | None, root: Path
                  ) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """({clip_id: relative path} of raw videos, of frame folders, {clip_id: files} of ids two
    differently named files claim, e.g. 00001.mp4 and 1.mp4: which one holds the clip cannot be known)."""
    videos: dict[str, str] = {}
    frames: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}
    if clip_dir is None:
        return videos, frames, clashes

    def add(found: dict[str, str], p: Path) -> None:
        cid, rel = normalise_id(p.stem if p.is_file() else p.name), p.relative_to(root).as_posix()
        old = found.get(cid)
        if old is not None and Path(old).stem != (p.stem if p.is_file() else p.name):
            clashes.setdefault(cid, [old]).append(rel)
        if old is None or p.is_file() and p.suffix.lower() == ".mp4" and Path(old).stem == p.stem:
            found[cid] = rel

    orig = _child(clip_dir, "original", "videos", "video")
    if orig is not None:
        for p in sorted(orig.iterdir()):
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
                add(videos, p)
    frame_dirs = [p for p in sorted(clip_dir.iterdir()) if p.is_dir() and _norm(p.name).startswith("clip")]
    frame_dirs.sort(key=lambda p: _norm(p.name) != "clip224x224")
    if frame_dirs:
        for p in sorted(frame_dirs[0].iterdir()):
            if p.is_dir():
                add(frames, p)
    return videos, frames, clashes


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
    videos, frames, clashes = _list_sources(clip_dir, root)
    if cfg.source in ("videos", "auto") and not videos and (cfg.source == "videos" or not frames):
        missing.append("Clip/original/*.mp4 (raw clips)")
    if cfg.source == "frames" and not frames or cfg.source == "auto" and not videos and not frames:
        missing.append("Clip/clip_224x224/<clip>/ (frame folders)")
    if missing:
        raise LayoutError(
            f"{root} is not a recognised DFEW copy; missing: " + "; ".join(missing)
            + ". Expected Annotation/annotation.xlsx, EmoLabel_DataSplit/test(single-labeled)/set_1..5.csv"
            " and Clip/original/ or Clip/clip_224x224/ (see docs/datasets.md)."
        )
    assert ann_path is not None
    table = _read_table(ann_path)
    rows = table.rows
    if not rows:
        raise LayoutError(f"{ann_path} is empty")
    id_col, class_cols, label_col = _annotation_columns(ann_path, rows[0], cfg.classes)
    _check_formulas(ann_path, table, [id_col, *class_cols, *([label_col] if label_col is not None else [])])
    ann_label = _annotation_labels(ann_path, rows, id_col, label_col)

    # Parts: the test set of fold K is part K. Every split row must name an annotated clip and agree on its label.
    folds_of: dict[str, list[int]] = defaultdict(list)
    split_label: dict[str, int] = {}
    problems: list[str] = []
    not_annotated: list[str] = []
    for k, path in sorted(sets.items()):
        where = f"{path.parent.name}/{path.name}"
        split = _read_split(path, range(1, 8))
        if not any(cid in ann_label for _, cid, _ in split):
            raise LayoutError(
                f"{path}: none of its {len(split)} clips (first: {split[0][1]!r}) has a row in {ann_path}, so test "
                f"fold {k} would be empty; check that the file is this dataset's `video_name,label` list"
            )
        for rownum, cid, lab in split:
            folds_of[cid].append(k)
            if cid not in ann_label:
                not_annotated.append(f"{where} row {rownum} ({cid!r})")
                continue
            if lab is None:
                continue
            split_label[cid] = lab
            arow, alab = ann_label[cid]
            if alab is not None and alab != lab:
                problems.append(f"clip {cid!r}: {ann_path.name} row {arow} says label {alab}, "
                                f"{where} row {rownum} says {lab}")
    # The train files are not needed (a fold's training set is every other part) but must not contradict either.
    for path in sorted(_find_test_sets(root, "train")[0].values()):
        where = f"{path.parent.name}/{path.name}"
        for rownum, cid, lab in _read_split(path, range(1, 8), test=False):
            alab = ann_label[cid][1] if cid in ann_label else None
            if lab is not None and alab is not None and alab != lab:
                problems.append(f"clip {cid!r}: {ann_path.name} row {ann_label[cid][0]} says label {alab}, "
                                f"{where} row {rownum} says {lab}")
    if not_annotated:
        logger.warning("%d clips of the test split files have no row in %s and are skipped: %s%s",
                       len(not_annotated), ann_path.name, ", ".join(not_annotated[:_MAX_LISTED]),
                       " ..." if len(not_annotated) > _MAX_LISTED else "")
    _fail(f"{root}: the split files and {ann_path.name} disagree", problems,
          "Fix the file that is wrong (labels are 1-based DFEW labels, 0 = not single-labelled) or restore "
          "the original DFEW files")

    result = IndexResult()
    ids: list[tuple[int, str]] = []
    for rownum, row in enumerate(rows[1:], start=2):
        if not row or all(v is None or str(v).strip() == "" for v in row):
            continue
        raw_id = row[id_col] if id_col < len(row) else None
        if clean_id(raw_id) == "":
            result.rejects.append(make_reject("", "", "index", f"{ann_path.name} row {rownum}: no clip id"))
            continue
        ids.append((rownum, normalise_id(clean_id(raw_id))))
    duplicate = first_rows(ids)  # the later row of an id is rejected, naming both rows
    annotated: set[str] = set()
    for rownum, cid in ids:
        row = rows[rownum - 1]
        annotated.add(cid)
        if rownum in duplicate:
            result.rejects.append(make_reject(cid, "", "index", f"{ann_path.name} row {rownum}: {duplicate[rownum]}"))
            continue
        kind, source = _pick_source(cid, videos, frames, cfg.source)
        if source and cid in clashes and source in clashes[cid]:
            result.rejects.append(make_reject(cid, source, "index", (
                f"clip {cid!r} has {len(clashes[cid])} files: {' and '.join(clashes[cid])}; which one holds the "
                "clip cannot be known: remove or rename the wrong one")))
            continue
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
        alab = ann_label[cid][1]
        lab = alab if alab is not None else split_label.get(cid, 0)
        label = lab - 1 if 1 <= lab <= 7 else -1
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


def _col_key(name: Any) -> str:
    """Header cell -> lower case without spaces, '_', '-', '.': "1_Happy" and "1 happy" -> "1happy".

    Other punctuation stays, so "Neutral %" is not "neutral"."""
    return re.sub(r"[\s_.\-]", "", str(name if name is not None else "").strip().lower())


def _annotation_columns(path: Path, header: list[Any], classes: tuple[str, ...]) -> tuple[int, list[int], int | None]:
    """(id column, vote column per class, label column or None), matched by name.

    A vote column is named like DFEW's ("1happy") or by the bare class name ("happy"), in any case,
    with optional separators ("1_happy", "1 Happy"). Columns with other names ("Neutral %", "notes")
    are ignored, whatever their position; two columns naming one class is an error (which one holds
    the votes cannot be known), as is a class with no column."""
    keys = [_col_key(h) for h in header]
    missing: list[str] = []
    ambiguous: list[str] = []
    class_cols: list[int] = []
    for i, name in enumerate(classes):
        names = {_col_key(name), f"{i + 1}{_col_key(name)}"}
        cols = [j for j, k in enumerate(keys) if k in names]
        if not cols:
            missing.append(repr(name))
        elif len(cols) > 1:
            ambiguous.append(f"{name!r} (columns {', '.join(repr(header[j]) for j in cols)})")
        else:
            class_cols.append(cols[0])
    if missing:
        raise LayoutError(
            f"{path}: no vote column for class{'es' if len(missing) > 1 else ''} {', '.join(missing)}; header is "
            f"{header!r}. Name the vote columns as DFEW does: "
            + ", ".join(f"{i + 1}{c}" for i, c in enumerate(classes))
        )
    if ambiguous:
        raise LayoutError(f"{path}: more than one column names the votes of {'; '.join(ambiguous)}; "
                          "rename or delete the extra column(s)")
    normed = [_norm(str(h)) if h is not None else "" for h in header]
    id_col = next((normed.index(h) for h in _ID_HEADERS if h in normed), None)
    if id_col is None:
        raise LayoutError(f"{path}: no clip id column (order / video_name); header is {header!r}")
    label_col = normed.index("label") if "label" in normed else None
    ignored = [h for j, h in enumerate(header) if j not in (id_col, label_col, *class_cols) and h not in (None, "")]
    if ignored:
        logger.info("%s: ignoring columns %s (not a clip id, label or DFEW vote column)", path.name, ignored)
    return id_col, class_cols, label_col


def _check_formulas(path: Path, table: _Table, cols: list[int]) -> None:
    """Formula cells without a saved value would read as empty: say so, instead of "missing votes"."""
    cells = [name for (i, j), name in sorted(table.uncached.items()) if i > 0 and j in cols]
    if cells:
        more = f" and {len(cells) - _MAX_LISTED} more" if len(cells) > _MAX_LISTED else ""
        shown = ", ".join(cells[:_MAX_LISTED]) + more
        raise LayoutError(
            f"{path}: cell{'s' if len(cells) > 1 else ''} {shown} hold{'' if len(cells) > 1 else 's'} a formula with "
            "no saved value (the file was written by a program that does not compute formulas); open and save the "
            "file in Excel/LibreOffice, or export it to csv"
        )


def _annotation_labels(path: Path, rows: list[list[Any]], id_col: int, label_col: int | None
                       ) -> dict[str, tuple[int, int | None]]:
    """{clip_id: (row number, label 0..7 or None)}; a label outside 0..7 or not an integer is an error."""
    out: dict[str, tuple[int, int | None]] = {}
    problems: list[str] = []
    for rownum, row in enumerate(rows[1:], start=2):
        raw_id = row[id_col] if id_col < len(row) else None
        if raw_id is None or str(raw_id).strip() == "":
            continue
        cid = normalise_id(str(raw_id))
        value = row[label_col] if label_col is not None and label_col < len(row) else None
        try:
            lab = _int_cell(value)
        except ValueError:
            lab = -999
        if lab is not None and not 0 <= lab <= 7:
            problems.append(f"row {rownum} (clip {cid!r}): label {value!r}")
            continue
        # a duplicated id: its first row is kept (its later rows are rejected with both row numbers)
        out.setdefault(cid, (rownum, lab))
    _fail(f"{path}: labels outside 0..7", problems,
          "DFEW labels are 1..7 (1happy..7fear) and 0 for a clip with no single label; fix these cells")
    return out
