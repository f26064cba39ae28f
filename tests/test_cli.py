"""The command line as a user meets it: --set precedence, help, dry runs that refuse what the run
refuses, plain summaries, location-independent rejects (the README's newcomer sequence: test_newcomer.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import AlignConfig, DecodeConfig

COMMANDS = ("build-shards", "mix-offline", "verify", "inspect", "bench-loader", "make-sample")


def _plan(args: list[str]) -> dict:
    res = CliRunner().invoke(main, [*args, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_set_reaches_fields_that_also_have_a_flag(sample, tmp_path):
    base = ["build-shards", str(sample.root), "--out", str(tmp_path / "s")]
    plan = _plan(base)
    assert (plan["num_frames"], plan["frame_size"]) == (DecodeConfig.num_frames, AlignConfig.frame_size)
    plan = _plan([*base, "--set", "decode.num_frames=8", "--set", "align.frame_size=224"])
    assert (plan["num_frames"], plan["frame_size"]) == (8, 224)
    # a flag given explicitly wins over --set, --set wins over the YAML file
    assert _plan([*base, "--set", "decode.num_frames=8", "--num-frames", "4"])["num_frames"] == 4
    yml = tmp_path / "c.yaml"
    yml.write_text("decode:\n  num_frames: 12\nalign:\n  frame_size: 64\n")
    plan = _plan([*base, "--config", str(yml), "--set", "decode.num_frames=8"])
    assert (plan["num_frames"], plan["frame_size"]) == (8, 64)
    assert _plan([*base, "--config", str(yml), "--set", "decode.num_frames=8", "--num-frames", "6"])["num_frames"] == 6


@pytest.mark.parametrize(("sets", "message"), [
    ("decode.num_frames=0", "decode.num_frames=0 is out of range"),
    ("align.frame_size=huge", "align.frame_size='huge' has the wrong type"),
    ("write.format=zip", "write.format='zip' is not allowed"),
    ("align.no_such_field=1", "unknown config key align.no_such_field"),
])
def test_invalid_set_values_are_usage_errors(sample, tmp_path, sets, message):
    res = CliRunner().invoke(main, ["build-shards", str(sample.root), "--out", str(tmp_path / "s"), "--set", sets,
                                    "--dry-run"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_help_example_set_alpha_reaches_mix_offline(built, tmp_path):
    help_text = CliRunner().invoke(main, ["mix-offline", "--help"]).output
    assert "--set alpha=0.4" in help_text  # the help's own example, run below
    base = ["mix-offline", "--shards", str(built[0]), "--out", str(tmp_path / "m")]
    assert _plan([*base, "--set", "alpha=0.4"])["alpha"] == 0.4
    assert _plan([*base, "--set", "alpha=0.4", "--alpha", "0.3"])["alpha"] == 0.3
    assert _plan([*base, "--set", "copies=3", "--set", "seed=7"])["copies"] == 3
    res = CliRunner().invoke(main, [*base, "--set", "alpha=-1", "--dry-run"])
    assert res.exit_code == 2 and "alpha must be a finite number" in res.output, res.output


def test_help_shows_every_default_one_way_and_every_option_has_text():
    runner = CliRunner()
    for cmd in COMMANDS:
        command = main.commands[cmd]
        out = runner.invoke(main, [cmd, "--help"]).output
        assert "(default" not in out and "[default: (" not in out, cmd
        for p in command.params:
            if isinstance(p, click.Option):
                assert p.help, f"{cmd} {p.opts[0]} has no help text"
        res = runner.invoke(main, [cmd, "--version"])
        assert res.exit_code == 0 and "midas-prep, version" in res.output, cmd

    def shown(cmd: str, flag: str) -> str:
        command = main.commands[cmd]
        ctx = click.Context(command, info_name=cmd, parent=click.Context(main), show_default=True)
        opt = next(p for p in command.params if flag in getattr(p, "opts", ()))
        return opt.get_help_record(ctx)[1]

    for flag, default in (("--num-frames", DecodeConfig.num_frames), ("--frame-size", AlignConfig.frame_size),
                          ("--detector", AlignConfig.detector), ("--format", "both"), ("--workers", "all cores")):
        assert shown("build-shards", flag).endswith(f"[default: {default}]"), flag
    for flag, default in (("--device", "auto"), ("--batch-size", 32), ("--format", "auto")):
        assert shown("bench-loader", flag).endswith(f"[default: {default}]"), flag
    assert shown("mix-offline", "--alpha").endswith("[default: 0.8]")


def test_midas_train_help_shows_defaults_the_same_way():
    from pipeline.config import TrainConfig
    from train.cli import main as train_main

    res = CliRunner().invoke(train_main, ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "(default" not in res.output and "[default: (" not in res.output
    ctx = click.Context(train_main, info_name="midas-train", show_default=True)
    for p in train_main.params:
        if isinstance(p, click.Option):
            assert p.help, f"midas-train {p.opts[0]} has no help text"
    shown = {p.opts[0]: p.get_help_record(ctx)[1] for p in train_main.params if isinstance(p, click.Option)}
    for flag, field in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"), ("--out", "out"),
                        ("--model", "model"), ("--alpha", "alpha"), ("--device", "device")):
        assert shown[flag].endswith(f"[default: {getattr(TrainConfig, field)}]"), (flag, shown[flag])
    assert "quick" in shown["--config"] and "dfew" in shown["--config"]  # the shipped configs, by name


def test_shipped_configs_are_found_by_name_from_any_directory(built, tmp_path, monkeypatch):
    """`--config dfew` (and the old in-repo path) from a directory that holds no configs/; a wrong name lists
    the shipped ones. midas-prep and midas-train alike."""
    from pipeline.config import ConfigError, MixConfig, TrainConfig, find_config, load_config
    from train.cli import main as train_main

    monkeypatch.chdir(tmp_path)
    assert load_config(TrainConfig, "dfew").out == "runs/dfew"
    assert load_config(TrainConfig, "configs/train/dfew-compare.yaml").fold_list() == [1, 2, 3, 4, 5]
    assert load_config(TrainConfig, "quick.yaml").model == "r2plus1d"
    assert load_config(MixConfig, "dfew").copies == 2
    with pytest.raises(ConfigError, match=r"dfw does not exist; the shipped train configs are: dfew, dfew-compare, "
                                          r"quick"):
        find_config("dfw", "train")
    mine = tmp_path / "dfew"  # a file of the user's by the same name wins: a path is a path
    mine.write_text("epochs: 3\n")
    assert load_config(TrainConfig, "dfew").epochs == 3
    mine.unlink()
    plan = _plan(["build-shards", built[1].dataset_root, "--out", str(tmp_path / "s"), "--config", "dfew"])
    assert plan["frame_size"] == 112
    res = CliRunner().invoke(train_main, ["--config", "nope", "--epochs", "1"])
    assert res.exit_code == 2 and "the shipped train configs are: dfew, dfew-compare, quick" in res.output


def test_build_dry_run_refuses_what_the_run_refuses(built, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(built[0], out, ignore=shutil.ignore_patterns("mixed"))
    root = built[1].dataset_root
    runner = CliRunner()
    for extra in ([], ["--dry-run"]):
        res = runner.invoke(main, ["build-shards", root, "--out", str(out), "--frame-size", "64", *extra])
        assert res.exit_code == 1, res.output
        assert "align.frame_size: 112 on disk, 64 now" in res.output
        assert "--overwrite" in res.output and "another --out" in res.output
    plan = _plan(["build-shards", root, "--out", str(out), "--frame-size", "64", "--overwrite"])
    assert plan["frame_size"] == 64 and plan["shards_done"] == 0
    res = runner.invoke(main, ["build-shards", str(tmp_path / "nothing"), "--dry-run"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    manifest = tmp_path / "m.csv"  # no usable clip, an output below a file: refused by both, nothing written
    manifest.write_text("path,happy,sad,neutral,angry,surprise,disgust,fear\nnope.mp4,1,0,0,0,0,0,0\n")
    (tmp_path / "a-file").write_text("mine")
    for args, message in (([str(manifest), "--out", str(tmp_path / "m")], "no usable clip in the index"),
                          ([root, "--out", str(tmp_path / "a-file/x")], "is not writable")):
        for extra in (["--dry-run"], []):
            res = runner.invoke(main, ["build-shards", *args, *extra])
            assert res.exit_code == 1 and message in res.output, (args, extra, res.output)
    assert not (tmp_path / "m").exists() and (tmp_path / "a-file").read_text() == "mine"


def test_mix_dry_run_refuses_what_the_run_refuses(built, ray_session, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(built[0], shards, ignore=shutil.ignore_patterns("mixed"))
    runner = CliRunner()
    res = runner.invoke(main, ["mix-offline", "--shards", str(shards), "--fold", "1", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "folds             1\n" in res.output
    for extra in (["--dry-run"], []):
        res = runner.invoke(main, ["mix-offline", "--shards", str(shards), "--fold", "1", "--set", "alpha=0.4",
                                   *extra])
        assert res.exit_code == 1, (extra, res.output)
        assert "alpha: 0.8 on disk, 0.4 now" in res.output
        assert "--overwrite" in res.output and "another --out" in res.output
    plan = _plan(["mix-offline", "--shards", str(shards), "--fold", "1", "--set", "alpha=0.4",
                  "--out", str(tmp_path / "other")])
    assert plan["alpha"] == 0.4 and not (tmp_path / "other").exists()
    assert _plan(["mix-offline", "--shards", str(shards), "--fold", "1"])["shards_done"] >= 1
    (shards / "parquet").rename(shards / "parquet-moved")  # a source file gone: both refuse
    for extra in (["--dry-run"], []):
        res = runner.invoke(main, ["mix-offline", "--shards", str(shards), "--fold", "1", *extra])
        assert res.exit_code == 1 and "missing" in res.output and "midas-prep verify" in res.output, res.output


def test_rejects_and_clips_tables_do_not_depend_on_where_the_dataset_sits(ray_session, tmp_path):
    from pipeline.build import build_shards
    from pipeline.config import BuildConfig, load_config
    from pipeline.tools.make_sample import MIN_CLIPS, make_sample

    s = make_sample(tmp_path / "a" / "dfew", clips=MIN_CLIPS, seed=3, with_frames=False)
    shutil.copytree(s.root, tmp_path / "b" / "deeper" / "dfew")
    outs = []
    for root in (s.root, tmp_path / "b" / "deeper" / "dfew"):
        out = root.parent / "shards"
        build_shards(load_config(BuildConfig, None, {"dataset_root": str(root), "write.out": str(out),
                                                     "ray.workers": 2}))
        outs.append(out)
    import pyarrow.parquet as pq

    rejects = pq.read_table(outs[0] / "rejects.parquet").to_pylist()
    assert {r["stage"] for r in rejects} == {"align", "decode"}
    for r in rejects:
        assert not Path(r["source"]).is_absolute() and str(tmp_path) not in r["error"], r
    decode = next(r for r in rejects if r["stage"] == "decode")
    assert "file truncated or corrupt (size 300 bytes)" in decode["error"]
    assert all(not Path(c["source"]).is_absolute() for c in pq.read_table(outs[0] / "clips.parquet").to_pylist())
    for name in ("rejects.parquet", "clips.parquet"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
