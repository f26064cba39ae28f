"""Trust the bytes (issue 23): no user file destroyed, no stale or duplicated sample, one bad row
costs one row.

One tiny manifest dataset (real mp4s of 40x40 pixels, 2 frames, no detector) holds every bad input
at once and is built once by the CLI in a process of its own (its own Ray: a clip there kills its
worker); the rest of the module edits that build or its dataset. See docs/trust.md.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import build_config

from pipeline.build import BuildError, _prepare_out, build_shards
from pipeline.cli import main
from pipeline.config import CLASSES
from pipeline.format import INDEX_NAME, STATE_DIR, ShardError
from pipeline.read import index_sha256s, read_sample
from pipeline.verify import repair_shards, verify_shards
from pipeline.write import write_fix

ROOT = Path(__file__).resolve().parents[1]
BUILD_ARGS = ["--detector", "none", "--num-frames", "2", "--frame-size", "32", "--workers", "2",
              "--set", "ray.clips_per_task=4"]
OVERRIDES = {"align.detector": "none", "decode.num_frames": 2, "align.frame_size": 32, "ray.workers": 2,
             "ray.clips_per_task": 4}


def _video(path: Path, size: int = 40, n: int = 3, shift: int = 0) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(n):
            img = np.full((size, size, 3), 40 * i + shift, np.uint8)
            img[size // 4: size // 2] = 200 - shift
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _zero_frames(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 40
        s.pix_fmt = "yuv420p"
        c.start_encoding()  # the header, no frame


def _frames(d: Path, ext: str, cut: str = "") -> None:
    d.mkdir(parents=True)
    for i in range(1, 4):
        img = np.full((40, 40, 3), 60 * i, np.uint8)
        img[:, :20] = np.random.default_rng(i).integers(0, 255, (40, 20, 3))
        cv2.imwrite(str(d / f"{i}.{ext}"), img)
    if cut:
        data = (d / cut).read_bytes()
        (d / cut).write_bytes(data[: len(data) * 2 // 3])


VOTES = [3, 1, 0, 0, 0, 0, 0]


def _rows(votes_of: dict[str, list] | None = None) -> list[list]:
    votes_of = votes_of or {}
    rows = [("v/ok1.mp4", "ok1", 1), ("v/ok2.mp4", "ok2", 1), ("v/kill.mp4", "kill", 1),
            ("v/ok3.mp4", "x1", 2), ("v/ok4.mp4", " x1 ", 2),
            ("v/empty.mp4", "empty", 3), ("v/audio.mp4", "audio", 3), ("v/tiny.mp4", "tiny", 3),
            ("f/tjpg", "tjpg", 4), ("f/tpng", "tpng", 4), ("f/pngok", "pngok", 4),
            ("v/ok3.mp4", "inf", 5), ("v/ok3.mp4", "big", 5), ("v/ok3.mp4", "sum", 5), ("ABS", "abs", 5)]
    special = {"inf": ["inf", 1, 0, 0, 0, 0, 0], "big": [1e308, 1, 0, 0, 0, 0, 0], "sum": [9e5] * 6 + [2e6]}
    return [[path, cid, part, *votes_of.get(cid, special.get(cid, VOTES))] for path, cid, part in rows]


def _write_manifest(ds: Path, rows: list[list]) -> None:
    with open(ds / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "clip_id", "part", *CLASSES])
        w.writerows([[str(ds / "v/ok5.mp4") if r[0] == "ABS" else r[0], *r[1:]] for r in rows])


def _cli_env(rtmp: Path, **faults: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDAS_PREP_FAULT")}
    return env | {"PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(rtmp)} | faults


def _sessions(rtmp: Path) -> list[Path]:
    return sorted((rtmp / "ray").glob("session_2*")) if (rtmp / "ray").is_dir() else []


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    """The dataset and one CLI build of it, in which clip `kill` kills its worker process."""
    base = tmp_path_factory.mktemp("trust")
    ds = base / "ds"
    (ds / "v").mkdir(parents=True)
    for i in range(1, 6):
        _video(ds / "v" / f"ok{i}.mp4", shift=i)
    _video(ds / "v" / "kill.mp4")
    _video(ds / "v" / "tiny.mp4", size=16)
    _zero_frames(ds / "v" / "empty.mp4")
    _audio_only(ds / "v" / "audio.mp4")
    _frames(ds / "f" / "tjpg", "jpg", cut="3.jpg")
    _frames(ds / "f" / "tpng", "png", cut="3.png")
    _frames(ds / "f" / "pngok", "png")
    _write_manifest(ds, _rows())
    rtmp = Path(tempfile.mkdtemp(prefix="mpr", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    out = base / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build-shards", str(ds / "list.csv"), "--out", str(out), *BUILD_ARGS],
        capture_output=True, text=True, timeout=300,
        env=_cli_env(rtmp, MIDAS_PREP_FAULT="build.decoded", MIDAS_PREP_FAULT_MODE="kill",
                     MIDAS_PREP_FAULT_CLIP="kill"))
    yield {"ds": ds, "out": out, "proc": proc, "rtmp": rtmp, "seconds": time.monotonic() - t0}
    shutil.rmtree(rtmp, ignore_errors=True)


def _rejects(out: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in pq.read_table(out / "rejects.parquet").to_pylist():
        found.setdefault(r["clip_id"], []).append(r["error"])
    return found


def test_one_build_rejects_each_bad_input_alone_with_its_reason(trust):
    proc, out = trust["proc"], trust["out"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("raylet", "WorkerCrashedError", "Traceback", "worker died", "Unhandled error"):
        assert noise not in proc.stdout and noise not in proc.stderr, noise
    assert not _sessions(trust["rtmp"])  # the command removed the Ray session folder it made
    status = {r["clip_id"]: r["status"] for r in pq.read_table(out / "clips.parquet").to_pylist()}
    why = _rejects(out)
    # the clip that kills its worker is rejected alone: the clips of its task are written
    assert "the worker process died while decoding/aligning this clip" in why["kill"][0]
    assert status["ok1"] == status["ok2"] == "written"
    # manifest paths relative to the manifest's folder, and an absolute one, are found
    assert status["abs"] == status["pngok"] == "written"
    # one id rule: " x1 " is x1; the later row is rejected naming both rows, the first is written
    assert status["x1"] == "written" and len(why["x1"]) == 1
    assert "row 5" in why["x1"][0] and "row 6" in why["x1"][0] and "duplicate clip id" in why["x1"][0]
    # what each file is
    assert "an empty container (a 0-frame video)" in why["empty"][0]
    assert "no video stream: an audio-only file" in why["audio"][0]
    assert "video is 16x16, too small to hold a face" in why["tiny"][0]
    assert "f/tjpg/3.jpg" in why["tjpg"][0] and "truncated" in why["tjpg"][0]
    assert "f/tpng/3.png" in why["tpng"][0] and "truncated" in why["tpng"][0]
    # absurd votes: rejected at index time, each with a reason
    assert "inf" in why["inf"][0] and "too large" in why["big"][0] and "too large" in why["sum"][0]
    assert verify_shards(out).ok


def test_a_changed_dataset_is_detected_and_its_shards_rebuilt(trust, ray_session, caplog):
    """votes of ok2 edited, ok1 replaced: verify names both, a re-run rebuilds their shard."""
    ds, out = trust["ds"], trust["out"]
    _write_manifest(ds, _rows({"ok2": [0, 5, 0, 0, 0, 0, 0]}))
    _video(ds / "v" / "ok1.mp4", shift=90)
    report = verify_shards(out)
    changed = sorted(p.message.split("'")[1] for p in report.problems)
    assert changed == ["ok1", "ok2"] and all("changed since the build" in p.message for p in report.problems)
    os.utime(ds / "v" / "ok3.mp4")  # a new mtime, the same bytes (a copied dataset): not a change

    with caplog.at_level(logging.WARNING):
        summary = build_shards(build_config(ds / "list.csv", out, **OVERRIDES))
    assert sorted(c.split(" ")[0] for c in summary.changed) == ["ok1", "ok2"]
    votes = {r["clip_id"]: r["votes"] for r in pq.read_table(out / "clips.parquet").to_pylist()}
    assert votes["ok2"] == [0, 5, 0, 0, 0, 0, 0]
    assert verify_shards(out).ok

    # a build made before fingerprints: not checked, said so
    table = pq.read_table(out / "clips.parquet")
    pq.write_table(table.drop(["annotation_sha256", "source_bytes", "source_mtime_ns", "source_sha256"]),
                   out / "clips.parquet")
    report = verify_shards(out)
    assert report.ok and any("not checked" in n for n in report.notes)
    pq.write_table(table, out / "clips.parquet")


def test_a_killed_driver_takes_its_ray_down(tmp_path):
    """The watchdog a local start leaves beside Ray: when the driver dies (kill -9), it kills the
    processes it was given and their children, and removes the session folder (real processes)."""
    import psutil

    from pipeline.cluster import _WATCHDOG

    driver = subprocess.Popen(["sleep", "60"])
    root = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
                             "time.sleep(60)"])
    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_1_1"
    (session / "logs").mkdir(parents=True)
    other = tmp_path / "ray" / "session_2026-01-01_00-00-00_2_2"  # another command's: stays
    other.mkdir()
    (tmp_path / "ray" / "session_latest").symlink_to(session)
    time.sleep(0.3)
    child = psutil.Process(root.pid).children()[0]
    dog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(driver.pid), str(session),
                            f"{root.pid}:{psutil.Process(root.pid).create_time()}"])
    try:
        time.sleep(0.5)
        assert root.poll() is None and session.is_dir()  # the driver lives: nothing touched
        driver.kill()
        driver.wait()
        assert dog.wait(timeout=20) == 0
        assert root.wait(timeout=5) == -signal.SIGKILL
        with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie waiting for its new parent
            assert child.status() == psutil.STATUS_ZOMBIE
        assert not session.exists() and not (tmp_path / "ray" / "session_latest").is_symlink() and other.is_dir()
    finally:
        for p in (driver, root, dog):
            p.kill()
        with contextlib.suppress(psutil.Error):
            child.kill()


def test_repair_deletes_only_what_its_records_prove(trust, ray_session, caplog):
    """index.json lists the user's thesis.pdf as a shard file: verify --repair rebuilds the shard and
    leaves thesis.pdf, saying so."""
    out = trust["out"]
    thesis = out / "thesis.pdf"
    thesis.write_bytes(b"%PDF my thesis\n" * 100)
    index = json.loads((out / INDEX_NAME).read_text())
    entry = next(e for e in index["shards"] if e["format"] == "parquet" and e["part"] == 2)
    entry["path"] = "thesis.pdf"
    (out / INDEX_NAME).write_text(json.dumps(index))
    report = verify_shards(out)
    assert not report.ok
    with caplog.at_level(logging.WARNING):
        repaired = repair_shards(out, report)
    assert repaired and thesis.read_bytes() == b"%PDF my thesis\n" * 100
    assert any("thesis.pdf" in r.getMessage() and "untouched" in r.getMessage() for r in caplog.records)
    thesis.unlink()
    assert verify_shards(out).ok


def test_overwrite_keeps_files_an_index_json_names(trust, tmp_path, caplog):
    """The issue's case: an index.json midas-prep did not write names two user files."""
    ow = tmp_path / "ow"
    (ow / "data").mkdir(parents=True)
    (ow / "thesis.pdf").write_bytes(b"thesis")
    (ow / "data" / "results.csv").write_bytes(b"a,b\n")
    (ow / INDEX_NAME).write_text(json.dumps({"shards": [{"path": "thesis.pdf", "idx": {"path": "data/results.csv"}}]}))
    mine = {p: p.read_bytes() for p in ow.rglob("*") if p.is_file()}
    for overwrite in (False, True):
        cfg = build_config(trust["ds"] / "list.csv", ow, **OVERRIDES, **{"write.overwrite": overwrite})
        with pytest.raises(BuildError, match=r"cannot prove it wrote .*index\.json.*nothing was changed"):
            build_shards(cfg)
        assert {p: p.read_bytes() for p in ow.rglob("*") if p.is_file()} == mine
    with caplog.at_level(logging.WARNING):
        left = _prepare_out(ow, build_config(trust["ds"] / "list.csv", ow, **{"write.overwrite": True}))
    assert left == ["data/results.csv", INDEX_NAME, "thesis.pdf"]
    assert any("left 3 files" in r.getMessage() for r in caplog.records)
    assert {p: p.read_bytes() for p in ow.rglob("*") if p.is_file()} == mine


def test_make_sample_writes_only_where_it_may(tmp_path):
    d = tmp_path / "d"
    (d / "Clip" / "original").mkdir(parents=True)
    (d / "Clip" / "original" / "00001.mp4").write_bytes(b"REAL")
    res = CliRunner().invoke(main, ["make-sample", str(d), "--clips", "7"])
    assert res.exit_code == 1 and str(d) in res.output and "nothing was written" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in d.rglob("*")) == ["00001.mp4", "Clip", "original"]
    assert (d / "Clip" / "original" / "00001.mp4").read_bytes() == b"REAL"
    from pipeline.tools.make_sample import SAMPLE_MARKER, claim_sample_dir

    claim_sample_dir(tmp_path / "new")  # an absent folder is made, with the marker first
    assert [p.name for p in (tmp_path / "new").iterdir()] == [SAMPLE_MARKER]
    claim_sample_dir(tmp_path / "new")  # its own folder: taken again


def test_dry_run_names_missing_files(trust, tmp_path):
    ds = tmp_path / "m"
    (ds / "v").mkdir(parents=True)
    shutil.copy(trust["ds"] / "v" / "ok1.mp4", ds / "v" / "a.mp4")
    with open(ds / "list.csv", "w") as f:
        f.write("path,clip_id," + ",".join(CLASSES) + "\n")
        f.write("v/a.mp4,a,3,1,0,0,0,0,0\n" + "".join(f"w/{i}.mp4,m{i},3,1,0,0,0,0,0\n" for i in range(7)))
    res = CliRunner().invoke(main, ["build-shards", str(ds / "list.csv"), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "files missing     7: w/0.mp4, w/1.mp4, w/2.mp4, w/3.mp4, w/4.mp4 and 2 more" in res.output


def test_dfew_ids_one_rule(tmp_path):
    from test_index import FOLDS, good_rows, make_tree

    from pipeline.config import IndexConfig
    from pipeline.index import index_dataset

    rows = good_rows(10)
    rows.append([" 3 ", 1, 1, 1, 0, 0, 0, 0, 0])  # the same clip as 3 once spaces are stripped
    root = make_tree(tmp_path / "dfew", rows, FOLDS, ann="csv", videos=list(range(1, 11)))
    (root / "Clip" / "original" / "4.mp4").write_bytes(b"")  # 00004.mp4 and 4.mp4: which one?
    res = index_dataset(root, IndexConfig())
    why = {r["clip_id"]: r["error"] for r in res.rejects}
    assert "row 4" in why["00003"] and "row 12" in why["00003"]
    assert "Clip/original/00004.mp4 and Clip/original/4.mp4" in why["00004"]
    assert [c["clip_id"] for c in res.clips] == [f"{i:05d}" for i in range(1, 11) if i != 4]


def test_png_frames_read_after_a_video_was_decoded(trust, tmp_path):
    """decord imported before cv2 breaks cv2's PNG reading in that process: a fresh process decodes
    a video, then a PNG frame folder."""
    code = ("import sys; from pathlib import Path; from pipeline.config import DecodeConfig; "
            "from pipeline.decode import decode_video, decode_frame_folder; c = DecodeConfig(num_frames=2); "
            "decode_video(Path(sys.argv[1]), 'a', c); print(decode_frame_folder(Path(sys.argv[2]), 'b', c).shape)")
    res = subprocess.run([sys.executable, "-c", code, str(trust["ds"] / "v/ok2.mp4"), str(trust["ds"] / "f/pngok")],
                         capture_output=True, text=True, timeout=120, env=_cli_env(tmp_path))
    assert res.returncode == 0 and "(2, 40, 40, 3)" in res.stdout, res.stderr[-2000:]


def test_the_loader_says_which_shard_in_one_line(trust, tmp_path):
    from pipeline.stream import create_loader

    out = tmp_path / "copy"
    shutil.copytree(trust["out"], out)
    tar = sorted((out / "webdataset").glob("part1-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[2048] ^= 0xFF  # inside the first sample's frames.npy: same size, a wrong crc32
    tar.write_bytes(bytes(data))
    loader = create_loader(str(out), fold=1, split="test", batch_size=1, device="cpu", py_workers=1, mix=False,
                           format="webdataset")
    with pytest.raises(ShardError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert "\n" not in msg and str(tar) in msg and "crc32" in msg and f"verify {out} --repair" in msg
    del loader

    # a Parquet shard of another schema: one line, not a TypeError
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"frames": ["not bytes"], "soft": [[1.0]], "json": ["{}"]}), bad)
    with pytest.raises(ShardError, match="not the Parquet schema midas-prep writes"):
        read_sample({}, "parquet", str(bad), 0, f"{bad} row 0")


def test_index_hashes_and_read_only_advice(trust):
    from train.loop import inputs_changed

    before = index_sha256s(trust["out"])
    assert list(before) == [str(trust["out"] / INDEX_NAME)]
    after = {**before, str(trust["out"] / INDEX_NAME): "0" * 64}
    assert inputs_changed(before, after) == [f"{trust['out'] / INDEX_NAME} rewritten"]
    fix = write_fix(OSError(errno.EROFS, "Read-only file system"))
    assert "read-only" in fix and "free space" not in fix
    assert (trust["out"] / STATE_DIR / "plan.json").is_file()
