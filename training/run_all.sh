#!/usr/bin/env bash
# Train the shapes-world default model end to end, then export and evaluate it.
# Every stage resumes from its latest checkpoint, so re-running this script after
# an interruption continues where it stopped.
#   OUT=output/training THREADS=2 bash training/run_all.sh              # CPU only, ~120 min
#   OUT=output/training RECIPE=gpu bash training/run_all.sh             # the shipped recipe
# RECIPE=gpu trains the UNet and the ControlNet on CUDA with big batches (training/README.md,
# "On a GPU"): ~5.5 + 5.5 min on one H100; the other stages stay on the CPU recipe.
set -euo pipefail
OUT=${OUT:-output/training}
THREADS=${THREADS:-2}
PY=${PY:-.venv/bin/python}
RECIPE=${RECIPE:-cpu}
COMMON=(--out "$OUT" --threads "$THREADS" --no-progress --save-every 250)
if [[ $RECIPE == gpu ]]; then
  UNET=(--device cuda --workers 12 --batch-size 512 --lr 2.8e-3 --warmup 500
        --latent-cache 262144 --steps "${UNET_STEPS:-4039}")
  CN=(--device cuda --workers 13 --batch-size 512 --lr 2e-3 --warmup 200
      --latent-cache 131072 --steps "${CN_STEPS:-1910}")
else
  UNET=(--steps "${UNET_STEPS:-8000}")
  CN=(--steps "${CN_STEPS:-2500}")
fi
mkdir -p "$OUT"
stage() { echo "== $(date -u +%T) $*"; "$PY" -m "$@"; }
stage training.train vae  "${COMMON[@]}" --steps "${VAE_STEPS:-6000}"
stage training.train text "${COMMON[@]}" --steps "${TEXT_STEPS:-1500}"
stage training.train unet "${COMMON[@]}" "${UNET[@]}"
stage training.train_controlnet "${COMMON[@]}" "${CN[@]}"
stage training.train_t2i_adapter "${COMMON[@]}" --steps "${ADAPTER_STEPS:-5000}" \
  --stop-at "${ADAPTER_STOP:-2500}"
stage training.train_instruct_pix2pix "${COMMON[@]}" --base "$OUT" --steps "${IP2P_STEPS:-7000}"
stage training.train_lora "${COMMON[@]}" --steps "${LORA_STEPS:-400}"
# The shapes-world CLIP (text tower: the text stage's encoder, frozen); --ship writes the
# float16 file set-up installs into models/clip_vision.
stage training.train_clip "${COMMON[@]}" --steps "${CLIP_STEPS:-3000}" --ship
stage training.train export --out "$OUT"
stage training.train ship --out "$OUT"
# Evaluate what ships (float16 files), installed as set-up installs them, with the
# LoRA just shipped (a session would otherwise keep an older copy already there).
"$PY" -c "import sys; from pathlib import Path; from nodes.diffusion.shapes_model import \
ensure_shapes_model as e; e(Path(sys.argv[1]))" "$OUT/shipped"
mkdir -p "$OUT/shipped/loras" && cp workflows/assets/loras/*.safetensors "$OUT/shipped/loras/"
stage training.evaluate --models "$OUT/shipped" --threads "$THREADS" \
    --report "$OUT/eval.json" --grid "$OUT/samples.png"
stage training.clip_eval --model "$OUT/clip/steerflow-shapes-clip.safetensors" \
    --threads "$THREADS" --json "$OUT/clip_eval.json"
echo "== $(date -u +%T) done"
