"""Training loader throughput, side by side on the same shards (T=16, S=112, batch 32, mixing on).

    python bench/bench_loader.py [--shards bench/out/shards_w2] [--batches 40]

(a) midas-prep's DALI loader on the CPU (pipeline.stream, MIDAS in the graph, augmentation on, reader
    processes and DALI threads sized from the machine: the defaults)
(b) what public DFER repos do: a torch Dataset opening per-frame JPEG folders with PIL,
    DataLoader with 2 workers, augmentation and mixup in torch
(c) webdataset + DataLoader (2 workers) + the same torch augmentation and mixup
(d) the memory-bandwidth limit: a numpy copy of the same output bytes (float32 N x C x T x H x W)

Every loader produces the same thing: float32 N x 3 x T x S x S normalised clips and N x 7
soft labels, mixed with lam ~ Beta(0.8, 0.8) inside the batch, after a random resized crop,
flip and brightness/contrast jitter drawn once per clip. Prints a Markdown table and writes
it to bench/out/loader.md. Each row is the best of 2 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # torch's default thread count makes uint8 stacking 10-50x slower in workers


def torch_augment(clip, rng: np.random.Generator):
    """uint8 T x H x W x 3 numpy -> float32 3 x T x S x S tensor, one random draw per clip."""
    import torch
    import torch.nn.functional as F

    t, h, w, _ = clip.shape
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).float()  # C T H W
    area = rng.uniform(0.7, 1.0) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, round(np.sqrt(area / ratio))))
    cw = int(min(w, round(np.sqrt(area * ratio))))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    x = F.interpolate(x[:, :, y0 : y0 + ch, x0 : x0 + cw], size=(h, w), mode="bilinear", align_corners=False)
    if rng.random() < 0.5:
        x = x.flip(-1)
    x = x * rng.uniform(0.8, 1.2)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean
    x = (x - torch.from_numpy(MEAN).view(3, 1, 1, 1)) / torch.from_numpy(STD).view(3, 1, 1, 1)
    return x


def torch_mixup(frames, soft, alpha: float = 0.8):
    import torch

    lam = torch.distributions.Beta(alpha, alpha).sample((frames.shape[0],))
    perm = torch.randperm(frames.shape[0])
    lf = lam.view(-1, 1, 1, 1, 1)
    return lf * frames + (1 - lf) * frames[perm], lam.view(-1, 1) * soft + (1 - lam.view(-1, 1)) * soft[perm]


class JpegClips:
    """(b): per-frame JPEG folders read with PIL, the usual DFER Dataset."""

    def __init__(self, root: Path, keys: list[str], soft: dict[str, list[float]]) -> None:
        self.root, self.keys, self.soft = root, keys, soft

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        d = self.root / self.keys[i]
        files = sorted(d.iterdir(), key=lambda p: int(p.stem))
        clip = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        rng = np.random.default_rng(i + int(time.time_ns() % 1000003))
        return torch_augment(clip, rng), torch.tensor(self.soft[self.keys[i]])


def _wds_map(sample):
    import torch

    rng = np.random.default_rng()
    return torch_augment(sample["frames.npy"], rng), torch.from_numpy(sample["soft.npy"])


def run_torch(loader, batches: int, batch_size: int) -> tuple[float, int]:
    n = clips = 0
    t0 = None
    while n < batches + 1:
        for frames, soft in loader:
            frames, soft = torch_mixup(frames, soft)
            if t0 is None:
                t0 = time.perf_counter()
            else:
                clips += frames.shape[0]
            n += 1
            if n >= batches + 1:
                break
    return time.perf_counter() - t0, clips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="bench/out/shards_w2")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    import torch
    import webdataset as wds
    from PIL import Image

    from pipeline.config import StreamConfig
    from pipeline.read import SampleReader, open_index
    from pipeline.stream import bench_loader, list_samples

    shards = Path(args.shards)
    cfg = StreamConfig(shards=str(shards), fold=1, batch_size=args.batch_size, device="cpu")  # readers auto-sized
    train = list_samples(cfg)
    keys = [k for k, *_ in train]
    reader = SampleReader(shards, open_index(shards))
    jpeg_root = Path(args.out) / "jpeg_frames"
    soft = {}
    for k in keys:
        frames, y, _ = reader.read(k)
        soft[k] = y.tolist()
        d = jpeg_root / k
        if not d.exists():
            d.mkdir(parents=True)
            for t, f in enumerate(frames, start=1):
                Image.fromarray(f).save(d / f"{t}.jpg", quality=95)
    rows = []

    r = min((bench_loader(cfg, args.batches) for _ in range(2)), key=lambda r: r["seconds"])
    rows.append(("(a) midas-prep DALI loader, CPU (MIDAS in the graph), linear crop (default)", r["seconds"],
                 r["clips"]))
    r = min((bench_loader(replace(cfg, crop_interp="nn"), args.batches) for _ in range(2)),
            key=lambda r: r["seconds"])
    rows.append(("(a') the same, --set crop_interp=nn (nearest-neighbour crop resampling)", r["seconds"],
                 r["clips"]))

    ds = JpegClips(jpeg_root, keys, soft)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True,
                                     worker_init_fn=_worker_init, persistent_workers=True)
    dt, n = min((run_torch(dl, args.batches, args.batch_size) for _ in range(2)), key=lambda r: r[0])
    rows.append(("(b) torch Dataset over per-frame JPEG folders (PIL), DataLoader x2, torch mixup", dt, n))

    index = open_index(shards)
    tars = [str(shards / e["path"]) for e in index["shards"] if e["format"] == "webdataset" and e["part"] not in (0, 1)]
    pipe = (wds.WebDataset(tars, shardshuffle=len(tars), empty_check=False).shuffle(256).decode()
            .map(_wds_map))
    dl = torch.utils.data.DataLoader(pipe, batch_size=args.batch_size, num_workers=2, worker_init_fn=_worker_init,
                                     persistent_workers=True)
    dt, n = min((run_torch(dl, args.batches, args.batch_size) for _ in range(2)), key=lambda r: r[0])
    rows.append(("(c) webdataset + DataLoader x2 + torch mixup", dt, n))

    out = np.empty((args.batch_size, 3, 16, 112, 112), np.float32)
    src = np.random.default_rng(0).random(out.shape, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(args.batches):
        np.copyto(out, src)
    rows.append(("(d) memory-bandwidth limit: numpy copy of the same output bytes", time.perf_counter() - t,
                 args.batches * args.batch_size))

    rate = {name.split(" ")[0]: n / dt for name, dt, n in rows}
    lines = [
        f"Training loader, fold 1 train split of {shards} ({len(keys)} clips), T=16, S=112, batch "
        f"{args.batch_size}, mixing + augmentation on, {args.batches} batches after a warm-up, "
        f"{os.cpu_count()} cores ({time.strftime('%Y-%m-%d')})",
        "",
        "| loader | clips/s | MB/s out (float32) | vs (b) | vs (c) |",
        "|---|---|---|---|---|",
    ]
    clip_mb = 3 * 16 * 112 * 112 * 4 / 1e6
    for name, dt, n in rows:
        v = n / dt
        lines.append(f"| {name} | {v:.1f} | {v * clip_mb:.0f} | {v / rate['(b)']:.1f}x | {v / rate['(c)']:.1f}x |")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "loader.md").write_text(text)
    print(text)
    print(json.dumps({k: round(v, 2) for k, v in rate.items()}))



if __name__ == "__main__":
    main()
