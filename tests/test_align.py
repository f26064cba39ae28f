"""Align stage with the real detectors on make-sample clips."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.align import (
    RetinaFaceDetector,
    _fill,
    align_frames,
    get_detector,
    smooth_transforms,
    template,
    track_face,
)
from pipeline.config import AlignConfig, DecodeConfig
from pipeline.decode import decode_clip
from pipeline.errors import ClipRejected


def _frames(sample, cid: str) -> np.ndarray:
    clip = {"clip_id": cid, "source": f"Clip/original/{cid}.mp4", "source_kind": "video"}
    return decode_clip(sample.root, clip, DecodeConfig())


def _reference_eyes(check: RetinaFaceDetector, frames: np.ndarray, size: int = 256) -> list[np.ndarray]:
    """Each frame's eyes (x, y; frame pixels) from RetinaFace on a 256 px window twice the face's size and on
    its mirror image, averaged: a reference that shares no input with align (which detects on whole frames
    downscaled, or on 192 px windows), so neither config is measured against its own detections. The same
    reference as bench/bench_build.py's quality table, which ranks the configs as true eye positions do."""
    import cv2

    out = []
    for frame, face in zip(frames, check.detect(frames), strict=True):
        x, y, w, h = face.box
        n = int(round(2 * max(w, h)))
        x0, y0 = int(round(x + w / 2 - n / 2)), int(round(y + h / 2 - n / 2))
        m = np.array([[size / n, 0, -x0 * size / n], [0, size / n, -y0 * size / n]])
        win = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA if n > size else cv2.INTER_CUBIC,
                             borderValue=(127, 117, 104))
        a, b = check.detect(np.stack([win, np.ascontiguousarray(win[:, ::-1])]))
        mirrored = b.landmarks[[1, 0]].copy()  # the mirror's left eye is the image's right one
        mirrored[:, 0] = size - 1 - mirrored[:, 0]
        out.append((a.landmarks[:2] + mirrored) / 2 * n / size + [x0, y0])
    return out


def _face_ids(sample, n: int) -> list[str]:
    bad = set(sample.no_face) | set(sample.corrupt)
    return [f"{i:05d}" for i in range(1, sample.clips + 1) if f"{i:05d}" not in bad][:n]


@pytest.mark.parametrize("size", [112, 224])
def test_aligned_eyes_land_on_the_template(sample, size):
    """In the aligned crops the eye centres lie within 5% of S of the template's.

    Checked two ways: (1) every frame's eyes in the decoded frame (_reference_eyes), carried into
    the crop by the transform align_frames applied; (2) the detector run again on the
    crops (on a grey canvas, so the face is not cut at the border), averaged per clip:
    re-detection on a 112 px face has a few pixels of its own noise per frame.
    """
    cfg = AlignConfig(frame_size=size)
    check = RetinaFaceDetector(AlignConfig(min_score=0.5))
    tmpl = template(size)
    limit = 0.05 * size
    mapped, redetected = [], []
    for cid in _face_ids(sample, 8):
        frames = _frames(sample, cid)
        crops, stats = align_frames(frames, get_detector(cfg), cfg, cid)
        assert crops.shape == (16, size, size, 3) and crops.dtype == np.uint8
        assert stats["face_frames"] >= 1 and stats["face_score"] > 0.8
        matrices, _ = track_face(frames, get_detector(cfg), cfg, cid)
        for ref, m in zip(_reference_eyes(check, frames), matrices, strict=True):
            eyes = ref @ m[:, :2].T + m[:, 2]
            mapped.append(np.linalg.norm(eyes - tmpl[:2], axis=1).max())
        canvas = np.full((16, 2 * size, 2 * size, 3), 127, np.uint8)
        canvas[:, size // 2 : size // 2 + size, size // 2 : size // 2 + size] = crops
        faces = check.detect(canvas)
        assert all(f is not None for f in faces), f"no face found again in an aligned crop of {cid}"
        eyes = np.mean([f.landmarks[:2] - size // 2 for f in faces], axis=0)
        redetected.append(np.linalg.norm(eyes - tmpl[:2], axis=1).max())
    assert max(mapped) <= limit, f"worst mapped eye error {max(mapped):.2f} px > {limit:.1f} px"
    assert max(redetected) <= limit, f"worst re-detected eye error {max(redetected):.2f} px > {limit:.1f} px"


def test_no_face_clip_is_rejected_at_align(sample):
    cid = sample.no_face[0]
    with pytest.raises(ClipRejected, match="no face") as e:
        align_frames(_frames(sample, cid), get_detector(AlignConfig()), AlignConfig(), cid)
    assert e.value.stage == "align"


def test_mtcnn_backend_agrees_with_retinaface(sample):
    frames = _frames(sample, _face_ids(sample, 1)[0])[:2]
    r = RetinaFaceDetector(AlignConfig()).detect(frames)
    m = get_detector(AlignConfig(detector="mtcnn")).detect(frames)
    for a, b in zip(r, m, strict=True):
        assert a is not None and b is not None
        eye_dist = np.linalg.norm(a.landmarks[0] - a.landmarks[1])
        assert np.abs(a.landmarks - b.landmarks).max() < 0.35 * eye_dist


def test_none_detector_resizes_only():
    frames = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    crops, stats = align_frames(frames, get_detector(AlignConfig(detector="none")), AlignConfig(detector="none"))
    assert crops.shape == (4, 112, 112, 3) and stats["face_tried"] == 0


def test_smoothing_tracks_linear_motion_exactly_and_damps_jitter():
    t = np.arange(16, dtype=np.float64)[:, None]
    linear = np.hstack([1 + 0.01 * t, 0.02 * t, 3 * t, -2 * t])
    assert np.allclose(smooth_transforms(linear, 5), linear)
    noisy = linear + np.random.default_rng(0).normal(0, 1, linear.shape) * [0, 0, 1, 1]
    assert np.abs(smooth_transforms(noisy, 5) - linear).mean() < np.abs(noisy - linear).mean()


def test_fill_nearest_for_missed_and_interpolates_untried():
    p = [np.full(4, v, dtype=np.float64) if v is not None else None for v in (0.0, None, None, None, 8.0, None)]
    tried = np.array([True, False, True, False, True, True])
    out = _fill(p, tried)
    # frame 2 was tried and had no face: nearest detected is frame 0 or 4 (tie -> earlier)
    assert out[2, 0] == 0.0
    # frame 1 was not tried: interpolated between frames 0 and 2; frame 3 between 2 and 4
    assert out[1, 0] == 0.0 and out[3, 0] == 4.0
    assert out[5, 0] == 8.0  # tried without face: nearest detected (frame 4)


def _reference_detect(session, images: np.ndarray, min_score: float) -> list:
    """RetinaFace decoded the package's way (every anchor, the whole batch), as align.py did before
    it decoded only the anchors that pass the score."""
    import cv2
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors, rebuild_boxes, rebuild_pts

    n, h, w, _ = images.shape
    x = images[..., ::-1].astype(np.float32) - np.array([104, 117, 127], dtype=np.float32)
    loc, conf, pts = session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
    start = 0
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True):
        anchors = generate_anchors(stride, sizes, w, h, n)
        end = start + anchors.shape[1]
        loc[:, start:end] = rebuild_boxes(loc[:, start:end], anchors)
        pts[:, start:end] = rebuild_pts(pts[:, start:end], anchors)
        start = end
    loc *= np.array([w, h, w, h], dtype=np.float32)
    pts *= np.array([w, h] * 5, dtype=np.float32)
    out = []
    for i in range(n):
        keep = np.flatnonzero(conf[i, :, 1] >= min_score)
        if keep.size == 0:
            out.append(None)
            continue
        kept = cv2.dnn.NMSBoxes(loc[i, keep].tolist(), conf[i, keep, 1].tolist(), min_score, 0.4)
        faces = [(float(conf[i, j, 1]), pts[i, j].reshape(5, 2), tuple(float(v) for v in loc[i, j]))
                 for j in keep[np.asarray(kept, dtype=np.int64).reshape(-1)]]
        out.append(max(faces, key=lambda f: f[2][2] * f[2][3]) if faces else None)
    return out


@pytest.mark.parametrize("side", [640, 320])
def test_detector_gives_the_faces_of_the_reference_decoding_bit_for_bit(sample, side):
    """The faster pre/post-processing, and running large frames one per ONNX run where the reference
    runs the whole batch at once, change no number: old configs keep their bytes."""
    from pipeline.align import _downscale

    det = RetinaFaceDetector(AlignConfig())
    for cid in [*_face_ids(sample, 3), sample.no_face[0]]:
        small, _ = _downscale(_frames(sample, cid)[::3], side)
        for new, ref in zip(det.detect(small), _reference_detect(det.session, small, 0.8), strict=True):
            assert (new is None) == (ref is None)
            if new is not None:
                assert new.score == ref[0] and new.box == ref[2] and np.array_equal(new.landmarks, ref[1])


def test_tracking_keeps_the_clips_whole_frames_keep_and_finds_the_same_landmarks(sample):
    """roi_size (tracking, the default) against every detection on the whole frame at 640 px (the
    old default): the same clips kept and rejected, the same number of faces, and each frame's eyes
    within 4% of the crop size of each other once carried into the crop."""
    track, whole = AlignConfig(), AlignConfig(roi_size=0, detect_max_side=640)
    assert track.roi_size > 0
    for i in range(1, sample.clips + 1):
        cid = f"{i:05d}"
        if cid in sample.corrupt:
            continue
        frames = _frames(sample, cid)
        got = {}
        for name, cfg in (("track", track), ("whole", whole)):
            try:
                got[name] = track_face(frames, get_detector(cfg), cfg, cid)
            except ClipRejected:
                got[name] = None
        assert (got["track"] is None) == (got["whole"] is None), f"{cid}: {got}"
        if got["track"] is None:
            continue
        (mt, st), (mw, sw) = got["track"], got["whole"]
        assert st["face_frames"] == sw["face_frames"] and st["face_tried"] == sw["face_tried"]
        eyes = template(112)[:2]
        for a, b in zip(mt, mw, strict=True):
            # the template's eyes taken back into the frame by one transform and into the crop by the
            # other: how far the two alignments disagree, in crop pixels
            in_frame = (eyes - a[:, 2]) @ np.linalg.inv(a[:, :2]).T
            assert np.abs(in_frame @ b[:, :2].T + b[:, 2] - eyes).max() < 0.04 * 112, cid


def test_a_window_that_leaves_the_frame_still_finds_the_face(sample):
    """A face at the frame's edge: its tracking window is padded outside the frame, and the
    landmarks match a whole-frame detection at full size."""
    from pipeline.align import _detect_roi

    det = get_detector(AlignConfig())
    frame = _frames(sample, _face_ids(sample, 1)[0])[0]
    whole = det.detect(frame[None])[0]
    x, y, w, h = whole.box
    shift = int(x + w * 0.3)  # cut the frame so the face's left third is at the edge
    edge = np.ascontiguousarray(frame[:, shift:])
    ref = det.detect(edge[None])[0]
    found = _detect_roi(det, edge, (x - shift, y, w, h), 192)
    assert ref is not None and found is not None
    assert np.abs(found.landmarks - ref.landmarks)[2:].max() < 0.08 * w  # nose and mouth: inside the frame


# ------------------------------------------------------------------- movie-clip cases (issue 22)

_ASTRO_BOX = (177, 56, 95, 120)  # x, y, w, h of the face in skimage.data.astronaut()


def _pasted_face(face_h: int, size: tuple[int, int] = (640, 360), n: int = 16, present=None,
                 where=None) -> tuple[np.ndarray, np.ndarray]:
    """n frames of a textured background with the astronaut's head pasted so that its face box is
    face_h px tall, centred at where[t] (x, y shares of the frame; default the centre); frames where
    present[t] is false have no face. -> (uint8 n x H x W x 3, true eye centres float [n, 2, 2])."""
    import cv2
    import skimage.data

    from pipeline.tools.make_sample import ASTRONAUT_LANDMARKS

    img = skimage.data.astronaut()
    bx, by, bw, bh = _ASTRO_BOX
    half = int(bh * 1.2)
    x0, y0 = int(bx + bw / 2 - half), max(0, int(by + bh / 2 - half))
    s = face_h / bh
    crop = img[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    crop = cv2.resize(crop, (round(crop.shape[1] * s), round(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)
    w, h = size
    rng = np.random.default_rng(0)
    bg = cv2.resize(rng.integers(60, 200, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h))
    frames = np.repeat(bg[None], n, axis=0)
    eyes = np.zeros((n, 2, 2))
    ch, cw = crop.shape[:2]
    for t in range(n):
        cx, cy = where[t] if where is not None else (0.5, 0.45)
        px, py = int(cx * w - cw / 2), int(cy * h - ch / 2)
        if present is None or present[t]:
            frames[t, py : py + ch, px : px + cw] = crop
        eyes[t] = (np.array(ASTRONAUT_LANDMARKS[:2], dtype=float) - [x0, y0]) * s + [px, py]
    return frames, eyes


def _kept_frames(frames: np.ndarray, cfg: AlignConfig) -> int | None:
    try:
        return track_face(frames, get_detector(cfg), cfg, "x")[1]["face_frames"]
    except ClipRejected:
        return None


@pytest.mark.parametrize("face_h", [30, 48])
def test_a_face_the_whole_frame_detector_finds_at_the_decoded_size_is_kept(face_h):
    """The defaults' cheap search (tracking from a whole-frame search at 320 px) misses a face ~30 px
    tall in a 640 px frame; the cascade then searches every frame whole at the decoded size, so no
    clip is lost that the whole-frame reference keeps, and the crops come from the faces it found."""
    frames, _ = _pasted_face(face_h)
    reference = _kept_frames(frames, AlignConfig(roi_size=0, detect_max_side=640))
    assert reference  # the reference keeps it: a clip the defaults must keep too
    assert _kept_frames(frames, AlignConfig()) >= reference


def test_a_clip_whose_face_leaves_the_frame_is_rejected_by_share():
    """A face in the first quarter of the clip only: rejected with its share and the setting that keeps
    it; with align.min_face_share=0 kept (face_frames says how few); three quarters with a face: kept."""
    t = np.arange(16)
    frames, _ = _pasted_face(80, present=t < 4)
    with pytest.raises(ClipRejected, match=r"a face in \d+ of 16 frames \(\d+%\), fewer than align.min_face_share"):
        track_face(frames, get_detector(AlignConfig()), AlignConfig(), "x")
    assert _kept_frames(frames, AlignConfig(min_face_share=0.0)) == 2
    frames, _ = _pasted_face(80, present=t < 12)
    assert _kept_frames(frames, AlignConfig()) >= 6


def test_no_crop_spans_a_scene_cut():
    """A cut between frames 7 and 8 (the face jumps across the frame and grows): every frame's crop
    puts that frame's own eyes on the template. Interpolating the untried frame 7 and averaging
    across the cut (smooth_max_shift=0) puts the eyes of the frames next to the cut far off."""
    where = [(0.3, 0.45)] * 8 + [(0.7, 0.5)] * 8
    frames, eyes = _pasted_face(72, where=where)
    frames[8:], eyes8 = _pasted_face(96, where=where)[0][8:], _pasted_face(96, where=where)[1][8:]
    eyes[8:] = eyes8
    target = template(112)[:2]

    def worst(cfg: AlignConfig) -> float:
        m, _ = track_face(frames, get_detector(cfg), cfg, "x")
        return max(np.abs(e @ mt[:, :2].T + mt[:, 2] - target).max() for e, mt in zip(eyes, m, strict=True))

    assert worst(AlignConfig()) < 0.05 * 112
    assert worst(AlignConfig(smooth_max_shift=0.0)) > 0.15 * 112


def test_smoothing_stops_at_a_jump():
    """smooth_transforms with max_shift: frames on either side of a jump keep their own transforms,
    and a still stretch is averaged as before."""
    p = np.array([[1.0, 0.0, 0.0, 0.0]] * 5 + [[1.0, 0.0, 60.0, 0.0]] * 5)
    out = smooth_transforms(p, 5, max_shift=0.25, frame_size=112)
    np.testing.assert_allclose(out, p)
    assert not np.allclose(smooth_transforms(p, 5), p)
