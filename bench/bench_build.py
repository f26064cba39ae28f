"""build-shards at DFEW scale: speed with start-up, a per-stage profile and alignment quality, before vs after.

    python bench/bench_build.py [--clips 260] [--small 30] [--large 40] [--out bench/out]
                                [--before PATH] [--repeat 1] [--repeat-small 3] [--parts speed,profile,quality]

Three DFEW-layout sets: make-sample's `--clips` and `--small` clips (short clips, 320..960 px, a few
corner cases: no face, a truncated file) and a larger set made here (`--large` clips of 2-5 s at 25/30
fps, 854x480 to 1280x720, like DFEW's originals, with each frame's true eye positions recorded).

speed     `midas-prep build-shards` run as a command, as a user runs it (wall time from the shell, so
          Python start-up, ray.init, the first task and shutting Ray down are in it), 1 and 2 workers,
          each set, the code under test and `--before` (a checkout of an earlier commit) alternately;
          plus the naive anchor on the small set: decode every frame, detect on every full-size frame
          (one process, its start-up included). DFEW projection = 16,372 clips / (clips/s).
profile   one build of the `--clips` set with 2 workers on a Ray started here, every stage function
          wrapped by a timer inside the Ray tasks (exclusive time: a stage's own, not its callees');
          the rest of the workers' time is Ray's (scheduling, object transfer, idle); plus ray.init,
          the first task, and a Ray round trip and object transfer measured alone.
quality   alignment of the sampled frames, for the old config (align.roi_size=0,
          align.detect_max_side=640: the bytes of the code before tracking) and the current defaults:
          eye landmarks of every frame are carried into the crop by the transform the build chose and
          compared with the template: eye-line roll and inter-ocular distance (IOD) across a clip's
          frames (their spread is the jitter), eye error, and the detection rate. The landmarks come
          from (a) the true eye positions of the large set's renderer, and (b) on every set, a
          reference detection independent of both configs (RetinaFace on a 256 px window around the
          face and on its mirror image, averaged), checked against (a) on the large set.

Prints Markdown tables and writes them to <out>/build.md. Record `uptime` with the numbers: the
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
LARGE_SIZES = [(1280, 720), (1024, 576), (960, 540), (854, 480)]
OLD = {"align.roi_size": 0, "align.detect_max_side": 640}  # the config whose bytes the code before tracking wrote


# ---------------------------------------------------------------------------------------------- datasets


def make_sets(out: Path, clips: int, small: int, large: int) -> dict[str, Path]:
    from pipeline.tools.make_sample import make_sample

    sets = {}
    for name, n in ((f"sample{small}", small), (f"sample{clips}", clips)):
        root = out / name
        if not (root / "Annotation").exists():
            t = time.perf_counter()
            make_sample(root, clips=n, seed=0, with_frames=False)
            print(f"make-sample {n} clips: {time.perf_counter() - t:.1f} s", flush=True)
        sets[name] = root
    if large:
        root = out / f"large{large}"
        if not (root / "truth.json").exists():
            t = time.perf_counter()
            make_large(root, large)
            print(f"large set {large} clips: {time.perf_counter() - t:.1f} s", flush=True)
        sets[f"large{large}"] = root
    return sets


@functools.cache
def _face_source() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB crop around the astronaut's face, its feathered alpha, its two eyes (x, y) in the crop)."""
    import skimage.data

    img = skimage.data.astronaut()
    fx, fy, fw, fh = ASTRONAUT_FACE
    x0, x1 = max(0, int(fx - 1.1 * fw)), min(img.shape[1], int(fx + 2.1 * fw))
    y0, y1 = max(0, int(fy - 0.6 * fh)), min(img.shape[0], int(fy + 2.1 * fh))
    rgb = np.ascontiguousarray(img[y0:y1, x0:x1])
    h, w = rgb.shape[:2]
    ramp = lambda n: np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.12 * n), 0, 1)  # noqa: E731
    a = np.minimum.outer(ramp(h), ramp(w))
    alpha = (a * a * (3 - 2 * a)).astype(np.float32)
    eyes = reference_landmarks(rgb[None], [(0, 0, w, h)], context=1.0, size=512)[0][:2]
    return rgb, alpha, eyes


def _render_large(path: Path, number: int, seed: int) -> dict[str, Any]:
    """One 2-5 s clip of the face moving, turning and zooming smoothly over a textured background;
    -> its size, fps and every frame's true eyes (x, y), native pixels."""
    from fractions import Fraction

    import av
    import cv2

    cv2.setNumThreads(1)
    rng = np.random.default_rng([seed, number])
    width, height = LARGE_SIZES[int(rng.choice(len(LARGE_SIZES), p=[0.4, 0.2, 0.2, 0.2]))]
    fps = 30 if rng.random() < 0.3 else 25
    frames = int(round(rng.uniform(2.0, 5.0) * fps))
    rgb, alpha, eyes = _face_source()
    sh, sw = rgb.shape[:2]
    face_h = rng.uniform(0.2, 0.4) * height  # the face box's height in the frame
    s0 = face_h / ASTRONAUT_FACE[3]
    s1 = s0 * rng.uniform(0.85, 1.15)
    a0 = rng.uniform(-15, 15)
    a1 = a0 + rng.uniform(-10, 10)
    half = 0.65 * max(s0, s1) * np.hypot(*ASTRONAUT_FACE[2:])  # the face stays in the frame, turned or not
    cx0, cy0 = rng.uniform(half, width - half), rng.uniform(half, height - half)
    cx1 = float(np.clip(cx0 + rng.uniform(-0.15, 0.15) * width, half, width - half))
    cy1 = float(np.clip(cy0 + rng.uniform(-0.1, 0.1) * height, half, height - half))
    wobble = rng.uniform(0, 2 * np.pi, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.integers(20, 236, 3).astype(np.float32), rng.integers(20, 236, 3).astype(np.float32)
    t = (xx / width * np.cos(wobble[0]) + yy / height * np.sin(wobble[0]))[..., None]
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    noise = cv2.resize(rng.normal(0, 18, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32),
                       (width, height), interpolation=cv2.INTER_CUBIC)
    bg = np.clip(c0 + t * (c1 - c0) + noise, 0, 255).astype(np.uint8)
    fx, fy, fw, fh = ASTRONAUT_FACE
    fc = (fw / 2 + fx - max(0, int(fx - 1.1 * fw)), fh / 2 + fy - max(0, int(fy - 0.6 * fh)))
    truth = []
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.thread_count = 1
        ctx.options = {"preset": "superfast", "crf": "23", "x264-params": "threads=1:lookahead-threads=1:mbtree=0"}
        for i in range(frames):
            u = i / max(1, frames - 1)
            ease = 0.5 - 0.5 * np.cos(np.pi * u)  # smooth start and stop, like a head turning
            scale = (1 - ease) * s0 + ease * s1
            angle = (1 - ease) * a0 + ease * a1 + 2.0 * np.sin(2 * np.pi * u + wobble[1])
            cx = (1 - ease) * cx0 + ease * cx1 + 0.01 * width * np.sin(3 * np.pi * u + wobble[2])
            cy = (1 - ease) * cy0 + ease * cy1
            m = cv2.getRotationMatrix2D(fc, float(angle), float(scale))
            m[0, 2] += cx - fc[0]
            m[1, 2] += cy - fc[1]
            warped = cv2.warpAffine(rgb, m, (width, height), flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(alpha, m, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            frame = (a * warped + (1 - a) * bg).astype(np.uint8)
            truth.append((eyes @ m[:, :2].T + m[:, 2]).tolist())
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = i
            vf.time_base = ctx.time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"width": width, "height": height, "fps": fps, "frames": frames, "eyes": truth}


def make_large(root: Path, n: int, seed: int = 0) -> None:
    """make-sample's layout and annotations (its no-face and truncated clips kept), with every face
    clip replaced by a larger, longer one; truth.json records each frame's true eyes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.tools.make_sample import make_sample

    summary = make_sample(root, clips=n, seed=seed, with_frames=False)
    keep = set(summary.no_face) | set(summary.corrupt)
    ids = [f"{i:05d}" for i in range(1, n + 1) if f"{i:05d}" not in keep]
    # spawn: a forked child of a process that ran OpenCV or onnxruntime threads can hang
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {cid: pool.submit(_render_large, root / "Clip/original" / f"{cid}.mp4", int(cid), seed)
                   for cid in ids}
        truth = {cid: f.result() for cid, f in futures.items()}
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
        crops, _ = align_frames(frames, det, acfg)
    except (decord.DECORDError, RuntimeError, ClipRejected):
        continue
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
                repeat_small: int) -> list[str]:
    codes = {"after": CODE} | ({"before": before} if before else {})
    rows: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    names = list(sets)
    small, main = names[0], names[min(1, len(names) - 1)]
    for i in range(max(repeat, repeat_small)):
        for name, root in sets.items():
            if i >= (repeat_small if name == small else repeat):
                continue
            for workers in worker_counts:
                for label, code in codes.items():  # alternate, so load changes hit both
                    # the main set's output as before (bench_mix.py and bench_loader.py read shards_w2)
                    mine = (label, name) == ("after", main)
                    dest = f"shards_w{workers}" if mine else f"shards_{label}_{name}_w{workers}"
                    r = run_cli(code, root, out / dest, workers)
                    rows.setdefault((name, workers, label), []).append(r)
                    print(f"  {label:6s} {name:10s} w{workers}: {r['wall']:.1f} s", flush=True)
    naive = [run_naive(CODE, sets[small]) for _ in range(repeat)]
    lines = [
        "| set | workers | code | clips (written) | wall s (incl. start-up; median of runs) | clips/s | "
        "DFEW 16,372 clips | peak RSS per worker (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, workers, label), runs in rows.items():
        wall = float(np.median([r["wall"] for r in runs]))
        s = runs[0]["summary"]
        rate = s["processed"] / wall
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        lines.append(f"| {name} | {workers} | {label} | {s['processed']} ({s['written']}) | {wall:.1f} ({walls}) | "
                     f"{rate:.2f} | "
                     f"{DFEW_CLIPS / rate / 60:.0f} min | {max(r['rss'] for r in runs) / 2**20:.0f} |")
    nwall = float(np.median([r["wall"] for r in naive]))
    lines += ["", f"Naive anchor on {small} (one process, start-up included; decode every frame, detect on every "
              f"full-size frame): {nwall:.1f} s, {naive[0]['kept']} clips kept."]
    for label in codes:
        ours = float(np.median([r["wall"] for r in rows[(small, max(worker_counts), label)]]))
        lines.append(f"- {label}: `build-shards --workers {max(worker_counts)}` on {small} takes {ours:.1f} s "
                     f"(median): {nwall / ours:.1f}x faster than the naive anchor.")
    return lines


# ----------------------------------------------------------------------------------------------- profile

# (module, attribute, stage): wrapped by a timer in the driver and in every Ray worker. A method is
# "module:Class.method". Names a checkout does not have are skipped (before/after differ).
STAGES = [
    ("pipeline.decode", "decode_video", "decode: open + seek + read (decord)"),
    ("pipeline.decode", "decode_frame_folder", "decode: open + seek + read (decord)"),
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


def bench_profile(sets: dict[str, Path], out: Path, before: str) -> list[str]:
    lines: list[str] = []
    for name in list(sets)[1:]:
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


def bench_quality(sets: dict[str, Path], limit: int) -> list[str]:
    import decord

    from pipeline.align import get_detector, track_face
    from pipeline.config import AlignConfig, BuildConfig, load_config
    from pipeline.decode import decode_clip, sample_indices
    from pipeline.errors import ClipRejected
    from pipeline.index import index_dataset

    configs = {"before (roi_size=0, detect_max_side=640)": load_config(BuildConfig, None, dict(OLD)).align,
               "after (defaults)": AlignConfig()}
    finder = get_detector(AlignConfig(detect_max_side=4096, roi_size=0, min_score=0.5))
    lines = []
    for name, root in sets.items():
        truth = json.loads((root / "truth.json").read_text()) if (root / "truth.json").exists() else None
        cfg = load_config(BuildConfig, None, {"dataset_root": str(root)})
        clips = index_dataset(root, cfg.index).clips[:limit]
        metrics: dict[str, dict[str, dict[str, list[float]]]] = {c: {"reference": {}, "truth": {}} for c in configs}
        det = {c: [0, 0, 0, 0] for c in configs}  # clips kept, clips, frames with a face, frames tried
        seconds = {c: 0.0 for c in configs}
        for clip in clips:
            try:
                frames = decode_clip(root, clip, cfg.decode)
            except ClipRejected:
                continue
            boxes = [None if f is None else f.box for f in finder.detect(frames)]
            refs = {"reference": reference_landmarks(frames, boxes)}
            if truth is not None and clip["clip_id"] in truth:
                tr = truth[clip["clip_id"]]
                n = len(decord.VideoReader(str(root / clip["source"]), num_threads=1))
                k = np.array([frames.shape[2] / tr["width"], frames.shape[1] / tr["height"]])
                refs["truth"] = [(np.array(tr["eyes"][i]) + 0.5) * k - 0.5
                                 for i in sample_indices(min(n, tr["frames"]), cfg.decode.num_frames)]
            for label, acfg in configs.items():
                det[label][1] += 1
                t = time.perf_counter()
                try:
                    matrices, stats = track_face(frames, get_detector(acfg), acfg, clip["clip_id"])
                except ClipRejected:
                    seconds[label] += time.perf_counter() - t
                    continue
                seconds[label] += time.perf_counter() - t
                det[label][0] += 1
                det[label][2] += stats["face_frames"]
                det[label][3] += stats["face_tried"]
                for kind, lms in refs.items():
                    eyes = np.array([lm[:2] @ m[:, :2].T + m[:, 2] for lm, m in zip(lms, matrices, strict=True)
                                     if lm is not None])
                    if len(eyes) >= 2:
                        for key, v in _clip_metrics(eyes, acfg.frame_size).items():
                            metrics[label][kind].setdefault(key, []).append(v)
        keys = list(_clip_metrics(np.ones((2, 2, 2)) + [[[0, 0], [1, 0]]], 112))
        lines += ["", f"Alignment quality, {name} ({len(clips)} clips; mean over clips; 112 px crop units)", "",
                  "| config | landmarks | clips kept | faces found / frames tried | align ms/clip | " + " | ".join(keys)
                  + " |",
                  "|---|---|---|---|---|" + "---|" * len(keys)]
        for label in configs:
            kept, total, found, tried = det[label]
            for kind, vals in metrics[label].items():
                if not vals:
                    continue
                lines.append(f"| {label} | {kind} | {kept}/{total} | {found}/{tried} | "
                             f"{1000 * seconds[label] / max(1, total):.0f} | "
                             + " | ".join(f"{np.mean(vals[k]):.3f}" for k in keys) + " |")
    return lines


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=260, help="make-sample clips of the main set")
    ap.add_argument("--small", type=int, default=30, help="make-sample clips of the small job")
    ap.add_argument("--large", type=int, default=40, help="clips of the large set (0: none)")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--before", default="", help="a checkout of the code to compare with (git worktree add ...)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each speed measurement (median)")
    ap.add_argument("--repeat-small", type=int, default=3, help="runs of the small job's speed measurements")
    ap.add_argument("--quality-clips", type=int, default=80, help="clips per set for the quality table")
    ap.add_argument("--parts", default="speed,profile,quality")
    ap.add_argument("--workers", default="1,2", help="worker counts of the speed runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sets = make_sets(out, args.clips, args.small, args.large)
    before = str(Path(args.before).resolve()) if args.before else ""
    parts = args.parts.split(",")
    load = os.getloadavg()
    lines = [f"build-shards, T=16, S=112, {os.cpu_count()} cores, load average {load[0]:.1f} at the start "
             f"({time.strftime('%Y-%m-%d %H:%M')})", ""]
    if "speed" in parts:
        lines += bench_speed(sets, out, before, args.repeat, [int(w) for w in args.workers.split(",")],
                             args.repeat_small) + [""]
    if "profile" in parts:
        lines += bench_profile(sets, out, before) + [""]
    if "quality" in parts:
        lines += bench_quality(sets, args.quality_clips) + [""]
    lines.append(f"load average at the end: {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines) + "\n"
    (out / "build.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
