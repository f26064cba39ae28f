"""build-shards at DFEW scale: speed with start-up, a per-stage profile and alignment quality, before vs after.

    python bench/bench_build.py [--sets orig260,mixed30] [--clips 260] [--small 30] [--orig 260] [--mixed 30]
                                [--large 0] [--out bench/out] [--before PATH] [--repeat 1] [--repeat-small 3]
                                [--parts speed,profile,quality] [--quality-configs 'old;defaults']

The sets, each a DFEW layout (Annotation/annotation.xlsx, EmoLabel_DataSplit/{train,test}(single-labeled)/
set_K.csv, Clip/original/NNNNN.mp4) made once under --out and reused (delete one to make it again):

sample<small>, sample<clips>   make-sample's clips (short, 320..960 px, x264 superfast / MPEG-4, corner
                               cases: no face, a truncated file); sample<small> is the "few dozen clips" job
orig<N>     DFEW's originals (--orig, default 260): 1280x720 H.264 from x264 at its defaults (preset medium,
            keyint 250, 3 B-frames), 2-5 s at 25 fps, a head-and-shoulders photo (the astronaut) whose face
            is 15-50% of the frame height moving, turning and zooming slowly in front of a still scene,
            mirrored or not, lit brighter or darker; ~5% of clips a non-face photo (coffee, rocket) instead
mixed<N>    what else users bring (--mixed, default 30; a small job): 640x360..1920x1080, H.264 (x264
            defaults) and MPEG-4, 25/30 fps, faces 10-50% of the frame height, a panning camera, ~7% no face
large<N>    issue 17's set (--large, default 0): 854x480..1280x720 x264 superfast, a truncated last clip
orig, mixed and large are rendered here (SPECS, make_large; two processes, ~4 ms of compositing per frame,
the rest is x264) with truth.json: each clip's size, codec, fps, frames and every frame's true eyes.

speed     `midas-prep build-shards` run as a command, as a user runs it (wall time from the shell, so
          Python start-up, ray.init, the first task and shutting Ray down are in it), 1 and 2 workers,
          every set, the code under test and `--before` (a checkout of an earlier commit) alternately;
          the DFEW projection of each (16,372 clips / (clips/s)); and on the small jobs (sample<small>,
          mixed<N>) the naive anchor: decode every frame, detect on every full-size frame (one process, its
          start-up included), and how many times faster build-shards is ("x naive").
profile   one build of each set but sample<small>, 2 workers on a Ray started here, before and after,
          every stage function wrapped by a timer inside the Ray tasks (exclusive time: a stage's own, not
          its callees'); the rest of the workers' time is Ray's (scheduling, object transfer, idle); plus
          ray.init, the first task, and a Ray round trip and object transfer measured alone.
quality   alignment of the sampled frames by two (or more) configs, --quality-configs (default: `old`,
          align.roi_size=0 and align.detect_max_side=640, the bytes of the code before tracking, against
          the defaults): eye landmarks of every frame are carried into the crop by the transform the build
          chose and compared with the template: eye-line roll and inter-ocular distance (IOD) across a
          clip's frames (their spread is the jitter), eye error, and the detection rate; on the rendered
          sets also the face clips kept and the no-face clips kept, by the truth. The landmarks come from
          (a) the true eye positions (truth.json), and (b) on every set, a reference detection independent
          of the configs (RetinaFace on a 256 px window around the face and on its mirror image, averaged).

Prints Markdown tables and writes them to <out>/build.md (--report). Record `uptime` with the numbers: the
development machine is shared, so compare the before and after columns of one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CODE = os.environ.get("BENCH_CODE", str(REPO))  # the checkout whose pipeline/ is measured
sys.path.insert(0, CODE)

DFEW_CLIPS = 16_372
ASTRONAUT_FACE = (177, 56, 95, 120)  # x, y, w, h of the face in skimage.data.astronaut()
OLD = {"align.roi_size": 0, "align.detect_max_side": 640}  # the config whose bytes the code before tracking wrote


# ---------------------------------------------------------------------------------------------- datasets

# The bench's own DFEW-like sets, by kind: frame sizes (w, h) and their odds, codecs and their odds
# (libx264 with the encoder options `x264`, None = x264's defaults: preset medium, crf 23, keyint 250,
# 3 B-frames, mb-tree; mpeg4 at ~0.1 bit per pixel, libavcodec's GOP of 12, no B-frames), frame rates
# and their odds, clip length (s), face height (the astronaut's detector box) as a share of the frame
# height, the share of clips showing no face (at least one), the camera's pan over the clip (largest
# share of the frame size; 0: a fixed camera, and x264 encodes such clips ~30% faster), and whether the
# last clip is truncated.
SUPERFAST = {"preset": "superfast", "crf": "23", "x264-params": "threads=1:lookahead-threads=1:mbtree=0"}
SPECS: dict[str, dict[str, Any]] = {
    # DFEW's originals: movie clips, 720p H.264 from x264 at its defaults (long GOP, B-frames)
    "orig": {"sizes": {(1280, 720): 1.0}, "codecs": {"libx264": 1.0}, "fps": {25: 1.0}, "seconds": (2.0, 5.0),
             "face": (0.15, 0.5), "no_face": 0.05, "pan": 0.0, "x264": None, "corrupt": False},
    # what users bring besides: 360p..1080p, H.264 and MPEG-4, 25/30 fps, faces of every size
    "mixed": {"sizes": {(640, 360): 0.2, (854, 480): 0.2, (960, 540): 0.15, (1280, 720): 0.25, (1920, 1080): 0.2},
              "codecs": {"libx264": 0.6, "mpeg4": 0.4}, "fps": {25: 0.5, 30: 0.5}, "seconds": (2.0, 5.0),
              "face": (0.1, 0.5), "no_face": 0.07, "pan": 0.04, "x264": None, "corrupt": False},
    # the set of issue 17 (`--large`): 480p..720p, x264 superfast, a truncated last clip
    "large": {"sizes": {(1280, 720): 0.4, (1024, 576): 0.2, (960, 540): 0.2, (854, 480): 0.2},
              "codecs": {"libx264": 1.0}, "fps": {25: 0.7, 30: 0.3}, "seconds": (2.0, 5.0), "face": (0.2, 0.4),
              "no_face": 0.05, "pan": 0.0, "x264": SUPERFAST, "corrupt": True},
}
BACKGROUNDS = ("gradient", "gradient", "coffee", "rocket")  # behind a face: a plain scene or a photo


def make_sets(out: Path, clips: int, small: int, large: int = 0, orig: int = 0, mixed: int = 0,
              only: list[str] | None = None) -> dict[str, Path]:
    """The chosen sets under `out` (made once, reused after): make-sample's `small` and `clips` clips and
    the bench's own kinds (SPECS); `only` lists set names (sample30, orig260) or kinds (orig) to keep."""
    wanted = [(f"sample{small}", "sample", small), (f"sample{clips}", "sample", clips),
              (f"orig{orig}", "orig", orig), (f"mixed{mixed}", "mixed", mixed), (f"large{large}", "large", large)]
    sets = {}
    for name, kind, n in wanted:
        if not n or (only and name not in only and kind not in only) or name in sets:
            continue
        root = out / name
        t = time.perf_counter()
        if kind == "sample" and not (root / "Annotation").exists():
            from pipeline.tools.make_sample import make_sample

            make_sample(root, clips=n, seed=0, with_frames=False)
        elif kind != "sample" and not (root / "truth.json").exists():
            make_large(root, n, seed=0, kind=kind)
        else:
            sets[name] = root
            continue
        print(f"{name}: made in {time.perf_counter() - t:.1f} s", flush=True)
        sets[name] = root
    return sets


@functools.cache
def _pictures() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """RGBA pictures (uint8) and their alpha (float32): the head-and-shoulders crop of the astronaut
    (face box at ASTRONAUT_FACE - (x0, y0), the origin in PICTURE_ORIGIN), and coffee and rocket whole."""
    import skimage.data

    img = skimage.data.astronaut()
    x0, y0 = PICTURE_ORIGIN
    fx, fy, fw, fh = ASTRONAUT_FACE
    x1, y1 = min(img.shape[1], int(fx + 2.1 * fw)), min(img.shape[0], int(fy + 2.1 * fh))
    out = {}
    for name, rgb in (("face", img[y0:y1, x0:x1]), ("coffee", skimage.data.coffee()),
                      ("rocket", skimage.data.rocket())):
        h, w = rgb.shape[:2]
        ramp = lambda n: np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.12 * n), 0, 1)  # noqa: E731
        a = np.minimum.outer(ramp(h), ramp(w))
        alpha = (a * a * (3 - 2 * a)).astype(np.float32)  # feathered: no hard, detector-bait edges
        rgba = np.dstack([rgb[..., :3], np.full((h, w), 255, np.uint8)])
        out[name] = (np.ascontiguousarray(rgba), alpha)
    return out


PICTURE_ORIGIN = (max(0, int(ASTRONAUT_FACE[0] - 1.1 * ASTRONAUT_FACE[2])),
                  max(0, int(ASTRONAUT_FACE[1] - 0.6 * ASTRONAUT_FACE[3])))


def face_eyes() -> np.ndarray:
    """The two eyes (x, y) of the face picture: RetinaFace on it at 512 px and on its mirror, averaged
    (computed once, in the parent, and handed to the renderers)."""
    rgba, _ = _pictures()["face"]
    h, w = rgba.shape[:2]
    return reference_landmarks(np.ascontiguousarray(rgba[None, ..., :3]), [(0, 0, w, h)], context=1.0,
                               size=512)[0][:2]


def _pick(rng: np.random.Generator, odds: dict[Any, float]) -> Any:
    keys = list(odds)
    return keys[int(rng.choice(len(keys), p=np.asarray(list(odds.values())) / sum(odds.values())))]


def _draw_clip(kind: str, number: int, seed: int, face: bool) -> dict[str, Any]:
    """One clip's format and motion, from its own (seed, number) generator."""
    spec = SPECS[kind]
    rng = np.random.default_rng([seed, number])
    width, height = _pick(rng, spec["sizes"])
    fps = _pick(rng, spec["fps"])
    clip = {"number": number, "kind": kind, "width": width, "height": height, "fps": fps,
            "codec": _pick(rng, spec["codecs"]), "frames": int(round(rng.uniform(*spec["seconds"]) * fps)),
            "face": face, "picture": "face" if face else ("coffee" if number % 2 else "rocket"),
            "background": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], "seed": seed,
            "mirror": bool(rng.random() < 0.5), "gain": float(rng.uniform(0.55, 1.15)),
            "pan": [float(v) * spec["pan"] for v in rng.uniform(-1, 1, 2)]}
    if face:
        fw, fh = ASTRONAUT_FACE[2:]
        s0 = rng.uniform(*spec["face"]) * height / fh
        s1 = s0 * rng.uniform(0.85, 1.15)
        a0 = rng.uniform(-15, 15)
        half = 0.65 * max(s0, s1) * np.hypot(fw, fh)  # the face box stays in the frame, turned or not
        cx0 = rng.uniform(half, max(half, width - half))
        cy0 = rng.uniform(half, max(half, height - half))
        clip.update(scale=(s0, s1), angle=(a0, a0 + rng.uniform(-10, 10)), centre=(
            (cx0, float(np.clip(cx0 + rng.uniform(-0.15, 0.15) * width, half, max(half, width - half)))),
            (cy0, float(np.clip(cy0 + rng.uniform(-0.1, 0.1) * height, half, max(half, height - half))))),
            wobble=[float(v) for v in rng.uniform(0, 2 * np.pi, 2)])
    else:  # a non-face photo filling the frame, zooming slowly
        clip.update(scale=(1.0, rng.uniform(1.0, 1.1)))
    return clip


def _scene(clip: dict[str, Any], margin: tuple[int, int]) -> np.ndarray:
    """The clip's background (RGBA, uint8), `margin` px larger on each side for the camera pan."""
    import cv2

    w, h = clip["width"] + 2 * margin[0], clip["height"] + 2 * margin[1]
    rng = np.random.default_rng([clip["seed"], clip["number"], 1])
    if clip["face"] and clip["background"] == "gradient":
        c0, c1 = rng.integers(20, 236, 3).astype(np.float32), rng.integers(20, 236, 3).astype(np.float32)
        d = rng.uniform(0, 2 * np.pi)
        t = np.add.outer(np.linspace(0, np.sin(d), h, dtype=np.float32), np.linspace(0, np.cos(d), w, dtype=np.float32))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        noise = cv2.resize(rng.normal(0, 18, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32), (w, h),
                           interpolation=cv2.INTER_CUBIC)
        rgb = np.clip(c0 + t[..., None] * (c1 - c0) + noise, 0, 255).astype(np.uint8)
    else:  # a photo covering the frame (the no-face clips' picture, or a face's backdrop)
        name = clip["picture"] if not clip["face"] else clip["background"]
        pic = _pictures()[name][0][..., :3]
        k = max(w / pic.shape[1], h / pic.shape[0]) * (clip["scale"][1] if not clip["face"] else 1.0)
        big = cv2.resize(pic, (int(np.ceil(pic.shape[1] * k)), int(np.ceil(pic.shape[0] * k))),
                         interpolation=cv2.INTER_LINEAR)
        y, x = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        rgb = big[y:y + h, x:x + w]
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2RGBA)


def _render_large(path: Path, number: int, seed: int, kind: str = "orig", subject: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Render and encode one clip of kind `kind` to `path` (written under a temporary name, then renamed):
    the face picture (`subject`: {"eyes": its two eyes} from face_eyes(); None: a clip with no face)
    moving, turning and zooming slowly in front of a slowly panning scene; -> its size, codec, fps,
    frame count and every frame's true eyes (x, y), native pixels (no "eyes" without a face).

    Fast because the compositing is small: the scene behind the face is pulled back to the picture's
    resolution and blended there, and only the box the face covers is warped into the frame (the way
    make-sample renders); everything is RGBA (OpenCV is faster on 4 channels than on 3)."""
    from fractions import Fraction

    import av
    import cv2

    cv2.setNumThreads(1)
    clip = _draw_clip(kind, number, seed, subject is not None)
    width, height, fps, frames = clip["width"], clip["height"], clip["fps"], clip["frames"]
    margin = (int(np.ceil(abs(clip["pan"][0]) * width)) + 2, int(np.ceil(abs(clip["pan"][1]) * height)) + 2)
    scene = _scene(clip, margin)
    truth: dict[str, Any] = {k: clip[k] for k in ("width", "height", "fps", "frames", "codec")}
    truth["face"] = subject is not None
    if subject is not None:
        rgba, alpha = _pictures()["face"]
        eyes = np.asarray(subject["eyes"], np.float64)
        if clip["mirror"]:  # a mirrored picture: its eyes mirrored, the left one (in the image) first
            rgba, alpha = np.ascontiguousarray(rgba[:, ::-1]), np.ascontiguousarray(alpha[:, ::-1])
            eyes = np.array([[rgba.shape[1] - 1 - eyes[1, 0], eyes[1, 1]],
                             [rgba.shape[1] - 1 - eyes[0, 0], eyes[0, 1]]])
        rgba = cv2.convertScaleAbs(rgba, alpha=clip["gain"])  # lit brighter or darker
        rgba[..., 3] = 255
        inv_alpha = 1.0 - alpha
        sh, sw = rgba.shape[:2]
        corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64)
        fx, fy, fw, fh = ASTRONAUT_FACE
        fcx = fx + fw / 2 - PICTURE_ORIGIN[0]
        fc = (sw - 1 - fcx if clip["mirror"] else fcx, fy + fh / 2 - PICTURE_ORIGIN[1])
        truth["eyes"] = []
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(clip["codec"], rate=fps)
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.thread_count = 1  # two renderers on two cores; threads do not change the GOP or B-frames
        if clip["codec"] == "libx264":
            if SPECS[kind]["x264"]:
                ctx.options = dict(SPECS[kind]["x264"])
        else:
            ctx.bit_rate = int(0.1 * width * height * fps)
        for i in range(frames):
            u = i / max(1, frames - 1)
            ease = 0.5 - 0.5 * np.cos(np.pi * u)  # smooth start and stop, like a head turning
            ox = int(round(margin[0] + clip["pan"][0] * width * (2 * ease - 1)))
            oy = int(round(margin[1] + clip["pan"][1] * height * (2 * ease - 1)))
            frame = scene[oy:oy + height, ox:ox + width].copy()
            if subject is not None:
                s0, s1 = clip["scale"]
                a0, a1 = clip["angle"]
                (cx0, cx1), (cy0, cy1) = clip["centre"]
                scale = (1 - ease) * s0 + ease * s1
                angle = (1 - ease) * a0 + ease * a1 + 2.0 * np.sin(2 * np.pi * u + clip["wobble"][0])
                cx = (1 - ease) * cx0 + ease * cx1 + 0.01 * width * np.sin(3 * np.pi * u + clip["wobble"][1])
                cy = (1 - ease) * cy0 + ease * cy1
                m = cv2.getRotationMatrix2D(fc, float(angle), float(scale))
                m[0, 2] += cx - fc[0]
                m[1, 2] += cy - fc[1]
                truth["eyes"].append((eyes @ m[:, :2].T + m[:, 2]).tolist())
                back = cv2.invertAffineTransform(m)
                back[:, 2] += (ox, oy)  # picture -> scene pixels
                behind = cv2.warpAffine(scene, back, (sw, sh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                comp = cv2.blendLinear(rgba, behind, alpha, inv_alpha)
                hull = corners @ m.T
                x0, y0 = max(0, int(np.floor(hull[:, 0].min()))), max(0, int(np.floor(hull[:, 1].min())))
                x1 = min(width, int(np.ceil(hull[:, 0].max())) + 1)
                y1 = min(height, int(np.ceil(hull[:, 1].max())) + 1)
                if x1 > x0 and y1 > y0:
                    m_roi = m.copy()
                    m_roi[:, 2] -= (x0, y0)
                    cv2.warpAffine(comp, m_roi, (x1 - x0, y1 - y0), dst=frame[y0:y1, x0:x1], flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_TRANSPARENT)
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGBA2YUV_I420), format="yuv420p")
            vf.pts = i
            vf.time_base = ctx.time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return truth


def _write_layout(root: Path, n: int, seed: int) -> None:
    """DFEW's annotation workbook and the 5 fold splits for clips 1..n (make-sample's votes and layout)."""
    from pipeline.tools import make_sample as ms

    rng = np.random.default_rng([seed, n, 2])
    ambiguous = set(int(i) for i in rng.choice(np.arange(1, n + 1), size=round(0.3 * n), replace=False))
    votes = [ms._draw_votes(rng, i in ambiguous) for i in range(1, n + 1)]
    labels = [ms._label(v) for v in votes]
    split = root / "EmoLabel_DataSplit"
    for d in (root / "Annotation", split / "train(single-labeled)", split / "test(single-labeled)"):
        d.mkdir(parents=True, exist_ok=True)
    ms._write_atomic(root / "Annotation" / "annotation.xlsx", ms._annotation_xlsx(votes, labels))
    single = [(i, lab) for i, lab in enumerate(labels, start=1) if lab != 0]
    order = rng.permutation(len(single))
    folds = [[single[j] for j in order[k::ms.N_FOLDS]] for k in range(ms.N_FOLDS)]
    for k, test in enumerate(folds, start=1):
        train = [row for row in single if row not in set(test)]
        ms._write_atomic(split / "test(single-labeled)" / f"set_{k}.csv", ms._split_csv(test))
        ms._write_atomic(split / "train(single-labeled)" / f"set_{k}.csv", ms._split_csv(train))


def no_face_clips(kind: str, n: int, seed: int = 0) -> set[int]:
    """The clips of 1..n that show no face: one in every 1 / (SPECS' share) from clip 11 on (orig: 11, 31,
    51, ...), whatever n is, so a set is the first n clips of any bigger one of its kind and seed
    (make_large links them from it)."""
    step = max(2, round(1 / SPECS[kind]["no_face"]))
    return set(range(11, n + 1, step))


def make_large(root: Path, n: int, seed: int = 0, kind: str = "orig") -> None:
    """A DFEW-layout set of `n` clips of kind `kind` (SPECS): Annotation/annotation.xlsx,
    EmoLabel_DataSplit/{train,test}(single-labeled)/set_K.csv and Clip/original/NNNNN.mp4, and
    truth.json (written last: the set is complete) with each clip's format and every frame's true eyes.

    Two spawned renderers (a forked child of a process that ran OpenCV or onnxruntime threads can
    hang), the longest clips first. A clip already rendered (its mp4 and .truth/NNNNN.json), here by
    an interrupted run or in another set of the same kind and seed under the same folder (linked from
    there), is kept."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spec = SPECS[kind]
    video, parts = root / "Clip" / "original", root / ".truth"
    video.mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    _write_layout(root, n, seed)
    no_face = no_face_clips(kind, n, seed)
    last = n if spec["corrupt"] else 0  # truncated below: never linked from or to another set
    siblings = [d for d in sorted(root.parent.glob(f"{kind}*")) if d != root and d.name[len(kind):].isdigit()]

    def rendered(where: Path, number: int) -> bool:
        cid = f"{number:05d}"
        try:
            tr = json.loads((where / ".truth" / f"{cid}.json").read_text())
        except (OSError, ValueError):
            return False
        return ((where / "Clip" / "original" / f"{cid}.mp4").exists() and tr.get("face") == (number not in no_face)
                and tr.get("seed", 0) == seed and tr.get("kind", kind) == kind)

    todo = []
    for number in range(1, n + 1):
        cid = f"{number:05d}"
        if rendered(root, number):
            continue
        src = next((d for d in siblings if number != last and number != int(d.name[len(kind):]) * spec["corrupt"]
                    and rendered(d, number)), None)
        if src is not None:
            for a, b in ((src / "Clip/original" / f"{cid}.mp4", video / f"{cid}.mp4"),
                         (src / ".truth" / f"{cid}.json", parts / f"{cid}.json")):
                b.unlink(missing_ok=True)
                os.link(a, b)
            continue
        c = _draw_clip(kind, number, seed, number not in no_face)
        todo.append((c["frames"] * c["width"] * c["height"], number))
    todo.sort(reverse=True)
    subject = {"eyes": face_eyes().tolist()} if todo else None
    t0, done = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {number: pool.submit(_render_large, video / f"{number:05d}.mp4", number, seed, kind,
                                       None if number in no_face else subject) for _, number in todo}
        for number, f in futures.items():
            truth = f.result() | {"seed": seed, "kind": kind}
            tmp = parts / f".{number:05d}.json.tmp"
            tmp.write_text(json.dumps(truth))
            os.replace(tmp, parts / f"{number:05d}.json")
            done += 1
            if done % 20 == 0:
                print(f"  {root.name}: {done}/{len(todo)} clips rendered, {time.perf_counter() - t0:.0f} s", flush=True)
    truth = {f"{i:05d}": json.loads((parts / f"{i:05d}.json").read_text()) for i in range(1, n + 1)}
    if spec["corrupt"]:  # the last clip truncated to 300 bytes, as make-sample does
        (video / f"{n:05d}.mp4").write_bytes((video / f"{n:05d}.mp4").read_bytes()[:300])
        truth.pop(f"{n:05d}")
    (root / "truth.json").write_text(json.dumps(truth))


# ------------------------------------------------------------------------------------------------- speed


def _env(code: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MIDAS_PREP_FAULT")}
    return env | {"PYTHONPATH": code, "BENCH_CODE": code}


class PeakRSS:
    """Largest RSS of a Ray worker (ray::...) among the descendants of `pid`, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        workers: dict[int, Any] = {}
        tick = 0
        while not self._stop.is_set():
            if tick % 10 == 0:  # look for new workers every second, read their memory 10x a second
                try:
                    for p in psutil.Process(self.pid).children(recursive=True):
                        if p.pid not in workers and " ".join(p.cmdline()).startswith("ray::"):
                            workers[p.pid] = p
                except psutil.Error:
                    pass
            for pid, p in list(workers.items()):
                try:
                    self.peak = max(self.peak, p.memory_info().rss)
                except psutil.Error:
                    del workers[pid]
            tick += 1
            time.sleep(0.1)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_cli(code: str, root: Path, out: Path, workers: int) -> dict[str, Any]:
    """`midas-prep build-shards` as a fresh command: wall seconds, its JSON summary, peak worker RSS."""
    cmd = [sys.executable, "-m", "pipeline.cli", "build-shards", str(root), "--out", str(out), "--workers",
           str(workers), "--overwrite", "--json"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(code),
                            cwd=tempfile.gettempdir())
    with PeakRSS(proc.pid) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"build-shards failed ({code}):\n{stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "summary": summary, "rss": mem.peak}


_NAIVE = r"""
import sys, time, json
import numpy as np
t0 = time.perf_counter()
from pathlib import Path
import decord
from pipeline.align import align_frames, get_detector
from pipeline.config import AlignConfig, BuildConfig, load_config
from pipeline.decode import sample_indices
from pipeline.errors import ClipRejected
from pipeline.index import index_dataset
root = Path(sys.argv[1])
cfg = load_config(BuildConfig, None, {"dataset_root": str(root)})
full = dict(detect_every=1, detect_max_side=4096, smooth_window=1)
if "roi_size" in AlignConfig.__dataclass_fields__:
    full["roi_size"] = 0
acfg = AlignConfig(**full)
det = get_detector(acfg)
kept = 0
for c in index_dataset(root, cfg.index).clips:
    try:
        vr = decord.VideoReader(str(root / c["source"]), num_threads=1)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    except (decord.DECORDError, RuntimeError):
        continue
    # every frame alone (detect_every=1, no smoothing), 16 at a time: one batch of a 1080p clip's
    # frames at full size needs ~20 GB in the detector
    crops = []
    for i in range(0, len(frames), 16):
        try:
            crops.append(align_frames(frames[i:i + 16], det, acfg)[0])
        except ClipRejected:
            pass
    if crops:
        crops = np.concatenate(crops)
        crops = crops[sample_indices(len(crops), cfg.decode.num_frames)]
        kept += 1
print(json.dumps({"kept": kept, "seconds": time.perf_counter() - t0}))
"""


def run_naive(code: str, root: Path) -> dict[str, Any]:
    """The naive anchor as a fresh process over every clip of `root` (its start-up included)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _NAIVE, str(root)], capture_output=True, text=True, env=_env(code),
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"naive anchor failed:\n{proc.stderr[-2000:]}")
    return {"wall": time.perf_counter() - t} | json.loads(proc.stdout.strip().splitlines()[-1])


def bench_speed(sets: dict[str, Path], out: Path, before: str, repeat: int, worker_counts: list[int],
                repeat_small: int, small: list[str], main: str = "", naive: bool = True) -> list[str]:
    """Every set with 1 and 2 workers, after and before alternately; the naive anchor on the `small` sets
    (the few-dozen-clip jobs) and each one's "x naive"; `main`'s after runs write shards_w<N> (what
    bench_mix.py and bench_loader.py read)."""
    codes = {"after": CODE} | ({"before": before} if before else {})
    rows: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for i in range(max(repeat, repeat_small)):
        for name, root in sets.items():
            if i >= (repeat_small if name in small else repeat):
                continue
            for workers in worker_counts:
                for label, code in codes.items():  # alternate, so load changes hit both
                    mine = (label, name) == ("after", main)
                    dest = f"shards_w{workers}" if mine else f"shards_{label}_{name}_w{workers}"
                    r = run_cli(code, root, out / dest, workers)
                    rows.setdefault((name, workers, label), []).append(r)
                    print(f"  {label:6s} {name:10s} w{workers}: {r['wall']:.1f} s", flush=True)
    lines = [
        "| set | workers | code | clips (written) | wall s (incl. start-up; median of runs) | clips/s | "
        "DFEW 16,372 clips | peak RSS per worker (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, workers, label), runs in sorted(rows.items(), key=lambda kv: (list(sets).index(kv[0][0]), kv[0][1])):
        wall = float(np.median([r["wall"] for r in runs]))
        s = runs[0]["summary"]
        rate = s["processed"] / wall
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        lines.append(f"| {name} | {workers} | {label} | {s['processed']} ({s['written']}) | {wall:.1f} ({walls}) | "
                     f"{rate:.2f} | "
                     f"{DFEW_CLIPS / rate / 60:.0f} min | {max(r['rss'] for r in runs) / 2**20:.0f} |")
    print("\n".join(lines), flush=True)  # the naive anchor takes long: the table so far first
    anchors = {name: [run_naive(CODE, sets[name]) for _ in range(repeat)] for name in sets if name in small and naive}
    for name, runs in anchors.items():
        nwall = float(np.median([r["wall"] for r in runs]))
        lines += ["", f"Naive anchor on {name} (one process, start-up included; decode every frame, detect on every "
                  f"full-size frame): {nwall:.1f} s, {runs[0]['kept']} clips kept."]
        for label in codes:
            ours = float(np.median([r["wall"] for r in rows[(name, max(worker_counts), label)]]))
            lines.append(f"- {label}: `build-shards --workers {max(worker_counts)}` on {name} takes {ours:.1f} s "
                         f"(median): {nwall / ours:.1f}x naive.")
    return lines


# ----------------------------------------------------------------------------------------------- profile

# (module, attribute, stage): wrapped by a timer in the driver and in every Ray worker. A method is
# "module:Class.method". Names a checkout does not have are skipped (before/after differ).
STAGES = [
    ("pipeline.decode", "decode_video", "decode: open + demux + decode (decord or PyAV)"),
    ("pipeline.decode", "decode_frame_folder", "decode: open + demux + decode (decord or PyAV)"),
    ("pipeline.decode", "_rgb", "decode: to RGB at the decoded size (PyAV)"),
    ("pipeline.align", "_downscale", "detect: resize frames / cut windows"),
    ("pipeline.align", "_detect_roi", "detect: resize frames / cut windows"),
    ("pipeline.align", "RetinaFaceDetector.detect", "detect: pre/post-processing (numpy, NMS)"),
    ("onnxruntime", "InferenceSession.run", "detect: ONNX RetinaFace"),
    ("pipeline.align", "estimate_transforms", "landmarks: fit + fill + smoothing"),
    ("pipeline.align", "_fill", "landmarks: fit + fill + smoothing"),
    ("pipeline.align", "smooth_transforms", "landmarks: fit + fill + smoothing"),
    ("cv2", "warpAffine", "warpAffine"),
    ("pipeline.write", "encode_sample", "encode: npy + crc32 + json"),
    ("pipeline.write", "write_tar", "encode: tar"),
    ("pipeline.write", "write_parquet", "encode: Parquet (zstd)"),
    ("pipeline.write", "_HashingWriter.write", "write: file write"),
    ("pipeline.write", "_Sha.update", "write: sha256"),
    ("os", "fsync", "write: fsync"),
    ("pipeline.build", "process_clip", "task: the rest (Python glue, imports, detector load)"),
    ("pipeline.build", "process_clips", "task: the rest (Python glue, imports, detector load)"),
    ("pipeline.build", "write_shard", "task: the rest (Python glue, imports, detector load)"),
    ("pipeline.build", "index_dataset", "driver: index"),
    ("pipeline.build", "plan_shards", "driver: plan"),
    ("pipeline.build", "write_index", "driver: index.json, clips/rejects tables"),
    ("pipeline.build", "write_clips_table", "driver: index.json, clips/rejects tables"),
    ("pipeline.build", "write_rejects_table", "driver: index.json, clips/rejects tables"),
]
TASKS = ("process_clip", "process_clips", "write_shard")  # a worker dumps its timers after each


def install_timers(dump_dir: str) -> dict[str, float]:
    """Wrap every STAGES function in this process with an exclusive-time timer; -> the totals by
    stage (seconds). The task functions dump them to <dump_dir>/<pid>.json after each call, which is
    how a Ray worker (this is its setup hook) hands them over."""
    import hashlib
    import importlib

    acc: dict[str, float] = {}
    stack: list[float] = []

    def timed(stage: str, fn: Any, task: bool = False) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                acc[stage] = acc.get(stage, 0.0) + dt - stack.pop()
                if stack:
                    stack[-1] += dt
                elif task:
                    acc["task total"] = acc.get("task total", 0.0) + dt
                    Path(dump_dir, f"{os.getpid()}.json").write_text(json.dumps(acc))
        return wrapper

    try:
        write = importlib.import_module("pipeline.write")

        class _Sha:  # hashlib.sha256 with a timed update (the C object's method cannot be wrapped)
            def __init__(self) -> None:
                self._h = hashlib.sha256()

            def update(self, data: Any) -> None:
                self._h.update(data)

            def hexdigest(self) -> str:
                return self._h.hexdigest()

        write._Sha = _Sha  # type: ignore[attr-defined]
        write.hashlib = type("hashlib", (), {"sha256": _Sha})  # type: ignore[attr-defined]
    except ImportError:
        pass
    for module, attr, stage in STAGES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        owner: Any = mod
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p, None)
        if owner is None or not hasattr(owner, name):
            continue
        setattr(owner, name, timed(stage, getattr(owner, name), task=name in TASKS))
    return acc


_PROFILE = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_CODE"])
sys.path.insert(0, os.environ["BENCH_DIR"])
import logging
from pathlib import Path
import numpy as np
import ray
from bench_build import install_timers
from pipeline.cluster import init_ray, local_ray_kwargs, shutdown_ray
from pipeline.config import BuildConfig, load_config
root, out, dump, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
res = {}

# 1. start-up alone: a local Ray as build-shards starts it, then one clip task (imports, detector load).
import pipeline.build as build
from pipeline.index import index_dataset
cfg = load_config(BuildConfig, None, {"dataset_root": root, "write.out": out, "ray.workers": workers,
                                      "write.overwrite": True})
clip = index_dataset(root, cfg.index).clips[0]
t = time.perf_counter()
_, started = init_ray("", workers)
res["ray.init"] = time.perf_counter() - t
t = time.perf_counter()
if hasattr(build, "process_clips"):
    ray.get(ray.remote(build.process_clips).remote(root, [clip], cfg.decode, cfg.align))
else:
    ray.get(ray.remote(num_returns=2)(build.process_clip).remote(root, clip, cfg.decode, cfg.align)[0])
res["first task"] = time.perf_counter() - t
frames = np.zeros((16, 112, 112, 3), np.uint8)
noop = ray.remote(lambda x: x)
t = time.perf_counter()
for _ in range(100):
    ray.get(noop.remote(1))
res["ray round trip (no-op task)"] = (time.perf_counter() - t) / 100
t = time.perf_counter()
for _ in range(100):
    ray.get(noop.remote(ray.put(frames)))
res["ray round trip with one clip's crops"] = (time.perf_counter() - t) / 100
t = time.perf_counter()
shutdown_ray(started)
res["shutdown"] = time.perf_counter() - t

# 2. the build, every stage timed inside the tasks
driver = install_timers(dump)
import pipeline.build as build
ray.init(**local_ray_kwargs(workers), runtime_env={"worker_process_setup_hook": lambda: install_timers(dump)})
t = time.perf_counter()
s = build.build_shards(cfg)
res["build wall"] = time.perf_counter() - t
res["processed"] = s.processed
res["written"] = s.written
res["workers"] = workers
ray.shutdown()
print(json.dumps({"res": res, "driver": driver}))
"""


def run_profile(code: str, root: Path, out: Path, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as dump:
        here = str(Path(__file__).resolve().parent)
        env = _env(code) | {"BENCH_DIR": here, "PYTHONPATH": f"{code}{os.pathsep}{here}"}
        proc = subprocess.run([sys.executable, "-c", _PROFILE, str(root), str(out), dump, str(workers)],
                              capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        if proc.returncode != 0:
            raise SystemExit(f"profile run failed ({code}):\n{proc.stderr[-3000:]}")
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        workers_acc: dict[str, float] = {}
        for f in Path(dump).glob("*.json"):
            for k, v in json.loads(f.read_text()).items():
                workers_acc[k] = workers_acc.get(k, 0.0) + v
    return doc | {"stages": workers_acc}


def bench_profile(sets: dict[str, Path], out: Path, before: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The per-stage table of every set but `skip` (the make-sample small job: too few clips to say much)."""
    lines: list[str] = []
    for name in sets:
        if name not in skip:
            lines += _profile_table(name, sets[name], out, before) + [""]
    return lines


def _profile_table(name: str, root: Path, out: Path, before: str) -> list[str]:
    codes = {"before": before, "after": CODE} if before else {"after": CODE}
    prof = {label: run_profile(code, root, out / f"profile_{label}_{name}", 2) for label, code in codes.items()}
    stages = list(dict.fromkeys(s for _, _, s in STAGES if not s.startswith("driver")))
    lines = [f"Per-stage time per clip, {name}, 2 workers on a Ray started beforehand (ms per clip; exclusive: "
             "a stage's own time, its callees' not)", "",
             "| stage | " + " | ".join(codes) + " |", "|---|" + "---|" * len(codes)]

    def per_clip(label: str, seconds: float) -> str:
        return f"{1000 * seconds / max(1, prof[label]['res']['processed']):.1f}"

    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(per_clip(lb, prof[lb]["stages"].get(stage, 0.0)) for lb in codes)
                     + " |")
    for label in codes:
        r = prof[label]["res"]
        busy = prof[label]["stages"].get("task total", 0.0)
        prof[label]["ray"] = r["workers"] * r["build wall"] - busy
    lines.append("| **in tasks, total** | " + " | ".join(
        per_clip(lb, prof[lb]["stages"].get("task total", 0.0)) for lb in codes) + " |")
    lines.append("| Ray: scheduling, object transfer, workers idle (workers x wall - in tasks) | " + " | ".join(
        per_clip(lb, prof[lb]["ray"]) for lb in codes) + " |")
    lines.append("| **workers x wall** | " + " | ".join(
        per_clip(lb, prof[lb]["res"]["workers"] * prof[lb]["res"]["build wall"]) for lb in codes) + " |")
    for stage in ("driver: index", "driver: plan", "driver: index.json, clips/rejects tables"):
        lines.append(f"| {stage} (beside the workers) | " + " | ".join(
            per_clip(lb, prof[lb]["driver"].get(stage, 0.0)) for lb in codes) + " |")
    lines += ["", "| once per build (s) | " + " | ".join(codes) + " |", "|---|" + "---|" * len(codes)]
    for key in ("ray.init", "first task", "shutdown", "build wall"):
        lines.append(f"| {key} | " + " | ".join(f"{prof[lb]['res'][key]:.2f}" for lb in codes) + " |")
    for key in ("ray round trip (no-op task)", "ray round trip with one clip's crops"):
        lines.append(f"| {key} (ms) | " + " | ".join(f"{1000 * prof[lb]['res'][key]:.2f}" for lb in codes) + " |")
    lines.append("| clips/s (build wall) | " + " | ".join(
        f"{prof[lb]['res']['processed'] / prof[lb]['res']['build wall']:.2f}" for lb in codes) + " |")
    return lines


# ----------------------------------------------------------------------------------------------- quality


def reference_landmarks(frames: np.ndarray, boxes: list[tuple[float, ...] | None], context: float = 2.0,
                        size: int = 256) -> list[np.ndarray | None]:
    """Five landmarks per frame from RetinaFace on a size x size window around `box` and on its mirror
    image, averaged (mirrored eyes and mouth corners swapped back): a reference that shares no input
    with the configs under test."""
    import cv2

    from pipeline.align import RetinaFaceDetector
    from pipeline.config import AlignConfig

    det = RetinaFaceDetector(AlignConfig(min_score=0.5))
    out: list[np.ndarray | None] = []
    for frame, box in zip(frames, boxes, strict=True):
        if box is None:
            out.append(None)
            continue
        x, y, w, h = box
        n = int(round(context * max(w, h)))
        x0, y0 = int(round(x + w / 2 - n / 2)), int(round(y + h / 2 - n / 2))
        m = np.array([[size / n, 0, -x0 * size / n], [0, size / n, -y0 * size / n]])
        win = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA if n > size else cv2.INTER_CUBIC,
                             borderValue=(127, 117, 104))
        a, b = det.detect(np.stack([win, np.ascontiguousarray(win[:, ::-1])]))
        if a is None or b is None:
            out.append(None)
            continue
        mirrored = b.landmarks.copy()
        mirrored[:, 0] = size - 1 - mirrored[:, 0]
        lm = (a.landmarks + mirrored[[1, 0, 2, 4, 3]]) / 2
        out.append(lm * n / size + [x0, y0])
    return out


def _clip_metrics(eyes: np.ndarray, size: int) -> dict[str, float]:
    """Eyes (frames x 2 x 2, crop pixels) -> jitter and error against the template, in 112 px units."""
    from pipeline.align import template

    eyes = eyes * (112 / size)
    tm = template(112)[:2]
    d = eyes[:, 1] - eyes[:, 0]
    roll = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    t_roll = float(np.degrees(np.arctan2(tm[1, 1] - tm[0, 1], tm[1, 0] - tm[0, 0])))
    iod = np.linalg.norm(d, axis=1)
    mid = eyes.mean(axis=1)
    return {"roll sd (deg)": float(roll.std()), "roll error (deg)": float(np.abs(roll - t_roll).mean()),
            "IOD sd (%)": float(100 * iod.std() / iod.mean()),
            "IOD error (%)": float(100 * np.abs(iod / np.linalg.norm(tm[1] - tm[0]) - 1).mean()),
            "eye-centre sd (px)": float(np.sqrt(((mid - mid.mean(0)) ** 2).sum(1).mean())),
            "eye error (px)": float(np.linalg.norm(eyes - tm, axis=2).mean())}


def parse_quality_configs(text: str) -> dict[str, dict[str, Any]]:
    """`--quality-configs`: configs separated by ';', each `label` or `label:key=value,key=value` (build
    config overrides, as --set takes them); the label `old` alone means OLD (the bytes of the code before
    tracking), `defaults` alone the defaults."""
    import yaml

    configs: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        label, _, rest = part.partition(":")
        if not rest and label == "old":
            label, overrides = "old (roi_size=0, detect_max_side=640)", dict(OLD)
        else:
            overrides = {k.strip(): yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv)}
        configs[label] = overrides
    return configs


def bench_quality(sets: dict[str, Path], limit: int, configs: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Each config's alignment of each set's first `limit` clips (configs: label -> build overrides;
    default: OLD against the defaults); against the truth of the bench's own sets too (truth.json)."""
    import cv2  # noqa: F401 - before anything that may import decord

    from pipeline.align import get_detector, track_face
    from pipeline.config import AlignConfig, BuildConfig, load_config
    from pipeline.decode import decode_clip, sample_indices
    from pipeline.errors import ClipRejected
    from pipeline.index import index_dataset

    configs = configs or parse_quality_configs("old;defaults")
    builds = {label: load_config(BuildConfig, None, dict(o)) for label, o in configs.items()}
    finder = get_detector(AlignConfig(detect_max_side=4096, roi_size=0, min_score=0.5))
    lines = []
    for name, root in sets.items():
        truth = json.loads((root / "truth.json").read_text()) if (root / "truth.json").exists() else None
        cfg = load_config(BuildConfig, None, {"dataset_root": str(root)})
        clips = index_dataset(root, cfg.index).clips[:limit]
        metrics: dict[str, dict[str, dict[str, list[float]]]] = {c: {"reference": {}, "truth": {}} for c in configs}
        det = {c: [0, 0, 0, 0] for c in configs}  # clips kept, clips, frames with a face, frames tried
        faces = {c: [0, 0, 0, 0] for c in configs}  # by the truth: face clips kept, face clips, no-face kept, no-face
        seconds = {c: 0.0 for c in configs}
        for clip in clips:
            decoded: dict[str, np.ndarray | None] = {}  # by decode config: its frames, and their landmarks
            landmarks: dict[str, dict[str, list[np.ndarray | None]]] = {}
            tr = truth.get(clip["clip_id"]) if truth is not None else None
            for label, build in builds.items():
                key = repr(build.decode)
                if key not in decoded:
                    try:
                        decoded[key] = decode_clip(root, clip, build.decode)
                    except ClipRejected:
                        decoded[key] = None
                frames = decoded[key]
                if frames is None:
                    continue
                if key not in landmarks:  # the reference and true landmarks, once per decoded size
                    boxes = [None if f is None else f.box for f in finder.detect(frames)]
                    landmarks[key] = {"reference": reference_landmarks(frames, boxes)}
                    if tr is not None and tr.get("face", True):
                        k = np.array([frames.shape[2] / tr["width"], frames.shape[1] / tr["height"]])
                        landmarks[key]["truth"] = [(np.array(tr["eyes"][i]) + 0.5) * k - 0.5
                                                   for i in sample_indices(tr["frames"], len(frames))]
                refs = landmarks[key]
                det[label][1] += 1
                if tr is not None:
                    faces[label][1 if tr.get("face", True) else 3] += 1
                t = time.perf_counter()
                try:
                    matrices, stats = track_face(frames, get_detector(build.align), build.align, clip["clip_id"])
                except ClipRejected:
                    seconds[label] += time.perf_counter() - t
                    continue
                seconds[label] += time.perf_counter() - t
                det[label][0] += 1
                det[label][2] += stats["face_frames"]
                det[label][3] += stats["face_tried"]
                if tr is not None:
                    faces[label][0 if tr.get("face", True) else 2] += 1
                for kind, lms in refs.items():
                    eyes = np.array([lm[:2] @ m[:, :2].T + m[:, 2] for lm, m in zip(lms, matrices, strict=True)
                                     if lm is not None])
                    if len(eyes) >= 2:
                        for k, v in _clip_metrics(eyes, build.align.frame_size).items():
                            metrics[label][kind].setdefault(k, []).append(v)
        keys = list(_clip_metrics(np.ones((2, 2, 2)) + [[[0, 0], [1, 0]]], 112))
        lines += ["", f"Alignment quality, {name} ({len(clips)} clips; mean over clips; 112 px crop units)", "",
                  "| config | landmarks | clips kept | face clips kept (truth) | no-face clips kept (truth) | "
                  "faces found / frames tried | align ms/clip | " + " | ".join(keys) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(keys)]
        for label in configs:
            kept, total, found, tried = det[label]
            fk, ft, nk, nt = faces[label]
            for kind, vals in metrics[label].items():
                if not vals:
                    continue
                by_truth = f"{fk}/{ft} | {nk}/{nt}" if truth else "- | -"
                ms = 1000 * seconds[label] / max(1, total)
                lines.append(f"| {label} | {kind} | {kept}/{total} | {by_truth} | {found}/{tried} | {ms:.0f} | "
                             + " | ".join(f"{np.mean(vals[k]):.3f}" for k in keys) + " |")
        overrides = "; ".join(f"{label}: {', '.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}"
                              for label, o in configs.items())
        lines += ["", f"Configs: {overrides}."]
    return lines


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=260, help="make-sample clips of the main set")
    ap.add_argument("--small", type=int, default=30, help="make-sample clips of the small job")
    ap.add_argument("--orig", type=int, default=260, help="clips of the DFEW-like originals set (0: none)")
    ap.add_argument("--mixed", type=int, default=30, help="clips of the mixed-size set, a small job (0: none)")
    ap.add_argument("--large", type=int, default=0, help="clips of issue 17's large set (0: none)")
    ap.add_argument("--sets", default="", help="the sets to make and run, by name or kind "
                    "(e.g. orig260,mixed30 or sample,orig); default: all of the above")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--before", default="", help="a checkout of the code to compare with (git worktree add ...)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each speed measurement (median)")
    ap.add_argument("--repeat-small", type=int, default=3, help="runs of the small jobs' speed measurements")
    ap.add_argument("--quality-clips", type=int, default=80, help="clips per set for the quality table")
    ap.add_argument("--quality-configs", default="old;defaults",
                    help="the configs the quality table compares: 'label:key=value,key=value;label2:...'; "
                    "'old' alone is the config whose bytes the code before tracking wrote, 'defaults' the defaults")
    ap.add_argument("--parts", default="speed,profile,quality")
    ap.add_argument("--workers", default="1,2", help="worker counts of the speed runs")
    ap.add_argument("--report", default="build.md", help="the tables' file under --out")
    ap.add_argument("--no-naive", action="store_true", help="speed without the naive anchor (it takes long)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    only = [s for s in args.sets.split(",") if s] or None
    sets = make_sets(out, args.clips, args.small, args.large, args.orig, args.mixed, only)
    if not sets:
        raise SystemExit(f"--sets {args.sets}: none of sample{args.small}, sample{args.clips}, orig{args.orig}, "
                         f"mixed{args.mixed}, large{args.large}")
    before = str(Path(args.before).resolve()) if args.before else ""
    parts = args.parts.split(",")
    small = [f"sample{args.small}", f"mixed{args.mixed}"]
    load = os.getloadavg()
    lines = [f"build-shards, T=16, S=112, {os.cpu_count()} cores, load average {load[0]:.1f} at the start "
             f"({time.strftime('%Y-%m-%d %H:%M')}); sets: {', '.join(sets)}", ""]
    if "speed" in parts:
        lines += bench_speed(sets, out, before, args.repeat, [int(w) for w in args.workers.split(",")],
                             args.repeat_small, small, f"sample{args.clips}", not args.no_naive) + [""]
    if "profile" in parts:
        lines += bench_profile(sets, out, before, skip=(f"sample{args.small}",)) + [""]
    if "quality" in parts:
        lines += bench_quality(sets, args.quality_clips, parse_quality_configs(args.quality_configs)) + [""]
    lines.append(f"load average at the end: {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines) + "\n"
    (out / args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
