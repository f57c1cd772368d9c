#!/usr/bin/env bash
# Issue 14: Instruct-Pix2Pix stage 3 on CUDA, from the shipped stage-2 UNet, on many more
# fresh triplets than the CPU recipe sees; training stops at IP2P_STEPS or after
# IP2P_SECONDS of steps (checkpointed, EMA kept), whichever comes first. gpu_visit.sh
# runs it beside the CUDA tests when IP2P=1. The float16 UNet comes back in $OUT; here, put it
# in nodes/assets/weights/ and measure it held out:
#   .venv/bin/python scripts/measure_instruct_pix2pix.py --world-seed 1000003 ...
# Through the device tool (after bash scripts/gpu_wheels.sh):
#   run(command="bash scripts/gpu_train_ip2p.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_ip2p}
mkdir -p "$OUT"
source scripts/gpu_env.sh
MODELS=/tmp/ip2p_base
RUN=/tmp/ip2p_run
"$PY" -c "import sys; from pathlib import Path; from nodes.diffusion.shapes_model import \
ensure_shapes_model as e; e(Path(sys.argv[1]))" "$MODELS" || exit 1
timeout "${IP2P_LIMIT:-480}" "$PY" -m training.train_instruct_pix2pix --out "$RUN" \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-14}" --batch-size "${BATCH:-512}" \
  --lr "${LR:-6e-4}" --warmup 200 --latent-cache "${CACHE:-131072}" \
  --steps "${IP2P_STEPS:-3000}" --max-seconds "${IP2P_SECONDS:-400}" --seed 2 --save-every 500 --no-progress \
  --base "$MODELS/checkpoints/steerflow-shapes" \
  --init "$MODELS/checkpoints/steerflow-shapes-ip2p/unet" \
  --export "$RUN/export" 2>&1 | tee "$OUT/train_ip2p.log" | tail -n 20
"$PY" -c "import sys; from pathlib import Path; from training.export import save_unet_half; \
save_unet_half(Path(sys.argv[1]), Path(sys.argv[2]))" \
  "$RUN/export/checkpoints/steerflow-shapes-ip2p.safetensors" \
  "$OUT/steerflow-shapes-ip2p-unet.safetensors" && ls -la "$OUT"
