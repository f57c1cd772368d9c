#!/usr/bin/env bash
# One prepared visit to a lent GPU machine (issue 19's GPU path), ~6-8 minutes:
#   1. the CUDA-marked tests (fp16 parity with diffusers on CUDA, cache hits that stay on
#      the device, offload under a small budget, sequential offload);
#   2. bench/bench_sdxl.py: a full-size SDXL-architecture model with random weights at
#      1024x1024 in float16, step time ÷ diffusers, peak GPU memory;
#   3. bench/bench_offload.py on CUDA: peak GPU memory of our offload modes against
#      diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload.
# Here, first: bash scripts/gpu_wheels.sh. Then, through the device tool:
#   run(command="bash scripts/gpu_visit.sh", carry=[".whl"], timeout_s=600)
# Results land in $OUT (at most 8 files); each step has its own time limit, so one
# that hangs does not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_visit}
mkdir -p "$OUT"
source scripts/gpu_env.sh
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import sys, torch, diffusers, transformers; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available()); print("diffusers", diffusers.__version__, "transformers", transformers.__version__)'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
}

step cuda_tests 180 "$PY" -m pytest -q -s -p no:cacheprovider -o addopts= -k cuda \
  tests/test_cuda.py tests/test_memory.py tests/test_big_models.py tests/test_big_loaders.py
step bench_sdxl 240 "$PY" bench/bench_sdxl.py --device cuda --dtype fp16 --size 1024 \
  --steps 10 --repeats 3 --home /tmp/steerflow_bench_sdxl --json "$OUT/bench_sdxl.json"
step bench_offload 150 "$PY" bench/bench_offload.py --device cuda --size 512 --repeats 1
cat "$OUT/summary.txt"
