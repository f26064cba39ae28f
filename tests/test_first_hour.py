"""The rough edges of a researcher's first hour (issue 24), each met as the user meets it: a dataset path one
level too deep, mix-offline before any build, the help's examples, and Ctrl-C during midas-train."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_a_path_inside_dfew_asks_did_you_mean(sample):
    for inner in (sample.root / "Clip", sample.root / "Clip" / "original"):
        res = CliRunner().invoke(main, ["build-shards", str(inner), "--dry-run"])
        assert res.exit_code == 1, res.output
        assert f"did you mean {sample.root}/?" in res.output and "Traceback" not in res.output


def test_mix_offline_with_no_shards_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["mix-offline"])
    assert res.exit_code == 1 and "index.json not found" in res.output and "build-shards" in res.output
    assert list(tmp_path.iterdir()) == []  # no empty shards/ left behind


def test_mix_offline_help_examples_each_name_their_own_output():
    """The second example mixes with another alpha: run after the first, it would be refused in ./shards/mixed,
    so it names its own --out (a mixed output of another config is never overwritten unasked)."""
    text = CliRunner().invoke(main, ["mix-offline", "--help"]).output
    examples = [line.split("#")[0].split() for line in text.splitlines() if "midas-prep mix-offline" in line]
    assert len(examples) >= 2
    assert "--alpha" in examples[1] and "--out" in examples[1], examples[1]


def _midas_train() -> list[str]:
    exe = Path(sys.executable).parent / "midas-train"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "train"]


def test_ctrl_c_during_midas_train_is_one_line_naming_resume(built, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the trainer and its DALI reader
    processes. One line naming --resume, exit 130, no traceback from the trainer or any reader."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    args = [*_midas_train(), "--shards", str(built[0]), "--out", str(tmp_path / "run"), "--epochs", "50",
            "--batch-size", "2", "--device", "cpu", "--model", "r2plus1d", "--width", "8", "--py-workers", "2",
            "--set", "tensorboard=false"]
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        end = time.monotonic() + 240
        while not (tmp_path / "run/fold1/config.yaml").exists() and time.monotonic() < end and p.poll() is None:
            time.sleep(0.2)  # the loaders and their readers are up a moment after config.yaml
        time.sleep(3)
        assert p.poll() is None, p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [x for x in err.splitlines() if "interrupted" in x]
    assert len(lines) == 1 and "--resume" in lines[0] and str(tmp_path / "run/fold1/last.pt") in lines[0], err
    assert not re.search(r"^\s+File \"", err, re.M), err


def test_offline_mixed_without_mixed_copies_says_to_run_mix_offline(built, tmp_path):
    """README suggests `--config quick --offline-mixed` after command 1; without the copies it says what to run
    (before any loader or model is made)."""
    from train.cli import main as midas_train

    shards = tmp_path / "shards"
    shutil.copytree(built[0], shards, ignore=shutil.ignore_patterns("mixed"))
    res = CliRunner().invoke(midas_train, ["--config", "quick", "--offline-mixed", "--shards", str(shards),
                                           "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and f"midas-prep mix-offline --shards {shards} --fold 1" in res.output, res.output
