"""Stable Diffusion model building and loading (tiny test model, checkpoint formats).

Steerflow never downloads weights: the hub is switched off for the whole process
before diffusers or transformers are imported, so a stray lookup fails at once.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
