"""Decoding candidates for build-shards on DFEW-like originals: the 16 sampled frames of a clip, decoded
and resized as the build needs them, by each candidate, timed per clip and checked against decord.

    python bench/bench_decode.py [--set bench/out/orig260] [--clips 40] [--out bench/out]
                                 [--candidates NAME,...] [--procs 1,2]

The frames are what pipeline/decode.py takes: `decode.num_frames` (16) frames at the centres of equal
segments of the clip (sample_indices), at the largest size whose longest side is `decode.decode_max_side`
(640: a 1280x720 clip is read at 640x360), RGB. Candidates:

decord tN              the build before issue 22: a VideoReader opened at full size (frame 0 read for its
                       size), opened again at the reduced size (decord's own scaler), get_batch of the
                       sampled frames; N decoder threads (0: decord's choice, all cores)
pyav all ...           PyAV: every packet decoded (stopping after the last sampled frame), the sampled
                       ones converted
pyav nonref ...        PyAV: packets sorted by pts give each packet's frame index; a packet whose frame is
                       not sampled is sent with codec_context.skip_frame = "NONREF" (the decoder drops it
                       when no other frame refers to it), a sampled one with "DEFAULT"; every reference
                       packet is decoded
  ... none/1, auto/1, auto/2   thread_type NONE, or AUTO (frame + slice threads) with thread_count 1 or 2
  ... sws / area / yuvarea   the resize at the end: swscale (VideoFrame.reformat, rgb24 at the reduced
                       size, interpolation AREA), a full-size rgb24 frame (swscale) resized by cv2
                       INTER_AREA, or the Y, U and V planes resized by cv2 INTER_AREA and converted by
                       cv2 (COLOR_YUV2RGB_I420; yuv420p limited range only, else sws)
pipeline               pipeline.decode.decode_clip of the checkout on PYTHONPATH (the code under test)

Each candidate runs in one worker process over the clips, and then in 2 worker processes at once
(the clips split between them): decoder threads against worker count, as build-shards runs 2 workers
on 2 cores. A worker decodes one clip first to warm up (imports, codec set-up), untimed. ms/clip is wall
time per clip inside the worker; CPU ms/clip the worker's CPU time (all its threads) per clip, the work
itself, which a loaded machine changes much less than wall time; clips/s is all clips over the wall
time from the first worker's start to the last one's end. Frames are compared with `decord t1`'s (max
and mean absolute difference, 0..255, over all frames of all clips). Writes <out>/decode.md and prints
it; record `uptime` with it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_CODE", str(REPO)))

# threads against mode with one resize, then the resizes with one decoding (any "pyav MODE THREADS RESIZE" runs)
CANDIDATES = ([f"decord t{t}" for t in (1, 0, 2)]
              + [f"pyav {m} {t} yuvarea" for m in ("all", "nonref") for t in ("none/1", "auto/1", "auto/2")]
              + [f"pyav nonref none/1 {r}" for r in ("sws", "area")] + ["pipeline"])


def _sample_indices(n: int, t: int) -> list[int]:
    """pipeline.decode.sample_indices, repeated here so the bench reads any checkout's clips alike."""
    idx = np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64)
    return np.minimum(idx, n - 1).tolist()


def _reduced_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """pipeline.decode._reduced_size: longest side <= max_side, aspect kept, even sizes."""
    if max_side == 0 or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def decode_decord(path: str, t: int, max_side: int, threads: int) -> np.ndarray:
    """The build's decoding before issue 22 (pipeline/decode.py at 4cace78), with `threads`."""
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    h, w = vr[0].shape[:2]
    rw, rh = _reduced_size(w, h, max_side)
    if (rw, rh) != (w, h):
        vr = decord.VideoReader(path, ctx=decord.cpu(0), width=rw, height=rh, num_threads=threads)
        n = min(n, len(vr))
    return vr.get_batch(_sample_indices(n, t)).asnumpy()


def decode_pyav(path: str, t: int, max_side: int, mode: str, threads: str, resize: str) -> np.ndarray:
    """The sampled frames by PyAV: `mode` all (every packet decoded) or nonref (non-reference packets
    of frames not sampled skipped), `threads` "none/1" | "auto/N", `resize` sws | area | yuvarea."""
    import av
    import cv2

    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        kind, count = threads.split("/")
        ctx.thread_type = "NONE" if kind == "none" else "AUTO"
        ctx.thread_count = int(count)
        packets = [p for p in container.demux(stream) if p.pts is not None and p.size]
        pts = sorted(p.pts for p in packets)  # display order: frame i is the i-th smallest pts
        idx = _sample_indices(len(pts), t)
        want = {pts[i] for i in idx}
        rw, rh = _reduced_size(ctx.width, ctx.height, max_side)
        got: dict[int, np.ndarray] = {}

        def keep(frame: Any) -> None:
            if frame.pts in want and frame.pts not in got:
                w, h = frame.width, frame.height
                if (rw, rh) == (w, h):
                    got[frame.pts] = frame.to_ndarray(format="rgb24")
                elif resize == "yuvarea" and frame.format.name == "yuv420p" and frame.color_range != 2:
                    yuv = frame.to_ndarray()  # the Y plane, then U and V, (h * 3 / 2) x w
                    uv = yuv[h:].reshape(2, h // 2, w // 2)
                    planes = [cv2.resize(yuv[:h], (rw, rh), interpolation=cv2.INTER_AREA)] + [
                        cv2.resize(c, (rw // 2, rh // 2), interpolation=cv2.INTER_AREA) for c in uv]
                    i420 = np.concatenate([q.ravel() for q in planes]).reshape(rh * 3 // 2, rw)
                    got[frame.pts] = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
                elif resize != "area":
                    got[frame.pts] = frame.to_ndarray(format="rgb24", width=rw, height=rh, interpolation="AREA")
                else:
                    got[frame.pts] = cv2.resize(frame.to_ndarray(format="rgb24"), (rw, rh),
                                                interpolation=cv2.INTER_AREA)

        for packet in packets:
            if mode == "nonref":
                ctx.skip_frame = "DEFAULT" if packet.pts in want else "NONREF"
            for frame in ctx.decode(packet):
                keep(frame)
            if len(got) == len(want):
                break
        else:
            ctx.skip_frame = "DEFAULT"
            for frame in ctx.decode(None):
                keep(frame)
        missing = want - set(got)
        if missing:
            raise RuntimeError(f"{path}: frames with pts {sorted(missing)[:4]} not decoded")
        return np.stack([got[pts[i]] for i in idx])


def _is_pyav(c: str) -> bool:
    parts = c.split()
    return (len(parts) == 4 and parts[0] == "pyav" and parts[1] in ("all", "nonref")
            and (parts[2] == "none/1" or (parts[2].startswith("auto/") and parts[2][5:].isdigit()))
            and parts[3] in ("sws", "area", "yuvarea"))


def decode(candidate: str, path: str, t: int, max_side: int) -> np.ndarray:
    if candidate.startswith("decord"):
        return decode_decord(path, t, max_side, int(candidate.split()[1][1:]))
    if candidate == "pipeline":
        from pipeline.config import DecodeConfig
        from pipeline.decode import decode_video

        return decode_video(Path(path), Path(path).stem, DecodeConfig(num_frames=t, decode_max_side=max_side))
    _, mode, threads, resize = candidate.split()
    return decode_pyav(path, t, max_side, mode, threads, resize)


def run_worker(candidate: str, paths: list[str], ref_dir: str, t: int, max_side: int) -> dict[str, Any]:
    """Decode `paths` (each clip's frames compared with <ref_dir>/<stem>.npy afterwards, untimed)."""
    import cv2  # before decord: decord imported first breaks cv2's PNG reading

    cv2.setNumThreads(1)
    decode(candidate, paths[0], t, max_side)  # warm-up
    start, cpu0 = time.time(), time.process_time()
    seconds, outs = [], []
    for p in paths:
        t0 = time.perf_counter()
        frames = decode(candidate, p, t, max_side)
        seconds.append(time.perf_counter() - t0)
        outs.append(frames)
    end, cpu = time.time(), time.process_time() - cpu0
    worst, total, count = 0, 0.0, 0
    for p, frames in zip(paths, outs, strict=True):
        ref = np.load(Path(ref_dir) / f"{Path(p).stem}.npy")
        if ref.shape != frames.shape:
            return {"error": f"{Path(p).name}: shape {frames.shape} against decord's {ref.shape}"}
        d = np.abs(ref.astype(np.int16) - frames.astype(np.int16))
        worst, total, count = max(worst, int(d.max())), total + float(d.sum()), count + d.size
    return {"start": start, "end": end, "seconds": seconds, "cpu": cpu, "max": worst, "mean": total / max(1, count)}


def run(candidate: str, paths: list[str], ref_dir: str, t: int, max_side: int, procs: int) -> dict[str, Any]:
    """`candidate` in `procs` spawned worker processes at once, the clips dealt out in turn."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as pool:
        parts = [pool.submit(run_worker, candidate, paths[k::procs], ref_dir, t, max_side) for k in range(procs)]
        res = [f.result() for f in parts]
    errors = [r["error"] for r in res if "error" in r]
    if errors:
        return {"error": errors[0]}
    seconds = [s for r in res for s in r["seconds"]]
    wall = max(r["end"] for r in res) - min(r["start"] for r in res)
    return {"ms": 1000 * float(np.mean(seconds)), "rate": len(seconds) / wall,
            "cpu": 1000 * sum(r["cpu"] for r in res) / len(seconds), "max": max(r["max"] for r in res),
            "mean": float(np.mean([r["mean"] for r in res]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default=str(REPO / "bench/out/orig260"), help="a DFEW-layout set (bench_build.py)")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--out", default=str(REPO / "bench/out"))
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--procs", default="1,2", help="worker processes at once")
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--max-side", type=int, default=640)
    args = ap.parse_args()
    paths = [str(p) for p in sorted(Path(args.set, "Clip", "original").glob("*.mp4"))][: args.clips]
    if not paths:
        raise SystemExit(f"{args.set}: no Clip/original/*.mp4 (make it with bench/bench_build.py --sets orig)")
    candidates = args.candidates.split(",")
    unknown = [c for c in candidates if c not in CANDIDATES and not _is_pyav(c)]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {CANDIDATES} or 'pyav all|nonref none/1|auto/N "
                         "sws|area|yuvarea'")
    procs = [int(p) for p in args.procs.split(",")]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as ref_dir:
        import cv2  # noqa: F401 - before decord

        for p in paths:
            np.save(Path(ref_dir) / f"{Path(p).stem}.npy", decode_decord(p, args.num_frames, args.max_side, 1))
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for n in procs:
            for c in candidates:
                rows[(c, n)] = run(c, paths, ref_dir, args.num_frames, args.max_side, n)
                r = rows[(c, n)]
                print(f"  {c:26s} x{n}: " + (r["error"] if "error" in r else
                      f"{r['ms']:.0f} ms/clip, CPU {r['cpu']:.0f} ms/clip, {r['rate']:.2f} clips/s, "
                      f"diff max {r['max']} mean {r['mean']:.2f}"), flush=True)
    lines = [f"Decoding the {args.num_frames} sampled frames at longest side {args.max_side}, {len(paths)} clips of "
             f"{Path(args.set).name}, {os.cpu_count()} cores, load average {load:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end ({time.strftime('%Y-%m-%d %H:%M')})", "",
             "| candidate | " + " | ".join(f"ms/clip, {n} proc | CPU ms/clip, {n} proc | clips/s, {n} proc"
                                          for n in procs) + " | frames vs decord t1: max / mean abs diff |",
             "|---|" + "---|---|---|" * len(procs) + "---|"]
    for c in candidates:
        cells, diff = [], ""
        for n in procs:
            r = rows[(c, n)]
            if "error" in r:
                cells += [r["error"], "", ""]
                continue
            cells += [f"{r['ms']:.0f}", f"{r['cpu']:.0f}", f"{r['rate']:.2f}"]
            diff = f"{r['max']} / {r['mean']:.2f}"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {diff} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "decode.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
