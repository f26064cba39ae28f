"""Issue 12, input rows: annotation and split parsing, formula cells, odd clip ids, alpha.

Each case runs against real files (xlsx written by openpyxl, csv files, make-sample mp4s) and
ends either in correct output or in one LayoutError / ConfigError line naming the file and
what to do, raised before any work; through the CLI that is one `Error:` line, exit code != 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.config import ConfigError, IndexConfig, MixConfig, StreamConfig, TrainConfig, load_config
from pipeline.datasets.records import mixed_key, sample_key
from pipeline.errors import LayoutError
from pipeline.index import index_dataset

CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
DFEW_HEADER = ["order", *(f"{i + 1}{c}" for i, c in enumerate(CLASSES)), "label"]
N = 10
FOLDS = {k: [k, k + 5] for k in range(1, 6)}


def _votes(i: int) -> list[int]:
    v = [0] * 7
    v[i % 7], v[(i + 1) % 7] = 7, 3
    return v


def _rows(n: int = N) -> list[list]:
    """[id, 7 votes, 1-based label]: a clear majority for class i % 7."""
    return [[i, *_votes(i), i % 7 + 1] for i in range(1, n + 1)]


def _xlsx(path: Path, rows: list[list]) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    wb.save(path)
    return path


def _split_text(ids: list, label_of: dict, sep: str = ",") -> str:
    return sep.join(["video_name", "label"]) + "\n" + "".join(f"{i}{sep}{label_of[i]}\n" for i in ids)


def dfew(root: Path, rows: list[list] | None = None, header: list | None = None, *, ann: str = "xlsx",
         folds: dict[int, list] | None = None) -> Path:
    """A DFEW-shaped tree (empty mp4 files: the index only looks at names); labels in the split files agree."""
    rows = _rows() if rows is None else rows
    folds = FOLDS if folds is None else folds
    (root / "Annotation").mkdir(parents=True)
    table = [header or DFEW_HEADER, *rows]
    if ann == "xlsx":
        _xlsx(root / "Annotation" / "annotation.xlsx", table)
    else:
        with open(root / "Annotation" / "annotation.csv", "w", newline="") as f:
            csv.writer(f).writerows(table)
    at = table[0].index("label")
    label_of = {r[0]: r[at] for r in rows}
    for split in ("train", "test"):
        d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        d.mkdir(parents=True)
        for k in range(1, 6):
            ids = folds.get(k, []) if split == "test" else [i for j, v in folds.items() if j != k for i in v]
            (d / f"set_{k}.csv").write_text(_split_text(ids, label_of))
    (root / "Clip" / "original").mkdir(parents=True)
    for r in rows:
        cid = f"{r[0]:05d}" if isinstance(r[0], int) else str(r[0])
        (root / "Clip" / "original" / f"{cid}.mp4").write_bytes(b"")
    return root


def _test_set(root: Path, k: int) -> Path:
    return root / "EmoLabel_DataSplit" / "test(single-labeled)" / f"set_{k}.csv"


def _by_id(res) -> dict[str, dict]:
    return {c["clip_id"]: c for c in res.clips}


def _cli_error(args: list[str]) -> str:
    """Run midas-prep; it must fail with exactly one `Error:` line and no traceback. Returns that line."""
    from pipeline.cli import main

    r = CliRunner().invoke(main, args)
    assert r.exit_code not in (0, None) and not isinstance(r.exception, (AssertionError, KeyError, TypeError))
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) == 1, r.output
    return errors[0]


# 1. vote columns by DFEW's names, not by position


def test_an_extra_percent_column_before_the_votes_is_not_taken_as_votes(tmp_path):
    """`Neutral %` is not a DFEW name ('%' is not a separator), so it is ignored wherever it stands."""
    rows = _rows()
    header = ["order", "Neutral %", *DFEW_HEADER[1:]]
    root = dfew(tmp_path / "dfew", [[r[0], 0.3, *r[1:]] for r in rows], header)
    res = index_dataset(root, IndexConfig())
    got = _by_id(res)
    assert len(got) == N and res.rejects == []
    for r in rows:
        c = got[f"{r[0]:05d}"]
        assert c["votes"] == r[1:8] and c["label"] == r[8] - 1


@pytest.mark.parametrize("spell", [
    lambda i, c: c,  # happy
    lambda i, c: c.upper(),  # HAPPY
    lambda i, c: f"{i}_{c}",  # 1_happy
    lambda i, c: f"{i} {c.title()}",  # 1 Happy
], ids=["happy", "HAPPY", "1_happy", "1 Happy"])
def test_vote_columns_are_found_by_name_in_any_order_and_spelling(tmp_path, spell):
    rows = _rows()
    order = [6, 0, 3, 1, 5, 2, 4]  # columns shuffled: position means nothing
    header = ["video_name", "label", *(spell(j + 1, CLASSES[j]) for j in order)]
    shuffled = [[r[0], r[8], *(r[1 + j] for j in order)] for r in rows]
    root = dfew(tmp_path / "dfew", shuffled, header, ann="csv")
    got = _by_id(index_dataset(root, IndexConfig()))
    assert {cid: c["votes"] for cid, c in got.items()} == {f"{r[0]:05d}": r[1:8] for r in rows}


def test_two_columns_naming_one_class_is_an_error_naming_both(tmp_path):
    header = ["order", "neutral", *DFEW_HEADER[1:]]
    root = dfew(tmp_path / "dfew", [[r[0], 1, *r[1:]] for r in _rows()], header)
    with pytest.raises(LayoutError, match=r"annotation\.xlsx.*'neutral' \(columns 'neutral', '3neutral'\).*rename"):
        index_dataset(root, IndexConfig())


def test_missing_vote_columns_are_all_listed(tmp_path):
    header = [h for h in DFEW_HEADER if h not in ("2sad", "7fear")]
    rows = [[r[0], r[1], *r[3:8], r[8]] for r in _rows()]
    root = dfew(tmp_path / "dfew", rows, header)
    with pytest.raises(LayoutError, match=r"annotation\.xlsx: no vote column for classes 'sad', 'fear'.*1happy"):
        index_dataset(root, IndexConfig())
    line = _cli_error(["build-shards", str(root), "--dry-run", "--out", str(tmp_path / "s")])
    assert "no vote column for classes 'sad', 'fear'" in line


# 2. labels: range and agreement between files


@pytest.mark.parametrize("bad", [8, -1, "x", 2.5])
def test_annotation_label_out_of_range_is_an_error_naming_file_row_value(tmp_path, bad):
    rows = _rows()
    rows[3][8] = bad  # clip 4, sheet row 5
    root = dfew(tmp_path / "dfew", rows, folds={k: [k + 5] for k in range(1, 6)})
    with pytest.raises(LayoutError) as e:
        index_dataset(root, IndexConfig())
    msg = str(e.value)
    assert "annotation.xlsx" in msg and "row 5" in msg and f"label {bad!r}" in msg and "0..7" in msg
    assert "\n" not in msg
    line = _cli_error(["build-shards", str(root), "--out", str(tmp_path / "shards")])  # a real run, not a dry one
    assert "row 5" in line and not (tmp_path / "shards").exists()  # nothing was started


def test_split_label_disagreeing_with_annotation_names_both_files_clip_and_values(tmp_path):
    root = dfew(tmp_path / "dfew")
    p = _test_set(root, 2)  # clips 2 and 7
    p.write_text(p.read_text().replace("7,1\n", "7,5\n"))
    with pytest.raises(LayoutError) as e:
        index_dataset(root, IndexConfig())
    msg = str(e.value)
    assert "clip '00007'" in msg and "annotation.xlsx row 8 says label 1" in msg
    assert "test(single-labeled)/set_2.csv row 3 says 5" in msg
    line = _cli_error(["build-shards", str(root), "--dry-run", "--out", str(tmp_path / "s")])
    assert "set_2.csv row 3 says 5" in line


def test_split_label_for_a_clip_the_annotation_calls_not_single_labelled_is_a_disagreement(tmp_path):
    rows = _rows()
    rows[0][8] = 0  # clip 1: "no single label" in the annotation, but the split file gives it label 2
    root = dfew(tmp_path / "dfew", rows)
    for p in (root / "EmoLabel_DataSplit").glob("*/set_*.csv"):
        p.write_text(p.read_text().replace("\n1,0\n", "\n1,2\n"))
    with pytest.raises(LayoutError, match=r"clip '00001': annotation\.xlsx row 2 says label 0"):
        index_dataset(root, IndexConfig())


def test_a_train_split_file_contradicting_the_annotation_is_an_error_too(tmp_path):
    root = dfew(tmp_path / "dfew")
    p = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"  # clips 2..5, 7..10
    p.write_text(p.read_text().replace("\n3,4\n", "\n3,6\n"))
    with pytest.raises(LayoutError, match=r"clip '00003': annotation\.xlsx row 4 says label 4, "
                                          r"train\(single-labeled\)/set_1\.csv row \d says 6"):
        index_dataset(root, IndexConfig())


def test_split_label_out_of_range_is_an_error_naming_the_split_file(tmp_path):
    root = dfew(tmp_path / "dfew")
    p = _test_set(root, 4)
    p.write_text(p.read_text().replace("9,3\n", "9,8\n"))
    with pytest.raises(LayoutError, match=r"set_4\.csv: row 3: label '8' of clip '9' is not one of 1\.\.7"):
        index_dataset(root, IndexConfig())


# 3. split files: separators, empty folds, unreadable files


@pytest.mark.parametrize("sep", [";", "\t"])
def test_split_file_with_semicolons_or_tabs_is_read_like_the_comma_one(tmp_path, sep):
    ref = index_dataset(dfew(tmp_path / "ref"), IndexConfig())
    root = dfew(tmp_path / "dfew")
    p = _test_set(root, 3)
    p.write_text(p.read_text().replace(",", sep))
    res = index_dataset(root, IndexConfig())
    assert res.clips == ref.clips and res.rejects == []
    assert sorted(c["clip_id"] for c in res.clips if c["part"] == 3) == ["00003", "00008"]


def test_annotation_csv_with_semicolons_is_read(tmp_path):
    ref = index_dataset(dfew(tmp_path / "ref", ann="csv"), IndexConfig())
    root = dfew(tmp_path / "dfew", ann="csv")
    p = root / "Annotation" / "annotation.csv"
    p.write_text(p.read_text().replace(",", ";"))
    assert index_dataset(root, IndexConfig()).clips == ref.clips


@pytest.mark.parametrize("content", ["video_name,label\n", "", "\n\n"], ids=["header-only", "empty", "blank-lines"])
def test_an_empty_test_fold_is_an_error_naming_the_file(tmp_path, content):
    root = dfew(tmp_path / "dfew")
    _test_set(root, 3).write_text(content)
    with pytest.raises(LayoutError, match=r"set_3\.csv: no clips: this test fold would be empty"):
        index_dataset(root, IndexConfig())
    line = _cli_error(["build-shards", str(root), "--dry-run", "--out", str(tmp_path / "s")])
    assert "set_3.csv" in line and "empty" in line


def test_a_split_file_no_separator_parses_is_an_error_not_an_empty_fold(tmp_path):
    root = dfew(tmp_path / "dfew")
    p = _test_set(root, 3)
    p.write_text(p.read_text().replace(",", "|"))
    with pytest.raises(LayoutError, match=r"set_3\.csv: none of its \d+ clips .* so test fold 3 would be empty"):
        index_dataset(root, IndexConfig())


def test_a_binary_split_file_is_an_error_naming_it(tmp_path):
    root = dfew(tmp_path / "dfew")
    _test_set(root, 5).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage")
    with pytest.raises(LayoutError, match=r"set_5\.csv: not a UTF-8 text csv"):
        index_dataset(root, IndexConfig())


def test_a_split_row_not_in_the_annotation_is_skipped_and_the_fold_kept(tmp_path, caplog):
    root = dfew(tmp_path / "dfew")
    p = _test_set(root, 2)
    p.write_text(p.read_text() + "99,1\n")
    res = index_dataset(root, IndexConfig())
    assert sorted(c["clip_id"] for c in res.clips if c["part"] == 2) == ["00002", "00007"]
    assert "00099" in caplog.text and "no row in annotation.xlsx" in caplog.text


def test_an_xlsx_that_is_not_a_workbook_is_an_error(tmp_path):
    root = dfew(tmp_path / "dfew")
    (root / "Annotation" / "annotation.xlsx").write_text("order,1happy\n")
    with pytest.raises(LayoutError, match=r"annotation\.xlsx: cannot be read as an xlsx workbook"):
        index_dataset(root, IndexConfig())


# 4. cells holding formulas


def _formula_rows() -> list[list]:
    """Clip 4's votes are formulas (=3+4, =1+2 for 7 and 3); everything else plain numbers."""
    rows = _rows()
    r = rows[3]
    r[1:8] = [f"={v - 1}+1" if v else 0 for v in r[1:8]]
    return rows


def test_formula_cells_without_saved_values_are_named_not_missing_votes(tmp_path):
    root = dfew(tmp_path / "dfew", _formula_rows())  # openpyxl writes formulas with no cached value
    with pytest.raises(LayoutError) as e:
        index_dataset(root, IndexConfig())
    msg = str(e.value)
    # clip 4 is row 5; its votes 7 and 3 are for surprise and disgust -> columns F and G
    assert "annotation.xlsx: cells F5, G5 hold a formula with no saved value" in msg
    assert "open and save the file in Excel/LibreOffice, or export it to csv" in msg
    assert "missing votes" not in msg
    assert "F5, G5" in _cli_error(["build-shards", str(root), "--dry-run", "--out", str(tmp_path / "s")])


def _add_cached_values(path: Path) -> None:
    """What Excel/LibreOffice do on save: store each formula's value beside it (<v>) in the sheet xml."""
    src = zipfile.ZipFile(path)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.startswith("xl/worksheets/"):
                text = data.decode()
                text, n = re.subn(r"<f>(\d+)\+(\d+)</f><v\s*/>",
                                  lambda m: f"<f>{m[1]}+{m[2]}</f><v>{int(m[1]) + int(m[2])}</v>", text)
                assert n == 2
                data = text.encode()
            z.writestr(info, data)
    src.close()
    path.write_bytes(out.getvalue())


def test_formula_cells_with_saved_values_are_read_as_those_values(tmp_path):
    ref = index_dataset(dfew(tmp_path / "ref"), IndexConfig())
    root = dfew(tmp_path / "dfew", _formula_rows())
    _add_cached_values(root / "Annotation" / "annotation.xlsx")
    res = index_dataset(root, IndexConfig())
    assert res.clips == ref.clips and res.rejects == []
    assert _by_id(res)["00004"]["votes"] == [0, 0, 0, 0, 7, 3, 0]


# 5. clip ids with a space, a dot, a tab


ODD_IDS = ["a b", "a.b", "a\tb", "x%41.y", "xA.y", "ü/é", "a_b", "c", "a", "b_c"]


def test_sample_key_is_safe_deterministic_and_collision_free():
    keys = [sample_key(c) for c in ODD_IDS]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_%-]+", k) for k in keys)
    assert sample_key("00001") == "00001" and sample_key("a b") == "a%20b" and sample_key("a.b") == "a%2Eb"
    assert [sample_key(c) for c in ODD_IDS] == keys
    # a_b + c and a + b_c would both read a_b_c_c0 if the parts were only joined
    assert mixed_key("a_b", "c", 0) != mixed_key("a", "b_c", 0)
    assert mixed_key("00001", "00002", 3) == "00001_00002_c3"
    with pytest.raises(ValueError):
        sample_key("")


@pytest.fixture(scope="module")
def odd_build(sample, ray_session, tmp_path_factory):
    """make-sample mp4s copied under clip ids holding a space, a dot, a tab (and one plain id), built.

    The session's make-sample set is reused (`sample` is set up before Ray) rather than rendered here:
    rendering in this process starts OpenCV's thread pool, and a later forking make-sample then hangs."""
    from pipeline.build import build_shards
    from pipeline.config import BuildConfig

    root = tmp_path_factory.mktemp("odd") / "dfew"
    ids = {1: "a b", 2: "a.b", 3: "a\tb", 4: "c.d e", 5: "plain_5", 6: "00006"}
    src = {n: f"{n:05d}" for n in range(1, 6)} | {6: sample.corrupt[0]}  # clip 6: make-sample's truncated mp4
    (root / "Clip" / "original").mkdir(parents=True)
    for n, cid in ids.items():
        shutil.copyfile(sample.root / "Clip" / "original" / f"{src[n]}.mp4", root / "Clip" / "original" / f"{cid}.mp4")
    (root / "Annotation").mkdir()
    rows = [[cid, *_votes(n), n % 7 + 1] for n, cid in ids.items()]
    _xlsx(root / "Annotation" / "annotation.xlsx", [DFEW_HEADER, *rows])
    label_of = {r[0]: r[-1] for r in rows}
    _test_set(root, 1).parent.mkdir(parents=True)
    for k in range(1, 6):
        with open(_test_set(root, k), "w", newline="") as f:
            csv.writer(f).writerows([["video_name", "label"], [ids[k], label_of[ids[k]]]])
    out = root.parent / "shards"
    cfg = load_config(BuildConfig, None, {
        "dataset_root": str(root), "write.out": str(out), "ray.workers": 2, "decode.num_frames": 4,
        "align.detector": "none", "align.frame_size": 32})
    summary = build_shards(cfg)
    return out, ids, summary


def test_odd_clip_ids_build_and_keep_their_ids(odd_build):
    import pyarrow.parquet as pq

    out, ids, summary = odd_build
    clips = {c["clip_id"]: c for c in pq.read_table(out / "clips.parquet").to_pylist()}
    assert set(clips) == set(ids.values())
    written = {cid for cid, c in clips.items() if c["status"] == "written"}
    assert written == {"a b", "a.b", "a\tb", "c.d e", "plain_5"}  # 00006 is the truncated mp4
    assert {cid: clips[cid]["part"] for cid in written} == {"a b": 1, "a.b": 2, "a\tb": 3, "c.d e": 4, "plain_5": 5}


def test_odd_clip_ids_verify_mix_read_and_stream(odd_build):
    from pipeline.config import RayConfig
    from pipeline.mix import mix_offline
    from pipeline.read import SampleReader, open_index
    from pipeline.stream import create_loader
    from pipeline.verify import verify_shards

    out, ids, _ = odd_build
    written = ["a b", "a.b", "a\tb", "c.d e", "plain_5"]
    report = verify_shards(out)
    assert report.problems == []

    reader = SampleReader(out, open_index(out))
    try:
        assert sorted(reader.keys()) == sorted(sample_key(c) for c in written)
        for cid in written:
            frames, soft, meta = reader.read(sample_key(cid))
            assert meta["clip_id"] == cid and frames.shape == (4, 32, 32, 3) and math.isclose(float(soft.sum()), 1.0,
                                                                                               rel_tol=1e-5)
    finally:
        reader.close()

    mix_offline(MixConfig(shards=str(out), fold=1, copies=1), RayConfig(workers=1))
    report = verify_shards(out)  # the mixed fold too
    assert report.problems == [] and any("mixed" in i for i in report.indexes)
    mdir = out / "mixed" / "fold=1"
    mreader = SampleReader(mdir, json.loads((mdir / "index.json").read_text()))
    try:
        keys = mreader.keys()
        assert len(keys) == 4  # fold 1 trains on parts 2..5
        sources = set()
        for k in keys:
            _, soft, meta = mreader.read(k)
            sources |= {s["clip_id"] for s in meta["sources"]}
            assert k == mixed_key(meta["sources"][0]["clip_id"], meta["sources"][1]["clip_id"], 0)
        assert sources <= {"a.b", "a\tb", "c.d e", "plain_5"} and "a b" not in sources
    finally:
        mreader.close()

    seen = []
    for split in ("test", "train"):
        loader = create_loader(str(out), fold=1, split=split, batch_size=1, device="cpu", py_workers=1, mix=False,
                               augment=False, last_batch="partial", offline_mixed=split == "train")
        for batch in loader:
            for i in batch["sample"][:, 0].tolist():
                seen.append((split, loader.source.read(i)[2]["clip_id"]))
            assert np.isfinite(batch["frames"].numpy()).all()
    assert sorted(c for s, c in seen if s == "test") == ["a b"]
    train = [c for s, c in seen if s == "train"]
    assert sorted(c for c in train if c in written) == sorted(["a.b", "a\tb", "c.d e", "plain_5"])
    assert len(train) == 8  # 4 clips + 4 mixed samples

    from pipeline.inspect import inspect_shards

    inspect_shards(out, out.parent / "sheet.png")  # reads clips and a mixed sample's sources by clip id
    assert (out.parent / "sheet.png").stat().st_size > 0


def test_manifest_accepts_odd_clip_ids(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("a b", "a.b"):
        (tmp_path / "v" / f"{name}.mp4").write_bytes(b"")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "clip_id", *CLASSES, "label"],
                                 ["v/a b.mp4", "", 1, 0, 0, 0, 0, 0, 0, ""],
                                 ["v/a.b.mp4", "a\tb", 0, 1, 0, 0, 0, 0, 0, 9]])
    res = index_dataset(tmp_path / "m.csv", IndexConfig())
    assert [c["clip_id"] for c in res.clips] == ["a b"]
    assert res.rejects[0]["clip_id"] == "a\tb" and "label '9' is neither a class index" in res.rejects[0]["error"]


# 6. alpha


@pytest.mark.parametrize("alpha", [math.inf, 1e308, math.nan, -math.inf, 0.0, -1.0, 1e-9, 1e4])
@pytest.mark.parametrize("cls", [MixConfig, StreamConfig, TrainConfig])
def test_alpha_outside_the_sane_beta_range_is_a_config_error(cls, alpha):
    with pytest.raises(ConfigError, match=r"alpha=.* alpha must be a finite number with 0\.001 <= alpha <= 1000"):
        load_config(cls, None, {"alpha": alpha})


@pytest.mark.parametrize("cls", [MixConfig, StreamConfig, TrainConfig])
def test_alpha_at_the_range_ends_is_accepted(cls):
    assert load_config(cls, None, {"alpha": 1e-3}).alpha == 1e-3
    assert load_config(cls, None, {"alpha": 1e3}).alpha == 1e3


@pytest.mark.parametrize("value", ["inf", "1e308", "nan"])
def test_alpha_through_the_clis_is_one_error_line(tmp_path, value):
    from train.cli import main as train_main

    line = _cli_error(["mix-offline", "--shards", str(tmp_path / "none"), "--alpha", value])
    assert "mix.alpha" in line and "finite" in line
    r = CliRunner().invoke(train_main, ["--shards", str(tmp_path / "none"), "--alpha", value])
    assert r.exit_code == 2 and "Traceback" not in r.output and "train.alpha" in r.output
    assert not (tmp_path / "none").exists()
