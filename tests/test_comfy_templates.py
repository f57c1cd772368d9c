"""ComfyUI's own workflow templates (``comfyui-workflow-templates`` 0.1.95, the version
ComfyUI pins) run on Steerflow: real users' graphs that nobody here wrote.

Every SD 1.5 template in the package's ``index.json`` is read in its UI format,
converted by the one converter (:func:`engine.workflow.from_object`), adapted to
this machine, and run on the default ``steerflow-shapes`` in one Session (models
load once). Adapting is driven by input names and the node schemas, never by
hand-editing a file:

* model names: checkpoints → ``steerflow-shapes``; VAEs → its VAE; ControlNets → its
  ControlNet (its T2I-Adapter where the file is an adapter); LoRAs → the example
  LoRA; upscale models → a tiny random ESRGAN x4 made here (RealESRGAN_x4plus's
  architecture); GLIGEN → a random GLIGEN for this UNet made here;
  ``embedding:NAME`` in prompts → an embedding saved here; input images → the
  example RGBA image (its alpha is LoadImage's mask).
* sizes: every pixel measure (INT inputs named in :data:`PIXEL_INPUTS`) times one
  factor per template that makes its first latent's short side 64 px, on the
  schema's step and bounds; ``megapixels`` times the factor squared; ``steps`` at
  most 2. ComfyUI's Empty Latent Image has no VAE link, so it assumes SD's 8x and
  steerflow-shapes (4x VAE) decodes a 64 px latent to a 32 px image; areas and
  boxes use the same 8x units, so the graphs stay consistent.

Templates excluded from the SD 1.5 list need a model family Steerflow does not
have (:data:`EXCLUDED`).
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from engine.comfy_workflow import RegistrySchemas
from engine.session import Session, Workflow

pytestmark = pytest.mark.slow

PACKAGE = "comfyui_workflow_templates"

#: SD 1.5 templates (``index.json`` models) that need a family we lack, with why.
EXCLUDED = {
    "image_lotus_depth_v1_1": "Lotus depth (a UNet-only depth estimator loaded with "
                              "UNETLoader, LotusConditioning, SamplerCustomAdvanced)",
}

SHAPES = "steerflow-shapes"
SHAPES_CONTROLNET = "steerflow-shapes-controlnet"
SHAPES_ADAPTER = "steerflow-shapes-adapter"
SHAPES_VAE = "steerflow-shapes-vae"
LORA = "steerflow-shapes-night.safetensors"
UPSCALE_MODEL = "template-esrgan-x4.safetensors"
GLIGEN = "steerflow-shapes-gligen-random.safetensors"
EMBEDDING = "template-embedding"
INPUT_IMAGE = "steerflow_example_hole.png"  # RGBA: LoadImage's MASK is its alpha

TARGET = 64  # the short side of each template's first latent, in pixels
DEFAULT_SIZE = 512  # SD 1.5's size, for templates without an Empty Latent Image
MAX_STEPS = 2
#: INT inputs that are lengths in pixels (sizes, positions, pads, feathering, mask growth)
PIXEL_INPUTS = frozenset({"width", "height", "x", "y", "left", "top", "right", "bottom",
                          "feathering", "grow_mask_by"})
#: model-file inputs by name → the name of ours (the ControlNet also depends on the file)
MODEL_INPUTS = {"ckpt_name": SHAPES, "vae_name": SHAPES_VAE, "lora_name": LORA,
                "model_name": UPSCALE_MODEL, "gligen_name": GLIGEN}
# ComfyUI loads T2I-Adapters with ControlNetLoader; their files say so in the name
ADAPTER_FILE = re.compile(r"t2i[-_]?adapter|t2iadapter", re.IGNORECASE)
EMBEDDING_REF = re.compile(r"embedding:[^\s,()]+", re.IGNORECASE)


def template_folder() -> Any:
    try:
        return resources.files(PACKAGE) / "templates"
    except ModuleNotFoundError:
        pytest.skip(f"{PACKAGE} is not installed (pip install -e '.[dev]' installs it)",
                    allow_module_level=True)


def read_template(name: str) -> dict[str, Any]:
    return json.loads((template_folder() / f"{name}.json").read_text(encoding="utf-8"))


def sd15_templates() -> list[str]:
    """Every template the package's index lists with the SD1.5 model, in index order."""
    index = json.loads((template_folder() / "index.json").read_text(encoding="utf-8"))
    return [t["name"] for category in index for t in category["templates"]
            if "SD1.5" in (t.get("models") or [])]


SD15 = sd15_templates()
RUNNABLE = [name for name in SD15 if name not in EXCLUDED]


# --- the models and files the templates are pointed at ---------------------------------

def save_vae(models: Path) -> None:
    """steerflow-shapes' VAE alone, as a diffusers folder in models/vae."""
    target = models / "vae" / SHAPES_VAE
    if not target.exists():
        shutil.copytree(models / "checkpoints" / SHAPES / "vae", target)


def save_gligen(models: Path) -> None:
    """A GLIGEN with random grounding layers for steerflow-shapes' UNet (no trained one
    exists; a run proves the wiring, not the boxes)."""
    import torch
    from diffusers import UNet2DConditionModel

    from nodes.diffusion.gligen import FUSER
    from nodes.diffusion.gligen import save_gligen as write

    base = UNet2DConditionModel.from_pretrained(models / "checkpoints" / SHAPES / "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**{**base.config, "attention_type": "gated"})
        missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and all(FUSER in k or k.startswith("position_net.")
                                      for k in missing)
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if name.endswith(("alpha_attn", "alpha_dense")):
                    param.fill_(1.0)  # 0 in a fresh model would switch GLIGEN off
    write(models / "gligen" / GLIGEN, unet)


def save_upscale_model(models: Path) -> None:
    """A tiny random ESRGAN (RRDBNet, x4, as RealESRGAN_x4plus) from spandrel's class."""
    from safetensors.torch import save_file

    from tests.test_upscale_model import tiny_esrgan

    state = tiny_esrgan(scale=4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()},
              models / "upscale_models" / UPSCALE_MODEL)


def save_embedding(models: Path) -> None:
    """A one-vector embedding: steerflow-shapes' own token vector for "blue"."""
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = models / "checkpoints" / SHAPES
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    token = tokenizer("blue", add_special_tokens=False).input_ids[0]
    vector = encoder.get_input_embeddings().weight[token].detach().clone()
    save_file({"emb_params": vector[None]}, models / "embeddings" / f"{EMBEDDING}.safetensors")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """A fresh home (the built-in set-up installs the default model, its ControlNet and
    adapter, the example LoRA, upscale model and input images) plus what is made here."""
    session = Session(tmp_path_factory.mktemp("templates"), device="cpu")
    session.executor.ensure_setup()
    models = session.env.folder("models")
    save_vae(models)
    save_gligen(models)
    save_upscale_model(models)
    save_embedding(models)
    return session


# --- adapting a converted template ---------------------------------------------------

def scale_factor(prompt: dict[str, Any]) -> float:
    """TARGET over the short side of the first Empty Latent Image (SD's 512 without one)."""
    for node_id in sorted(prompt, key=_numeric):
        node = prompt[node_id]
        if node.get("class_type") == "EmptyLatentImage":
            w, h = node["inputs"].get("width"), node["inputs"].get("height")
            if isinstance(w, int) and isinstance(h, int):
                return TARGET / min(w, h)
    return TARGET / DEFAULT_SIZE


def _numeric(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _on_grid(value: float, spec: dict[str, Any]) -> int:
    step = max(int(spec.get("step", 1)), 1)
    if step == 1 and value > 0:
        step = 8 if value >= 8 else 1  # keep sizes on SD's latent grid
    out = int(round(value / step) * step)
    return int(min(max(out, spec.get("min", 0)), spec.get("max", out)))


def adapt(prompt: dict[str, Any], schemas: Any) -> dict[str, Any]:
    """The template's prompt pointed at our models and files and scaled down (in place)."""
    factor = scale_factor(prompt)
    for node in prompt.values():
        try:
            schema = schemas[node["class_type"]]
        except KeyError:
            continue  # an unknown type: validation reports it
        specs = {name: spec for section in ("required", "optional")
                 for name, spec in (schema["input"].get(section) or {}).items()}
        inputs = node.setdefault("inputs", {})
        for name, value in list(inputs.items()):
            spec = specs.get(name)
            if spec is None or isinstance(value, list):  # unknown, or a link
                continue
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if name in MODEL_INPUTS and kind == "COMBO":
                inputs[name] = MODEL_INPUTS[name]
            elif name == "control_net_name":
                inputs[name] = SHAPES_ADAPTER if ADAPTER_FILE.search(str(value)) \
                    else SHAPES_CONTROLNET
            elif name == "image" and kind == "COMBO":
                inputs[name] = INPUT_IMAGE
            elif kind == "STRING" and isinstance(value, str):
                inputs[name] = EMBEDDING_REF.sub(f"embedding:{EMBEDDING}", value)
            elif kind == "INT" and name in PIXEL_INPUTS and isinstance(value, int):
                inputs[name] = _on_grid(value * factor, options)
            elif kind == "INT" and name == "steps" and isinstance(value, int):
                inputs[name] = min(value, MAX_STEPS)
            elif kind == "FLOAT" and name == "megapixels" and isinstance(value, int | float):
                inputs[name] = max(value * factor ** 2, options.get("min", 0.0))
                if "resolution_steps" in specs and inputs.get("resolution_steps", 1) == 1:
                    # at the template's size (0.25 MP of a 512² image) the result is on
                    # the 8-pixel grid; at ComfyUI's 0.01 MP minimum it would not be
                    inputs["resolution_steps"] = 8
    return prompt


def load_template(session: Session, name: str) -> Workflow:
    wf = Workflow.from_object(read_template(name), session.registry)
    adapt(wf.prompt, RegistrySchemas(session.registry))
    return wf


def output_nodes(session: Session, prompt: dict[str, Any]) -> list[str]:
    """The prompt's active output nodes."""
    out = []
    for node_id, node in prompt.items():
        cls = session.registry.get(node.get("class_type", ""))
        if cls is not None and cls.OUTPUT_NODE and node.get("mode") not in ("muted", "bypass"):
            out.append(node_id)
    return out


# --- tests ---------------------------------------------------------------------------

def test_the_sd15_list():
    """The index's SD 1.5 templates are the ones run here plus the excluded, and the
    corpus is the pinned version's (its template count)."""
    assert len(SD15) == 20, SD15
    assert set(EXCLUDED) <= set(SD15)
    names = [p.name for p in template_folder().iterdir()
             if p.name.endswith(".json") and not p.name.startswith("index")]
    assert len(names) == 172


@pytest.mark.parametrize("name", RUNNABLE)
def test_template_runs(session, name):
    wf = load_template(session, name)
    assert not wf.warnings, wf.warnings  # the converter carried every node and link over
    result = session.run(wf)
    assert not result.warnings, [w.message for w in result.warnings]  # e.g. unknown inputs
    assert result.ok, (name, result.run.error and {k: result.run.error.get(k) for k in (
        "node_id", "node_type", "exception_type", "exception_message")}, wf.warnings)
    outputs = output_nodes(session, wf.prompt)
    assert outputs, f"{name} has no output node"
    for node_id in outputs:
        images = result.run.outputs.get(node_id, {}).get("images", [])
        assert images, f"{name}: output node {node_id} wrote no image"
    assert result.image_paths and all(p.is_file() for p in result.image_paths)


def test_prompts_name_our_embedding(session):
    """``embedding:NAME`` in a template's prompt is pointed at the embedding saved here,
    which the prompt's text encoder finds (the embedding template uses one)."""
    from nodes.diffusion.embeddings import embedding_names, find_embedding

    wf = load_template(session, "embedding_example")
    names = [n for node in wf.prompt.values() if node["class_type"] == "CLIPTextEncode"
             for n in embedding_names(node["inputs"]["text"])]
    assert names == [EMBEDDING] and find_embedding(session.env, EMBEDDING) is not None
