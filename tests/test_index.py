"""Index stage: DFEW layout variants, bad rows -> rejects, the manifest adapter."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.config import IndexConfig
from pipeline.errors import LayoutError
from pipeline.index import index_dataset

HEADER = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear", "label"]


def make_tree(root: Path, rows: list[list], folds: dict[int, list[int]], *, ann: str = "xlsx",
              spelling: str = "single-labeled", videos: list[int] | None = None,
              frames: list[int] | None = None, frame_names: str = "dfew", pad: bool = True) -> Path:
    """A DFEW-shaped tree; files are empty (the index only looks at names)."""
    (root / "Annotation").mkdir(parents=True)
    if ann == "xlsx":
        import openpyxl

        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(HEADER)
        for r in rows:
            ws.append(r)
        wb.save(root / "Annotation" / "annotation.xlsx")
    else:
        with open(root / "Annotation" / "annotation.csv", "w", newline="") as f:
            csv.writer(f).writerows([HEADER, *rows])
    for split in ("train", "test"):
        d = root / "EmoLabel_DataSplit" / f"{split}({spelling})"
        d.mkdir(parents=True)
        for k in range(1, 6):
            ids = folds.get(k, []) if split == "test" else [i for j, v in folds.items() if j != k for i in v]
            label = {r[0]: r[8] for r in rows if isinstance(r[0], int)}
            with open(d / f"set_{k}.csv", "w") as f:
                f.write("video_name,label\n" + "".join(f"{i},{label.get(i, 1)}\n" for i in ids))
    for i in videos or []:
        p = root / "Clip" / "original" / (f"{i:05d}.mp4" if pad else f"{i}.mp4")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    for i in frames or []:
        d = root / "Clip" / "clip_224x224" / (f"{i:05d}" if pad else str(i))
        d.mkdir(parents=True)
        for t in range(1, 4):
            (d / (f"{i:05d}_{t:05d}.jpg" if frame_names == "dfew" else f"{t}.jpg")).write_bytes(b"")
    return root


def good_rows(n: int) -> list[list]:
    rows = []
    for i in range(1, n + 1):
        votes = [0] * 7
        votes[i % 7] = 7
        votes[(i + 1) % 7] = 3
        rows.append([i, *votes, i % 7 + 1])
    return rows


FOLDS = {k: [k, k + 5] for k in range(1, 6)}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"ann": "csv"},
        {"spelling": "single_labeled"},
        {"pad": False},
        {"frame_names": "plain", "videos": [], "frames": list(range(1, 11))},
    ],
    ids=["xlsx", "csv-annotation", "single_labeled", "unpadded-names", "frames-1.jpg"],
)
def test_dfew_variants_index_the_same(tmp_path, variant):
    kw = {"videos": list(range(1, 11))} | variant
    root = make_tree(tmp_path / "dfew", good_rows(10), FOLDS, **kw)
    res = index_dataset(root, IndexConfig())
    assert [c["clip_id"] for c in res.clips] == [f"{i:05d}" for i in range(1, 11)]
    assert res.rejects == [] and res.unannotated == []
    c = res.clips[0]  # clip 1: 7 votes for class 1, 3 for class 2
    assert c["votes"] == [0, 7, 3, 0, 0, 0, 0] and c["soft"] == pytest.approx([0, 0.7, 0.3, 0, 0, 0, 0])
    assert c["label"] == 1 and c["part"] == 1
    assert {c["part"] for c in res.clips} == {1, 2, 3, 4, 5}
    kind = "frames" if variant.get("frames") else "video"
    assert all(c["source_kind"] == kind for c in res.clips)


def test_source_auto_prefers_videos_and_frames_fill_gaps(tmp_path):
    root = make_tree(tmp_path / "dfew", good_rows(5), FOLDS, videos=[1, 2], frames=[1, 2, 3, 4, 5])
    res = index_dataset(root, IndexConfig())
    kinds = {c["clip_id"]: c["source_kind"] for c in res.clips}
    assert kinds == {"00001": "video", "00002": "video", "00003": "frames", "00004": "frames", "00005": "frames"}
    res = index_dataset(root, IndexConfig(source="frames"))
    assert {c["source_kind"] for c in res.clips} == {"frames"}
    res = index_dataset(root, IndexConfig(source="videos"))
    assert [c["clip_id"] for c in res.clips] == ["00001", "00002"]
    assert sorted(r["clip_id"] for r in res.rejects) == ["00003", "00004", "00005"]
    assert all("no file" in r["error"] for r in res.rejects)


def test_bad_rows_end_in_rejects_with_reason(tmp_path):
    rows = good_rows(6)
    rows.append([7, None, 1, 1, 1, 1, 1, 1, 0])  # missing votes
    rows.append([8, 0, 0, 0, 0, 0, 0, 0, 0])  # all zero
    rows.append([9, 5, -1, 6, 0, 0, 0, 0, 3])  # negative
    rows.append([10, 5, 5, 0, 0, 0, 0, 0, 0])  # annotated, but no file
    rows.append([11, 5, 5, 0, 0, 0, 0, 0, 0])  # duplicate id ...
    rows.append([11, 0, 5, 5, 0, 0, 0, 0, 0])  # ... twice
    rows.append([12, 2, 8, 0, 0, 0, 0, 0, 2])  # listed in two test folds
    rows.append([13, "x", 8, 0, 0, 0, 0, 0, 2])  # not a number
    folds = {1: [1, 12], 2: [2, 12], 3: [3], 4: [4], 5: [5]}
    root = make_tree(tmp_path / "dfew", rows, folds, videos=[*range(1, 10), 11, 12, 13, 99])
    res = index_dataset(root, IndexConfig())
    # the first row of a duplicated id is kept, the later one rejected naming both rows
    assert [c["clip_id"] for c in res.clips] == [*(f"{i:05d}" for i in range(1, 7)), "00011"]
    assert next(c for c in res.clips if c["clip_id"] == "00011")["votes"] == [5, 5, 0, 0, 0, 0, 0]
    why = {r["clip_id"]: r["error"] for r in res.rejects}
    assert all(r["stage"] == "index" for r in res.rejects)
    assert "missing votes" in why["00007"]
    assert "all votes are zero" in why["00008"]
    assert "negative" in why["00009"]
    assert "no file" in why["00010"]
    assert "duplicate clip id" in why["00011"] and "row 12" in why["00011"] and "row 13" in why["00011"]
    assert "two" in why["00012"] or "folds [1, 2]" in why["00012"]
    assert "not numbers" in why["00013"]
    assert res.unannotated == ["00099"]  # a file with no annotation row is skipped and counted


def test_unrecognised_layout_lists_every_missing_piece(tmp_path):
    (tmp_path / "dfew" / "Clip").mkdir(parents=True)
    with pytest.raises(LayoutError) as e:
        index_dataset(tmp_path / "dfew", IndexConfig())
    msg = str(e.value)
    assert "not a recognised DFEW copy" in msg
    assert "Annotation/annotation.xlsx" in msg and "EmoLabel_DataSplit" in msg and "Clip/original" in msg


def test_missing_test_fold_files_are_named(tmp_path):
    root = make_tree(tmp_path / "dfew", good_rows(10), FOLDS, videos=list(range(1, 11)))
    (root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_4.csv").unlink()
    with pytest.raises(LayoutError, match=r"set_4\.csv"):
        index_dataset(root, IndexConfig())


def test_missing_class_column_is_fatal(tmp_path):
    root = make_tree(tmp_path / "dfew", good_rows(3), FOLDS, ann="csv", videos=[1, 2, 3])
    p = root / "Annotation" / "annotation.csv"
    p.write_text(p.read_text().replace("7fear", "7scared"))
    with pytest.raises(LayoutError, match="no vote column for class 'fear'"):
        index_dataset(root, IndexConfig())


def test_limit_keeps_first_clips(tmp_path):
    root = make_tree(tmp_path / "dfew", good_rows(10), FOLDS, videos=list(range(1, 11)))
    assert len(index_dataset(root, IndexConfig(limit=3)).clips) == 3


def test_manifest_adapter_votes_probabilities_parts(tmp_path):
    (tmp_path / "vids").mkdir()
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / "vids" / f"{name}.mp4").write_bytes(b"")
    classes = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
    rows = [
        ["vids/a.mp4", "", 3, 1, 0, 0, 0, 0, 0, 1],
        ["vids/b.mp4", "clipB", 0.5, 0.5, 0, 0, 0, 0, 0, 2],
        ["vids/c.mp4", "", 0, 0, 0, 0, 0, 0, 0, ""],  # all zero -> reject
        ["vids/missing.mp4", "", 1, 0, 0, 0, 0, 0, 0, ""],  # no file -> reject
        ["vids/d.mp4", "", 1, 0, 0, 0, 0, 0, 0, 9],  # part out of range -> reject
    ]
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "clip_id", *classes, "part"], *rows])
    res = index_dataset(path, IndexConfig())
    got = {c["clip_id"]: c for c in res.clips}
    assert set(got) == {"a", "clipB"}
    assert got["a"]["votes"] == [3, 1, 0, 0, 0, 0, 0] and got["a"]["label"] == 0 and got["a"]["part"] == 1
    assert got["clipB"]["votes"] is None and got["clipB"]["soft"][:2] == [0.5, 0.5] and got["clipB"]["label"] == -1
    why = {r["clip_id"]: r["error"] for r in res.rejects}
    assert "all votes are zero" in why["c"] and "no video file" in why["missing"] and "part 9" in why["d"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"path": "vids/e.mp4", **dict.fromkeys(classes, 1), "fold": 3}]),
                   tmp_path / "m.parquet")
    res = index_dataset(tmp_path / "m.parquet", IndexConfig())
    assert res.clips[0]["clip_id"] == "e" and res.clips[0]["part"] == 3


def test_manifest_missing_columns_named(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,happy\nx.mp4,1\n")
    with pytest.raises(LayoutError, match=r"lacks columns \['path', 'sad'"):
        index_dataset(path, IndexConfig())
