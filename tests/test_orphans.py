"""Reader processes die with their parent (issue 18, item 3).

A real loader (DALI parallel external_source over the session's built shards, CPU) runs in a
subprocess; once its reader processes exist, the subprocess is killed with SIGKILL, as a
kill -9 of midas-train or bench-loader would, and every child must be gone soon after (polled;
not a timing assertion). Both ways DALI starts readers are covered: fork (the CPU default) and
spawn (GPU loaders), killed mid-epoch and killed before the first batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

LOADER = """
import sys, threading, time
from pipeline import stream
from pipeline.config import StreamConfig

if __name__ == "__main__":
    shards, method, when = sys.argv[1:4]
    stream._START_METHOD = method
    cfg = StreamConfig(shards=shards, fold=1, device="cpu", batch_size=2, py_workers=2, num_threads=1, prefetch=1)
    made = []
    if when == "thread":  # built on a thread that then ends: the readers must outlive that thread
        t = threading.Thread(target=lambda: made.append(stream.MidasLoader(cfg)))
        t.start()
        t.join()
        time.sleep(2 * stream._WATCH_S)
    else:
        made.append(stream.MidasLoader(cfg))
    if when != "before":
        for batch in made[0]:
            print("batch", batch["frames"].shape[0], flush=True)
            break
    print("ready", flush=True)
    time.sleep(600)
"""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start(built, tmp_path: Path, method: str, when: str) -> tuple[subprocess.Popen, list[psutil.Process], list[str]]:
    script = tmp_path / "loader.py"
    script.write_text(LOADER)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(built[0]), method, when], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = []
    for line in proc.stdout:  # a readiness wait: the loader is built (and has read a batch)
        lines.append(line)
        if line.startswith("ready"):
            break
    assert lines and lines[-1].startswith("ready"), proc.stderr.read()
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2, children  # the two reader processes
    return proc, children, lines


def _kill_and_wait(proc: subprocess.Popen, children: list[psutil.Process]) -> list[int]:
    """kill -9 the loader's process, then poll (a readiness wait, up to 60 s) until its readers are gone;
    -> the pids still alive."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.monotonic() + 60
    while any(_alive(c) for c in children) and time.monotonic() < end:
        time.sleep(0.2)
    return [c.pid for c in children if _alive(c)]


@pytest.mark.parametrize(("method", "when"), [("fork", "mid-epoch"), ("fork", "before"), ("spawn", "mid-epoch")])
def test_readers_die_when_the_loader_process_is_killed(built, tmp_path, method, when):
    proc, children, _ = _start(built, tmp_path, method, when)
    try:
        left = _kill_and_wait(proc, children)
        assert not left, f"reader processes {left} outlived their parent"
    finally:
        for c in children:
            if _alive(c):
                c.kill()


def test_readers_of_a_loader_built_on_a_thread_outlive_that_thread(built, tmp_path):
    """The parent-death signal fires when the thread that started a reader ends: it is not used
    then, and the watchdog (parent pid) alone guards those readers."""
    proc, children, lines = _start(built, tmp_path, "fork", "thread")
    try:
        assert lines[0].startswith("batch 2")  # the readers read after the building thread had ended
        assert all(_alive(c) for c in children)
    finally:
        assert not _kill_and_wait(proc, children)
