"""ComfyUI's own node classes, as packs call them, run by Steerflow's built-in nodes.

Packs reuse ComfyUI's nodes in two ways: they call one inside their own node
(``LoraLoader().load_lora(model, clip, name, 1.0, 1.0)``,
``CLIPTextEncode().encode(clip, text)``, ``EmptyLatentImage().generate(w, h, 1)``), or
subclass one and extend its ``INPUT_TYPES`` / ``RETURN_TYPES`` (a LoRA loader that
also returns a preview image). Steerflow has built-in nodes of the same names and
inputs, so each class here is the ComfyUI face of one of them:

- ``INPUT_TYPES()`` is the built-in node's inputs as ``/object_info`` shows them;
  ``RETURN_TYPES`` / ``RETURN_NAMES`` / ``CATEGORY`` / ``OUTPUT_NODE`` are its outputs.
- ``FUNCTION`` is ComfyUI's method name, taking ComfyUI's arguments in ComfyUI's
  order (:data:`COMFY_NODES`); calling it runs the built-in node in the running
  node's context (its device, progress, interrupt) and returns a tuple, LATENT as
  ComfyUI's ``{"samples": ...}`` dict (an output node returns ``{"ui": ..., "result": ...}``).

MODEL, CLIP, VAE and CONDITIONING are Steerflow's objects, so these work on what the
pack received from other Steerflow nodes. ``SaveImage`` / ``PreviewImage`` are
written for subclassing (``self.output_dir``, ``self.type``, ``self.prefix_append``,
``save_images(images, filename_prefix, prompt, extra_pnginfo)``) and save through
Steerflow's own PNG writer. ``common_ksampler`` is ComfyUI's helper over KSampler /
KSamplerAdvanced, and ``LatentBatch`` is written here (Steerflow has no such node).

Nothing here imports torch until a class is asked for.
"""

from __future__ import annotations

import secrets
from typing import Any

from comfy_compat import runtime

#: ComfyUI class name → (Steerflow node type, ComfyUI method, its parameters in order,
#: ComfyUI-only parameters with the value under which they may be ignored, ``...``: any)
COMFY_NODES: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any]]] = {
    "CheckpointLoaderSimple": ("CheckpointLoaderSimple", "load_checkpoint", ("ckpt_name",), {}),
    "VAELoader": ("VAELoader", "load_vae", ("vae_name",), {}),
    "LoraLoader": ("LoraLoader", "load_lora",
                   ("model", "clip", "lora_name", "strength_model", "strength_clip"), {}),
    "LoraLoaderModelOnly": ("LoraLoaderModelOnly", "load_lora_model_only",
                            ("model", "lora_name", "strength_model"), {}),
    "ControlNetLoader": ("ControlNetLoader", "load_controlnet", ("control_net_name",), {}),
    "CLIPTextEncode": ("CLIPTextEncode", "encode", ("clip", "text"), {}),
    "CLIPTextEncodeSDXL": ("CLIPTextEncodeSDXL", "encode",
                           ("clip", "width", "height", "crop_w", "crop_h", "target_width",
                            "target_height", "text_g", "text_l"), {}),
    "ConditioningCombine": ("ConditioningCombine", "combine",
                            ("conditioning_1", "conditioning_2"), {}),
    "ConditioningZeroOut": ("ConditioningZeroOut", "zero_out", ("conditioning",), {}),
    "ControlNetApply": ("ControlNetApply", "apply_controlnet",
                        ("conditioning", "control_net", "image", "strength"), {}),
    "ControlNetApplyAdvanced": ("ControlNetApplyAdvanced", "apply_controlnet",
                                ("positive", "negative", "control_net", "image", "strength",
                                 "start_percent", "end_percent", "vae"),
                                {"extra_concat": []}),
    "EmptyLatentImage": ("EmptyLatentImage", "generate", ("width", "height", "batch_size"), {}),
    "VAEDecode": ("VAEDecode", "decode", ("vae", "samples"), {}),
    "VAEEncode": ("VAEEncode", "encode", ("vae", "pixels"), {}),
    "KSampler": ("KSampler", "sample",
                 ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                  "negative", "latent_image", "denoise"), {}),
    "KSamplerAdvanced": ("KSamplerAdvanced", "sample",
                         ("model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name",
                          "scheduler", "positive", "negative", "latent_image", "start_at_step",
                          "end_at_step", "return_with_leftover_noise"), {"denoise": 1.0}),
    "LoadImage": ("LoadImage", "load_image", ("image",), {}),
    "ImageBatch": ("ImageBatch", "batch", ("image1", "image2"), {}),
    "ImageScale": ("ImageScale", "upscale",
                   ("image", "upscale_method", "width", "height", "crop"), {}),
    "ImageScaleBy": ("ImageScaleBy", "upscale", ("image", "upscale_method", "scale_by"), {}),
    "LatentUpscale": ("LatentUpscale", "upscale",
                      ("samples", "upscale_method", "width", "height", "crop"), {}),
    "LatentUpscaleBy": ("LatentUpscaleBy", "upscale",
                        ("samples", "upscale_method", "scale_by"), {}),
    "SetLatentNoiseMask": ("SetLatentNoiseMask", "set_mask", ("samples", "mask"), {}),
    "UpscaleModelLoader": ("UpscaleModelLoader", "load_model", ("model_name",), {}),
    "ImageUpscaleWithModel": ("ImageUpscaleWithModel", "upscale", ("upscale_model", "image"),
                              {}),
    "ConditioningConcat": ("ConditioningConcat", "concat",
                           ("conditioning_to", "conditioning_from"), {}),
    "ConditioningSetTimestepRange": ("ConditioningSetTimestepRange", "set_range",
                                     ("conditioning", "start", "end"), {}),
    "ConditioningSetArea": ("ConditioningSetArea", "append",
                            ("conditioning", "width", "height", "x", "y", "strength"), {}),
    "ConditioningSetMask": ("ConditioningSetMask", "append",
                            ("conditioning", "mask", "strength", "set_cond_area"), {}),
    "CLIPSetLastLayer": ("CLIPSetLastLayer", "set_last_layer", ("clip", "stop_at_clip_layer"),
                         {}),
    "CLIPVisionLoader": ("CLIPVisionLoader", "load_clip", ("clip_name",), {}),
    "CLIPVisionEncode": ("CLIPVisionEncode", "encode", ("clip_vision", "image", "crop"), {}),
    "unCLIPConditioning": ("unCLIPConditioning", "apply_adm",
                           ("conditioning", "clip_vision_output", "strength",
                            "noise_augmentation"), {}),
    "StyleModelLoader": ("StyleModelLoader", "load_style_model", ("style_model_name",), {}),
    "GLIGENLoader": ("GLIGENLoader", "load_gligen", ("gligen_name",), {}),
    "UNETLoader": ("UNETLoader", "load_unet", ("unet_name", "weight_dtype"), {}),
    "VAEDecodeTiled": ("VAEDecodeTiled", "decode",
                       ("vae", "samples", "tile_size", "overlap", "temporal_size",
                        "temporal_overlap"), {}),
    "VAEEncodeForInpaint": ("VAEEncodeForInpaint", "encode",
                            ("vae", "pixels", "mask", "grow_mask_by"), {}),
    "SaveLatent": ("SaveLatent", "save", ("samples", "filename_prefix"),
                   {"prompt": ..., "extra_pnginfo": ...}),
    "LoadLatent": ("LoadLatent", "load", ("latent",), {}),
    "RepeatLatentBatch": ("RepeatLatentBatch", "repeat", ("samples", "amount"), {}),
    "LatentFromBatch": ("LatentFromBatch", "frombatch", ("samples", "batch_index", "length"),
                        {}),
    "LatentComposite": ("LatentComposite", "composite",
                        ("samples_to", "samples_from", "x", "y", "feather"), {}),
    "LatentCrop": ("LatentCrop", "crop", ("samples", "width", "height", "x", "y"), {}),
    "LatentFlip": ("LatentFlip", "flip", ("samples", "flip_method"), {}),
    "LatentRotate": ("LatentRotate", "rotate", ("samples", "rotation"), {}),
    "EmptyImage": ("EmptyImage", "generate", ("width", "height", "batch_size", "color"), {}),
    "ImageCrop": ("ImageCrop", "crop", ("image", "width", "height", "x", "y"), {}),
    "ImageInvert": ("ImageInvert", "invert", ("image",), {}),
    "ImagePadForOutpaint": ("ImagePadForOutpaint", "expand_image",
                            ("image", "left", "top", "right", "bottom", "feathering"), {}),
}

#: ComfyUI node classes packs import that Steerflow has no node for: importable (so
#: the pack loads), but creating one raises NotImplementedError saying so
UNAVAILABLE: tuple[str, ...] = ()

#: every name :func:`comfy_class` answers
NAMES = frozenset({*COMFY_NODES, *UNAVAILABLE, "SaveImage", "PreviewImage", "LatentBatch",
                   "common_ksampler"})

_classes: dict[str, Any] = {}


def comfy_class(name: str) -> Any:
    """ComfyUI's node class (or ``common_ksampler``) ``name``, built on first use."""
    if name not in _classes:
        if name in COMFY_NODES:
            _classes[name] = _bridge(name, *COMFY_NODES[name])
        elif name == "SaveImage":
            _classes[name] = _save_image_class()
        elif name == "PreviewImage":
            _classes[name] = _preview_image_class(comfy_class("SaveImage"))
        elif name == "LatentBatch":
            _classes[name] = LatentBatch
        elif name == "common_ksampler":
            _classes[name] = common_ksampler
        elif name in UNAVAILABLE:
            _classes[name] = _unavailable_class(name)
        else:
            raise AttributeError(name)
    return _classes[name]


# --- running a built-in node -------------------------------------------------------

def _builtin(type_id: str) -> Any:
    import nodes

    for cls in nodes.NODE_CLASSES:
        if type_id == cls.TYPE:
            return cls
    raise LookupError(f"Steerflow has no built-in node {type_id!r}")


def _context(what: str) -> Any:
    ctx = runtime.current_context()
    if ctx is None:
        raise RuntimeError(f"ComfyUI's {what} can only run inside a node's run (its "
                           "device, files and progress are the running node's)")
    return ctx


def run_builtin(type_id: str, values: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
    """Run built-in node ``type_id`` with ``values`` (ComfyUI-shaped) in the running
    node's context; its outputs ComfyUI-shaped, and its UI payload."""
    from comfy_compat.adapter import _from_comfy, _to_comfy
    from engine.node import NodeResult

    cls = _builtin(type_id)
    ctx = _context(type_id)
    inputs: dict[str, Any] = {}
    for name, spec in cls.INPUT_SPECS.items():
        if name in values:
            inputs[name] = _from_comfy(values[name], spec.type)
        elif spec.has_default:
            inputs[name] = spec.default
        elif not spec.required:
            inputs[name] = None
        else:
            raise TypeError(f"ComfyUI's {type_id}: missing input {name!r}")
    returned = cls.model_construct(**inputs).execute(ctx)
    if isinstance(returned, NodeResult):
        outputs, ui = returned.outputs, returned.ui
    else:
        outputs, ui = tuple(returned), None
    return tuple(_to_comfy(v) for v in outputs), ui


def _bridge(name: str, type_id: str, function: str, params: tuple[str, ...],
            ignorable: dict[str, Any]) -> type:
    cls = _builtin(type_id)

    def INPUT_TYPES(_cls: type) -> dict[str, Any]:
        schema = cls.schema(runtime.current_environment())
        return {section: dict(schema["input"].get(section) or {})
                for section in ("required", "optional") if schema["input"].get(section)}

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(params):
            raise TypeError(f"{name}.{function}() takes {len(params)} arguments "
                            f"({len(args)} given)")
        values = dict(zip(params, args, strict=False))
        for key, value in kwargs.items():
            if key in values:
                raise TypeError(f"{name}.{function}() got multiple values for {key!r}")
            values[key] = value
        for key in [k for k in values if k not in cls.INPUT_SPECS]:
            # ``...``: a ComfyUI-only argument dropped whatever its value (SaveLatent's
            # hidden prompt: Steerflow's node embeds the running prompt itself)
            if key in ignorable and ignorable[key] in (..., values[key]):
                del values[key]
            else:
                raise TypeError(f"{name}.{function}(): {key!r} is not an input of "
                                f"Steerflow's {type_id} node")
        outputs, ui = run_builtin(type_id, values)
        return {"ui": ui or {}, "result": outputs} if cls.OUTPUT_NODE else outputs

    namespace = {
        "__doc__": f"ComfyUI's {name}, run by Steerflow's built-in {type_id} node.",
        "__module__": "nodes",
        "INPUT_TYPES": classmethod(INPUT_TYPES),
        "RETURN_TYPES": tuple(o.type for o in cls.OUTPUTS),
        "RETURN_NAMES": tuple(o.label for o in cls.OUTPUTS),
        "FUNCTION": function,
        "CATEGORY": cls.CATEGORY,
        "OUTPUT_NODE": cls.OUTPUT_NODE,
        "STEERFLOW_TYPE": type_id,
        function: run,
    }
    # the choice lists ComfyUI keeps as class attributes (``ImageScale.upscale_methods``)
    for attr, input_name in (("upscale_methods", "upscale_method"), ("crop_methods", "crop")):
        spec = cls.INPUT_SPECS.get(input_name)
        if spec is not None and spec.choices is not None:
            namespace[attr] = list(spec.resolve_choices(None) or ())
    return type(name, (), namespace)


def _unavailable_class(name: str) -> type:
    from comfy_compat.shims._missing import missing_message

    message = missing_message(f"nodes.{name}", "Steerflow has no node of that name")

    def __init__(self: Any, *_args: Any, **_kwargs: Any) -> None:
        raise NotImplementedError(message)

    return type(name, (), {"__doc__": message, "__module__": "nodes", "__init__": __init__})


# --- SaveImage / PreviewImage ---------------------------------------------------------

def _save_image_class() -> type:
    import folder_paths  # the shim (installed wherever a pack imports this)

    class SaveImage:
        """ComfyUI's SaveImage: PNGs in ``self.type``'s folder ("output" or "temp"),
        the prompt and workflow embedded, through Steerflow's writer."""

        def __init__(self) -> None:
            self.output_dir = folder_paths.get_output_directory()
            self.type = "output"
            self.prefix_append = ""
            self.compress_level = 4

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"images": ("IMAGE",),
                                 "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        RETURN_TYPES: tuple[str, ...] = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        CATEGORY = "image"

        def save_images(self, images: Any, filename_prefix: str = "ComfyUI",
                        prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
            from nodes.image import save_images

            ctx = _context("SaveImage.save_images")
            role = self.type if self.type in ("output", "temp") else "output"
            results = save_images(images, ctx, role, filename_prefix + self.prefix_append)
            return {"ui": {"images": results}}

    SaveImage.__module__ = "nodes"
    return SaveImage


def _preview_image_class(save_image: type) -> type:
    import folder_paths

    class PreviewImage(save_image):  # type: ignore[misc,valid-type]
        """ComfyUI's PreviewImage: SaveImage into the temp folder."""

        def __init__(self) -> None:
            super().__init__()
            self.output_dir = folder_paths.get_temp_directory()
            self.type = "temp"
            self.prefix_append = "_temp_" + secrets.token_hex(3)
            self.compress_level = 1

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"images": ("IMAGE",)},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    PreviewImage.__module__ = "nodes"
    return PreviewImage


# --- written here -------------------------------------------------------------------

class LatentBatch:
    """ComfyUI's ``comfy_extras.nodes_latent.LatentBatch``: ``samples2`` appended to
    ``samples1`` (resized to its size first when they differ)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "batch"
    CATEGORY = "latent/batch"

    def batch(self, samples1: dict[str, Any], samples2: dict[str, Any]
              ) -> tuple[dict[str, Any]]:
        import torch

        from comfy_compat.shims.comfy.utils import common_upscale

        first, second = samples1["samples"], samples2["samples"]
        if first.shape[1:] != second.shape[1:]:
            second = common_upscale(second, first.shape[-1], first.shape[-2], "bilinear",
                                    "center")
        return ({"samples": torch.cat((first, second.to(first)), dim=0)},)


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str,
                    scheduler: str, positive: Any, negative: Any, latent: dict[str, Any],
                    denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[dict[str, Any]]:
    """ComfyUI's ``nodes.common_ksampler``: Steerflow's KSampler, or KSamplerAdvanced
    when a step range or noise option is given."""
    advanced = disable_noise or start_step is not None or last_step is not None \
        or force_full_denoise
    if not advanced:
        return run_builtin("KSampler", {
            "model": model, "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler_name, "scheduler": scheduler, "positive": positive,
            "negative": negative, "latent_image": latent, "denoise": denoise})[0]
    if denoise != 1.0:
        raise ValueError("common_ksampler: denoise with a step range is not supported "
                         "(use start_step instead)")
    return run_builtin("KSamplerAdvanced", {
        "model": model, "add_noise": "disable" if disable_noise else "enable",
        "noise_seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
        "scheduler": scheduler, "positive": positive, "negative": negative,
        "latent_image": latent, "start_at_step": start_step or 0,
        "end_at_step": steps if last_step is None else last_step,
        "return_with_leftover_noise": "disable" if force_full_denoise else "enable"})[0]
