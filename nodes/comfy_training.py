"""ComfyUI's LoRA training nodes (comfy_extras/nodes_train.py) on our trainer.

Train LoRA (``TrainLoraNode``) takes the latents and conditionings Make Training Dataset
makes and gives a LORA_MODEL (a LoRA state dict), its LOSS_MAP and the steps; Load LoRA
Model applies a LORA_MODEL to a MODEL, Save LoRA Weights writes it where Load LoRA finds
it, Plot Loss Graph draws the loss. The math is :mod:`nodes.diffusion.comfy_train`
(ComfyUI's x̂₀ loss and σ sampling on Train LoRA's LoRA layers and loop).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.paths import confined_path
from nodes.diffusion.handles import DiffusionModel
from nodes.limits import name_problem
from nodes.lora import list_loras

if TYPE_CHECKING:
    import torch

NONE = "[None]"
OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
LOSS_FUNCTIONS = ("MSE", "L1", "Huber", "SmoothL1")
ALGORITHMS = ("LoRA", "LoHa", "LoKr", "OFT", "OFTv2")
TRAINING_DTYPES = ("bf16", "fp32", "none")
LORA_DTYPES = ("bf16", "fp32")
MAX_MICRO_STEPS = 1_000_000
SAVE_PREFIX = "loras/ComfyUI_trained_lora"
MAX_LOSS_POINTS = 1_000_000


def _existing_choices(env: Environment) -> list[str]:
    return [*list_loras(env), NONE]


def first(node: Node, name: str, env: Environment) -> Any:
    """A widget's value on a node that takes its inputs as lists: the first element,
    checked against the input's bounds and choices (a linked value is not checked before
    the run)."""
    from engine.validation import check_constant

    value = getattr(node, name)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    spec = type(node).INPUT_SPECS[name]
    if value is None or not spec.is_widget:
        return value
    value, issue = check_constant(spec, value, env)
    if issue is not None:
        raise ValueError(issue.message)
    return value


class TrainLoraNode(Node):
    """Train a LoRA on latents and their conditionings (ComfyUI's Train LoRA).

    Make Training Dataset's ``latents`` and ``conditioning`` go in (or any LATENT batch
    and a CONDITIONING: one conditioning serves every image, else one per image); the
    LoRA covers every linear and convolution layer of the UNet, plus a full difference on
    every norm weight and bias (ComfyUI's choice), with alpha 1 (scale 1/rank). Each step
    predicts the clean latent (x̂₀) at a random noise level and takes ``loss_function``
    against the real one. Use the ``lora`` output with Load LoRA Model, save it with Save
    LoRA Weights, and plot ``loss_map`` with Plot Loss Graph.

    Using it well: rank 8-32, learning rate 1e-4 to 5e-4, a few hundred steps;
    ``grad_accumulation_steps`` > 1 averages the gradient over that many batches per
    step (the loss map has steps x grad_accumulation_steps points). ``existing_lora``
    (a file in models/loras) goes on training that LoRA; ``steps`` out then adds the
    steps its name records (``..._10_steps_...``). ``bucket_mode`` takes Resolution
    Bucket's buckets, drawing each batch from one bucket.

    Here: SD 1.x/2.x UNets; only the ``LoRA`` algorithm (the others are refused);
    ``training_dtype`` bf16 autocasts the forward pass (also on the CPU), fp32 does not,
    none keeps the model's dtype; ``gradient_checkpointing`` uses the UNet's own
    per-block checkpointing (``checkpoint_depth`` is accepted, not used); ``offloading``,
    ``bypass_mode`` and ``quantized_backward`` change nothing (the model stays on its
    device, the LoRA always acts through hooks, there are no quantized weights).
    """

    TYPE = "TrainLoraNode"
    DISPLAY_NAME = "Train LoRA (latents)"
    CATEGORY = "training"
    INPUT_IS_LIST = True
    OUTPUTS = (Output("LORA_MODEL", "lora", tooltip="LoRA weights"),
               Output("LOSS_MAP", "loss_map", tooltip="Loss history"),
               Output("INT", "steps", tooltip="Total training steps"))

    model: DiffusionModel = Input(type="MODEL", description="The model to train the LoRA on")
    latents: Any = Input(type="LATENT", description="The latents to train on (the data set)")
    positive: Any = Input(type="CONDITIONING", description="The images' conditioning: one "
                          "per image, or one for all")
    batch_size: int = Input(1, min=1, max=10000, description="Images per micro-step")
    grad_accumulation_steps: int = Input(1, min=1, max=1024,
                                         description="Micro-steps per optimiser step")
    steps: int = Input(16, min=1, max=100000, description="Optimiser steps")
    learning_rate: float = Input(0.0005, min=0.0000001, max=1.0, step=0.0000001,
                                 description="The optimiser's learning rate")
    rank: int = Input(8, min=1, max=128, description="Rank of the LoRA layers")
    optimizer: str = Input("AdamW", choices=OPTIMIZERS,
                           description="torch optimiser, with torch's defaults")
    loss_function: str = Input("MSE", choices=LOSS_FUNCTIONS,
                               description="Loss between predicted and real clean latents")
    seed: int = Input(0, min=0, max=0xFFFFFFFFFFFFFFFF, wide=True,
                      description="Seeds the LoRA's initial weights, order, noise and noise "
                      "levels")
    training_dtype: str = Input("bf16", choices=TRAINING_DTYPES,
                                description="bf16: autocast the forward pass; fp32: full "
                                "precision; none: the model's own dtype")
    lora_dtype: str = Input("bf16", choices=LORA_DTYPES, description="dtype of the LoRA "
                            "weights (and of the saved file)")
    quantized_backward: bool = Input(False, description="ComfyUI's quantized matmul in the "
                                     "backward pass; no effect here (no quantized models)")
    algorithm: str = Input("LoRA", choices=ALGORITHMS,
                           description="Adapter kind; only LoRA is supported here")
    gradient_checkpointing: bool = Input(True, description="Recompute activations in the "
                                         "backward pass: less memory, about a third slower")
    checkpoint_depth: int = Input(1, min=1, max=5, description="ComfyUI's checkpointing "
                                  "depth; here the UNet checkpoints per block whatever it is")
    offloading: bool = Input(False, description="ComfyUI offloads weights to the CPU; "
                             "no effect here")
    existing_lora: str = Input(NONE, choices=_existing_choices,
                               description="A LoRA in models/loras to go on training, or "
                               "[None] for a new one")
    bucket_mode: bool = Input(False, description="Latents are Resolution Bucket's buckets: "
                              "each batch comes from one bucket")
    bypass_mode: bool = Input(False, description="ComfyUI applies the adapters by hooks; "
                              "they always are here (no effect)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        algorithm = inputs.get("algorithm")
        if isinstance(algorithm, str) and algorithm != "LoRA":
            problems.append(("algorithm", f"{algorithm} training is not supported here: use "
                             "LoRA"))
        steps, acc = inputs.get("steps"), inputs.get("grad_accumulation_steps")
        if isinstance(steps, int) and isinstance(acc, int) and steps * acc > MAX_MICRO_STEPS:
            problems.append(("steps", f"steps x grad_accumulation_steps is {steps * acc}; at "
                             f"most {MAX_MICRO_STEPS} micro-steps"))
        return problems

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        from nodes.models import path_fingerprint

        name = inputs.get("existing_lora")
        if not isinstance(name, str) or name == NONE:
            return None
        try:
            path = env.resolve("models", "loras", name)
        except ValueError:
            return None
        return path_fingerprint(path) if path.is_file() else None

    def execute(self, ctx: ExecutionContext) -> tuple[Any, dict[str, list[float]], int]:
        from nodes.diffusion import comfy_train as ct
        from nodes.diffusion.comfy_lora_layers import LoraModel, existing_steps, fit_state
        from nodes.diffusion.lora import read_lora_file
        from nodes.diffusion.train_common import weights_hash
        from nodes.models import model_file

        env = ctx.env
        values = {name: first(self, name, env) for name, spec in self.INPUT_SPECS.items()
                  if spec.is_widget}
        if values["algorithm"] != "LoRA":
            raise ValueError(f"algorithm {values['algorithm']} is not supported here: use LoRA")
        model = first(self, "model", env)
        if not isinstance(model, DiffusionModel):
            raise ValueError("model must be a MODEL (Load Checkpoint's)")
        latents = self.latents if isinstance(self.latents, list) else [self.latents]
        positive = self.positive if isinstance(self.positive, list) else [self.positive]
        data = ct.build_dataset(latents, positive, values["bucket_mode"], model.unet)
        settings = ct.ComfySettings(**{k: values[k] for k in (
            "steps", "grad_accumulation_steps", "batch_size", "learning_rate", "rank",
            "optimizer", "loss_function", "seed", "training_dtype", "lora_dtype",
            "gradient_checkpointing")})
        existing, before = None, 0
        name = values["existing_lora"]
        if name != NONE:
            path = model_file(ctx, "loras", name, "LoRA")
            state, _ = read_lora_file(path, allow_pickle=env.allow_pickle)
            existing = dict(fit_state(model.unet, state, path.name))
            before = existing_steps(name)
        state, losses = ct.train(ctx, model, data, settings, existing)
        parameters = {k: values[k] for k in (
            "batch_size", "grad_accumulation_steps", "steps", "learning_rate", "rank",
            "optimizer", "loss_function", "seed", "training_dtype", "lora_dtype")}
        metadata = {"format": "pt", "steerflow.trainer": "TrainLoraNode",
                    "steerflow.steps": str(values["steps"] + before),
                    "steerflow.base_model_hash": weights_hash(model.unet),
                    "steerflow.final_loss": json.dumps(losses[-1]),
                    "steerflow.parameters": json.dumps(
                        {**parameters, "images": data.count, "existing_lora": name})}
        return LoraModel(state, metadata), {"loss": losses}, values["steps"] + before


class LoraModelLoader(Node):
    """Apply a LORA_MODEL (Train LoRA's ``lora``) to a model (ComfyUI's Load LoRA Model).

    The LoRA acts only while the model samples; the input model is unchanged (a new
    handle comes out), as Load LoRA does with a file. ``strength_model`` scales it (0:
    the model as it is; negative: the opposite change). ``bypass`` (ComfyUI applies the
    LoRA through hooks instead of the weights) gives the same result here and changes
    nothing."""

    TYPE = "LoraModelLoader"
    DISPLAY_NAME = "Load LoRA Model"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL", "model", tooltip="The modified diffusion model"),)

    model: DiffusionModel = Input(type="MODEL", description="The diffusion model the LoRA "
                                  "is applied to")
    lora: Any = Input(type="LORA_MODEL", description="The LoRA to apply (Train LoRA's)")
    strength_model: float = Input(1.0, min=-100.0, max=100.0, step=0.01,
                                  description="How strongly to change the model; may be "
                                  "negative")
    bypass: bool = Input(False, description="ComfyUI's hook-based application; the same "
                         "result here")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.comfy_lora_layers import fit_state
        from nodes.diffusion.lora import LoraPatch

        if self.strength_model == 0:
            return (self.model,)
        if not isinstance(self.lora, dict) or not self.lora:
            raise ValueError("lora must be a LORA_MODEL (Train LoRA's lora output)")
        name = getattr(self.lora, "metadata", {}).get("steerflow.trainer", "LORA_MODEL")
        patch = LoraPatch(f"{name}-{ctx.node_id}", float(self.strength_model),
                          fit_state(self.model.unet, dict(self.lora), "the LORA_MODEL"))
        return (replace(self.model, patches=(*self.model.patches, patch)),)


def save_prefix_parts(prefix: str) -> tuple[str, str]:
    """``(subfolder under models/loras, file stem)`` of Save LoRA's prefix: ComfyUI's
    default ``loras/ComfyUI_trained_lora`` names models/loras itself."""
    text = prefix.strip().replace("\\", "/").removeprefix("loras/")
    subfolder, _, stem = text.rpartition("/")
    return subfolder, stem


def save_prefix_problem(prefix: Any, env: Environment, name: str, room: int
                        ) -> list[tuple[str | None, str]]:
    """Validation of a LoRA file prefix under models/loras (input ``name``); ``room``:
    characters the file name may add after it."""
    if not isinstance(prefix, str):
        return []
    subfolder, stem = save_prefix_parts(prefix)
    if not stem:
        return [(name, "give a file name, e.g. loras/my_lora")]
    if problem := name_problem(f"{subfolder}/{stem}" if subfolder else stem, room):
        return [(name, problem)]
    try:
        confined_path(env.folder("models", "loras"), subfolder)
    except ValueError as exc:
        return [(name, str(exc))]
    return []


def save_lora_file(ctx: ExecutionContext, prefix: str, tensors: dict[str, Any],
                   metadata: dict[str, str], suffix: str = "") -> NodeResult:
    """Write ``tensors`` as a numbered .safetensors under models/loras (never over a file,
    atomically); the result names the file as Load LoRA lists it."""
    from nodes.diffusion.safetensors_io import save_file
    from nodes.output_files import save_numbered

    subfolder, stem = save_prefix_parts(prefix)
    loras = ctx.env.folder("models", "loras")
    folder = confined_path(loras, subfolder)
    folder.mkdir(parents=True, exist_ok=True)
    path, _ = save_numbered(folder, stem + suffix, ".safetensors",
                            lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return NodeResult((), {"text": [path.relative_to(loras).as_posix()]})


class SaveLoRA(Node):
    """Save a LORA_MODEL as a .safetensors file that Load LoRA (and ComfyUI) read
    (ComfyUI's Save LoRA Weights).

    The file is models/loras/<prefix>_<steps>_steps_<counter>_.safetensors (without
    ``steps``: <prefix>_<counter>_.safetensors); a leading ``loras/`` in the prefix (the
    default's) is the models/loras folder itself, so the default gives
    ``ComfyUI_trained_lora_16_steps_00001_.safetensors`` there. It is written
    atomically and never replaces a file; its metadata records the trainer, steps,
    parameters and the base model's hash. Keys are kohya's (``lora_unet_...``)."""

    TYPE = "SaveLoRA"
    DISPLAY_NAME = "Save LoRA Weights"
    CATEGORY = "loaders"
    OUTPUT_NODE = True
    OUTPUTS = ()

    lora: Any = Input(type="LORA_MODEL", description="The LoRA to save (Train LoRA's lora)")
    prefix: str = Input(SAVE_PREFIX, description="File name prefix under models/loras (a "
                        "leading 'loras/' is that folder); may contain a subfolder")
    steps: int | None = Input(None, optional=True, type="INT", min=0, max=2**31 - 1,
                              description="Steps trained, for the file name (Train LoRA's "
                              "steps)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return save_prefix_problem(inputs.get("prefix"), env, "prefix",
                                   len("_2147483647_steps_00000_.safetensors") + 16)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch

        from nodes.diffusion.lora import kohya_keys

        if not isinstance(self.lora, dict) or not self.lora or not all(
                isinstance(v, torch.Tensor) for v in self.lora.values()):
            raise ValueError("lora must be a LORA_MODEL (Train LoRA's lora output: tensors "
                             "by key)")
        # ComfyUI-layout keys (diffusion_model.…) of a LORA_MODEL from elsewhere: kohya's
        tensors = {k: v.detach().to("cpu").contiguous()
                   for k, v in kohya_keys(dict(self.lora)).items()}
        metadata = {str(k): str(v) for k, v in
                    (getattr(self.lora, "metadata", None) or {"format": "pt"}).items()}
        return save_lora_file(ctx, self.prefix, tensors, metadata,
                              "" if self.steps is None else f"_{self.steps}_steps")


def loss_graph(values: list[float]) -> torch.Tensor:
    """ComfyUI's loss plot: an 840x520 white image, the loss (min..max) as a blue line
    over the steps, axes, labels and the min/max values; IMAGE ``[1, H, W, 3]``."""
    import math

    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    if not values:
        raise ValueError("the loss map is empty: train at least one step")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("the loss map holds NaN or infinite values: lower the learning rate")
    width, height, margin = 800, 480, 40
    img = Image.new("RGB", (width + margin, height + margin), "white")
    draw = ImageDraw.Draw(img)
    low, high = min(values), max(values)
    span = high - low
    scaled = [(v - low) / span if span > 0 else 0.5 for v in values]
    points = [(margin + int(i / len(values) * width), height - int(v * height))
              for i, v in enumerate(scaled)]
    if len(points) > 1:
        draw.line(points, fill="blue", width=2)
    else:
        draw.point(points, fill="blue")
    draw.line([(margin, 0), (margin, height)], fill="black", width=2)
    draw.line([(margin, height), (width + margin, height)], fill="black", width=2)
    font = ImageFont.load_default()
    draw.text((5, height // 2), "Loss", font=font, fill="black")
    draw.text((width // 2, height + 10), "Steps", font=font, fill="black")
    draw.text((margin - 30, 0), f"{high:.2f}", font=font, fill="black")
    draw.text((margin - 30, height - 10), f"{low:.2f}", font=font, fill="black")
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


class LossGraphNode(Node):
    """Draw a training run's loss (Train LoRA's ``loss_map``) as a curve and show it on
    the node (ComfyUI's Plot Loss Graph: written to temp/ as a preview, 840x520; the
    vertical axis spans the lowest to the highest loss). ``filename_prefix`` is kept for
    ComfyUI's workflows; as there, the preview does not use it (save the curve with
    Save Image if you want to keep it)."""

    TYPE = "LossGraphNode"
    DISPLAY_NAME = "Plot Loss Graph"
    CATEGORY = "training"
    OUTPUT_NODE = True
    OUTPUTS = ()

    loss: Any = Input(type="LOSS_MAP", description="Loss map from the training node")
    filename_prefix: str = Input("loss_graph", description="Prefix of the graph image "
                                 "(unused by the preview, as in ComfyUI)")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.image import preview_images

        values = self.loss.get("loss") if isinstance(self.loss, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise ValueError("loss must be a LOSS_MAP ({'loss': [numbers]}, Train LoRA's "
                             "loss_map)")
        if len(values) > MAX_LOSS_POINTS:
            raise ValueError(f"the loss map has {len(values)} points; at most "
                             f"{MAX_LOSS_POINTS} can be drawn")
        return preview_images(loss_graph([float(v) for v in values]), ctx)


NODE_CLASSES = (TrainLoraNode, LoraModelLoader, SaveLoRA, LossGraphNode)
