"""The bad-input matrix: every case ends written or as a rejects row with a clear reason,
the build goes on, nothing crashes and no clip is lost. README quotes the figures."""

from __future__ import annotations

import csv
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
from conftest import build_config

from pipeline.build import build_shards

HEADER = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear", "label"]
FACE = skimage.data.astronaut()


def _frame(w: int, h: int, t: int, gray: bool = False) -> np.ndarray:
    """The astronaut, face ~40% of the frame height, drifting a little with t."""
    s = 0.45 * h / 120  # the face is ~120 px tall in the 512 px photo
    m = np.float32([[s, 0, w / 2 - 225 * s + 2 * t], [0, s, h / 2 - 118 * s]])
    img = cv2.warpAffine(FACE, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if gray:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return img


def _video(path: Path, w: int, h: int, n: int, *, gray: bool = False, vfr: bool = False) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = w, h
        s.pix_fmt = "gray" if gray else "yuv420p"
        s.options = {"preset": "ultrafast"}
        if vfr:
            s.codec_context.time_base = Fraction(1, 1000)
        pts = np.cumsum([0, 40, 15, 90, 40, 25, 200, 40, 10, 60, 40, 40][:n]) if vfr else range(n)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(_frame(w, h, i, gray), format="rgb24")
            if gray:
                frame = frame.reformat(format="gray")
            if vfr:
                frame.pts, frame.time_base = int(p), Fraction(1, 1000)
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


CASES: dict[int, tuple[str, str, str]] = {
    # id: (case, expected status, reason fragment or stage for rejects)
    1: ("ordinary clip", "written", ""),
    2: ("zero-byte file", "decode", "empty file"),
    3: ("truncated mp4", "decode", "00003.mp4"),
    4: ("text file named .mp4", "decode", "00004.mp4"),
    5: ("1-frame video", "written", ""),
    6: ("4K video", "written", ""),
    7: ("grayscale video", "written", ""),
    8: ("variable frame rate", "written", ""),
    9: ("frame folder with missing jpgs (gaps)", "written", ""),
    10: ("frame folder with an unreadable jpg", "decode", "unreadable image"),
    11: ("votes NaN", "index", "NaN"),
    12: ("votes negative", "index", "negative"),
    13: ("votes all zero", "index", "all votes are zero"),
    14: ("duplicate id", "index", "duplicate clip id"),
    15: ("no face in any frame", "align", "no face"),
    16: ("annotated clip with no file", "index", "no file"),
}


@pytest.fixture(scope="module")
def matrix(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "dfew"
    vids = root / "Clip/original"
    frames = root / "Clip/clip_224x224"
    vids.mkdir(parents=True)
    frames.mkdir(parents=True)
    _video(vids / "00001.mp4", 480, 360, 20)
    (vids / "00002.mp4").write_bytes(b"")
    _video(vids / "00003.mp4", 480, 360, 20)
    (vids / "00003.mp4").write_bytes((vids / "00003.mp4").read_bytes()[:2000])
    (vids / "00004.mp4").write_text("this is not a video\n" * 50)
    _video(vids / "00005.mp4", 480, 360, 1)
    _video(vids / "00006.mp4", 3840, 2160, 4)
    _video(vids / "00007.mp4", 480, 360, 20, gray=True)
    _video(vids / "00008.mp4", 480, 360, 12, vfr=True)
    for cid, names in ((9, [1, 2, 5, 6, 9, 10, 20]), (10, [1, 2, 3, 4])):
        d = frames / f"{cid:05d}"
        d.mkdir()
        for i in names:
            cv2.imwrite(str(d / f"{i}.jpg"), cv2.cvtColor(cv2.resize(_frame(360, 360, i), (224, 224)),
                                                        cv2.COLOR_RGB2BGR))
    (frames / "00010" / "3.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    coffee = np.ascontiguousarray(np.repeat(skimage.data.coffee()[None], 8, axis=0))
    with av.open(str(vids / "00015.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = 600, 400
        s.pix_fmt = "yuv420p"
        for f in coffee:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    for cid in (11, 12, 13, 14):
        _video(vids / f"{cid:05d}.mp4", 320, 240, 4)
    # a file whose name is not UTF-8: no annotation row can name it; skipped and counted
    os.close(os.open(bytes(vids) + b"/\xff\xfe-clip.mp4", os.O_CREAT | os.O_WRONLY))
    votes = {i: [1, 6, 1, 1, 1, 0, 0] for i in CASES}
    votes[11] = ["nan", 6, 1, 1, 1, 0, 0]
    votes[12] = [1, -6, 1, 1, 1, 0, 0]
    votes[13] = [0] * 7
    (root / "Annotation").mkdir()
    with open(root / "Annotation/annotation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in CASES:
            w.writerow([i, *votes[i], 2])
        w.writerow([14, 0, 0, 9, 1, 0, 0, 0, 3])  # the duplicate
    for split in ("train(single-labeled)", "test(single-labeled)"):
        d = root / "EmoLabel_DataSplit" / split
        d.mkdir(parents=True)
        for k in range(1, 6):
            ids = [i for i in CASES if (i % 5) + 1 == k] if split.startswith("test") else []
            (d / f"set_{k}.csv").write_text("video_name,label\n" + "".join(f"{i},2\n" for i in ids))
    out = root.parent / "shards"
    summary = build_shards(build_config(root, out, **{"ray.workers": 2}))
    return root, out, summary


def test_every_case_is_written_or_rejected_with_its_reason(matrix):
    root, out, summary = matrix
    clips = {r["clip_id"]: r for r in pq.read_table(out / "clips.parquet").to_pylist()}
    rejects: dict[str, list[dict]] = {}
    for r in pq.read_table(out / "rejects.parquet").to_pylist():
        rejects.setdefault(r["clip_id"], []).append(r)
    for i, (case, expect, reason) in CASES.items():
        cid = f"{i:05d}"
        if expect == "written":
            assert clips[cid]["status"] == "written", f"{case}: {rejects.get(cid)}"
        else:
            assert cid in rejects, f"{case} is not in rejects.parquet"
            assert all(r["stage"] == expect for r in rejects[cid]), f"{case}: {rejects[cid]}"
            assert any(reason in r["error"] for r in rejects[cid]), f"{case}: {rejects[cid]}"
    # no clip lost: every annotated id is written or rejected
    assert {f"{i:05d}" for i in CASES} == {c for c, r in clips.items() if r["status"] == "written"} | set(rejects)
    assert summary.unannotated == 1  # the non-UTF-8 file name


def test_written_edge_cases_hold_real_frames(matrix):
    from pipeline.read import SampleReader, open_index

    _, out, _ = matrix
    reader = SampleReader(out, open_index(out))
    one, _, _ = reader.read("00005")
    assert one.shape == (16, 112, 112, 3) and all(np.array_equal(one[0], f) for f in one)  # 1 frame, repeated
    gray, _, _ = reader.read("00007")
    assert np.abs(gray[..., 0].astype(int) - gray[..., 1]).max() <= 3  # still gray, as RGB
    for cid in ("00006", "00008", "00009"):
        frames, soft, _ = reader.read(cid)
        assert frames.shape == (16, 112, 112, 3) and frames.std() > 10 and abs(soft.sum() - 1) < 1e-6
