"""Decode stage on real mp4 files (decord) and real frame folders."""

from __future__ import annotations

import decord
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import DecodeConfig
from pipeline.decode import decode_clip, sample_indices
from pipeline.errors import ClipRejected


@given(n=st.integers(1, 5000), t=st.integers(1, 64))
def test_sample_indices_are_segment_centres(n, t):
    idx = sample_indices(n, t)
    assert idx.shape == (t,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() <= n - 1
    assert np.all(np.diff(idx) >= 0)  # in order, never shuffled
    if n >= t:
        assert np.all(np.diff(idx) > 0)  # no repeats when there are enough frames
    expected = np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64)
    assert np.array_equal(idx, np.minimum(expected, n - 1))


def test_short_clip_repeats_frames_in_order_never_black():
    # 12 frames -> 16: nearest-index resampling, first frame not padded in front.
    idx = sample_indices(12, 16)
    assert idx.tolist() == [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11]


def _clip(sample, cid: str, kind: str = "video") -> dict:
    src = f"Clip/original/{cid}.mp4" if kind == "video" else f"Clip/clip_224x224/{cid}"
    return {"clip_id": cid, "source": src, "source_kind": kind}


def test_decode_real_video_shape_dtype(sample):
    frames = decode_clip(sample.root, _clip(sample, "00001"), DecodeConfig())
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == 16 and frames.shape[-1] == 3
    vr = decord.VideoReader(str(sample.root / "Clip/original/00001.mp4"))
    h, w = vr[0].shape[:2]
    s = min(1.0, 640 / max(h, w))
    assert abs(frames.shape[1] - h * s) <= 2 and abs(frames.shape[2] - w * s) <= 2
    assert frames.std() > 5  # real picture content, not a blank


def test_short_video_is_resampled_from_its_own_frames(sample):
    path = sample.root / "Clip/original/00003.mp4"
    vr = decord.VideoReader(str(path))
    n = len(vr)
    assert n < 16
    cfg = DecodeConfig(decode_max_side=0)
    frames = decode_clip(sample.root, _clip(sample, "00003"), cfg)
    full = vr.get_batch(list(range(n))).asnumpy()
    assert np.array_equal(frames, full[sample_indices(n, 16)])


def test_reduced_resolution_decode(sample):
    frames = decode_clip(sample.root, _clip(sample, "00001"), DecodeConfig(decode_max_side=160))
    assert max(frames.shape[1:3]) <= 160


def test_frame_folder_decode(sample):
    frames = decode_clip(sample.root, _clip(sample, "00002", "frames"), DecodeConfig())
    assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty file"), (b"this is a text file, not a video\n" * 20, "truncated or corrupt")],
    ids=["zero-byte", "text-as-mp4"],
)
def test_unreadable_files_are_rejected_at_decode(tmp_path, content, match):
    (tmp_path / "Clip/original").mkdir(parents=True)
    (tmp_path / "Clip/original/00042.mp4").write_bytes(content)
    with pytest.raises(ClipRejected, match=match) as e:
        decode_clip(tmp_path, {"clip_id": "00042", "source": "Clip/original/00042.mp4", "source_kind": "video"},
                    DecodeConfig())
    assert e.value.stage == "decode" and "00042.mp4" in e.value.reason


def test_corrupt_sample_clip_is_rejected_with_a_reason_a_user_can_act_on(sample):
    cid = sample.corrupt[0]
    with pytest.raises(ClipRejected) as e:
        decode_clip(sample.root, _clip(sample, cid), DecodeConfig())
    size = (sample.root / f"Clip/original/{cid}.mp4").stat().st_size
    assert e.value.stage == "decode"
    assert e.value.reason == (f"Clip/original/{cid}.mp4: cannot open the video: file truncated or corrupt "
                              f"(size {size} bytes)")
    assert str(sample.root) not in e.value.reason and "Error reading" not in e.value.reason


def test_frame_folder_with_unreadable_jpg(tmp_path):
    d = tmp_path / "Clip/clip_224x224/00007"
    d.mkdir(parents=True)
    import cv2

    for t in range(1, 5):
        cv2.imwrite(str(d / f"{t}.jpg"), np.full((50, 50, 3), 100, np.uint8))
    (d / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClipRejected, match=r"2\.jpg: unreadable image"):
        decode_clip(tmp_path, {"clip_id": "00007", "source": "Clip/clip_224x224/00007", "source_kind": "frames"},
                    DecodeConfig(num_frames=4))


def _long_gop_mp4(path, n: int = 75, size: tuple[int, int] = (1280, 720), codec: str = "libx264",
                  faststart: bool = False):
    """A movie-like clip: x264's defaults (long GOP, B-frames) or MPEG-4, a photo panning across the frame."""
    import av
    import cv2
    import skimage.data

    w, h = size
    photo = cv2.resize(skimage.data.astronaut(), (w + n * 4, h), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.ascontiguousarray(photo[:, i * 4 : i * 4 + w])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def movie_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("movies")
    return {"x264": _long_gop_mp4(d / "x264.mp4", 60, (640, 360)),
            "mpeg4": _long_gop_mp4(d / "mpeg4.mp4", 40, (480, 270), "mpeg4"),
            "x264_720p": _long_gop_mp4(d / "x264_720p.mp4", 30)}


@pytest.mark.parametrize("t", [16, 7, 60])
def test_decoding_only_what_the_sampled_frames_need_gives_decords_frames(movie_clips, t):
    """PyAV, skipping the unsampled frames nothing refers to, picks and decodes exactly the frames decord
    gives for the same indices: at native size the same bytes on long-GOP H.264 with B-frames; on MPEG-4 a
    handful of pixels 1-2 levels apart (the two libraries' FFmpeg builds round its IDCT differently). Fewer
    frames in the clip than sampled (t=60 of 40) repeats them as decord's indices do."""
    cfg = DecodeConfig(num_frames=t, decode_max_side=0)
    for name in ("x264", "mpeg4"):
        path = movie_clips[name]
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        want = vr.get_batch(sample_indices(len(vr), t).tolist()).asnumpy()
        got = decode_clip(path.parent, {"clip_id": "x", "source": path.name, "source_kind": "video"}, cfg)
        if name == "x264":
            np.testing.assert_array_equal(got, want)
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-4, name


def test_scaled_down_frames_match_decords(movie_clips):
    """At reduced size the planes are resized by OpenCV (2x: INTER_AREA) instead of swscale: the same frames,
    within a few levels of decord's scaled pixels; decode.decoder=decord gives decord's bytes."""
    path = movie_clips["x264_720p"]
    got = decode_clip(path.parent, {"clip_id": "x", "source": path.name, "source_kind": "video"}, DecodeConfig())
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=640, height=360, num_threads=1)
    want = vr.get_batch(sample_indices(len(vr), 16).tolist()).asnumpy()
    assert got.shape == want.shape == (16, 360, 640, 3)
    assert np.abs(got.astype(int) - want).mean() < 3.0
    # decode.decoder=decord (what builds made before PyAV resume and repair with): decord's bytes
    old = decode_clip(path.parent, {"clip_id": "x", "source": path.name, "source_kind": "video"},
                      DecodeConfig(decoder="decord"))
    np.testing.assert_array_equal(old, want)


@pytest.mark.parametrize("size", [(960, 540), (1600, 900)])
def test_frames_scaled_by_other_factors_match_decords(tmp_path, size):
    """A factor under 2 (960x540) is resized bilinearly, one over 2 (1600x900) halved first: within a few
    levels of decord's scaled pixels, as at exactly 2x; decode.resize=area (INTER_AREA at any factor, the
    first PyAV builds' bytes, which they resume and repair with) is too, and is other bytes."""
    path = _long_gop_mp4(tmp_path / "v.mp4", 12, size)
    clip = {"clip_id": "x", "source": path.name, "source_kind": "video"}
    got = decode_clip(tmp_path, clip, DecodeConfig())
    area = decode_clip(tmp_path, clip, DecodeConfig(resize="area"))
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=640, height=360, num_threads=1)
    want = vr.get_batch(sample_indices(len(vr), 16).tolist()).asnumpy()
    assert got.shape == area.shape == want.shape == (16, 360, 640, 3)
    assert np.abs(got.astype(int) - want).mean() < 3.0 and np.abs(area.astype(int) - want).mean() < 3.0
    assert not np.array_equal(got, area)


def test_a_movie_cut_short_is_named_truncated(tmp_path):
    """An mp4 whose index sits in front (faststart) lists every frame; cut short, the file holds fewer."""
    path = _long_gop_mp4(tmp_path / "cut.mp4", 50, (320, 240), faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ClipRejected, match=r"cut.mp4: file truncated: \d+ of the 50 frames it lists are in the file"):
        decode_clip(tmp_path, {"clip_id": "x", "source": "cut.mp4", "source_kind": "video"}, DecodeConfig())
