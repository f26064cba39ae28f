"""The README's first hour, as a newcomer lives it: command 1 run line by line from an empty directory outside
the checkout, with the installed console scripts; every command ends cleanly with no WARNING, the first
training run ends above chance, and what it saved (config.yaml, report.json, metrics.jsonl) tells one story."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- newcomer:"


def _command_1() -> list[str]:
    """The lines of the README's command 1: the bash block after the newcomer marker, up to `# 2.`."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if line.startswith("# 2."):
            break
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def _shown_output(command: str) -> list[re.Pattern]:
    """README's example output of `command` (the text block after `<!-- output: COMMAND -->`) as one pattern
    a line: `#.####` stands for a number with 4 decimals (or `-`), `N` for a count."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(f"<!-- output: {command} -->"):].split("```text\n", 1)[1].split("```", 1)[0]
    patterns = []
    for line in block.splitlines():
        if line.strip():
            p = re.escape(line).replace(re.escape("#.####"), r"(\d\.\d{4}|-)")
            patterns.append(re.compile(re.sub(r"\bN\b", r"\\d+", p)))
    return patterns


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """One README command as a user's shell runs it: the console script installed beside this interpreter
    (this checkout's code through PYTHONPATH), none of the RAY_* variables this test session exported."""
    argv = cmd.split()
    exe = Path(sys.executable).parent / argv[0]
    argv[0] = str(exe) if exe.exists() else argv[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONBREAKPOINT"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_readme_install_lines_name_where_torch_and_dali_come_from():
    lines = _command_1()
    pip = [x for x in lines if x.startswith("pip install")]
    assert any("-e" in x.split() and "midas-prep[train]" in x and "https://download.pytorch.org/whl/cpu" in x
               for x in pip), pip  # installs from the checkout, the CPU torch named
    assert any("--no-deps" in x and "nvidia-dali-cuda120" in x for x in pip), pip  # DALI without CUDA libraries
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## The first run")]
    assert "https://download.pytorch.org/whl/cpu" in install and re.search(r"download\.pytorch\.org/whl/cu\d+", install)
    assert '[gpu]' in install
    assert "424 MB" in install and "2.4 GB" in install and "3.7 GB" in install  # what the install downloads
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject[pyproject.index("[project.optional-dependencies]"):pyproject.index("test = [")]
    train_line = next(x for x in extras.splitlines() if x.startswith("train = "))
    stream_line = extras[extras.index("stream = "):extras.index("train = ")]
    assert "nvidia" not in stream_line + train_line  # a CPU machine downloads no CUDA library
    assert "nvidia-dali-cuda120" in next(x for x in extras.splitlines() if x.startswith("gpu = "))


@pytest.mark.slow
def test_readme_command_1_from_an_empty_directory_outside_the_checkout(tmp_path):
    work = tmp_path / "midas-try"  # what `mkdir -p ~/midas-try && cd ~/midas-try` makes, outside the checkout
    work.mkdir()
    assert ROOT not in work.parents
    ran = []
    for line in _command_1():
        for cmd in (c.strip() for c in line.split("&&")):
            if cmd.startswith(("pip ", "mkdir ")):
                continue  # the install is this test environment's; the directory is `work`
            if cmd.startswith("cd "):
                target = cmd.split()[1]
                assert target.startswith("~/") and "midas-prep" not in target, cmd  # outside the checkout
                continue
            assert cmd.startswith(("midas-prep ", "midas-train ")), cmd
            p = _run(cmd, work)
            text = p.stdout + p.stderr
            assert p.returncode == 0, f"{cmd}:\n{text}"
            assert "Traceback" not in text and "WARNING" not in text, f"{cmd}:\n{text}"
            ran.append((cmd, p.stdout))
    assert [c.split()[:2] for c, _ in ran] == [["midas-prep", "make-sample"], ["midas-prep", "build-shards"],
                                               ["midas-prep", "mix-offline"], ["midas-train", "--config"]]
    for cmd in ("midas-prep inspect", "midas-prep build-shards dfew/ --dry-run"):  # what a newcomer tries next
        p = _run(cmd, work)
        assert p.returncode == 0 and "WARNING" not in p.stdout + p.stderr, f"{cmd}:\n{p.stdout}{p.stderr}"
        ran.append((cmd, p.stdout))
    out = {c.split()[1] + (" dry" if "--dry-run" in c else ""): o for c, o in ran}
    for name, text in out.items():  # plain words, no Python reprs
        assert not re.search(r"[\[{]'|': |\(\{", text), f"{name}:\n{text}"
    assert "rejected          3 at align (no face), 1 at decode (truncated or corrupt file)" in out["build-shards"]
    assert "formats           webdataset, parquet" in out["build-shards dry"]
    assert "rejected: 3 at align (no face), 1 at decode (truncated or corrupt file)" in out["inspect"]
    assert (work / "shards/mixed/fold=1/index.json").is_file()
    assert not list(ROOT.glob("dfew")) and not list(ROOT.glob("shards"))  # nothing written into the checkout

    # the first training run: above chance on part K, and its config, report and metrics agree
    run = next(work.glob("runs/*/fold*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    report = json.loads((run / "report.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    chance = 1 / report["test_classes_present"]
    assert report["test_uar"] > chance, (report["test_uar"], chance)
    train_out = out["--config"]
    assert f"UAR {report['test_uar']:.4f}" in train_out and f"chance level:  UAR {chance:.4f}" in train_out
    form = _shown_output("midas-train --config quick")  # README shows the form of what the run prints
    printed = [line for line in train_out.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(printed) if line.startswith("midas-train done"))
    assert len(printed) - start == len(form), train_out
    for pattern, line in zip(form, printed[start:], strict=True):
        assert pattern.fullmatch(line), (pattern.pattern, line)
    assert config["offline_mixed"] is False  # README: quick mixes on the device, the offline copies are not read
    assert config["mix_mode"] == report["mix_mode"] == metrics[-1]["mix_mode"] in ("midas", "mixup", "soft", "none")
    assert config["mix"] == (report["mix_mode"] in ("midas", "mixup"))
    assert (config["fold"], config["epochs"]) == (report["fold"], report["epochs"]) == (report["fold"], len(metrics))
    assert report["test_uar"] == metrics[-1]["test_uar"] and report["test_war"] == metrics[-1]["test_war"]
    for record in metrics:  # every metric names its split
        assert not {"uar", "war", "loss", "n", "confusion", "recall"} & set(record), sorted(record)
        assert {"train_loss", "test_uar", "test_war", "test_loss", "test_confusion"} <= set(record)
