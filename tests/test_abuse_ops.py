"""Operations under abuse: one writer per output, nothing deleted that is not ours, a repair
that checks before it deletes, a local Ray on 127.0.0.1 that starts quietly and ends cleanly,
and a real two-node cluster that loses a node mid-build.

Every case runs the real commands (subprocesses where a second process, a signal or a
cluster is the point) on real files, and compares with the clean build of conftest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import build_config, kill_session, session_procs

from pipeline.build import BuildError, build_shards
from pipeline.cli import main
from pipeline.cluster import LOCAL_ONLY_ENV
from pipeline.format import FORMAT_DIRS, shard_files
from pipeline.lock import LOCK_NAME
from pipeline.verify import verify_shards
from pipeline.write import write_shard_files

pytest.importorskip("moto.server")
from test_remote import s3  # noqa: E402, F401  (the moto S3 server fixture)

BUILD_ARGS = ["--workers", "2", "--shard-size-mb", "2"]
RAY_NOISE = ("authentication_token_setup", "Token authentication", "dashboard", "SIGTERM received", "PC: @",
             "Traceback")


def _env(**extra: str) -> dict[str, str]:
    drop = ("RAY_ADDRESS", LOCAL_ONLY_ENV, "RAY_AUTH_MODE", "MIDAS_PREP_FAULT")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | extra


def _cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=popen.pop("env", None) or _env(), **popen)


def _wait_for(cond, what: str, limit: float = 120.0) -> None:
    """Poll until `cond()` (a readiness wait, not a timing assertion)."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _files(out: Path) -> dict[str, bytes]:
    """The shards and tables of a build, by relative path (what must equal a clean build)."""
    files = sorted(p for d in FORMAT_DIRS.values() for p in (out / d).rglob("*") if p.is_file())
    files += [out / "clips.parquet", out / "rejects.parquet"]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(built[0], dst, ignore=shutil.ignore_patterns("mixed"))
    return dst


# --- one writer per output directory -------------------------------------------------------------------------

def test_a_second_build_on_the_same_out_refuses_and_names_the_holder(built, sample, tmp_path):
    out = tmp_path / "shards"
    first = _cli("build-shards", str(sample.root), "--out", str(out), "--frame-size", "112", *BUILD_ARGS)
    try:
        _wait_for(lambda: (out / LOCK_NAME).is_file() and f'"pid": {first.pid}' in (out / LOCK_NAME).read_text(),
                  "the first build to take the lock")
        os.kill(first.pid, signal.SIGSTOP)  # the first run is certainly still writing while the second starts
        try:
            second = _cli("build-shards", str(sample.root), "--out", str(out), "--frame-size", "64", *BUILD_ARGS)
            _, err = second.communicate(timeout=120)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 1
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert f"{out} is being written by another midas-prep run" in lines[0]
        assert f"host {socket.gethostname()}, pid {first.pid}, since 20" in lines[0] and "build-shards" in lines[0]
        assert "wait for it to end" in lines[0]
        _, first_err = first.communicate(timeout=300)
    finally:
        kill_session(first.pid)
    assert first.returncode == 0, first_err
    assert not [n for n in RAY_NOISE if n in first_err], first_err  # a quiet start: no token or dashboard lines
    index = json.loads((out / "index.json").read_text())
    assert index["sample"]["frame_size"] == 112 and index["complete"]
    assert _files(out) == _files(built[0])  # the first config's shards, and only those
    assert not (out / LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(copy, built, sample, ray_session, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01T00:00:00+00:00",
              "command": "midas-prep build-shards killed"}
    (copy / LOCK_NAME).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"):
        summary = build_shards(build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert summary.processed == 0  # nothing rebuilt: it resumed the finished build
    assert f"left by a run that is gone (host {socket.gethostname()}, pid {dead.pid}" in caplog.text
    assert not (copy / LOCK_NAME).exists()
    assert _files(copy) == _files(built[0])


def test_a_lock_of_another_host_is_refused_until_a_person_removes_it(copy, sample, ray_session):
    record = {"host": "node-b.example", "pid": 4242, "since": "2026-01-01T00:00:00+00:00", "command": "x"}
    (copy / LOCK_NAME).write_text(json.dumps(record))
    before = _files(copy)
    with pytest.raises(BuildError, match=rf"locked by a run on another host \(host node-b.example, pid 4242.*"
                                         rf"delete {copy / LOCK_NAME}"):
        build_shards(build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert _files(copy) == before and json.loads((copy / LOCK_NAME).read_text()) == record


def test_mix_offline_and_repair_refuse_while_another_run_holds_the_output(copy, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.lock import hold_output\n"
                               "with hold_output(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
                               str(copy)], stdout=subprocess.PIPE, text=True, env=_env())
    mixed_holder = None
    try:
        assert holder.stdout.readline().strip() == "held"
        tar = sorted(copy.glob("webdataset/*.tar"))[0]
        tar.write_bytes(tar.read_bytes()[:4096])
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(copy), "--repair"],
                             capture_output=True, text=True, timeout=120, env=_env())
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert f"is being written by another midas-prep run (host {socket.gethostname()}, pid {holder.pid}" \
            in res.stderr
        assert tar.stat().st_size == 4096  # refused before deleting anything
        mixed_holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.lock import "
                                         "hold_output\nwith hold_output(sys.argv[1]):\n    print('held', flush=True);"
                                         " time.sleep(120)", str(tmp_path / "mixed")], stdout=subprocess.PIPE,
                                        text=True, env=_env())
        assert mixed_holder.stdout.readline().strip() == "held"
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "mix-offline", "--shards", str(copy), "--out",
                              str(tmp_path / "mixed"), "--fold", "1"], capture_output=True, text=True, timeout=120,
                             env=_env())
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert f"pid {mixed_holder.pid}" in res.stderr and "is being written by another midas-prep run" in res.stderr
    finally:
        for p in (holder, mixed_holder):
            if p is not None:
                p.kill()
                p.wait()


# --- the tools delete only files they created ----------------------------------------------------------------

def _plant_others(out: Path) -> dict[Path, bytes]:
    """Files a user keeps in and beside the output, some with our suffixes."""
    others = {out / "thesis.tmp": b"chapter 1", out / "page.tmpl": b"<html>", out / "notes.txt": b"n",
              out / "webdataset" / "mine.tar": b"not a shard", out / "webdataset" / "readme.tmp": b"r",
              out / "parquet" / "mine.parquet": b"user parquet", out / "parquet" / "sub" / "keep.txt": b"k",
              out / "mixed" / "README": b"mine", out / "mixed" / "old" / "data.bin": b"d",
              out / "_state" / "mine.txt": b"s"}
    for p, data in others.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return others


def test_a_resumed_build_removes_only_its_own_temporaries(copy, built, sample, ray_session):
    others = _plant_others(copy)
    tar = sorted(copy.glob("webdataset/part*.tar"))[0]
    ours = [tar.with_name(tar.name + ".tmp"), copy / "index.json.tmp", copy / "_state" / "plan.json.tmp",
            copy / "clips.parquet.tmp"]
    for p in ours:
        p.write_bytes(b"partial")
    build_shards(build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert not [p for p in ours if p.exists()]
    assert {p: p.read_bytes() for p in others} == others


def test_overwrite_with_another_config_deletes_only_the_tools_files(copy, built, sample, ray_session, tmp_path):
    from pipeline.config import MixConfig, RayConfig
    from pipeline.mix import mix_offline

    mix_offline(MixConfig(shards=str(copy), fold=2, shard_size_mb=1.0), RayConfig(workers=2))
    assert list((copy / "mixed").rglob("*.tar"))
    others = _plant_others(copy)
    # a shard a killed run renamed into place but never listed (no done-file, not in index.json)
    index = json.loads((copy / "index.json").read_text())
    orphan = index["shards"][-1]["shard"]
    index["shards"] = [e for e in index["shards"] if e["shard"] != orphan]
    (copy / "index.json").write_text(json.dumps(index))
    (copy / "_state" / f"{orphan}.json").unlink()
    old = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file() and p not in others}

    cfg = build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0, "align.frame_size": 64,
                                             "write.overwrite": True})
    build_shards(cfg)
    assert {p: p.read_bytes() for p in others} == others  # the user's files, even inside parquet/ and mixed/
    new = json.loads((copy / "index.json").read_text())
    assert new["sample"]["frame_size"] == 64
    listed = {f for e in new["shards"] for f in [e["path"], e.get("idx", {}).get("path")] if f}
    now = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file() and p not in others}
    stale = {f for f in old & now if f.startswith(tuple(FORMAT_DIRS.values())) and f not in listed}
    assert not stale, f"files of the old build left behind: {sorted(stale)}"
    assert not [f for f in now if f.startswith("mixed/")]  # the mixed shards of the old build are gone
    assert verify_shards(copy).ok


def test_shard_files_names_what_write_shard_files_writes(tmp_path):
    """Cleanup finds unlisted shard files by these names: they must follow the layout."""
    import numpy as np

    from pipeline.write import encode_sample

    s = encode_sample("c1", np.zeros((2, 4, 4, 3), np.uint8), np.full(7, 1 / 7, np.float32),
                      {"clip_id": "c1", "label": 0, "part": 3, "votes": [1] * 7})
    entries = write_shard_files(tmp_path, "part3-000007", 3, [s], ("webdataset", "parquet"))
    for e in entries:
        written = [e["path"]] + ([e["idx"]["path"]] if "idx" in e else [])
        assert sorted(shard_files(e["shard"], e["format"])) == sorted(written)


# --- verify --repair checks before it deletes -----------------------------------------------------------------

def test_repair_finds_the_dataset_by_its_absolute_path_and_deletes_nothing_when_it_is_gone(
        sample, ray_session, tmp_path, monkeypatch):
    shutil.copytree(sample.root, tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shards"
    build_shards(build_config(Path("ds"), out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    index = json.loads((out / "index.json").read_text())
    assert index["dataset"] == {"root": str(tmp_path / "ds"), "given": "ds"}
    clean = _files(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative path no longer leads to the dataset

    tar = sorted(out.glob("webdataset/part2-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[3000] ^= 0xFF
    tar.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["verify", str(out), "--repair"])
    assert res.exit_code == 0, res.output
    assert _files(out) == clean

    tar.write_bytes(bytes(data))
    (tmp_path / "ds").rename(tmp_path / "ds-moved")
    damaged = _files(out)
    res = CliRunner().invoke(main, ["verify", str(out), "--repair"])
    assert res.exit_code == 1
    assert f"its source dataset {tmp_path / 'ds'} (given as " in res.output
    assert "is not there; nothing was deleted" in res.output
    assert _files(out) == damaged  # the damaged tar, its .idx and its intact Parquet twin are all still there


def test_a_garbled_idx_is_regenerated_from_its_tar(copy, built):
    idx = sorted(copy.glob("webdataset-idx/*.idx"))[1]
    idx.write_bytes(b"v1.2 3\nframes.npy zz\n")
    res = CliRunner().invoke(main, ["verify", str(copy)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)  # an answer, not a traceback
    assert f"PROBLEM {idx}: unreadable DALI index" in res.output
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0, res.output
    assert f"webdataset-idx/{idx.name}" in res.output and "OK" in res.output
    assert idx.read_bytes() == (built[0] / "webdataset-idx" / idx.name).read_bytes()


def test_an_unreadable_index_json_is_named_and_rewritten_from_state(copy, built, ray_session):
    (copy / "index.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(copy)], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "unreadable index.json" in proc.stdout and "midas-prep build-shards" in proc.stdout
    assert "--overwrite" in proc.stdout
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0, res.output
    assert json.loads((copy / "index.json").read_text())["shards"] == json.loads(
        (built[0] / "index.json").read_text())["shards"]

    (copy / "index.json").write_text("{not json")
    (copy / "_state" / "plan.json").write_text("garbage")
    before = _files(copy)
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 1 and "nothing was deleted" in res.output
    assert f"midas-prep build-shards DATASET --out {copy} --overwrite" in res.output
    assert _files(copy) == before


def test_repair_of_mixed_shards_checks_the_source_first(copy, ray_session):
    from pipeline.config import MixConfig, RayConfig
    from pipeline.mix import mix_offline

    mix_offline(MixConfig(shards=str(copy), fold=3, shard_size_mb=1.0), RayConfig(workers=2))
    mixed_tar = sorted((copy / "mixed").rglob("*.tar"))[0]
    mixed_tar.write_bytes(mixed_tar.read_bytes()[:2048])
    src = sorted(copy.glob("parquet/part=*/*.parquet"))[0]
    src.write_bytes(src.read_bytes()[:100])  # a damaged source shard: repaired first, then the mixed one
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0, res.output
    assert verify_shards(copy).ok

    mixed_tar.write_bytes(mixed_tar.read_bytes()[:2048])
    index = json.loads((copy / "index.json").read_text())
    index["shards"][0]["sha256"] = "0" * 64  # the source no longer matches what it records
    (copy / "index.json").write_text(json.dumps(index))
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 1 and "nothing was deleted" in res.output
    assert mixed_tar.stat().st_size == 2048


# --- Ray: loopback only, quiet, clean exit ------------------------------------------------------------------

def test_a_local_ray_listens_on_127_0_0_1_only(tmp_path):
    script = """
import json, os, psutil, ray
from pipeline.cluster import init_ray, shutdown_ray
workers, started = init_ray("", 1)
@ray.remote
def pid():
    return os.getpid()
ray.get([pid.remote() for _ in range(2)])
me = psutil.Process()
found = {}
for p in [me] + me.children(recursive=True):
    found[f"{p.name()} {p.pid}"] = [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == "LISTEN"]
shutdown_ray(started)
print(json.dumps({"listen": found, "left": [p.pid for p in me.children(recursive=True)]}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=_env())
    assert res.returncode == 0, res.stderr
    assert not [n for n in RAY_NOISE if n in res.stderr], res.stderr
    doc = json.loads(res.stdout.splitlines()[-1])
    names = " ".join(doc["listen"])
    assert "gcs_server" in names and "raylet" in names and "ray::" in names
    addresses = {ip for ips in doc["listen"].values() for ip in ips}
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, doc["listen"]
    assert doc["left"] == []


def test_sigterm_ends_a_build_cleanly_and_it_resumes(built, sample, ray_session, tmp_path):
    out = tmp_path / "shards"
    proc = _cli("build-shards", str(sample.root), "--out", str(out), *BUILD_ARGS)
    try:
        _wait_for(lambda: any(p.name() == "raylet" for p in session_procs(proc.pid)), "the build's Ray to start")
        _wait_for(lambda: (out / "_state").is_dir() and len(list((out / "_state").glob("part*.json"))) >= 1
                  or proc.poll() is not None, "a first shard")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        left = session_procs(proc.pid)
    finally:
        kill_session(proc.pid)
    if proc.returncode == 0:
        pytest.skip("the build finished before SIGTERM arrived")
    assert proc.returncode == 128 + signal.SIGTERM
    assert not [n for n in RAY_NOISE if n in err], err
    assert "stopped by SIGTERM; finished shards are kept and a re-run resumes" in err
    assert not left, [p.name() for p in left]  # no Ray process outlives the command
    assert not (out / LOCK_NAME).exists()
    build_shards(build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert _files(out) == _files(built[0])


# --- a real two-node cluster --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_two_node_cluster_that_loses_a_node_mid_build_gives_the_same_shards(built, sample, tmp_path):
    """`ray start --head` + `ray start --address` on 127.0.0.1 (one CPU each), build-shards through
    RAY_ADDRESS, the second node SIGKILLed after the first shard: Ray retries its tasks on the head."""
    port = _free_port()
    env = _env(RAY_AUTH_MODE="token")  # a joining node must send the cluster's token
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short (socket paths), and /tmp/ray's address file untouched
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", temp]
    sessions = []
    try:
        head = subprocess.Popen(["ray", "start", "--head", "--port", str(port), "--include-dashboard=false",
                                 *common], env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        sessions.append(head.pid)
        assert head.wait(timeout=120) == 0, head.stdout.read()
        node = subprocess.Popen(["ray", "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sessions.append(node.pid)
        assert node.wait(timeout=120) == 0, node.stdout.read()
        assert any(p.name() == "raylet" for p in session_procs(node.pid))

        out = tmp_path / "shards"
        build = _cli("build-shards", str(sample.root), "--out", str(out), "--shard-size-mb", "2",
                     env=env | {"RAY_ADDRESS": f"127.0.0.1:{port}"})
        sessions.append(build.pid)
        _wait_for(lambda: (out / "index.json").is_file() or build.poll() is not None, "a first shard")
        assert build.poll() is None, build.communicate()
        kill_session(node.pid)  # the second node dies: its raylet, its workers, the objects they held
        _, err = build.communicate(timeout=300)
        assert build.returncode == 0, err[-3000:]
    finally:
        for sid in sessions:  # not `ray stop`: it would stop every Ray of this user on the machine
            kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)
    assert _files(out) == _files(built[0])
    assert verify_shards(out).ok


def test_overwrite_of_an_s3_output_deletes_only_the_tools_objects(s3, built, sample, tmp_path):  # noqa: F811
    """The same rule on object storage: --overwrite deletes the objects the output's own
    index.json and _state/ name (and its mixed folds'), not every object under the prefix."""
    import boto3

    from pipeline.remote import remote_sizes

    uri = "s3://midas/ow"
    env = _env(**s3)
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "build-shards", str(sample.root), "--out", uri,
                          *BUILD_ARGS], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    others = {"ow/thesis.tmp": b"t", "ow/parquet/mine.parquet": b"p", "ow/mixed/README": b"r",
              "ow/webdataset/part1-999999.tar.bak": b"b"}
    for key, data in others.items():
        client.put_object(Bucket="midas", Key=key, Body=data)
    old = set(remote_sizes(uri))
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "build-shards", str(sample.root), "--out", uri,
                          "--frame-size", "64", "--overwrite", *BUILD_ARGS], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    for key, data in others.items():
        assert client.get_object(Bucket="midas", Key=key)["Body"].read() == data
    index = json.loads(client.get_object(Bucket="midas", Key="ow/index.json")["Body"].read())
    assert index["sample"]["frame_size"] == 64
    listed = {f for e in index["shards"] for f in [e["path"], e.get("idx", {}).get("path")] if f}
    mine = {k[len("ow/"):] for k in others}
    stale = {k for k in old & set(remote_sizes(uri)) - mine
             if k.startswith(tuple(FORMAT_DIRS.values())) and k not in listed}
    assert not stale


def test_garbled_state_files_are_an_answer_not_a_traceback(copy, built, sample, ray_session):
    """A garbled done-file means its shard is built again; a garbled plan is an error naming it."""
    done = sorted((copy / "_state").glob("part2-*.json"))[0]
    done.write_text("{garbled")
    build_shards(build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert _files(copy) == _files(built[0]) and json.loads(done.read_text())["shard"] == done.stem
    (copy / "_state" / "plan.json").write_text("[]")
    with pytest.raises(BuildError, match=r"plan.json is unreadable .*pass --overwrite"):
        build_shards(build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
