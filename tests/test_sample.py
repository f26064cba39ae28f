"""make-sample: DFEW layout, labels/splits, real decodable videos, faces where promised, classes that show,
determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import openpyxl
import pytest
import skimage.data
from retinaface import detect_faces

from pipeline.tools.make_sample import ASTRONAUT_FACE, ASTRONAUT_LANDMARKS, TINTS, SampleSummary, make_sample
from pipeline.tools.make_sample import _draw_spec as draw_spec
from pipeline.tools.make_sample import _load_sources as load_sources

CLIPS = 12
HEADER = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear", "label"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleSummary, SampleSummary, list[int]]:
    """Same (clips, seed) twice: once in worker processes, once in-process."""
    calls: list[int] = []
    a = make_sample(tmp_path_factory.mktemp("a") / "dfew", clips=CLIPS, seed=0, progress=calls.append, workers=2)
    b = make_sample(tmp_path_factory.mktemp("b") / "dfew", clips=CLIPS, seed=0, workers=1)
    return a, b, calls


@pytest.fixture(scope="module")
def sample(built) -> SampleSummary:
    return built[0]


@pytest.fixture(scope="module")
def annotation(sample: SampleSummary) -> list[list]:
    wb = openpyxl.load_workbook(sample.root / "Annotation" / "annotation.xlsx", read_only=True)
    rows = [list(r) for r in wb.active.iter_rows(values_only=True)]
    wb.close()
    return rows


def _read_split(path: Path) -> list[tuple[int, int]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["video_name", "label"]
        return [(int(n), int(lab)) for n, lab in reader]


def _ids(sample: SampleSummary) -> list[str]:
    return [f"{n:05d}" for n in range(1, sample.clips + 1)]


def _source(sample: SampleSummary, clip_id: str) -> str:
    if clip_id not in sample.no_face:
        return "face"
    return "coffee" if sample.no_face.index(clip_id) % 2 == 0 else "rocket"


def _spec(sample: SampleSummary, clip_id: str):
    source = _source(sample, clip_id)
    return draw_spec(int(clip_id), 0, source, load_sources()[source].box)


def test_summary(built) -> None:
    sample, _, calls = built
    assert sample.clips == CLIPS
    assert sample.corrupt == [f"{CLIPS:05d}"]
    assert len(sample.no_face) >= 2
    assert not set(sample.no_face) & set(sample.corrupt)
    assert calls == [1] * CLIPS


def test_layout(sample: SampleSummary) -> None:
    root = sample.root
    assert sorted(p.name for p in (root / "Clip" / "original").iterdir()) == [f"{i}.mp4" for i in _ids(sample)]
    frames = root / "Clip" / "clip_224x224"
    assert sorted(p.name for p in frames.iterdir()) == _ids(sample)
    for clip_id in _ids(sample):
        names = sorted(p.name for p in (frames / clip_id).iterdir())
        assert names == [f"{clip_id}_{i:05d}.jpg" for i in range(1, len(names) + 1)]
        assert len(names) == _spec(sample, clip_id).frames
    assert (root / "Annotation" / "annotation.xlsx").is_file()
    for part in ("train", "test"):
        folder = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
        assert sorted(p.name for p in folder.iterdir()) == [f"set_{k}.csv" for k in range(1, 6)]
    from pipeline.tools.make_sample import SAMPLE_MARKER

    assert (root / SAMPLE_MARKER).is_file()  # the folder is make-sample's: a re-run may write there again
    leftovers = [p for p in root.rglob("*")
                 if (p.name.startswith(".") and p.name != SAMPLE_MARKER) or p.name.endswith(".tmp")]
    assert leftovers == []


def test_crops_are_224(sample: SampleSummary) -> None:
    for clip_id in _ids(sample)[:4]:
        img = cv2.imread(str(sample.root / "Clip" / "clip_224x224" / clip_id / f"{clip_id}_00001.jpg"))
        assert img.shape == (224, 224, 3)


def test_annotation(sample: SampleSummary, annotation: list[list]) -> None:
    assert annotation[0] == HEADER
    body = annotation[1:]
    assert [r[0] for r in body] == list(range(1, CLIPS + 1))
    for row in body:
        votes = row[1:8]
        assert all(isinstance(v, int) and v >= 0 for v in votes)
        assert sum(votes) == 10
        top = int(np.argmax(votes))
        assert row[8] == (top + 1 if votes[top] >= 6 else 0)
    labels = [r[8] for r in body]
    assert 0 in labels  # some ambiguous clips
    assert sum(lab != 0 for lab in labels) == sample.single_labelled


def test_splits(sample: SampleSummary, annotation: list[list]) -> None:
    label = {r[0]: r[8] for r in annotation[1:]}
    single = {n for n, lab in label.items() if lab != 0}
    split = sample.root / "EmoLabel_DataSplit"
    tests = [_read_split(split / "test(single-labeled)" / f"set_{k}.csv") for k in range(1, 6)]
    trains = [_read_split(split / "train(single-labeled)" / f"set_{k}.csv") for k in range(1, 6)]
    test_sets = [{n for n, _ in t} for t in tests]
    for rows in tests + trains:
        assert all(label[n] == lab for n, lab in rows)
    assert sum(len(s) for s in test_sets) == len(single)
    assert set().union(*test_sets) == single  # disjoint (sizes add up) and covering
    for test_set, train in zip(test_sets, trains, strict=True):
        assert {n for n, _ in train} == single - test_set


def test_videos_decode(sample: SampleSummary) -> None:
    codecs, portrait = set(), 0
    for clip_id in _ids(sample):
        if clip_id in sample.corrupt:
            continue
        path = sample.root / "Clip" / "original" / f"{clip_id}.mp4"
        spec = _spec(sample, clip_id)
        vr = decord.VideoReader(str(path))
        assert len(vr) == spec.frames
        batch = vr.get_batch([0, len(vr) - 1]).asnumpy()
        assert batch.shape == (2, spec.height, spec.width, 3)
        assert 320 <= spec.width <= 960 and spec.width % 2 == 0 and spec.height % 2 == 0
        assert round(vr.get_avg_fps()) == spec.fps in (25, 30)
        with av.open(str(path)) as container:
            name = container.streams.video[0].codec_context.name
        assert name == {"libx264": "h264", "mpeg4": "mpeg4"}[spec.codec]
        codecs.add(name)
        portrait += spec.height > spec.width
    assert codecs == {"h264", "mpeg4"}
    assert portrait >= 1


def test_short_clip(sample: SampleSummary) -> None:
    vr = decord.VideoReader(str(sample.root / "Clip" / "original" / "00003.mp4"))
    assert len(vr) == 12
    assert len(list((sample.root / "Clip" / "clip_224x224" / "00003").iterdir())) == 12


def test_corrupt_clip_fails(sample: SampleSummary) -> None:
    (clip_id,) = sample.corrupt
    path = sample.root / "Clip" / "original" / f"{clip_id}.mp4"
    assert path.stat().st_size == 300
    with pytest.raises((RuntimeError, decord.DECORDError)):
        vr = decord.VideoReader(str(path))
        vr.get_batch([0]).asnumpy()


def test_astronaut_box_matches_detector() -> None:
    (face,) = detect_faces(skimage.data.astronaut())
    assert face.score > 0.99
    assert np.allclose((face.x, face.y, face.width, face.height), ASTRONAUT_FACE, atol=3)
    assert np.allclose([(p.x, p.y) for p in face.landmarks], ASTRONAUT_LANDMARKS, atol=3)


def _face_colour(frame: np.ndarray, spec, t: float) -> np.ndarray:
    """Chromaticity (r, g, b summing to 1) of the centre of the face in a decoded frame at clip time t."""
    cx, cy = ((1 - t) * np.asarray(spec.start) + t * np.asarray(spec.end))[2:4]
    half = 0.2 * ((1 - t) * spec.start[0] + t * spec.end[0]) * ASTRONAUT_FACE[2]
    patch = frame[int(cy - half):int(cy + half), int(cx - half):int(cx + half)].reshape(-1, 3).mean(0)
    return patch / patch.sum()


def test_each_face_shows_the_class_its_votes_give(sample: SampleSummary, annotation: list[list]) -> None:
    """What makes the sample learnable, read back from the mp4 files: over a clip the centre of the face turns
    towards the tint of the class with the most votes; a neutral face keeps its colour."""
    votes = {f"{r[0]:05d}": np.array(r[1:8]) for r in annotation[1:]}
    tinted = 0
    for clip_id in _ids(sample):
        if clip_id in sample.corrupt or clip_id in sample.no_face:
            continue
        spec = _spec(sample, clip_id)
        vr = decord.VideoReader(str(sample.root / "Clip" / "original" / f"{clip_id}.mp4"))
        first, last = _face_colour(vr[0].asnumpy(), spec, 0.0), _face_colour(vr[len(vr) - 1].asnumpy(), spec, 1.0)
        tint = TINTS[int(np.argmax(votes[clip_id]))]
        if tint is None:
            assert np.abs(last - first).max() < 0.02, (clip_id, first, last)
            continue
        towards = np.asarray(tint, np.float64) / sum(tint) - first
        moved = last - first
        assert moved @ towards > 0.3 * np.linalg.norm(moved) * np.linalg.norm(towards), (clip_id, first, last, tint)
        assert np.linalg.norm(moved) > 0.02, (clip_id, first, last, tint)
        tinted += 1
    assert tinted >= 3


def test_detector_sees_faces_only_where_promised(sample: SampleSummary) -> None:
    hits, face_clips = 0, 0
    for clip_id in _ids(sample):
        if clip_id in sample.corrupt:
            continue
        vr = decord.VideoReader(str(sample.root / "Clip" / "original" / f"{clip_id}.mp4"))
        mid = len(vr) // 2
        faces = detect_faces(vr[mid].asnumpy(), score_threshold=0.5)
        if clip_id in sample.no_face:
            assert [f for f in faces if f.score > 0.9] == [], clip_id
            continue
        face_clips += 1
        good = [f for f in faces if f.score > 0.9]
        if len(good) == 1:
            # The detection sits where the sample put the face.
            spec = _spec(sample, clip_id)
            t = mid / max(1, spec.frames - 1)
            cx, cy = ((1 - t) * np.asarray(spec.start) + t * np.asarray(spec.end))[2:4]
            f = good[0]
            tol = 0.25 * f.width + 3
            assert abs(f.x + f.width / 2 - cx) < tol and abs(f.y + f.height / 2 - cy) < tol, clip_id
            hits += 1
    assert hits >= 0.9 * face_clips


def test_same_seed_same_bytes(built) -> None:
    a, b, _ = built
    da, db = _digest(a.root), _digest(b.root)
    assert da.keys() == db.keys()
    assert [k for k in da if da[k] != db[k]] == []


def test_without_frames_and_min_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_sample(tmp_path / "tiny", clips=6)
    s = make_sample(tmp_path / "noframes", clips=7, seed=3, with_frames=False, workers=1)
    assert not (s.root / "Clip" / "clip_224x224").exists()
    assert len(list((s.root / "Clip" / "original").glob("*.mp4"))) == 7


def test_make_sample_forks_cleanly_after_the_caller_ran_opencv_threads(tmp_path: Path) -> None:
    """A caller that ran OpenCV's thread pool (a test session that decoded first, a notebook) used to
    hang in the forked workers (resizing a pool whose threads they lack); run in a child with a timeout."""
    import subprocess
    import sys

    script = (
        "import sys, cv2, numpy as np\n"
        "from pathlib import Path\n"
        "from pipeline.tools.make_sample import make_sample\n"
        "cv2.setNumThreads(2)\n"
        "cv2.resize(np.zeros((2000, 2000), np.uint8), (1111, 1111), interpolation=cv2.INTER_AREA)\n"
        "make_sample(Path(sys.argv[1]), clips=7, workers=2, with_frames=False)\n"
        "assert cv2.getNumThreads() == 2\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "s" / "Clip" / "original").glob("*.mp4"))) == 7
