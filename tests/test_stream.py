"""The DALI loader on CPU (device_id=None) over make-sample shards; the GPU graph when a GPU exists."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.config import StreamConfig
from pipeline.format import ShardError
from pipeline.stream import MidasLoader, create_loader, epoch_order

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


@pytest.fixture(scope="module")
def mixed_default(built, ray_session):
    """mix-offline --copies 2 --fold 1 into <shards>/mixed (where the loader looks)."""
    from pipeline.config import MixConfig, RayConfig
    from pipeline.mix import mix_offline

    return mix_offline(MixConfig(shards=str(built[0]), copies=2, fold=1), RayConfig(workers=2))


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    """N x C x T x H x W normalised -> N x T x H x W x C in pixel units."""
    a = x.numpy().transpose(0, 2, 3, 4, 1).astype(np.float64)
    return a * STD + MEAN


def _cfg(built, **kw) -> StreamConfig:
    base = {"shards": str(built[0]), "fold": 1, "batch_size": 4, "device": "cpu", "py_workers": 1}
    return StreamConfig(**(base | kw))


def test_every_mixed_output_is_a_convex_pair_of_the_batch_with_one_lam(built):
    loader = MidasLoader(_cfg(built, augment=False, alpha=0.8), _debug_outputs=True)
    n = 0
    for batch in loader:
        idx = batch["sample"][:, 0].tolist()
        src = [loader.source.read(i) for i in idx]
        x = np.stack([s[0] for s in src]).astype(np.float64)
        y = np.stack([s[1] for s in src]).astype(np.float64)
        lam = batch["lam"].numpy().reshape(-1).astype(np.float64)
        perm = batch["perm"].numpy().reshape(-1)
        assert sorted(perm.tolist()) == list(range(len(idx))) and all(perm != np.arange(len(idx)))
        out = _unnormalise(batch["frames"])
        for i in range(len(idx)):
            expect = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]  # the same lam for all T frames
            assert np.abs(out[i] - expect).max() < 0.05
            assert np.allclose(batch["soft"][i].numpy(), lam[i] * y[i] + (1 - lam[i]) * y[perm[i]], atol=1e-6)
        n += 1
    assert n == len(loader) > 0


def test_lam_follows_beta_over_many_batches(built):
    loader = MidasLoader(_cfg(built, augment=False, alpha=0.4, batch_size=8), _debug_outputs=True)
    lams = []
    while len(lams) < 400:
        for batch in loader:
            lams += batch["lam"].numpy().reshape(-1).tolist()
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(lams, stats.uniform().cdf).pvalue < 0.01


def test_evaluation_is_unmixed_and_covers_the_test_part_once(built):
    loader = create_loader(str(built[0]), fold=2, split="test", batch_size=3, device="cpu", py_workers=1)
    seen = []
    for batch in loader:
        idx = batch["sample"][:, 0].tolist()
        seen += idx
        for i, x in zip(idx, _unnormalise(batch["frames"]), strict=True):
            frames, soft, meta = loader.source.read(i)
            assert meta["part"] == 2
            assert np.abs(x - frames).max() < 0.05  # not mixed, not augmented
    assert sorted(seen) == list(range(len(loader.samples)))
    assert len(seen) == sum(1 for s in range(len(loader.samples)))


def test_training_epoch_is_a_global_shuffle_seeded_by_seed_and_epoch(built):
    loader = create_loader(str(built[0]), fold=3, batch_size=2, device="cpu", py_workers=1, mix=False,
                           last_batch="partial")
    epochs = []
    for _ in range(2):
        epochs.append([i for b in loader for i in b["sample"][:, 0].tolist()])
    n = len(loader.samples)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n))  # every sample once per epoch
    assert epochs[0] != epochs[1]
    assert epochs[0] == epoch_order(n, 0, 0, True).tolist()
    parts = {loader.source.read(i)[2]["part"] for i in epochs[0][: n // 2]}
    assert len(parts) >= 3  # the first half of the epoch already draws on most parts


@pytest.mark.parametrize("split", ["train", "test"])
def test_shard_id_num_shards_split_an_epoch_without_overlap_or_loss(built, split):
    got = []
    for rank in range(3):
        loader = create_loader(str(built[0]), fold=1, split=split, batch_size=2, device="cpu", py_workers=1,
                               shard_id=rank, num_shards=3, last_batch="partial", mix=False)
        got.append([i for b in loader for i in b["sample"][:, 0].tolist()])
    flat = [i for g in got for i in g]
    assert len(flat) == len(set(flat)) == len(loader.samples)


def test_parquet_path_yields_the_same_samples(built):
    a = create_loader(str(built[0]), fold=4, split="test", batch_size=2, device="cpu", py_workers=1,
                      format="webdataset")
    b = create_loader(str(built[0]), fold=4, split="test", batch_size=2, device="cpu", py_workers=1,
                      format="parquet")
    xa = torch.cat([x["frames"] for x in a])
    xb = torch.cat([x["frames"] for x in b])
    assert xa.shape == xb.shape and torch.equal(xa, xb)
    ya = torch.cat([x["soft"] for x in create_loader(str(built[0]), fold=4, split="train", batch_size=2,
                                                     device="cpu", py_workers=1, format="webdataset")])
    yb = torch.cat([x["soft"] for x in create_loader(str(built[0]), fold=4, split="train", batch_size=2,
                                                     device="cpu", py_workers=1, format="parquet")])
    assert torch.equal(ya, yb)  # same order, same draws, same bytes


def test_restored_loader_continues_where_it_stopped(built):
    loader = MidasLoader(_cfg(built, batch_size=2), _debug_outputs=True)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [(b["frames"].clone(), b["soft"].clone(), b["sample"].clone()) for b in it]
    restored = MidasLoader.from_state_dict(state, _debug_outputs=True)
    again = [(b["frames"], b["soft"], b["sample"]) for b in restored]
    assert len(again) == len(rest) > 0
    for (fa, sa, ia), (fb, sb, ib) in zip(rest, again, strict=True):
        assert torch.equal(ia, ib) and torch.equal(sa, sb) and torch.equal(fa, fb)


def test_offline_mixed_adds_the_fold_mixed_set(built, mixed_default):
    plain = create_loader(str(built[0]), fold=1, device="cpu", py_workers=1)
    more = create_loader(str(built[0]), fold=1, device="cpu", py_workers=1, offline_mixed=True)
    added = len(more.samples) - len(plain.samples)
    assert added == 2 * len(plain.samples)  # --copies 2


def test_bad_requests_are_clear_errors(built, mixed_default, tmp_path):
    with pytest.raises(ShardError, match="index.json not found"):
        create_loader(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="stream.fold=9 is out of range"):
        create_loader(str(built[0]), fold=9, device="cpu")
    with pytest.raises(ShardError, match=r"mixed/fold=2 holds no mixed shards: run `midas-prep mix-offline --shards "
                                         r".* --fold 2` first"):
        create_loader(str(built[0]), fold=2, device="cpu", offline_mixed=True)


@pytest.mark.gpu
def test_gpu_graph_runs_on_the_device(built):
    loader = create_loader(str(built[0]), fold=1, batch_size=4, device="gpu")
    batch = next(iter(loader))
    assert batch["frames"].is_cuda and batch["frames"].shape[1:] == (3, 16, 112, 112)
    assert torch.allclose(batch["soft"].sum(1).cpu(), torch.ones(len(batch["soft"])), atol=1e-5)


def test_gpu_graph_uses_only_operators_with_gpu_backends():
    """Without a GPU: define the device="gpu" graph, list its operators, check them against DALI's
    registry. Only random.beta, batch_permutation and the random argument generators stay on the CPU."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.ops import _registry

    from pipeline.stream import midas_graph

    cfg = StreamConfig(shards="unused")

    @pipeline_def(batch_size=4, num_threads=1, device_id=0)
    def pipe():
        x, y = fn.external_source(source=lambda: ([np.zeros((2, 8, 8, 3), np.uint8)] * 4,
                                                  [np.full(7, 1 / 7, np.float32)] * 4), num_outputs=2,
                                  layout=["FHWC", ""])
        frames, soft, _, _ = midas_graph(x, y, cfg, "gpu", True, 8)
        return frames, soft

    p = pipe()
    p._build_graph()  # defines the graph without building it (building needs the GPU)
    ops = [(getattr(o._op, "schema_name", type(o._op).__name__), o._op.device) for o in p._ops]
    on_gpu = {name for name, dev in ops if dev == "gpu"}
    on_cpu = {name for name, dev in ops if dev == "cpu"}
    assert {"RandomResizedCrop", "BrightnessContrast", "PermuteBatch", "CropMirrorNormalize"} <= on_gpu
    assert on_gpu <= set(_registry.gpu_ops())
    assert on_cpu <= {"ExternalSource", "random__Beta", "BatchPermutation", "random__Uniform", "random__CoinFlip"}
    assert not {"random__Beta", "BatchPermutation"} & set(_registry.gpu_ops())  # why they stay on the CPU


def test_a_split_smaller_than_the_batch_is_one_partial_batch_or_a_clear_error(built):
    """Issue 12: fold 1 of the 24-clip build with batch 32 hung forever; now one partial batch
    in evaluation, a partial mixed batch in training with last_batch=partial, else an error."""
    test = create_loader(str(built[0]), fold=1, split="test", batch_size=32, device="cpu", py_workers=1)
    batches = [b for b in test]
    assert len(batches) == len(test) == 1 and len(batches[0]["sample"]) == len(test.samples) < 32
    assert sorted(batches[0]["sample"][:, 0].tolist()) == list(range(len(test.samples)))
    train = MidasLoader(_cfg(built, batch_size=32, augment=False, last_batch="partial"), _debug_outputs=True)
    (batch,) = list(train)
    n = len(train.samples)
    assert n < 32 and batch["frames"].shape[0] == batch["soft"].shape[0] == batch["lam"].shape[0] == n
    assert sorted(batch["sample"][:, 0].tolist()) == list(range(n))
    src = [train.source.read(i) for i in batch["sample"][:, 0].tolist()]
    x = np.stack([s[0] for s in src]).astype(np.float64)
    lam, perm = batch["lam"].numpy().reshape(-1), batch["perm"].numpy().reshape(-1)
    assert perm.max() < n  # partners in the padding are copies of real rows
    out = _unnormalise(batch["frames"])
    for i in range(n):
        assert np.abs(out[i] - (lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])).max() < 0.05
    drop = create_loader(str(built[0]), fold=1, batch_size=32, device="cpu", py_workers=1)
    with pytest.raises(ValueError, match=rf"fold 1 train split has {n} samples, fewer than one batch of 32"):
        next(iter(drop))


def test_bench_loader_cli_on_a_split_smaller_than_the_batch_ends_with_one_clear_line(built):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipeline.cli", "bench-loader", str(built[0]), "--device", "cpu", "--batches", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # it used to hang forever
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "fewer than one batch of 32" in r.stderr
    fits = re.search(r"--batch-size (\d+)", r.stderr)  # the option bench-loader has, and the size that fits
    assert fits, r.stderr
    ok = subprocess.run([*cmd, "--batch-size", fits[1]], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "clips/s" in ok.stdout, ok.stderr


def test_two_loaders_in_one_process_interleave_and_spawned_readers_match_forked(built, monkeypatch):
    import pipeline.stream as stream

    def epoch(loader):
        return [(b["frames"].clone(), b["soft"].clone(), b["sample"].clone()) for b in loader]

    cfg = _cfg(built, batch_size=3, py_workers=2)
    forked = epoch(MidasLoader(cfg))
    monkeypatch.setattr(stream, "_START_METHOD", "spawn")  # what a GPU loader (or one after CUDA init) uses
    train, test = MidasLoader(cfg), MidasLoader(replace(cfg, split="test", fold=2))
    got, seen = [], []
    it_train, it_test = iter(train), iter(test)
    for b in it_train:  # both loaders alive and iterated in turn
        got.append((b["frames"].clone(), b["soft"].clone(), b["sample"].clone()))
        t = next(it_test, None)
        if t is not None:
            seen += t["sample"][:, 0].tolist()
    seen += [i for t in it_test for i in t["sample"][:, 0].tolist()]
    assert sorted(seen) == list(range(len(test.samples)))
    assert len(got) == len(forked) > 1
    for (fa, sa, ia), (fb, sb, ib) in zip(forked, got, strict=True):
        assert torch.equal(ia, ib) and torch.equal(sa, sb) and torch.equal(fa, fb)


def test_onehot_labels_replace_the_soft_label_before_mixing(built):
    from pipeline.stream import ShardSource

    test = create_loader(str(built[0]), fold=2, split="test", batch_size=4, device="cpu", py_workers=1,
                         labels="onehot")
    soft = ShardSource(test.samples, 4, 0, False, 0, 1, False)  # the same samples with their vote histograms
    for b in test:
        for y, (i, label) in zip(b["soft"], b["sample"].tolist(), strict=True):
            hot = np.zeros(len(y), np.float32)
            hot[label if label >= 0 else int(np.argmax(soft.read(i)[1]))] = 1
            assert np.array_equal(y.numpy(), hot)
    train = MidasLoader(_cfg(built, labels="onehot", augment=False), _debug_outputs=True)
    for b in train:
        lam, perm = b["lam"].numpy().reshape(-1), b["perm"].numpy().reshape(-1)
        y = np.stack([train.source.read(i)[1] for i in b["sample"][:, 0].tolist()])
        assert ((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all()
        assert np.allclose(b["soft"].numpy(), lam[:, None] * y + (1 - lam[:, None]) * y[perm], atol=1e-6)


def test_reader_and_thread_counts_are_sized_from_the_cpus_of_the_rank(built, monkeypatch):
    from pipeline.stream import _cpus, auto_workers

    cpus = _cpus()
    cfg = StreamConfig(shards="unused")
    assert cfg.num_threads == cfg.py_workers == cfg.prefetch == 0  # 0 = auto
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers(cfg, "cpu") == (cpus, max(1, cpus // 2), 2)
    assert auto_workers(cfg, "gpu") == (min(4, cpus), max(1, cpus - 2), 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))  # more ranks than CPUs: still one of each
    assert auto_workers(cfg, "cpu") == (1, 1, 2)
    assert auto_workers(replace(cfg, num_threads=3, py_workers=5, prefetch=1), "gpu") == (3, 5, 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    loader = create_loader(str(built[0]), fold=1, batch_size=2, device="cpu")
    assert (loader.num_threads, loader.py_workers, loader.prefetch) == auto_workers(loader.cfg, "cpu")
    assert loader.pipe.num_threads == loader.num_threads and loader.pipe.py_num_workers == loader.py_workers


def test_gpu_graph_debug_outputs_are_device_outputs():
    """Without a GPU: lam and perm of the device="gpu" graph are GPU nodes, so torch never sees the
    pinned CPU buffers DLPack refuses (`Unsupported device_type: 3`); on the CPU path they stay CPU."""
    from nvidia.dali import fn, pipeline_def

    from pipeline.stream import midas_graph

    cfg = StreamConfig(shards="unused")
    devices = {}
    for device in ("gpu", "cpu"):

        @pipeline_def(batch_size=4, num_threads=1, device_id=0)
        def pipe(device=device):
            x, y = fn.external_source(source=lambda: ([np.zeros((2, 8, 8, 3), np.uint8)] * 4,
                                                      [np.full(7, 1 / 7, np.float32)] * 4), num_outputs=2,
                                      layout=["FHWC", ""])
            frames, soft, lam, perm = midas_graph(x, y, cfg, device, True, 8)
            devices[device] = [n.device for n in (frames, soft, lam, perm)]
            return frames, soft, lam, perm

        pipe()._build_graph()
    assert devices["gpu"] == ["gpu"] * 4
    assert devices["cpu"] == ["cpu"] * 4


def test_state_saved_at_the_end_of_an_epoch_restores_the_next_epoch(built):
    """What midas-train saves: the state after a whole epoch; the restored loader's next epoch is the
    same permutation (seed, epoch + 1), batches and draws as the original's."""
    loader = MidasLoader(_cfg(built, fold=3, batch_size=3))
    first = [b["sample"][:, 0].tolist() for b in loader]
    state = loader.state_dict()
    nxt = [(b["frames"].clone(), b["sample"].clone()) for b in loader]
    again = [(b["frames"], b["sample"]) for b in MidasLoader.from_state_dict(state)]
    n = len(loader.source.rank_order(1))
    assert [i for ib in (s for _, s in nxt) for i in ib[:, 0].tolist()] == epoch_order(
        len(loader.samples), 0, 1, True)[:n].tolist() != [i for b in first for i in b]
    assert len(again) == len(nxt) > 0
    for (fa, ia), (fb, ib) in zip(nxt, again, strict=True):
        assert torch.equal(ia, ib) and torch.equal(fa, fb)
