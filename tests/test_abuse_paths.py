"""Paths read from files stay inside the output (issue 18, item 1).

Every kind of file the tools read paths or names from (an index.json entry, the .idx path of
an entry, a done-file entry, a plan's shard names, a mixed fold's index.json) is given a path
that leads out of the output three ways: `../`, an absolute path, and a symlink inside the
output that points out. Readers and verify refuse it with one line naming the file, the entry
and the fix; cleanup ignores it; and the file outside keeps its bytes. The shards are small
and written by hand with the real writer (no build), except the one repair that needs a dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import StreamConfig
from pipeline.format import FORMAT_VERSION, INDEX_NAME, STATE_DIR, ShardError, shard_files, shard_path
from pipeline.read import SampleReader, check_files, open_index
from pipeline.stream import list_samples
from pipeline.verify import BAD_ENTRY, verify_shards
from pipeline.write import (
    atomic_write,
    encode_sample,
    load_done,
    owned_files,
    remove_outputs,
    remove_temporaries,
    write_index,
    write_shard_files,
)

CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
SECRET = b"the user's own file, never to be read or deleted\n" * 20
WAYS = ["dotdot", "absolute", "symlink"]


def _samples(part: int, n: int = 2) -> list[dict]:
    return [encode_sample(f"c{part}x{i}", np.full((2, 4, 4, 3), i, np.uint8), np.full(7, 1 / 7, np.float32),
                          {"clip_id": f"c{part}x{i}", "label": i, "part": part, "votes": [1] * 7}) for i in range(n)]


def _write_output(root: Path, kind: str, shards: list[tuple[str, int]], config: dict) -> None:
    """An output as build-shards (kind clips) or mix-offline (kind mixed) leaves it: shard files,
    a done-file per shard, _state/plan.json and index.json."""
    entries = []
    for name, part in shards:
        mine = write_shard_files(root, name, part, _samples(part), ("webdataset", "parquet"), tuple(CLASSES))
        atomic_write(root / STATE_DIR / f"{name}.json",
                     json.dumps({"shard": name, "part": part, "entries": mine, "results": []}).encode())
        entries += mine
    plan = {"config": config, "shards": [{"name": n, "part": p} for n, p in shards], "format_version": FORMAT_VERSION}
    atomic_write(root / STATE_DIR / "plan.json", json.dumps(plan).encode())
    write_index(root, {"format_version": FORMAT_VERSION, "kind": kind, "classes": CLASSES, "config": config,
                       "sample": {"num_frames": 2, "frame_size": 4}, "shards": entries, "complete": True,
                       **({"fold": 2} if kind == "mixed" else {})})


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A hand-written build (parts 1 and 3) whose dataset is gone, and a secret file beside it."""
    out = tmp_path / "out"
    _write_output(out, "clips", [("part1-000000", 1), ("part3-000000", 3)],
                  {"dataset_root": str(tmp_path / "gone")})
    (tmp_path / "secret.bin").write_bytes(SECRET)
    return out


def _outside(root: Path, way: str, link: str) -> str:
    """A path that leads from `root` to the secret file: `../..`, absolute, or a symlink `link` under root."""
    secret = next(p for p in root.parents if (p / "secret.bin").is_file()) / "secret.bin"
    if way == "dotdot":
        return os.path.relpath(secret, root)
    if way == "absolute":
        return str(secret)
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(secret)
    return link


def _secret_intact(out: Path) -> None:
    secret = next(p for p in out.parents if (p / "secret.bin").is_file()) / "secret.bin"
    assert secret.read_bytes() == SECRET and not secret.is_symlink()


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _tar_entry(doc: dict) -> dict:
    return next(e for e in doc["shards" if "shards" in doc else "entries"] if e["format"] == "webdataset")


def _one_problem(root: Path, out: Path, res, source: Path) -> str:
    """verify's answer: exit 1 and one PROBLEM line naming `source`, the shard and the fix."""
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("PROBLEM")]
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"PROBLEM {source}: ") and "'part1-000000'" in lines[0]
    assert "neither read nor deleted" in lines[0] and f"midas-prep verify {out} --repair" in lines[0]
    return lines[0]


# --- index.json: an entry's path, an entry's .idx path -------------------------------------------------------

@pytest.mark.parametrize("field", ["path", "idx"])
@pytest.mark.parametrize("way", WAYS)
def test_an_index_entry_leading_out_is_refused_by_every_reader_and_ignored_by_cleanup(out, way, field, caplog):
    bad = _outside(out, way, "webdataset/evil.tar" if field == "path" else "webdataset-idx/evil.idx")

    def point_out(doc: dict) -> None:
        e = next(e for e in doc["shards"] if e["format"] == "webdataset" and e["shard"] == "part1-000000")
        if field == "path":
            e["path"] = bad
        else:
            e["idx"]["path"] = bad

    _edit(out / INDEX_NAME, point_out)
    index = open_index(out)
    res = CliRunner().invoke(main, ["verify", str(out)])
    _one_problem(out, out, res, out / INDEX_NAME)
    assert "Traceback" not in res.output
    problems = verify_shards(out).problems
    assert [p.kind for p in problems] == [BAD_ENTRY]

    for read in (lambda: check_files(out, index["shards"]), lambda: SampleReader(out, index),
                 lambda: list_samples(StreamConfig(shards=str(out), fold=2, format="webdataset"))):
        with pytest.raises(ShardError) as e:
            read()
        msg = str(e.value)
        assert msg.startswith(f"{out / INDEX_NAME}: the webdataset entry of shard 'part1-000000', {field}")
        assert repr(bad) in msg and "--repair" in msg and "\n" not in msg

    # repair: index.json is not followed; the rebuild it would run needs the (gone) dataset: nothing deleted
    before = sorted(p for p in out.rglob("*"))
    res = CliRunner().invoke(main, ["verify", str(out), "--repair"])
    assert res.exit_code == 1 and "nothing was deleted" in res.output and "Traceback" not in res.output
    assert sorted(p for p in out.rglob("*")) == before
    _secret_intact(out)

    # cleanup (--overwrite) deletes our files, never the one outside; a link listed only in index.json is not
    # ours (index.json proves nothing, issue 23): it stays, and so does what it leads to
    remove_outputs(out)
    assert not (out / INDEX_NAME).exists() and not [p for p in out.rglob("*.tar") if not p.is_symlink()]
    _secret_intact(out)


# --- a done-file entry ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("way", WAYS)
def test_a_done_file_leading_out_is_not_followed(out, way, caplog):
    done = out / STATE_DIR / "part1-000000.json"
    bad = _outside(out, way, "webdataset/evil.tar")
    _edit(done, lambda d: _tar_entry(d).update(path=bad))
    with caplog.at_level(logging.WARNING):
        assert load_done(out, "part1-000000") is None  # the shard is written again
    assert load_done(out, "part3-000000") is not None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"{done}: the webdataset entry of shard 'part1-000000', path")
    assert repr(bad) in said[0] and "rebuilding shard part1-000000" in said[0]
    assert bad not in owned_files(out) or way == "symlink"  # a link planted inside may go, never its target
    remove_temporaries(out)
    remove_outputs(out)
    _secret_intact(out)


# --- a plan's shard names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("way", WAYS)
def test_plan_shard_names_that_are_not_shard_names_are_no_names(out, tmp_path, way):
    plan = out / STATE_DIR / "plan.json"
    # what a garbled name would turn into: webdataset/<name>.tar, parquet/..., _state/<name>.json
    for victim in ("secret.tar", "secret.json", "secret.idx"):
        (tmp_path / victim).write_bytes(SECRET)
    if way == "symlink":  # the plan itself a link to a file outside: never read, only the link is removed
        (tmp_path / "plan-elsewhere.json").write_text(json.dumps({"shards": [{"name": "part9-000000"}]}))
        plan.unlink()
        plan.symlink_to(tmp_path / "plan-elsewhere.json")
        names = ["part9-000000"]
    else:
        name = "../../secret" if way == "dotdot" else str(tmp_path / "secret")
        names = [name, "part1-000000\n", "part1-000000/../../../secret", 7, None]
        _edit(plan, lambda d: d["shards"].extend({"name": n} for n in names))
        for n in names:
            with pytest.raises(ShardError, match="is not part"):
                shard_path("parquet", n)
            with pytest.raises(ShardError, match="is not part"):
                shard_files(n, "webdataset")
    owned = owned_files(out)
    assert not [f for f in owned if "secret" in f or "part9" in f]
    assert all(not Path(f).is_absolute() and ".." not in Path(f).parts for f in owned)
    remove_outputs(out)
    for victim in ("secret.bin", "secret.tar", "secret.json", "secret.idx"):
        assert (tmp_path / victim).read_bytes() == SECRET
    if way == "symlink":
        assert json.loads((tmp_path / "plan-elsewhere.json").read_text()) == {"shards": [{"name": "part9-000000"}]}
        assert plan.is_symlink()  # a plan that is a link proves nothing: it stays, and so does its target


# --- a mixed fold's index.json, and a fold folder that is a link out --------------------------------------------

@pytest.fixture
def mixed(out: Path) -> Path:
    fold = out / "mixed" / "fold=2"
    _write_output(fold, "mixed", [("copy0-000000", 0)], {"alpha": 0.8, "copies": 1, "seed": 0})
    return fold


@pytest.mark.parametrize("way", WAYS)
def test_a_mixed_fold_index_leading_out_is_refused(out, mixed, way):
    bad = _outside(mixed, way, "webdataset/evil.tar")
    _edit(mixed / INDEX_NAME, lambda d: _tar_entry(d).update(path=bad))
    problems = verify_shards(out).problems
    assert len(problems) == 1 and problems[0].kind == BAD_ENTRY and problems[0].path == str(mixed / INDEX_NAME)
    assert "'copy0-000000'" in problems[0].message and repr(bad) in problems[0].message
    with pytest.raises(ShardError, match=r"the webdataset entry of shard 'copy0-000000', path"):
        list_samples(StreamConfig(shards=str(out), fold=2, format="webdataset", offline_mixed=True))
    with pytest.raises(ShardError, match=r"copy0-000000"):
        SampleReader(mixed, open_index(mixed))
    remove_outputs(mixed)
    assert not (mixed / INDEX_NAME).exists()
    _secret_intact(out)


def test_a_fold_folder_linked_out_of_the_output_is_never_entered(out, tmp_path):
    """mixed/fold=3 -> a folder elsewhere with its own index.json and files: verify does not read
    it, the loader refuses it, and build-shards --overwrite (which removes mixed/) leaves it whole."""
    elsewhere = tmp_path / "elsewhere"
    _write_output(elsewhere, "mixed", [("copy0-000000", 0)], {"alpha": 0.8})
    files = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}
    (out / "mixed").mkdir()
    (out / "mixed" / "fold=3").symlink_to(elsewhere)
    report = verify_shards(out)
    assert [p.path for p in report.problems] == [str(out / "mixed" / "fold=3" / INDEX_NAME)]
    assert "leads (through a symlink) out of" in report.problems[0].message
    with pytest.raises(ShardError, match=r"the folder of fold 3 names 'mixed/fold=3', which leads"):
        list_samples(StreamConfig(shards=str(out), fold=3, format="webdataset", offline_mixed=True))
    res = CliRunner().invoke(main, ["verify", str(out), "--repair"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    from conftest import build_config

    from pipeline.build import _prepare_out

    _prepare_out(out, build_config(tmp_path / "gone", out, **{"write.overwrite": True}))  # --overwrite's cleanup
    assert not (out / INDEX_NAME).exists()  # the build's own files went
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == files


# --- the case of the issue: verify --repair with a real build ---------------------------------------------------

def test_repair_of_index_entries_pointing_out_rewrites_index_json_and_touches_nothing_outside(
        built, tmp_path, ray_session):
    """The case of the issue: `../decoy.txt` in index.json, then verify --repair. And the same,
    with an absolute path, in a mixed fold's index.json."""
    from pipeline.config import MixConfig, RayConfig
    from pipeline.mix import mix_offline

    copy = tmp_path / "shards"
    shutil.copytree(built[0], copy, ignore=shutil.ignore_patterns("mixed"))
    mix_offline(MixConfig(shards=str(copy), fold=2, shard_size_mb=2.0), RayConfig(workers=2))
    fold = copy / "mixed" / "fold=2"
    clean = {p: json.loads((p / INDEX_NAME).read_text())["shards"] for p in (copy, fold)}
    decoy = tmp_path / "decoy.txt"
    decoy.write_bytes(SECRET)
    _edit(copy / INDEX_NAME, lambda d: d["shards"][0].update(path="../decoy.txt"))
    _edit(fold / INDEX_NAME, lambda d: d["shards"][-1].update(path=str(decoy)))
    res = CliRunner().invoke(main, ["verify", str(copy)])
    assert res.exit_code == 1 and res.output.count("PROBLEM") == 2 and "'../decoy.txt'" in res.output
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0, res.output
    assert "repaired 2 shard(s): index.json, mixed/fold=2/index.json" in res.output, res.output
    assert res.output.rstrip().endswith("OK")
    assert {p: json.loads((p / INDEX_NAME).read_text())["shards"] for p in (copy, fold)} == clean
    assert decoy.read_bytes() == SECRET


# --- symlinks planted at the names midas-prep writes ------------------------------------------------------------

def test_a_symlink_planted_at_a_temporary_or_the_lock_is_never_written_through(out, tmp_path):
    from pipeline.lock import LOCK_NAME, OutputLocked, hold_output

    secret = tmp_path / "secret.bin"
    for rel in ("webdataset/part5-000000.tar.tmp", "webdataset-idx/part5-000000.idx.tmp",
                "parquet/part=5/000000.parquet.tmp", "_state/part5-000000.json.tmp", "index.json.tmp"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to(secret)
    entries = write_shard_files(out, "part5-000000", 5, _samples(5), ("webdataset", "parquet"), tuple(CLASSES))
    atomic_write(out / STATE_DIR / "part5-000000.json", b"{}")
    write_index(out, json.loads((out / INDEX_NAME).read_text()) | {"shards": entries})
    assert check_files(out, entries) == []
    _secret_intact(out)
    (out / LOCK_NAME).symlink_to(secret)
    with pytest.raises(OutputLocked, match=r"\.midas-prep\.lock is a symlink .*delete that link"):
        with hold_output(out):
            pass
    _secret_intact(out)
