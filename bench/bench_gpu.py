"""The GPU path side by side, one run, one table (issue 11).

    python bench/bench_gpu.py --shards /tmp/data/shards [--out bench/out] [--device auto|gpu|cpu]

(a) midas-prep's loader (pipeline.stream: per-sample parallel reads, augmentation + MIDAS in the DALI graph)
(b) webdataset + torch DataLoader (workers = cores, torch.set_num_threads(1) in each) decoding the npy
    members, then the same augmentation (random resized crop, flip, brightness/contrast, one draw per
    clip) and mixup (lam ~ Beta(0.8, 0.8)) in torch on the device
(c) DALI's own fn.readers.webdataset + fn.decoders.numpy (shuffle inside a read-ahead buffer only)
    into the same midas_graph
(d) the default model alone (train.model.create_model) on batches already on the device: forward,
    soft cross-entropy, backward, AdamW step; channels_last + bfloat16 autocast on a GPU
(e) midas-train end to end (train.loop.train, 2 short epochs, the second one's clips/s)

Install: `pip install -e ".[bench]"` (the trainer's packages plus webdataset for row (b)).
Batch 32 and 128 on a GPU. `--device cpu` runs a small version (batch 4 and 8, a few batches, model
width 8) so tests run it. A shard set too small for the batch is read through a "repeated" view
(an index.json listing every shard k times through hard links) so epochs last long enough; nothing is
copied (one copy if --work is on another filesystem). Prints one Markdown table and writes it to
<out>/gpu.md (scratch: --work, default a temp dir that is removed). Imports neither decord nor ray.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def device_name(dev: str) -> str:
    import torch

    if dev == "gpu":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpus() -> int:
    from pipeline.stream import _cpus

    return _cpus()


def repeated_view(shards: Path, k: int, out: Path) -> Path:
    """<out>/<name>_x{k}: an index.json listing every shard entry k times, each through its own folder
    r{j}/ of hard links to the files of `shards`, so list_samples, tar readers and midas-train see k
    copies of every sample. Hard links, not symlinks: readers refuse a listed path that leads out of
    its output; on another filesystem r0/ is one copy and r1.. link to it."""
    if k <= 1:
        return shards
    import shutil

    from pipeline.format import entry_files
    from pipeline.read import open_index

    index = open_index(shards)
    view = out / f"{shards.name}_x{k}"
    view.mkdir(parents=True, exist_ok=True)
    entries = []
    for j in range(k):
        rj = view / f"r{j}"
        if rj.is_symlink():  # a view made by an older bench_gpu: never write through it into `shards`
            rj.unlink()
        for rel, _ in entry_files(index["shards"]):
            dst = rj / rel
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = view / "r0" / rel if j else shards / rel
            try:
                os.link(src, dst)
            except OSError:  # another filesystem
                shutil.copyfile(src, dst)
        for e in index["shards"]:
            e = copy.deepcopy(e)
            e["path"] = f"r{j}/{e['path']}"
            if isinstance(e.get("idx"), dict) and "path" in e["idx"]:
                e["idx"]["path"] = f"r{j}/{e['idx']['path']}"
            entries.append(e)
    (view / "index.json").write_text(json.dumps(index | {"shards": entries}))
    return view


def timed(batches_iter: Any, batches: int, dev: str) -> float:
    """clips/s over `batches` batches after one warm-up batch; each item is (frames, soft) or a dict."""
    import torch

    it = iter(batches_iter)
    next(it)
    if dev == "gpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    clips = 0
    for _ in range(batches):
        b = next(it)
        clips += (b["frames"] if isinstance(b, dict) else b[0]).shape[0]
    if dev == "gpu":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - t0)


def forever(make: Any):
    """Epoch after epoch of a re-iterable loader."""
    while True:
        yield from make()


# -- (a) ---------------------------------------------------------------------------------------------------
def run_midas(shards: Path, dev: str, batch: int, batches: int) -> float:
    from pipeline.config import StreamConfig
    from pipeline.stream import MidasLoader

    loader = MidasLoader(StreamConfig(shards=str(shards), fold=1, batch_size=batch, device=dev))
    return timed(forever(lambda: loader), batches, dev)


# -- (b) ---------------------------------------------------------------------------------------------------
def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _decode(sample: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(np.ascontiguousarray(sample["frames.npy"])), torch.from_numpy(sample["soft.npy"])


def torch_augment_mix(frames: Any, soft: Any, size: int, alpha: float = 0.8, jitter: float = 0.2) -> tuple[Any, Any]:
    """uint8 N x T x H x W x 3 on the device -> float N x 3 x T x S x S normalised, mixed; one draw per clip,
    the whole batch in a few kernels (an affine grid per clip for crop + flip)."""
    import torch
    import torch.nn.functional as F

    n, t, h, w, c = frames.shape
    d = frames.device
    x = frames.permute(0, 4, 1, 2, 3).reshape(n, c * t, h, w).float()
    area = torch.empty(n, device=d).uniform_(0.7, 1.0)
    ratio = torch.exp(torch.empty(n, device=d).uniform_(math.log(3 / 4), math.log(4 / 3)))
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the frame side
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, device=d) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, device=d) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, device=d) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=d)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, cx, ch, cy
    grid = F.affine_grid(theta, [n, c * t, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.view(n, c, t, size, size)
    b = torch.empty(n, 1, 1, 1, 1, device=d).uniform_(1 - jitter, 1 + jitter)
    k = torch.empty(n, 1, 1, 1, 1, device=d).uniform_(1 - jitter, 1 + jitter)
    x = ((x * b - 128.0) * k + 128.0).clamp_(0, 255)
    lam = torch.distributions.Beta(torch.tensor(alpha, device=d), torch.tensor(alpha, device=d)).sample((n,))
    perm = torch.randperm(n, device=d)
    x = lam.view(-1, 1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1, 1)) * x[perm]
    soft = lam.view(-1, 1) * soft + (1 - lam.view(-1, 1)) * soft[perm]
    mean = torch.tensor(MEAN, device=d).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(STD, device=d).view(1, 3, 1, 1, 1) * 255
    return (x - mean) / std, soft


def train_tars(shards: Path, fold: int = 1) -> tuple[list[str], list[str]]:
    from pipeline.read import open_index

    index = open_index(shards)
    entries = [e for e in index["shards"] if e["format"] == "webdataset" and e["part"] not in (0, fold)]
    return [str(shards / e["path"]) for e in entries], [str(shards / e["idx"]["path"]) for e in entries]


def run_torch(shards: Path, dev: str, batch: int, batches: int, workers: int, size: int) -> float:
    import torch

    try:
        import webdataset as wds
    except ModuleNotFoundError:
        sys.exit("bench_gpu.py: row (b) needs the webdataset package: pip install -e \".[bench]\" "
                 "(or skip the row: --rows acde)")

    tars, _ = train_tars(shards)
    ds = (wds.WebDataset(tars, resampled=True, shardshuffle=True, empty_check=False).shuffle(256).decode()
          .map(_decode))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, worker_init_fn=_worker_init,
                                     pin_memory=dev == "gpu", persistent_workers=True, prefetch_factor=4)
    device = torch.device("cuda" if dev == "gpu" else "cpu")

    def batches_on_device():
        for frames, soft in dl:
            yield torch_augment_mix(frames.to(device, non_blocking=True), soft.to(device, non_blocking=True), size)

    return timed(batches_on_device(), batches, dev)


# -- (c) ---------------------------------------------------------------------------------------------------
def run_dali_reader(shards: Path, dev: str, batch: int, batches: int, size: int) -> float:
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from pipeline.config import StreamConfig
    from pipeline.stream import midas_graph

    tars, idxs = train_tars(shards)
    cfg = StreamConfig(shards=str(shards))

    @pipeline_def(batch_size=batch, num_threads=_cpus(), device_id=0 if dev == "gpu" else None, seed=0,
                  prefetch_queue_depth=4 if dev == "gpu" else 2)
    def pipe():  # noqa: ANN202 - DALI graph
        frames, soft = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["frames.npy", "soft.npy"],
                                             random_shuffle=True, initial_fill=256, name="reader")
        frames = fn.reshape(fn.decoders.numpy(frames), layout="FHWC")
        x, y, _, _ = midas_graph(frames, fn.decoders.numpy(soft), cfg, dev, True, size)
        return x, y

    p = pipe()
    p.build()
    it = DALIGenericIterator([p], ["frames", "soft"], reader_name="reader", auto_reset=True,
                             last_batch_policy=LastBatchPolicy.DROP)
    return timed(forever(lambda: (b[0] for b in it)), batches, dev)


# -- (d) ---------------------------------------------------------------------------------------------------
def run_model(dev: str, batch: int, batches: int, frames: int, size: int, width: int) -> float:
    import torch

    from train.model import ModelConfig, create_model

    device = torch.device("cuda" if dev == "gpu" else "cpu")
    model = create_model(ModelConfig(num_classes=7, num_frames=frames, width=width)).to(device)
    if dev == "gpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, frames, size, size, device=device)
    y = torch.softmax(torch.randn(batch, 7, device=device), 1)

    def steps():
        while True:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dev == "gpu"):
                logits = model(x)
            loss = -(y * torch.log_softmax(logits.float(), 1)).sum(1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            yield x, y

    return timed(steps(), batches, dev)


# -- (e) ---------------------------------------------------------------------------------------------------
def run_train(shards: Path, dev: str, batch: int, steps: int, width: int, out: Path) -> float:
    from pipeline.config import StreamConfig, TrainConfig
    from pipeline.stream import auto_workers
    from train.loop import train

    run = out / f"train_b{batch}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    _, workers, _ = auto_workers(StreamConfig(shards=str(shards)), dev)
    train(TrainConfig(shards=str(shards), fold=1, epochs=2, batch_size=batch, out=str(run), device=dev,
                      width=width, py_workers=workers, max_steps=steps, tensorboard=False))
    records = [json.loads(line) for line in (run / "fold1" / "metrics.jsonl").read_text().splitlines()]
    return float(records[-1]["clips_per_s"])  # the second epoch: loaders started, kernels warm


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    ap.add_argument("--batch-sizes", default="", help="comma-separated (default 32,128 on a GPU, 4,8 on the CPU)")
    ap.add_argument("--batches", type=int, default=0, help="timed batches per row (default 60 GPU, 3 CPU)")
    ap.add_argument("--train-steps", type=int, default=0, help="batches per midas-train epoch (default 40 / 2)")
    ap.add_argument("--width", type=int, default=0, help="model width (default 64 GPU, 8 CPU)")
    ap.add_argument("--rows", default="abcde", help="which rows to run")
    ap.add_argument("--out", default="bench/out", help="gpu.md goes here")
    ap.add_argument("--work", default="", help="scratch: repeated views, midas-train runs (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    from pipeline.config import StreamConfig
    from pipeline.read import open_index
    from pipeline.stream import list_samples, resolve_device

    dev = resolve_device(args.device)
    gpu = dev == "gpu"
    sizes = [int(b) for b in (args.batch_sizes or ("32,128" if gpu else "4,8")).split(",")]
    batches = args.batches or (60 if gpu else 3)
    steps = args.train_steps or (40 if gpu else 2)
    width = args.width or (64 if gpu else 8)
    workers = _cpus()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    shards = Path(args.shards)
    sample = open_index(shards)["sample"]
    t, s = int(sample["num_frames"]), int(sample["frame_size"])
    n_train = len(list_samples(StreamConfig(shards=str(shards), fold=1)))
    # enough samples for the longest row: (e)'s epoch of `steps` batches at the largest batch
    k = max(1, math.ceil(max(sizes) * max(steps, batches + 2) / n_train))
    view = repeated_view(shards, k, work)
    if gpu:
        torch.backends.cudnn.benchmark = True

    rows: dict[str, dict[int, float]] = {r: {} for r in args.rows}
    names = {"a": "(a) midas-prep loader (augmentation + MIDAS in the DALI graph)",
             "b": f"(b) webdataset + DataLoader x{workers} + torch augmentation and mixup on the device",
             "c": "(c) DALI fn.readers.webdataset + decoders.numpy into the same graph (buffer shuffle)",
             "d": f"(d) the model alone (width {width}{', channels_last, bf16' if gpu else ''}), batches on the device",
             "e": "(e) midas-train end to end (second epoch)"}
    for b in sizes:
        for r in args.rows:
            t0 = time.perf_counter()
            if r == "a":
                rows[r][b] = run_midas(view, dev, b, batches)
            elif r == "b":
                rows[r][b] = run_torch(view, dev, b, batches, workers, s)
            elif r == "c":
                rows[r][b] = run_dali_reader(view, dev, b, batches, s)
            elif r == "d":
                rows[r][b] = run_model(dev, b, batches, t, s, width)
            elif r == "e":
                # an epoch of about `steps` batches: the loop reads the rest of an epoch after max_steps
                rows[r][b] = run_train(repeated_view(shards, max(1, math.ceil(b * steps / n_train)), work), dev, b,
                                       steps, width, work)
            print(f"({r}) batch {b}: {rows[r][b]:.1f} clips/s ({time.perf_counter() - t0:.0f} s)", flush=True)
            if gpu:
                torch.cuda.empty_cache()

    lines = [f"GPU path on {device_name(dev)} ({dev}), {os.cpu_count()} cores ({workers} usable), "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; fold 1 train "
             f"split of {shards} ({n_train} clips, read {k}x over), T={t}, S={s}, {batches} timed batches a row",
             "", "| run | " + " | ".join(f"b{b} clips/s" for b in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for r in args.rows:
        lines.append(f"| {names[r]} | " + " | ".join(f"{rows[r][b]:.0f}" if rows[r][b] >= 100 else f"{rows[r][b]:.1f}"
                                                  for b in sizes) + " |")
    if "a" in rows and "b" in rows:
        lines.append("| (a) / (b) | " + " | ".join(f"{rows['a'][b] / rows['b'][b]:.2f}x" for b in sizes) + " |")
    if "e" in rows and "d" in rows:
        lines.append("| (e) / (d) | " + " | ".join(f"{rows['e'][b] / rows['d'][b]:.0%}" for b in sizes) + " |")
    text = "\n".join(lines) + "\n"
    (out / "gpu.md").write_text(text)
    print(text)
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return text


if __name__ == "__main__":
    main()
