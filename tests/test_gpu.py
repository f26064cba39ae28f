"""The GPU path (issue 11). Tests marked `gpu` run on a GPU machine against a prebuilt shard directory
named by MIDAS_GPU_SHARDS (the device kit unpacks one at /tmp/data/shards; decord and Ray are not
installed there, so nothing here imports them). `bench/gpu_check.sh` runs them, then bench_gpu.py.
The last test runs bench_gpu.py itself on the CPU, with ray and decord made unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


@pytest.fixture(scope="module")
def gpu_shards() -> str:
    path = os.environ.get("MIDAS_GPU_SHARDS", "")
    if not path:
        pytest.skip("MIDAS_GPU_SHARDS is not set: point it at a prebuilt shard directory (the device kit "
                    "unpacks one at /tmp/data/shards)")
    if not (Path(path) / "index.json").is_file():
        pytest.fail(f"MIDAS_GPU_SHARDS={path}: no index.json there")
    return path


def _cfg(shards: str, **kw):
    from pipeline.config import StreamConfig

    return StreamConfig(**({"shards": shards, "fold": 1, "batch_size": 8, "device": "gpu"} | kw))


@pytest.mark.gpu
def test_midas_on_the_device_is_a_convex_pair_with_debug_outputs_on_the_gpu(gpu_shards):
    from pipeline.stream import MidasLoader

    loader = MidasLoader(_cfg(gpu_shards, augment=False), _debug_outputs=True)
    n = 0
    for batch in loader:
        assert batch["frames"].is_cuda and batch["lam"].is_cuda and batch["perm"].is_cuda  # no DLPack error
        idx = batch["sample"][:, 0].tolist()
        src = [loader.source.read(i) for i in idx]
        x = np.stack([s[0] for s in src]).astype(np.float64)
        y = np.stack([s[1] for s in src]).astype(np.float64)
        lam = batch["lam"].cpu().numpy().reshape(-1).astype(np.float64)
        perm = batch["perm"].cpu().numpy().reshape(-1)
        assert sorted(perm.tolist()) == list(range(len(idx))) and all(perm != np.arange(len(idx)))
        out = batch["frames"].cpu().numpy().transpose(0, 2, 3, 4, 1).astype(np.float64) * STD + MEAN
        for i in range(len(idx)):
            assert np.abs(out[i] - (lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])).max() < 0.05
            assert np.allclose(batch["soft"][i].cpu().numpy(), lam[i] * y[i] + (1 - lam[i]) * y[perm[i]], atol=1e-5)
        n += 1
    assert n == len(loader) > 0


@pytest.mark.gpu
def test_loaders_made_after_cuda_is_initialised_work_side_by_side(gpu_shards):
    import torch

    from pipeline.stream import MidasLoader

    torch.cuda.init()
    model = torch.nn.Linear(4, 4).cuda()  # CUDA in use before any loader, as in midas-train
    train = MidasLoader(_cfg(gpu_shards))
    test = MidasLoader(_cfg(gpu_shards, split="test", mix=False, augment=False))
    cpu = MidasLoader(_cfg(gpu_shards, split="test", device="cpu"))  # a CPU pipeline in a CUDA process
    seen, cpu_seen = [], []
    for b in train:
        assert b["frames"].is_cuda
        model(torch.zeros(1, 4, device="cuda"))
    for b in test:
        seen += b["sample"][:, 0].tolist()
    for b in cpu:
        cpu_seen += b["sample"][:, 0].tolist()
    assert sorted(seen) == sorted(cpu_seen) == list(range(len(test.samples)))
    assert len(list(train)) == len(train) > 0  # and a second epoch


@pytest.mark.gpu
def test_restored_gpu_loader_continues_where_it_stopped(gpu_shards):
    import torch

    from pipeline.stream import MidasLoader

    loader = MidasLoader(_cfg(gpu_shards, batch_size=4))
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [(b["frames"].clone(), b["soft"].clone(), b["sample"].clone()) for b in it]
    again = [(b["frames"], b["soft"], b["sample"]) for b in MidasLoader.from_state_dict(state)]
    assert len(again) == len(rest) > 0
    for (fa, sa, ia), (fb, sb, ib) in zip(rest, again, strict=True):
        assert torch.equal(ia, ib) and torch.allclose(sa, sb, atol=1e-6) and torch.allclose(fa, fb, atol=1e-4)


@pytest.mark.gpu
def test_one_short_midas_train_epoch_on_the_gpu_then_resume(gpu_shards, tmp_path):
    from pipeline.config import TrainConfig
    from train.loop import train

    base = {"shards": gpu_shards, "fold": 1, "batch_size": 8, "max_steps": 3, "out": str(tmp_path / "run"),
            "device": "gpu", "tensorboard": False}
    report = train(TrainConfig(**base, epochs=1))
    assert report["epochs"] == 1 and 0 <= report["test_uar"] <= 1
    metrics = tmp_path / "run" / "fold1" / "metrics.jsonl"
    assert (tmp_path / "run" / "fold1" / "last.pt").is_file()
    report = train(TrainConfig(**base, epochs=2, resume=True))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and report["epochs"] == 2


def test_bench_gpu_runs_on_the_cpu_without_ray_or_decord(built, tmp_path):
    """bench_gpu.py --device cpu: the five rows, one table, written to --out; ray and decord cannot be
    imported (the GPU machine has neither)."""
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('ray', 'decord'):\n"
             "            raise ImportError(f'{name} is not installed on the GPU machine')\n"
             "sys.meta_path.insert(0, Block())\n"
             f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
             "import bench_gpu\n"
             "bench_gpu.main(sys.argv[1:])\n")
    cmd = [sys.executable, "-c", block, "--shards", str(built[0]), "--device", "cpu", "--batch-sizes", "2,4",
           "--batches", "2", "--train-steps", "2", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "gpu.md").read_text()
    assert table in r.stdout and "(cpu)" in table.splitlines()[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.md"]  # scratch went to a temp dir
    for row in "abcde":
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| ({row})"))
        rates = [float(v) for v in line.strip("|").split("|")[1:]]
        assert len(rates) == 2 and all(v > 0 for v in rates)
