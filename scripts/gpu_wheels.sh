#!/usr/bin/env bash
# Put the wheels a GPU visit needs into .whl/ (ignored by git; carried to the device).
# The device machine (Python 3.12, its own CUDA torch, no network) lacks diffusers,
# pydantic and the samplers' torchsde, and has an older transformers; the rest of our
# requirements (safetensors, numpy, scipy, aiohttp, networkx, accelerate, ...) are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 transformers==5.23.0 pydantic==2.14.3 pydantic-core==2.50.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  torchsde==0.2.6 trampoline==0.1.2 spandrel==0.4.2
du -sh .whl
