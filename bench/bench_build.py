"""build-shards throughput vs a naive baseline, side by side in one run.

    python bench/bench_build.py [--clips 200] [--out bench/out]

Baseline ("naive"): what a first script does: decode every frame of the clip at native
resolution, run the detector on every full-size frame, align every frame, then keep T.
It runs in this process on one core. midas-prep runs build_shards (T=16, S=112) on a
local Ray with 1 and 2 workers. Peak memory is the largest RSS of any Ray worker
process, sampled every 50 ms. Prints a Markdown table and writes it to <out>/build.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.align import align_frames, get_detector  # noqa: E402
from pipeline.config import AlignConfig, BuildConfig, load_config  # noqa: E402
from pipeline.decode import sample_indices  # noqa: E402
from pipeline.errors import ClipRejected  # noqa: E402
from pipeline.index import index_dataset  # noqa: E402


def naive_clip(path: Path, cfg: AlignConfig, num_frames: int) -> np.ndarray | None:
    """Decode all frames at full size, detect + align every one, keep T."""
    import decord

    try:
        vr = decord.VideoReader(str(path), num_threads=1)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    except decord.DECORDError:
        return None
    full = AlignConfig(**{**cfg.__dict__, "detect_every": 1, "detect_max_side": 4096, "smooth_window": 1})
    try:
        crops, _ = align_frames(frames, get_detector(full), full)
    except ClipRejected:
        return None
    return crops[sample_indices(len(crops), num_frames)]


class PeakRSS:
    """Largest RSS of any Ray worker process (ray::...) while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith("ray::") and p.info["memory_info"] is not None:
                    self.peak = max(self.peak, p.info["memory_info"].rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--naive-clips", type=int, default=40, help="clips timed for the (slow) baseline")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from pipeline.tools.make_sample import make_sample

    root = out / f"sample{args.clips}"
    if not (root / "Annotation").exists():
        t = time.perf_counter()
        make_sample(root, clips=args.clips, seed=0, with_frames=False)
        print(f"make-sample {args.clips} clips: {time.perf_counter() - t:.1f} s")

    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.WARNING)
    from pipeline.build import build_shards

    rows = []
    # Baseline: one core, in this process.
    cfg: BuildConfig = load_config(BuildConfig, None, {"dataset_root": str(root)})
    clips = index_dataset(root, cfg.index).clips[: args.naive_clips]
    get_detector(AlignConfig(detect_every=1, detect_max_side=4096, smooth_window=1))  # load outside the timing
    import resource

    t = time.perf_counter()
    for c in clips:
        naive_clip(root / c["source"], cfg.align, cfg.decode.num_frames)
    dt = time.perf_counter() - t
    naive_rate = len(clips) / dt
    rows.append(("naive (all frames, full-size detection)", 1, len(clips), dt, naive_rate,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    rates = {}
    for workers in (1, 2):
        o = out / f"shards_w{workers}"
        cfg = load_config(BuildConfig, None, {"dataset_root": str(root), "write.out": str(o),
                                              "ray.workers": workers, "write.overwrite": True})
        with PeakRSS() as mem:
            s = build_shards(cfg)
        rates[workers] = s.processed / s.seconds
        rows.append((f"midas-prep build-shards, {workers} worker(s)", workers, s.processed, s.seconds,
                     rates[workers], mem.peak / 2**20))
    ray.shutdown()

    lines = [
        f"build-shards throughput, T=16, S=112, {args.clips} make-sample clips, {os.cpu_count()} cores "
        f"({time.strftime('%Y-%m-%d')})",
        "",
        "| run | workers | clips | seconds | clips/s | clips/s per core | vs naive per core"
        " | peak RSS per worker (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, w, n, sec, rate, rss in rows:
        lines.append(f"| {name} | {w} | {n} | {sec:.1f} | {rate:.2f} | {rate / w:.2f} | "
                     f"{rate / w / naive_rate:.1f}x | {rss:.0f} |")
    lines += ["", f"Scaling 1 -> 2 workers: {rates[2] / rates[1]:.2f}x"]
    text = "\n".join(lines) + "\n"
    (out / "build.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
