"""Images in and out: load from input/ (or output/), save to output/ with the workflow
embedded, preview images and masks through temp/."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.environment import not_regular, open_regular, special_file
from engine.paths import ANNOTATED_NAME, PathError, split_annotated
from nodes.diffusion.handles import Tensor
from nodes.image_decode import frames, rgba_levels
from nodes.limits import FLOAT32, check_fits, check_image
from nodes.output_files import (
    SavesNumberedFiles,
    file_metadata,
    next_number,
    save_numbered,
    split_prefix,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


IMAGE_ROLES = ("input", "output", "temp")


#: the mask editor's (ours and ComfyUI's) scratch folder under input/: each Save writes a
#: file there, which would crowd every image list; the editor sets the node to its file by
#: an annotated name, which is accepted without being listed (as in ComfyUI)
SCRATCH_FOLDER = "clipspace/"


def list_input_images(env: Environment) -> list[str]:
    return [name for name in env.list_files("input", suffixes=IMAGE_SUFFIXES)
            if not name.startswith(SCRATCH_FOLDER)]


def list_output_images(env: Environment) -> list[str]:
    """The output folder's images as Load Image (from Outputs) offers them: annotated
    ``name.png [output]`` names, the newest first (as ComfyUI lists them)."""
    folder = env.folder("output")

    def age(name: str) -> tuple[float, str]:
        try:
            return -(folder / name).stat().st_mtime, name
        except OSError:
            return 0.0, name

    names = env.list_files("output", suffixes=IMAGE_SUFFIXES)
    return [f"{name} [output]" for name in sorted(names, key=age)]


def resolve_image(env: Environment, name: str) -> Path:
    """The file an (annotated) image name names, confined to its role's folder:
    ``..``, absolute paths and symlinks out raise :class:`engine.paths.PathError`."""
    role, rel = split_annotated(name)
    if not rel:
        raise PathError(f"{name!r} names no file")
    return env.resolve(role, rel)


def annotated_image_exists(value: Any, env: Environment) -> bool:
    """LoadImage's ``also_accept``: an annotated name whose file exists in its folder (a
    plain name must still be one of the input folder's files, or in its unlisted
    ``clipspace/``), or any name of a FIFO,
    socket or device, which the node's ``validate_inputs`` then refuses saying what it
    is (the file is in the folder, so "not one of" the list would puzzle)."""
    if not isinstance(value, str):
        return False
    try:
        path = resolve_image(env, value)
    except (PathError, KeyError):
        return False
    if special_file(path) is not None:
        return True
    named_so = ANNOTATED_NAME.match(value) is not None \
        or value.replace("\\", "/").startswith(SCRATCH_FOLDER)
    return named_so and path.is_file()


def special_image_problem(locate: Any, inputs: dict[str, Any], env: Environment
                          ) -> list[tuple[str | None, str]]:
    """The validation issue of an ``image`` naming a FIFO, socket or device (a capture
    tool's pipe, a sync tool's copy): refused before the run, never opened."""
    name = inputs.get("image")
    if not isinstance(name, str):
        return []
    try:
        path = locate(env, name)[1]
    except (PathError, KeyError, ValueError):
        return []  # the choices check reports it
    kind = special_file(path)
    return [] if kind is None else [("image", str(not_regular(name, kind)))]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unreadable_image(label: str, exc: Exception) -> ValueError:
    """The error for a file Pillow cannot read, without Pillow's paths or object reprs."""
    if type(exc).__name__ == "UnidentifiedImageError":
        why = "its content is not an image format Pillow knows (PNG, JPEG, WebP, ...)"
    elif type(exc).__name__ == "DecompressionBombError":
        pixels = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
        why = (f"it has {int(pixels[1])} pixels, over the {int(pixels[2])} an image may have "
               "(Pillow's guard against decompression bombs); scale it down first"
               if pixels else "it has too many pixels; scale it down first")
    else:
        why = re.sub(r"\s*('/[^']*'|<[^>]* at 0x[0-9a-f]+>)", "", str(exc)).strip(" :") \
            or type(exc).__name__
    return ValueError(f"{label!r} is not a readable image: {why}")


# Pillow's LOAD_TRUNCATED_IMAGES is a module global: only one retry sets it at a time
_TRUNCATED = threading.Lock()


def load_pillow(img: Image.Image) -> None:
    """``img.load()``; a file cut short loads as far as it goes, as ComfyUI's
    node_helpers.pillow reads it (a retry with LOAD_TRUNCATED_IMAGES, set for that retry
    only), and as the server's upload, /view and /upload/mask read it."""
    from PIL import ImageFile

    try:
        img.load()
    except OSError:
        with _TRUNCATED:
            before = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = before


def pil_to_image(img: Image.Image, upright: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL → (IMAGE ``[1, H, W, 3]``, MASK ``[1, H, W]``; mask = 1 - alpha, as ComfyUI).
    Deep grey images (16-bit PNGs, 32-bit TIFFs) keep their levels (image_decode);
    ``upright``: the EXIF orientation is applied already."""
    import torch
    from PIL import ImageOps

    arr = rgba_levels(img if upright else ImageOps.exif_transpose(img))
    image = torch.from_numpy(arr[..., :3].copy())[None]
    mask = 1.0 - torch.from_numpy(arr[..., 3].copy())[None]
    return image, mask


def image_to_pil(image: torch.Tensor, truncate: bool = False) -> list[Image.Image]:
    """IMAGE ``[B, H, W, C]`` → PIL images, each level rounded (as diffusers' ``numpy_to_pil``)
    or, with ``truncate``, cut down as ComfyUI's Save Image does (0.25 → 63, not 64), so that
    saved files are the levels ComfyUI writes for the same tensor."""
    import numpy as np
    from PIL import Image

    check_image(image, "image")  # a 3-D tensor would save each row as an image
    levels = image.detach().float().cpu().clamp(0, 1).numpy() * 255.0
    arr = (levels if truncate else levels.round()).astype(np.uint8)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


class LoadImage(Node):
    """Load an image from the input folder; its alpha channel becomes a mask.

    ComfyUI's annotated names load from the other folders: ``name.png [output]``,
    ``sub/name.png [temp]`` (``[input]`` or no annotation: the input folder)."""

    TYPE = "LoadImage"
    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    image: str = Input(..., choices=list_input_images, also_accept=annotated_image_exists,
                       upload="image", description="A file in the input folder, or an "
                       "annotated name: 'x.png [output]', 'sub/x.png [temp]'")

    @classmethod
    def locate(cls, env: Environment, name: str) -> tuple[str, Path]:
        """The folder role and confined path ``name`` loads from; PathError when it names
        no file of that folder (``..``, absolute, a symlink out)."""
        return split_annotated(name)[0], resolve_image(env, name)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return special_image_problem(cls.locate, inputs, env)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        try:
            path = cls.locate(env, inputs["image"])[1]
        except (PathError, KeyError):
            return None
        return file_sha256(path) if path.is_file() else None

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        from PIL import Image

        role, path = self.locate(ctx.env, self.image)
        try:
            with open_regular(path, self.image) as fh, Image.open(fh) as img:
                load_pillow(img)
                if getattr(img, "n_frames", 1) > 1:
                    check_fits(img.width * img.height * 4 * FLOAT32 * img.n_frames,
                               ctx.device, f"{img.n_frames} frames of {img.width}x"
                               f"{img.height} px", "load fewer frames (split the file)")
                loaded = [pil_to_image(frame, upright=True) for frame in frames(img)]
        except FileNotFoundError:
            raise FileNotFoundError(f"image {self.image!r} not found in the {role} folder"
                                    ) from None
        except (OSError, Image.DecompressionBombError) as exc:
            raise unreadable_image(self.image, exc) from None
        # an animated file: its frames (of the first one's size) as a batch, as ComfyUI
        image = torch.cat([i for i, _ in loaded]) if len(loaded) > 1 else loaded[0][0]
        mask = torch.cat([m for _, m in loaded]) if len(loaded) > 1 else loaded[0][1]
        return image.to(ctx.device), mask.to(ctx.device)


def output_image_exists(value: Any, env: Environment) -> bool:
    """Load Image (from Outputs)'s ``also_accept``: a file of the output folder named
    without the ``[output]`` annotation (or not listed); a special file, as
    :func:`annotated_image_exists`, to be refused by name."""
    if not isinstance(value, str):
        return False
    try:
        path = LoadImageOutput.locate(env, value)[1]
    except (PathError, KeyError):
        return False
    return path.is_file() or special_file(path) is not None


class LoadImageOutput(LoadImage):
    """Load an image from the output folder (an earlier result, to iterate on it); its
    alpha channel becomes a mask. The list puts the newest image first.

    Names are ComfyUI's ``name.png [output]`` (a plain name also means the output
    folder); they never reach outside it, whether by ``..`` or by a symlink."""

    TYPE = "LoadImageOutput"
    DISPLAY_NAME = "Load Image (from Outputs)"
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    image: str = Input(..., choices=list_output_images, also_accept=output_image_exists,
                       description="An image in the output folder: 'x.png [output]'")

    @classmethod
    def locate(cls, env: Environment, name: str) -> tuple[str, Path]:
        role, rel = split_annotated(name)
        if ANNOTATED_NAME.match(name) is not None and role != "output":
            raise PathError(f"{name!r} is in the {role} folder; Load Image (from Outputs) "
                            "reads the output folder only (use Load Image)")
        if not rel:
            raise PathError(f"{name!r} names no file")
        return "output", env.resolve("output", rel)


def save_images(images: torch.Tensor, ctx: ExecutionContext, role: str, prefix: str
                ) -> list[dict[str, str]]:
    """Write PNGs with the prompt and workflow embedded (each atomically, under the next
    free number); returns UI file entries."""
    from PIL import PngImagePlugin

    check_image(images, "image")  # before its size names the file
    folder, subfolder, stem = split_prefix(ctx.env, role, prefix, "Steerflow",
                                           (int(images.shape[-2]), int(images.shape[-3])),
                                           prompt=ctx.prompt)
    info = PngImagePlugin.PngInfo()
    for key, value in file_metadata(ctx).items():
        info.add_text(str(key), json.dumps(value))
    number = next_number(folder, stem, ".png")
    results = []
    for img in image_to_pil(images, truncate=True):
        path, number = save_numbered(
            folder, stem, ".png",
            lambda tmp, img=img: img.save(tmp, format="PNG", pnginfo=info, compress_level=4),
            number)
        results.append({"filename": path.name, "subfolder": subfolder, "type": role})
    return results


class SaveImage(SavesNumberedFiles):
    """Save images as PNG in the output folder, with the workflow embedded."""

    TYPE = "SaveImage"
    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    OUTPUTS = ()

    images: Tensor = Input(type="IMAGE")
    filename_prefix: str = Input("Steerflow", description="May contain a subfolder: 'cats/cat'")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        return NodeResult((), {"images": save_images(self.images, ctx, "output",
                                                     self.filename_prefix)})


def preview_images(images: torch.Tensor, ctx: ExecutionContext) -> NodeResult:
    """Write IMAGE ``[B, H, W, C]`` to the temp folder as PNGs under a fresh prefix; the
    UI entries that show them."""
    prefix = f"preview_{secrets.token_hex(4)}"
    return NodeResult((), {"images": save_images(images, ctx, "temp", prefix)})


class PreviewImage(Node):
    """Show images without keeping them (written to the temp folder)."""

    TYPE = "PreviewImage"
    DISPLAY_NAME = "Preview Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    OUTPUTS = ()

    images: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        return preview_images(self.images, ctx)


class MaskPreview(Node):
    """Show a mask as a grey image (white where it is 1) without keeping it, as Preview
    Image does (written to the temp folder)."""

    TYPE = "MaskPreview"
    DISPLAY_NAME = "Preview Mask"
    CATEGORY = "mask"
    OUTPUT_NODE = True
    OUTPUTS = ()

    mask: Tensor = Input(type="MASK")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.masking import as_mask4d

        mask = as_mask4d(self.mask)  # [H, W], [B, H, W] or [B, 1, H, W]
        if 0 in mask.shape:
            raise ValueError(f"the mask is empty (shape {tuple(self.mask.shape)}): it needs "
                             "at least one mask of at least 1x1 pixels")
        return preview_images(mask[:, 0, :, :, None].expand(-1, -1, -1, 3), ctx)


class SaveImageWebsocket(Node):
    """Send images to the client that queued the prompt, as binary websocket frames.

    ComfyUI's node of the same name (its ``websockets_api_example_ws_images.py``
    uses it): each image arrives as one binary frame, a big-endian uint32 event
    type 1 and image type 2 (PNG) followed by the PNG, so ``frame[8:]`` is the
    file. Nothing is written to disk and nothing is sent without a connected
    websocket client. It runs on every prompt (never served from the cache), so
    queuing the same prompt twice sends the images twice.
    """

    TYPE = "SaveImageWebsocket"
    DISPLAY_NAME = "Save Image (Websocket)"
    CATEGORY = "api node/image"
    OUTPUT_NODE = True
    OUTPUTS = ()

    images: Tensor = Input(type="IMAGE")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return secrets.token_hex(8)  # ComfyUI's IS_CHANGED returns time.time(): always run

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        for img in image_to_pil(self.images, truncate=True):
            ctx.send_image(img)
        return NodeResult(())


NODE_CLASSES = (LoadImage, LoadImageOutput, SaveImage, PreviewImage, MaskPreview,
                SaveImageWebsocket)
