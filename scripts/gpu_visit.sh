#!/usr/bin/env bash
# One prepared visit to a lent GPU machine (issue 19's GPU path), ~6-9 minutes:
#   1. the CUDA-marked tests (fp16 parity with diffusers on CUDA, cache hits that stay on
#      the device, offload under a small budget, sequential offload);
#   2. bench/bench_offload.py on CUDA: peak GPU memory of our offload modes against
#      diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload;
#   3. with IP2P=1, scripts/gpu_train_ip2p.sh (issue 14) runs beside 1 and 2 (peak memory
#      is per process, and the tests time nothing);
#   4. bench/bench_sdxl.py, alone on the GPU once the rest is done: a full-size
#      SDXL-architecture model with random weights at 1024x1024 in float16, step time ÷
#      diffusers, peak GPU memory.
# Here, first: bash scripts/gpu_wheels.sh. Then, through the device tool:
#   run(command="IP2P=1 bash scripts/gpu_visit.sh", carry=[".whl"], timeout_s=590)
# Results land in $OUT (7 files; the tool returns at most 8); each step has its own time
# limit, so one that hangs does not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_visit}
mkdir -p "$OUT"
export OUT
source scripts/gpu_env.sh
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import sys, torch, diffusers, transformers; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available()); print("diffusers", diffusers.__version__, "transformers", transformers.__version__)'
} >> "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
}

ip2p_pid=
if [ "${IP2P:-0}" = 1 ]; then
  t_ip2p=$SECONDS  # sized to end with the tests: ~80 s of triplets, <= 200 s of steps
  CACHE=${CACHE:-49152} WORKERS=${WORKERS:-10} IP2P_SECONDS=${IP2P_SECONDS:-200} \
    bash scripts/gpu_train_ip2p.sh > /tmp/gpu_ip2p_driver.log 2>&1 &
  ip2p_pid=$!
fi
step cuda_tests 150 "$PY" -m pytest -q -s -p no:cacheprovider -o addopts= -k cuda \
  tests/test_cuda.py tests/test_memory.py tests/test_big_models.py tests/test_big_loaders.py
step bench_offload 120 "$PY" bench/bench_offload.py --device cuda --size 512 --repeats 1
if [ -n "$ip2p_pid" ]; then
  wait "$ip2p_pid"
  echo "ip2p: exit $? in $((SECONDS - t_ip2p)) s" | tee -a "$OUT/summary.txt"
  tail -n 12 /tmp/gpu_ip2p_driver.log | tee -a "$OUT/summary.txt"
fi
step bench_sdxl 220 "$PY" bench/bench_sdxl.py --device cuda --dtype fp16 --size 1024 \
  --steps 10 --repeats 3 --home /tmp/steerflow_bench_sdxl --json "$OUT/bench_sdxl.json"
cat "$OUT/summary.txt"
