"""Listing, describing and validating nodes must not import the diffusion stack.

The server answers /object_info from the registry's schema; importing torch,
diffusers and transformers there would cost seconds at start. They load on first
execution instead.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch", "cv2", "scipy")

# Runs in a fresh interpreter: import the built-in packs, build every node's schema and
# validate every example workflow, then report which heavy modules got imported.
_SCRIPT = """
import json, sys
from pathlib import Path

import nodes
from engine.environment import Environment
from engine.registry import default_registry
from engine.validation import validate_prompt
from engine.workflow import load_workflow

base = Path(sys.argv[1])
env = Environment.create(base, device="cpu")
nodes.seed_example_inputs(env)  # the example images and LoRA (plain file copies)
# Placeholders for the default model folders: validation only lists them.
for folder, name, marker in (("checkpoints", "steerflow-shapes", "model_index.json"),
                             ("checkpoints", "steerflow-shapes-ip2p", "model_index.json"),
                             ("controlnet", "steerflow-shapes-controlnet", "config.json"),
                             ("controlnet", "steerflow-shapes-adapter", "config.json")):
    model = env.folder("models", folder, name, create=True)
    (model / marker).write_text("{}")
(env.folder("models", "clip_vision", create=True) / "steerflow-shapes-clip.safetensors").touch()
(env.folder("models", "ipadapter", create=True)
 / "steerflow-shapes-ip-adapter.safetensors").touch()
for name in ("sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors"):  # user-supplied
    (env.folder("models", "checkpoints") / name).touch()
(env.folder("models", "controlnet") / "controlnet-canny-sdxl-1.0.safetensors").touch()

registry = default_registry()
schema = registry.schema(env)
validated = []
for path in sorted(Path("workflows").glob("*.json")):
    prompt, _ = load_workflow(path)
    validate_prompt(prompt, registry, env)
    validated.append(path.name)
print(json.dumps({"nodes": len(schema), "validated": validated,
                  "heavy": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""


def test_schema_and_validation_import_no_heavy_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), json.dumps(HEAVY)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nodes"] > 30
    assert "txt2img.json" in report["validated"]
    assert report["heavy"] == [], f"imported while listing/validating: {report['heavy']}"


def test_schedule_options_match_diffusers() -> None:
    """The static table validation uses is what the diffusers schedulers accept."""
    import diffusers

    from nodes.diffusion import sigma_samplers, stage_samplers
    from nodes.diffusion.schedulers import SAMPLERS, SCHEDULE_OPTIONS, SCHEDULES

    options = {key for extra in SCHEDULES.values() for key in extra}
    assert set(SCHEDULE_OPTIONS) == {class_name for class_name, _ in SAMPLERS.values()}
    for class_name, accepted in SCHEDULE_OPTIONS.items():
        cls = (getattr(sigma_samplers, class_name, None)
               or getattr(stage_samplers, class_name, None) or getattr(diffusers, class_name))
        params = inspect.signature(cls.__init__).parameters
        assert accepted == {key for key in options if key in params}, class_name

