"""s3:// end to end against a real S3-compatible server on 127.0.0.1 (moto in server mode).

build-shards writes to the bucket (each shard uploaded as it finishes, index.json last),
resumes from it, mix-offline reads and writes it, verify checks it, the DALI loader reads it
through the local cache. The commands run as subprocesses so their Ray workers inherit the
endpoint settings, as on a cluster whose nodes are configured for the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("moto.server")

from moto.server import ThreadedMotoServer  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MIDAS_PREP_CACHE": str(tmp_path_factory.mktemp("cache"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="midas")
    yield env
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cli(args: list[str], env: dict[str, str]) -> dict:
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--json"], capture_output=True, text=True,
                         env=full, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _objects(prefix: str) -> dict[str, bytes]:
    from pipeline.remote import filesystem, remote_sizes

    fs, base = filesystem(prefix)
    out = {}
    for rel in remote_sizes(prefix):
        with fs.open_input_stream(f"{base}/{rel}") as f:
            out[rel] = f.read()
    return out


def test_build_mix_verify_and_load_through_s3(s3, built, sample):
    uri = "s3://midas/shards"
    first = _cli(["build-shards", str(sample.root), "--out", uri, "--workers", "2", "--shard-size-mb", "2"], s3)
    assert first["written"] == built[2].written and first["out"] == uri
    objects = _objects(uri)
    index = json.loads(objects["index.json"])
    assert index["complete"] and index["config"]["write"]["out"] == uri
    for e in index["shards"]:  # every listed object is there, with its sha256 and the local build's bytes
        assert hashlib.sha256(objects[e["path"]]).hexdigest() == e["sha256"]
        assert objects[e["path"]] == (built[0] / e["path"]).read_bytes()
    again = _cli(["build-shards", str(sample.root), "--out", uri, "--workers", "2", "--shard-size-mb", "2"], s3)
    assert again["processed"] == 0 and again["shards_resumed"] == len(json.loads(
        _objects(uri)["_state/plan.json"])["shards"])  # resumed from the bucket: nothing decoded again

    mixed = _cli(["mix-offline", "--shards", uri, "--copies", "1", "--fold", "1", "--workers", "2"], s3)
    assert mixed["samples"] > 0 and mixed["out"] == uri + "/mixed"
    assert json.loads(_objects(uri + "/mixed/fold=1")["index.json"])["complete"]

    from pipeline.verify import verify_shards

    report = verify_shards(uri)
    assert report.ok and len(report.indexes) == 2 and report.indexes[0].startswith("s3://")

    from pipeline.stream import create_loader

    remote = torch.cat([b["frames"] for b in create_loader(uri, fold=3, split="test", batch_size=4, device="cpu",
                                                           py_workers=1)])
    local = torch.cat([b["frames"] for b in create_loader(str(built[0]), fold=3, split="test", batch_size=4,
                                                          device="cpu", py_workers=1)])
    assert torch.equal(remote, local)
    more = create_loader(uri, fold=1, device="cpu", py_workers=1, offline_mixed=True)
    assert len(more.samples) > len(create_loader(uri, fold=1, device="cpu", py_workers=1).samples)


def test_verify_names_a_corrupt_object_by_its_uri(s3, built, sample):
    from pipeline.verify import verify_shards

    uri = "s3://midas/corrupt"
    _cli(["build-shards", str(sample.root), "--out", uri, "--workers", "2", "--shard-size-mb", "2", "--limit", "8"],
         s3)
    index = json.loads(_objects(uri)["index.json"])
    victim = next(e for e in index["shards"] if e["format"] == "parquet")
    data = bytearray(_objects(uri)[victim["path"]])
    data[len(data) // 2] ^= 0xFF
    import boto3

    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"]).put_object(Bucket="midas", Key=f"corrupt/{victim['path']}",
                                                                      Body=bytes(data))
    # a fresh cache: the node has not seen the good bytes
    os.environ["MIDAS_PREP_CACHE"] = os.environ["MIDAS_PREP_CACHE"] + "-2"
    report = verify_shards(uri)
    assert not report.ok
    assert any(p.path == f"{uri}/{victim['path']}" and "sha256" in p.message for p in report.problems)
