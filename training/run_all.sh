#!/usr/bin/env bash
# Train the shapes-world default model end to end on this machine's CPU, then
# export and evaluate it. Every stage resumes from its latest checkpoint, so
# re-running this script after an interruption continues where it stopped.
#   OUT=output/training THREADS=2 bash training/run_all.sh
set -euo pipefail
OUT=${OUT:-output/training}
THREADS=${THREADS:-2}
PY=${PY:-.venv/bin/python}
COMMON=(--out "$OUT" --threads "$THREADS" --no-progress --save-every 250)
mkdir -p "$OUT"
stage() { echo "== $(date -u +%T) $*"; "$PY" -m "$@"; }
stage training.train vae  "${COMMON[@]}" --steps "${VAE_STEPS:-6000}"
stage training.train text "${COMMON[@]}" --steps "${TEXT_STEPS:-1500}"
stage training.train unet "${COMMON[@]}" --steps "${UNET_STEPS:-8000}"
stage training.train_controlnet "${COMMON[@]}" --steps "${CN_STEPS:-2500}"
stage training.train_lora "${COMMON[@]}" --steps "${LORA_STEPS:-400}"
stage training.train export --out "$OUT"
stage training.train ship --out "$OUT"
# Evaluate what ships (float16 files), installed as set-up installs them.
"$PY" -c "import sys; from pathlib import Path; from nodes.diffusion.shapes_model import \
ensure_shapes_model as e; e(Path(sys.argv[1]))" "$OUT/shipped"
mkdir -p "$OUT/shipped/loras" && cp workflows/assets/loras/*.safetensors "$OUT/shipped/loras/"
stage training.evaluate --models "$OUT/shipped" --threads "$THREADS" \
    --report "$OUT/eval.json" --grid "$OUT/samples.png"
echo "== $(date -u +%T) done"
