"""GLIGEN nodes: load a GLIGEN model and ground phrases in boxes (ComfyUI's node ids and
inputs; diffusers' StableDiffusionGLIGENPipeline math)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, TextEncoder
from nodes.masks import MAX_PIXELS
from nodes.models import file_fingerprint, pickle_problem

if TYPE_CHECKING:
    import torch

GLIGEN_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def list_gligen(env: Environment) -> list[str]:
    """Single files and diffusers UNet folders (with config.json) under models/gligen."""
    return env.list_files("models", "gligen", suffixes=GLIGEN_SUFFIXES, dirs_with="config.json")


class GLIGENLoader(Node):
    """Load a GLIGEN model (Li et al. 2023) from models/gligen, for GLIGEN Textbox Apply.

    Accepts Steerflow's GLIGEN file (a .safetensors holding diffusers' ``position_net.*``
    and ``*.fuser.*`` weights), ComfyUI's gligen files (original layout, e.g.
    gligen_sd14_textbox_pruned.safetensors) and a whole diffusers GLIGEN UNet (its folder,
    a pipeline folder or its weights file: only the GLIGEN layers are read). The base
    model stays the checkpoint's: GLIGEN adds its layers to that UNet for each run.
    Pickle files are refused unless pickles are allowed. No GLIGEN exists for the
    default steerflow-shapes model (GLIGENs are trained per base model: SD 1.4/1.5).
    """

    TYPE = "GLIGENLoader"
    DISPLAY_NAME = "GLIGEN Loader"
    CATEGORY = "loaders"
    OUTPUTS = (Output("GLIGEN"),)

    gligen_name: str = Input(..., choices=list_gligen,
                             description="A file or diffusers UNet folder in models/gligen")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("gligen_name"), "models", "gligen")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "gligen_name", "models", "gligen")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.gligen import load_gligen
        from nodes.diffusion.memory import device_budget

        path = ctx.env.resolve("models", "gligen", self.gligen_name)
        if not path.exists():
            raise FileNotFoundError(f"GLIGEN model {self.gligen_name!r} not found in models/gligen")
        return (load_gligen(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                            budget=device_budget(ctx)),)


def phrase_embedding(clip: TextEncoder, text: str) -> torch.Tensor:
    """The phrase's pooled text embedding ``[dim]``, as the pipeline computes it (the
    text encoder's ``pooler_output``; the CLIP's LoRA patches applied)."""
    import torch

    from nodes.diffusion.lora import patched

    tokenizer, encoder = clip.tokenizer, clip.text_encoder
    ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(encoder.device)
    with torch.no_grad(), patched(encoder, clip.patches):
        return encoder(ids).pooler_output[0].float().cpu()


class GLIGENTextBoxApply(Node):
    """GLIGEN (Li et al. 2023): put a phrase in a box. The phrase ("a red circle") is drawn
    inside the box (x, y, width, height, in pixels of the generated image) while the
    prompt describes the whole picture. Reproduces diffusers'
    StableDiffusionGLIGENPipeline (gligen_phrases / gligen_boxes).

    Wiring: Load Checkpoint + GLIGEN Loader; Encode Prompt → this node's
    ``conditioning_to`` (the positive prompt) → the sampler's positive. Chain several of
    these nodes for several boxes (up to 30 per conditioning). Boxes must lie inside
    the image as you sized it: in Empty Latent Image's width and height (without its
    ``vae`` input that is SD's 8x per latent pixel, as ComfyUI always assumes; with it,
    the checkpoint's own VAE's).
    The negative prompt gets no boxes: its half of the batch sees GLIGEN's learnt "no
    object" tokens, as in the pipeline (ComfyUI skips GLIGEN there instead).

    ``gligen_scheduled_sampling_beta``: GLIGEN acts on this fraction of the steps, from
    the first; the layout is fixed early, so 0.3 (the paper's and diffusers' default)
    keeps the boxes while the base model finishes the details with better quality; 1.0
    (ComfyUI's behaviour, the default here) grounds every step; the last node of a chain
    sets it for the conditioning. Cost: a gated attention and a feed-forward per
    transformer block while GLIGEN acts (about a third more per step on the tiny test
    model), nothing after beta. Works in one run with ControlNet, SAG, SEGA and
    Attend-and-Excite (tested together); passes on a crop of the latent (area prompts,
    MultiDiffusion windows) run without the boxes.
    No GLIGEN weights exist for the default steerflow-shapes model (GLIGEN is trained
    per base model; the public ones are for SD 1.4/1.5), so this node needs an SD
    checkpoint with its GLIGEN file.
    """

    TYPE = "GLIGENTextBoxApply"
    DISPLAY_NAME = "GLIGEN Textbox Apply"
    CATEGORY = "conditioning/gligen"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning_to: Conditioning = Input(type="CONDITIONING")
    clip: TextEncoder = Input(type="CLIP")
    gligen_textbox_model: Any = Input(type="GLIGEN")
    text: str = Input("", multiline=True, dynamic_prompts=True,
                      description="The phrase to draw in the box")
    width: int = Input(64, min=8, max=MAX_PIXELS, step=8, description="Box width, pixels")
    height: int = Input(64, min=8, max=MAX_PIXELS, step=8, description="Box height, pixels")
    x: int = Input(0, min=0, max=MAX_PIXELS, step=8, description="Box left edge, pixels")
    y: int = Input(0, min=0, max=MAX_PIXELS, step=8, description="Box top edge, pixels")
    gligen_scheduled_sampling_beta: float = Input(
        1.0, min=0.0, max=1.0, step=0.01,
        description="Fraction of the steps (from the first) GLIGEN acts on (diffusers: 0.3)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for start, size in (("x", "width"), ("y", "height")):
            a, b = inputs.get(start), inputs.get(size)
            if isinstance(a, int) and isinstance(b, int) and a + b > MAX_PIXELS:
                problems.append((size, f"the box ends at {a + b}, past the largest image "
                                       f"({MAX_PIXELS} pixels)"))
        return problems

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.gligen import GLIGEN, MAX_OBJS, GLIGENGrounding, GroundingBox

        gligen = self.gligen_textbox_model
        if not isinstance(gligen, GLIGEN):
            raise ValueError("gligen_textbox_model must come from GLIGEN Loader")
        embedding = phrase_embedding(self.clip, self.text)
        if embedding.shape[-1] != gligen.phrase_dim:
            raise ValueError(
                f"{gligen.label} takes {gligen.phrase_dim}-wide phrase embeddings but this "
                f"CLIP gives {embedding.shape[-1]}: use the CLIP of the model the GLIGEN was "
                "made for")
        box = GroundingBox(self.text, embedding, self.x, self.y, self.width, self.height)
        entries = []
        for entry in self.conditioning_to.entries:
            others = [e for e in entry.options.get("extensions", ())
                      if not isinstance(e, GLIGENGrounding)]
            before = next((e for e in entry.options.get("extensions", ())
                           if isinstance(e, GLIGENGrounding)), None)
            boxes = (*before.boxes, box) if before is not None else (box,)
            if before is not None and before.gligen is not gligen:
                raise ValueError("this conditioning already has boxes of another GLIGEN "
                                 "model; one conditioning takes one GLIGEN model")
            if len(boxes) > MAX_OBJS:
                raise ValueError(f"GLIGEN takes at most {MAX_OBJS} boxes per conditioning; "
                                 f"this would be box {len(boxes)}")
            ext = GLIGENGrounding(gligen, boxes, self.gligen_scheduled_sampling_beta)
            entries.append(replace(entry, options={**entry.options,
                                                   "extensions": (*others, ext)}))
        return (Conditioning(tuple(entries)),)


NODE_CLASSES = (GLIGENLoader, GLIGENTextBoxApply)
