"""Shared fixtures: one real local Ray per test session, one make-sample dataset, one build."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from pipeline.config import BuildConfig, load_config

SAMPLE_CLIPS = 24


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once (ray.init costs seconds), listening on localhost."""
    import ray

    from pipeline.cluster import local_ray_kwargs

    ray.init(**local_ray_kwargs(2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """A DFEW-layout dataset of real mp4 clips (make-sample)."""
    from pipeline.tools.make_sample import make_sample

    return make_sample(tmp_path_factory.mktemp("sample") / "dfew", clips=SAMPLE_CLIPS, seed=0)


def session_procs(sid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of session `sid`: a command started with start_new_session and
    its local Ray. Ray puts each worker in a process group of its own, so a killpg misses them."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(sid: int, limit: float = 60.0) -> None:
    """kill -9 every process of session `sid` at once, as a machine that loses power would, and
    return once they are all gone (a readiness wait; zombies count as gone). Stopped first, so
    no worker finishes a shard while its neighbours are being killed."""
    procs = session_procs(sid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                continue
    end = time.monotonic() + limit
    while (left := session_procs(sid)) and time.monotonic() < end:  # dying, or forked while the rest were stopped
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                continue
        time.sleep(0.05)


def build_config(root: Path, out: Path, **overrides) -> BuildConfig:
    return load_config(BuildConfig, None, {"dataset_root": str(root), "write.out": str(out), **overrides})


@pytest.fixture(scope="session")
def built(sample, ray_session, tmp_path_factory: pytest.TempPathFactory):
    """build-shards over the sample with 2 workers, small shards so every part has several."""
    from pipeline.build import build_shards

    out = tmp_path_factory.mktemp("built") / "shards"
    cfg = build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0})
    summary = build_shards(cfg)
    return out, cfg, summary
