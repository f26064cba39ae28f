#!/usr/bin/env bash
# The one GPU check (issue 11), run on the lent GPU machine after the device kit's setup, from the repo root:
#   bash .devkit/p3/setup-on-device.sh && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu_check.sh
# (see ../shared/device-kit/README.md). Runs the `gpu` tests against the kit's prebuilt shards, then
# bench_gpu.py; everything lands in $OUT (at most 8 files come back): gpu_tests.txt, bench_gpu.log,
# gpu.md (the table for BENCHMARKS.md), nvidia-smi.txt. Time limits keep it inside one device call.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export MIDAS_GPU_SHARDS=${MIDAS_GPU_SHARDS:-/tmp/data/shards}
export PYTHONDONTWRITEBYTECODE=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
nproc >> "$OUT/nvidia-smi.txt"
timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -x -rs \
  > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: rc=$?"; tail -5 "$OUT/gpu_tests.txt"
timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_gpu.py --shards "$MIDAS_GPU_SHARDS" --device gpu --out "$OUT" \
  > "$OUT/bench_gpu.log" 2>&1
echo "bench_gpu: rc=$?"
grep -v -i "warn" "$OUT/bench_gpu.log" | tail -20
