"""Save Image (Advanced): ComfyUI's ``SaveImageAdvanced``, which saves an image batch as
8- or 16-bit PNG, 32-bit float OpenEXR or AVIF, with the prompt and workflow embedded.

``format`` is a DynamicCombo (:mod:`engine.dynamic`): each file format brings its own
``format.bit_depth`` and ``format.input_color_space`` (same names, different choices),
AVIF also ``format.crf`` and ``format.save_mode``. Files are numbered as Save Image's
(``<prefix>_00001_.png`` under output/, written atomically, never replacing a file;
:mod:`nodes.output_files`). See :mod:`nodes.color_space` for the colour spaces.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, NodeResult, Output
from engine.dynamic import dynamic_combo
from engine.node import DynamicOption, InputSpec, NamedInputsNode, input_spec
from nodes.output_files import prefix_fingerprint, prefix_problems, save_numbered, split_prefix

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

log = logging.getLogger(__name__)

FORMAT = "format"
STILL, ANIMATED = "still images", "animated"
BIT_DEPTHS = {
    "png": ("8-bit", "16-bit"),
    "exr": ("32-bit float",),
    "avif": ("auto", "8-bit YUV420", "10-bit YUV420"),
}
COLOR_SPACES = {
    "png": ("sRGB",),
    "exr": ("sRGB", "HDR", "linear"),
    "avif": ("sRGB", "HDR", "HDR PQ"),
}
EXR_COLOR_HELP = (
    "Colorspace of the input tensor. The EXR is always written as scene-linear in the "
    "matching gamut.\nsRGB — input is sRGB-encoded Rec.709; the inverse sRGB EOTF is "
    "applied.\nHDR — input is HLG-encoded Rec.2020 (BT.2100); the inverse HLG OETF is "
    "applied to get scene-linear light.\nlinear — input is already scene-linear (Rec.709 "
    "primaries); written through unchanged. Use this for renderer/compositor output.")


def _union(table: dict[str, tuple[str, ...]]) -> list[str]:
    return list(dict.fromkeys(c for choices in table.values() for c in choices))


def _format_inputs(fmt: str) -> dict[str, tuple[Any, Any]]:
    """One format's inputs; ``bit_depth`` and ``input_color_space`` take every format's
    choices here (engine.dynamic wants a shared name declared alike) and are narrowed to
    this format's in :func:`_narrowed`."""
    depth_help = ("Auto uses 8-bit YUV420 for sRGB and 10-bit YUV420 for HDR."
                  if fmt == "avif" else "")
    color_help = {"exr": EXR_COLOR_HELP, "avif": (
        "Colorspace of the input images. HDR selects BT.2020/HLG and HDR PQ selects "
        "BT.2020/PQ.")}.get(fmt, "")
    out: dict[str, tuple[Any, Any]] = {
        "bit_depth": (str, Input(BIT_DEPTHS[fmt][0], choices=_union(BIT_DEPTHS),
                                 description=depth_help)),
        "input_color_space": (str, Input("sRGB", choices=_union(COLOR_SPACES),
                                         description=color_help)),
    }
    if fmt == "avif":
        out["crf"] = (int, Input(18, min=1, max=63, description=(
            "Lower values produce higher quality and larger files.")))
        # ComfyUI nests a DynamicCombo here (save_mode → fps, loop_count); our engine
        # has one level, so fps and loop_count are always there and used when animated.
        out["save_mode"] = (str, Input(STILL, choices=[STILL, ANIMATED], description=(
            "still images: one file per image; animated: the whole batch as one "
            "animation.")))
        out["save_mode.fps"] = (float, Input(6.0, min=0.01, max=1000.0, step=0.01,
                                             description="Frames per second when animated."))
        out["save_mode.loop_count"] = (int, Input(0, min=0, max=1000, description=(
            "Number of times to loop the animation. 0 loops forever.")))
    return out


def _narrowed(specs: dict[str, InputSpec]) -> dict[str, InputSpec]:
    """``specs`` with each format's ``bit_depth`` and ``input_color_space`` offering only
    that format's choices (the schema each option shows, and what validation checks)."""
    combo = specs[FORMAT]
    tables = {f"{FORMAT}.bit_depth": BIT_DEPTHS, f"{FORMAT}.input_color_space": COLOR_SPACES}
    options = tuple(DynamicOption(o.key, tuple(
        replace(s, choices=list(tables[s.name][o.key])) if s.name in tables else s
        for s in o.inputs)) for o in combo.dynamic or ())
    return {**specs, FORMAT: replace(combo, dynamic=options)}


def _depth_problem(fmt: Any, depth: Any, space: Any) -> tuple[str, str] | None:
    """Why this build cannot write ``fmt`` at ``depth`` in ``space`` (AVIF is written by
    Pillow's libavif encoder, 8-bit and untagged beyond sRGB), or None."""
    if fmt != "avif":
        return None
    if space in ("HDR", "HDR PQ"):
        return (f"{FORMAT}.input_color_space", (
            f"AVIF in {space} needs a 10-bit BT.2020 encoder, which this build does not "
            "have: save HDR as exr (input_color_space HDR), or convert to sRGB with "
            "Convert Image Color Space and save that"))
    if depth == "10-bit YUV420":
        return (f"{FORMAT}.bit_depth", (
            "10-bit AVIF is not supported by this build: choose auto or 8-bit YUV420, or "
            "save as png 16-bit or exr for more than 8 bits"))
    return None


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().cpu().numpy()


def _quantized(image: torch.Tensor, levels: int) -> np.ndarray:
    """Values in [0, 1] (clamped) as integers 0..``levels`` (rounded)."""
    import numpy as np

    dtype = np.uint16 if levels > 255 else np.uint8
    values = np.nan_to_num(_to_numpy(image), nan=0.0)  # NaN: black, as Save Image
    return (np.clip(values, 0.0, 1.0) * levels).round().astype(dtype)


def exr_pixels(image: torch.Tensor, space: str) -> np.ndarray:
    """One ``[H, W, C]`` image as scene-linear float32 for EXR: sRGB decoded with the
    inverse sRGB EOTF, HDR with the inverse HLG OETF, linear as it is; alpha kept."""
    import torch

    from nodes.color_space import hlg_decode, srgb_decode

    decode = {"sRGB": srgb_decode, "HDR": hlg_decode}.get(space)
    pixels = image.float()
    if decode is not None:
        colour = pixels if pixels.shape[-1] == 1 else pixels[..., :3]
        rest = pixels[..., colour.shape[-1]:]
        pixels = torch.cat((decode(colour), rest), dim=-1)
    return _to_numpy(pixels)


class SaveImageAdvanced(NamedInputsNode):
    """Save images as PNG (8 or 16 bits per channel), OpenEXR (32-bit float, linear) or
    AVIF in the output folder, with the workflow embedded, and show them.

    Use png 16-bit to keep smooth gradients for editing, exr for HDR or compositing
    (set input_color_space to what the pixels are: sRGB, HDR for HLG from Convert
    Image Color Space, or linear), avif for small files (crf: lower is better; save_mode
    animated writes the batch as one animation at fps; 8-bit sRGB only in this build).
    The images pass through to the output. ``filename_prefix`` may contain a subfolder
    ('cats/cat')."""

    TYPE = "SaveImageAdvanced"
    DISPLAY_NAME = "Save Image (Advanced)"
    CATEGORY = "image"
    OUTPUT_NODE = True
    OUTPUTS = (Output("IMAGE", "images"),)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        fmt = inputs.get(FORMAT, "png")
        problems = prefix_problems(inputs, env, f".{fmt}" if fmt in BIT_DEPTHS else ".png")
        problem = _depth_problem(fmt, inputs.get(f"{FORMAT}.bit_depth"),
                                 inputs.get(f"{FORMAT}.input_color_space", "sRGB"))
        return [*problems, problem] if problem else problems

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return prefix_fingerprint(inputs.get("filename_prefix"))

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.limits import check_image

        values = self.inputs
        images = values["images"]
        check_image(images, "images")
        fmt = values[FORMAT]
        depth = values.get(f"{FORMAT}.bit_depth") or BIT_DEPTHS.get(fmt, ("",))[0]
        space = values.get(f"{FORMAT}.input_color_space") or "sRGB"
        if fmt not in BIT_DEPTHS:
            raise ValueError(f"format {fmt!r} is not one of {', '.join(BIT_DEPTHS)}")
        if depth not in BIT_DEPTHS[fmt] or space not in COLOR_SPACES[fmt]:
            raise ValueError(f"{fmt} takes bit_depth {' / '.join(BIT_DEPTHS[fmt])} and "
                             f"input_color_space {' / '.join(COLOR_SPACES[fmt])}, got "
                             f"{depth!r} and {space!r}")
        if problem := _depth_problem(fmt, depth, space):
            raise ValueError(problem[1])
        prefix = str(values.get("filename_prefix") or "Steerflow")
        ui: dict[str, list[Any]]
        if fmt == "png" and depth == "8-bit":
            from nodes.image import save_images

            ui = {"images": save_images(images, ctx, "output", prefix)}  # Save Image's
        else:
            ui = self._save(ctx, images, prefix, fmt, space)
        return NodeResult((images,), ui)

    def _save(self, ctx: ExecutionContext, images: torch.Tensor, prefix: str, fmt: str,
              space: str) -> dict[str, list[Any]]:
        from nodes.image_encoders import encode_avif, encode_exr, encode_png16
        from nodes.output_files import file_metadata

        meta = file_metadata(ctx)
        folder, subfolder, stem = split_prefix(ctx.env, "output", prefix, "Steerflow",
                                               (int(images.shape[-2]), int(images.shape[-3])),
                                               prompt=ctx.prompt)
        suffix = f".{fmt}"
        values = self.inputs
        animated = fmt == "avif" and values.get(f"{FORMAT}.save_mode") == ANIMATED
        crf = int(values.get(f"{FORMAT}.crf") or 18)
        fps = float(values.get(f"{FORMAT}.save_mode.fps") or 6.0) if animated else None
        if animated and int(values.get(f"{FORMAT}.save_mode.loop_count") or 0):
            log.warning("Save Image (Advanced): this AVIF encoder writes no loop count; the "
                        "animation loops forever (format.save_mode.loop_count ignored)")
        batches = [list(images)] if animated else [[image] for image in images]
        primaries = "BT.2020" if space == "HDR" else "BT.709"

        def encode(batch: list[torch.Tensor]) -> bytes:
            if fmt == "avif":
                return encode_avif([_quantized(i, 255) for i in batch], meta, crf, fps)
            if fmt == "exr":
                return encode_exr(exr_pixels(batch[0], space), meta, primaries)
            return encode_png16(_quantized(batch[0], 65535), meta)

        results = []
        number = None
        for batch in batches:
            data = encode(batch)

            def write(tmp: Path, data: bytes = data) -> None:
                tmp.write_bytes(data)

            path, number = save_numbered(folder, stem, suffix, write, number)
            results.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
        ui: dict[str, list[Any]] = {"images": results}
        if animated and len(images) > 1:
            ui["animated"] = [True]
        return ui


SaveImageAdvanced.INPUT_SPECS = _narrowed({
    "images": input_spec("images", Any, Input(type="IMAGE",
                                              description="The images to save.")),
    "filename_prefix": input_spec("filename_prefix", str, Input("Steerflow", description=(
        "The prefix for the file to save; may contain a subfolder: 'cats/cat'."))),
    **dynamic_combo(FORMAT, {fmt: _format_inputs(fmt) for fmt in BIT_DEPTHS},
                    description="The file format in which to save the image."),
})

NODE_CLASSES = (SaveImageAdvanced,)
