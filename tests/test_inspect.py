"""inspect's pictures, and the machine-readable side of every command (--json, --dry-run, --version)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import __version__
from pipeline.cli import main
from pipeline.inspect import inspect_shards


def test_inspect_writes_non_blank_pictures_of_the_expected_size(built, tmp_path):
    r = inspect_shards(built[0], tmp_path / "sheet.png", clips=4)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    stats = np.asarray(Image.open(tmp_path / "sheet-stats.png").convert("RGB"))
    assert sheet.shape[1] > 1000 and sheet.shape[0] > 4 * 100  # 4 rows of 8 frames with label bars
    assert stats.shape[:2] == (700, 1000)
    for img in (sheet, stats):
        assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # not blank
    assert r["written"] == built[2].written and r["rejected_by_stage"]["align"] >= 1
    assert 0 <= r["vote_entropy_bits"]["mean"] <= np.log2(7)


def test_detection_rate_counts_no_face_rejects_and_every_panel_is_labelled(built, sample, tmp_path):
    r = inspect_shards(built[0], tmp_path / "x.png", clips=2)
    face = r["face_detection_rate"]
    assert face["rejected_no_face"] == len(sample.no_face) >= 1
    assert face["clips"] == built[2].written + len(sample.no_face)
    assert face["min"] == 0.0 and face["mean"] < 1.0  # the no-face clips pull it below 1
    assert {p["figure"] for p in r["panels"]} == {"contact sheet", "stats"}
    assert len([p for p in r["panels"] if p["figure"] == "stats"]) == 4
    for p in r["panels"]:
        assert p["x"] and p["y"], p


def test_every_command_has_help_with_an_example_and_version():
    runner = CliRunner()
    for cmd in ("build-shards", "mix-offline", "verify", "inspect", "bench-loader", "make-sample"):
        res = runner.invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, cmd
    assert __version__ in runner.invoke(main, ["--version"]).output
    from train.cli import main as train_main

    assert "Examples" in runner.invoke(train_main, ["--help"]).output
    assert __version__ in runner.invoke(train_main, ["--version"]).output


def test_dry_run_and_json(built, sample, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["build-shards", str(sample.root), "--out", str(tmp_path / "s"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["clips"] == sample.clips and plan["shards_done"] == 0 and plan["clips_to_process"] == sample.clips
    assert not (tmp_path / "s").exists()  # nothing written
    res = runner.invoke(main, ["mix-offline", "--shards", str(built[0]), "--out", str(tmp_path / "m"), "--dry-run",
                               "--json", "--copies", "3"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["copies"] == 3 and plan["folds"] == [1, 2, 3, 4, 5] and not (tmp_path / "m").exists()
    res = runner.invoke(main, ["verify", str(built[0]), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True
    res = runner.invoke(main, ["inspect", str(built[0]), "--png", str(tmp_path / "i.png"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["contact_sheet"].endswith("i.png")


@pytest.mark.parametrize("args", [["mix-offline", "--alpha", "0"], ["mix-offline", "--copies", "0"],
                                  ["mix-offline", "--fold", "seven"]])
def test_mix_usage_errors(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
