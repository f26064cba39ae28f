"""Decode stage: a clip's video (PyAV) or frame folder -> T frames, uint8 T x H x W x 3 RGB.

Frames are picked by uniform segment sampling at segment centres, which is
deterministic and, for clips shorter than T, repeats frames in order (nearest index)
instead of padding with black or with frame 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DecodeConfig
from pipeline.datasets.dfew import FRAME_EXTENSIONS
from pipeline.datasets.records import natural_key
from pipeline.errors import ClipRejected

__all__ = ["sample_indices", "decode_clip", "decode_video", "decode_frame_folder", "read_image", "what_video_is",
           "check_frame_size", "check_video_size", "MIN_SIDE"]

logger = logging.getLogger(__name__)


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Centre of each of `num_frames` equal segments of [0, num_available): int64 [T]."""
    assert num_available > 0, f"cannot sample {num_frames} frames from {num_available}"
    t = np.arange(num_frames, dtype=np.float64)
    idx = np.floor((t + 0.5) * num_available / num_frames).astype(np.int64)
    return np.minimum(idx, num_available - 1)


def _reduced_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longest side <= max_side, aspect kept, even sizes for the decoder."""
    if max_side == 0 or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def decode_video(path: Path, clip_id: str, cfg: DecodeConfig, name: str = "") -> np.ndarray:
    """Decode only what the sampled frames need, at reduced resolution when the video is large.

    Frames are numbered in presentation order (as decord numbers them, so the same frames are
    picked). Every packet up to the last sampled frame goes through the decoder, but a packet
    whose frame is not sampled is decoded with `skip_frame="NONREF"`: a frame no other frame
    refers to (most B-frames of a long-GOP movie) is then dropped without being reconstructed.
    Reject reasons name the file as `name` (its path under the dataset root, so rejects.parquet
    does not depend on where the dataset sits) and say what a user can do with it."""
    if cfg.decoder == "decord":
        return _decode_video_decord(path, clip_id, cfg, name)
    import av

    name = name or path.name
    size = path.stat().st_size
    broken = f"file truncated or corrupt (size {size} bytes)"

    def reject(reason: str) -> ClipRejected:
        return ClipRejected(clip_id, "decode", f"{name}: {reason}")

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise reject(f"cannot open the video: {what_video_is(path) or broken}") from e
    with container:
        if not container.streams.video:
            raise reject(f"cannot open the video: {what_video_is(path) or 'no video stream'}")
        stream = container.streams.video[0]
        if stream.codec_context.width and stream.codec_context.height:  # too small to hold a face: say so
            check_frame_size(np.empty((1, stream.codec_context.height, stream.codec_context.width, 3), np.uint8),
                             clip_id, name, "video")
        stream.thread_type = "NONE"  # a frame comes out with (or just after) its packet: skip_frame applies
        listed = stream.frames
        packets = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets.append(packet)
        except (av.FFmpegError, OSError) as e:
            if not packets:
                raise reject(f"cannot open the video: {broken}") from e
            if listed <= len(packets):
                raise reject(f"cannot read the file after {len(packets)} frames: {broken}") from e
        if not packets:
            raise reject("cannot open the video: an empty container (a 0-frame video)")
        if listed > len(packets):
            raise reject(f"file truncated: {len(packets)} of the {listed} frames it lists are in the file "
                         f"(size {size} bytes)")
        pts = [p.pts for p in packets]
        n = len(packets)
        idx = sample_indices(n, cfg.num_frames).tolist()
        width, height = stream.codec_context.width, stream.codec_context.height
        out_size = _reduced_size(width, height, cfg.decode_max_side) if width and height else None

        def rgb(frame: Any) -> np.ndarray:
            return _rgb(frame, out_size, cfg.resize)

        try:
            if None in pts or len(set(pts)) != n:  # no usable timestamps: decode every frame in order
                frames = _decode_all_sampled(container, stream, idx, rgb)
            else:
                order = sorted(pts)
                got = _decode_sampled(stream, packets, {order[i] for i in idx}, rgb)
                frames = [got.get(order[i]) for i in idx]
        except (av.FFmpegError, OSError, ValueError) as e:
            raise reject(f"cannot decode the {len(idx)} sampled frames of {n}: {broken}") from e
    missing = [i for i, f in zip(idx, frames, strict=True) if f is None]
    if missing:
        raise reject(f"cannot decode frame {missing[0]} of {n}: {broken}")
    out = np.stack(frames)
    if out.ndim != 4 or out.shape[0] != cfg.num_frames or out.shape[-1] != 3:
        raise reject(f"decoded shape {out.shape} is not T x H x W x 3")
    return np.ascontiguousarray(out, dtype=np.uint8)


def _decode_sampled(stream: Any, packets: list, want: set[int],
                    rgb: Callable[[Any], np.ndarray]) -> dict[int, np.ndarray]:
    """pts -> RGB frame for the frames in `want`; stops once the last one is out."""
    ctx = stream.codec_context
    got: dict[int, np.ndarray] = {}
    skipping = False
    for packet in packets:
        skip = packet.pts not in want
        if skip != skipping:
            ctx.skip_frame = "NONREF" if skip else "DEFAULT"
            skipping = skip
        for frame in ctx.decode(packet):
            if frame.pts in want:
                got[frame.pts] = rgb(frame)
        if len(got) == len(want):
            return got
    ctx.skip_frame = "DEFAULT"
    for frame in ctx.decode(None):  # flush the frames the decoder still holds back (B-frame reordering)
        if frame.pts in want:
            got[frame.pts] = rgb(frame)
    return got


def _decode_all_sampled(container: Any, stream: Any, idx: list[int],
                        rgb: Callable[[Any], np.ndarray]) -> list[np.ndarray | None]:
    """Every frame decoded in output order (a file without usable timestamps); the sampled ones kept."""
    container.seek(0, stream=stream)
    wanted = set(idx)
    got: dict[int, np.ndarray] = {}
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            got[i] = rgb(frame)
        if len(got) == len(wanted):
            break
    return [got.get(i) for i in idx]


def _rgb(frame: Any, size: tuple[int, int] | None, resize: str = "halve") -> np.ndarray:
    """A decoded frame -> uint8 H x W x 3 RGB at `size`.

    At the native size swscale converts (decord's bytes exactly). Scaled 4:2:0 limited-range
    frames are resized plane by plane (`resize`: "halve", _shrink; "area", INTER_AREA at any factor,
    the bytes of the first PyAV builds) and converted by OpenCV: 0.4-1 ms a frame against swscale's
    1.5-3, within a few levels of decord's pixels (bench/bench_decode.py)."""
    import cv2

    w, h = frame.width, frame.height
    if size is None or size == (w, h):
        return frame.to_ndarray(format="rgb24")
    rw, rh = size
    if frame.format.name == "yuv420p" and w % 2 == 0 and h % 2 == 0 and frame.color_range != 2:  # 2 = full range
        yuv = frame.to_ndarray()  # (h * 3 / 2) x w: the Y plane, then the U and V planes
        uv = yuv[h:].reshape(2, h // 2, w // 2)
        i420 = np.empty((rh * 3 // 2, rw), dtype=np.uint8)  # the same layout at the reduced size
        chroma = i420[rh:].reshape(2, rh // 2, rw // 2)
        for src, dst in ((yuv[:h], i420[:rh]), (uv[0], chroma[0]), (uv[1], chroma[1])):
            if resize == "area":
                cv2.resize(src, dst.shape[::-1], dst=dst, interpolation=cv2.INTER_AREA)
            else:
                dst[:] = _shrink(src, dst.shape[::-1])
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(width=rw, height=rh, format="rgb24", interpolation="AREA")


def _shrink(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A plane resized down to `size` (w, h): halved by 2x2 averaging while it is at least twice as
    large (INTER_AREA's exact-2x path, 0.06 ms a 1280x720 plane), then bilinear for the factor under 2
    that is left (each output pixel a weighted average of 2 x 2 inputs spaced less than 2 apart, so no
    input pixel is skipped). INTER_AREA at a factor that is not exactly 2 costs 5-7x more (1.4-3.7 ms a
    plane of 854x480 to 1440x1080) and is no closer to decord's frames (bench/bench_decode.py)."""
    import cv2

    rw, rh = size
    while plane.shape[1] >= 2 * rw and plane.shape[0] >= 2 * rh:
        plane = cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if plane.shape[:2] == (rh, rw):
        return plane
    return cv2.resize(plane, (rw, rh), interpolation=cv2.INTER_LINEAR)


def _decode_video_decord(path: Path, clip_id: str, cfg: DecodeConfig, name: str = "") -> np.ndarray:
    """decord (`decode.decoder=decord`, the builds made before PyAV): the bytes those builds hold.

    Reject reasons name the file as `name` (its path under the dataset root, so rejects.parquet
    does not depend on where the dataset sits) and say what a user can do with it: a file that
    decord cannot open or read a frame of is reported as truncated or corrupt, with its size."""
    decord = _decord()

    name = name or path.name
    broken = f"file truncated or corrupt (size {path.stat().st_size} bytes)"
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        if n <= 0:
            raise ClipRejected(clip_id, "decode", f"{name}: an empty container (a 0-frame video)")
        h, w = vr[0].shape[:2]
        rw, rh = _reduced_size(w, h, cfg.decode_max_side)
        if (rw, rh) != (w, h):
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=rw, height=rh, num_threads=1)
            n = min(n, len(vr))
    except (decord.DECORDError, RuntimeError) as e:
        raise ClipRejected(clip_id, "decode", (
            f"{name}: cannot open the video: {what_video_is(path) or broken}")) from e
    except (IndexError, ValueError, OSError) as e:
        raise ClipRejected(clip_id, "decode", f"{name}: cannot open the video: {_first_line(e, path, name)}") from e
    idx = sample_indices(n, cfg.num_frames).tolist()
    try:
        frames = vr.get_batch(idx).asnumpy()
    except (decord.DECORDError, RuntimeError, IndexError, ValueError, OSError) as e:
        bad = _first_bad_frame(vr, idx)
        where = f"frame {bad} of {n}" if bad is not None else f"the {len(idx)} sampled frames of {n}"
        raise ClipRejected(clip_id, "decode", f"{name}: cannot decode {where}: {broken}") from e
    if frames.ndim != 4 or frames.shape[0] != cfg.num_frames or frames.shape[-1] != 3:
        raise ClipRejected(clip_id, "decode", f"{name}: decoded shape {frames.shape} is not T x H x W x 3")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _decord() -> object:
    """decord, imported only after cv2: decord loads its own zlib with RTLD_GLOBAL, and a cv2
    imported after it in the same process fails every PNG ("bad parameters to zlib"). Every
    decord import of the package goes through here."""
    import cv2  # noqa: F401 - first, on purpose
    import decord

    return decord


def what_video_is(path: Path) -> str:
    """Why a file the decoder cannot open is not a video, when PyAV can tell ("" when it cannot): an
    empty container (0 frames) and an audio-only file are not "truncated or corrupt"."""
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV is a dependency
        return ""
    try:
        with av.open(str(path)) as c:
            streams = list(c.streams.video)
            if not streams:
                kinds = sorted({s.type for s in c.streams})
                if not kinds:  # a container with no stream, or a video track of 0 samples (which FFmpeg drops)
                    return "an empty container (a 0-frame video)"
                return ("no video stream: an audio-only file" if "audio" in kinds
                        else f"no video stream (streams: {', '.join(kinds)})")
            try:
                got = next(c.decode(streams[0]), None)
            except av.FFmpegError:
                return ""
            if got is None:
                return "an empty container (a 0-frame video)"
    except (av.FFmpegError, OSError, ValueError):
        return ""
    return ""


MIN_SIDE = 24  # pixels: a face detector (and a 112-pixel crop) needs more than this to find a face


def check_video_size(root: Path, clip: dict) -> None:
    """Reject a video too small to hold a face before decord decodes it (decord fails on some, and the
    reason would read "truncated or corrupt"): its size from the container header (PyAV). The PyAV
    decoder checks the header it opens itself."""
    if clip["source_kind"] != "video":
        return
    try:
        import av

        with av.open(str(Path(root) / clip["source"])) as c:
            if not c.streams.video:
                return
            cc = c.streams.video[0].codec_context
            w, h = cc.width, cc.height
    except Exception:  # noqa: BLE001 - not openable: decode_video says what the file is
        return
    if w and h:
        check_frame_size(np.empty((1, h, w, 3), np.uint8), clip["clip_id"], clip["source"], "video")


def check_frame_size(frames: np.ndarray, clip_id: str, name: str, kind: str) -> None:
    """Reject a clip whose frames are too small to hold a face, saying so (not "no face")."""
    h, w = frames.shape[1:3]
    if min(h, w) < MIN_SIDE:
        what = "video" if kind == "video" else "frames"
        raise ClipRejected(clip_id, "decode", f"{name}: {what} {'is' if kind == 'video' else 'are'} {w}x{h}, "
                                              f"too small to hold a face (under {MIN_SIDE} pixels a side)")


def _first_bad_frame(vr: object, idx: list[int]) -> int | None:
    """The first sampled frame index decord cannot read alone (only run once a batch has failed)."""
    for i in dict.fromkeys(idx):
        try:
            vr[i].asnumpy()  # type: ignore[index]
        except Exception:  # noqa: BLE001 - any decoder failure marks the frame
            return i
    return None


def decode_frame_folder(path: Path, clip_id: str, cfg: DecodeConfig, name: str = "") -> np.ndarray:
    """Read the sampled frames of a folder of images named in frame order (1.jpg, 00001_00001.jpg);
    reasons name the folder as `name` (its path under the dataset root)."""
    import cv2

    files = sorted(
        (p.name for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS), key=natural_key
    ) if path.is_dir() else []
    name = name or str(path)
    if not files:
        raise ClipRejected(clip_id, "decode", f"{name}: no frame images ({', '.join(FRAME_EXTENSIONS)})")
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for i in sample_indices(len(files), cfg.num_frames):
        img = read_image(path / files[i], clip_id, f"{name}/{files[i]}")
        if size is None:
            size = _reduced_size(img.shape[1], img.shape[0], cfg.decode_max_side)
        if (img.shape[1], img.shape[0]) != size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def _truncated(data: bytes, suffix: str) -> str:
    """Why an image file is cut short ("" when its end marker is there): cv2 decodes a JPEG that
    lacks its end as gray rows without a word, and a PNG without IEND the same way."""
    if suffix in (".jpg", ".jpeg") and data[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in data[-1024:].rstrip(b"\x00"):
            return "truncated (the JPEG end marker FFD9 is missing)"
    elif suffix == ".png" and data[:8] == b"\x89PNG\r\n\x1a\n":
        if not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
            return "truncated (the PNG IEND chunk is missing)"
    elif suffix == ".bmp" and data[:2] == b"BM" and len(data) >= 6:
        if len(data) < int.from_bytes(data[2:6], "little"):
            return f"truncated ({len(data)} of the {int.from_bytes(data[2:6], 'little')} bytes its header gives)"
    return ""


def read_image(path: Path, clip_id: str, name: str) -> np.ndarray:
    """One frame file -> BGR uint8; a truncated or unreadable file rejects the clip, naming the file."""
    import cv2

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClipRejected(clip_id, "decode", f"{name}: unreadable image ({e.strerror or e})") from None
    why = _truncated(data, path.suffix.lower())
    if why:
        raise ClipRejected(clip_id, "decode", f"{name}: unreadable image: {why}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise ClipRejected(clip_id, "decode", f"{name}: unreadable image (truncated or not an image)")
    return img


def decode_clip(root: Path, clip: dict, cfg: DecodeConfig) -> np.ndarray:
    """A clips-table row -> uint8 T x H x W x 3 RGB; raises ClipRejected(stage="decode")."""
    path = Path(root) / clip["source"]
    name = clip["source"]  # relative to the dataset root: the same reason wherever the dataset sits
    if clip["source_kind"] == "frames":
        return decode_frame_folder(path, clip["clip_id"], cfg, name)
    if not path.is_file():
        raise ClipRejected(clip["clip_id"], "decode", f"{name}: file not found")
    if path.stat().st_size == 0:
        raise ClipRejected(clip["clip_id"], "decode", f"{name}: empty file (0 bytes)")
    return decode_video(path, clip["clip_id"], cfg, name)


def _first_line(e: BaseException, path: Path, name: str) -> str:
    """The first line of an error, with the absolute path replaced by the dataset-relative name."""
    text = str(e).strip().replace(str(path), name).splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
