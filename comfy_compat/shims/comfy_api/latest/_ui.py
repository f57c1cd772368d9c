"""``comfy_api.latest.ui``: what a V3 node shows (``NodeOutput(ui=...)``).

Images are written by Steerflow's own writers (:func:`nodes.image.save_images`,
:func:`nodes.image.preview_images`: numbered, atomic, the prompt and workflow
embedded), so the ``executed`` payload is the one Steerflow's SaveImage / PreviewImage
give: ``{"images": [{"filename", "subfolder", "type"}], ...}``. Saving audio, video,
animated images and 3D previews is not provided (a clear error names it).
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime
from comfy_compat.shims._missing import missing_attributes, missing_message

from ._node import _UIOutput
from ._types import FolderType


def _context(what: str) -> Any:
    ctx = runtime.current_context()
    if ctx is None:
        raise RuntimeError(f"comfy_api.latest.ui.{what} works only while a node runs")
    return ctx


class SavedResult(dict):
    """One written file, as the front end reads it."""

    def __init__(self, filename: str, subfolder: str, type: FolderType | str):
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list[Any], is_animated: bool = False):
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.results} | ({"animated": (True,)} if self.is_animated else {})


class SavedAudios(_UIOutput):
    def __init__(self, results: list[Any]):
        self.results = results

    def as_dict(self) -> dict[str, Any]:
        return {"audio": self.results}


def _refuse(what: str) -> Any:
    message = missing_message(f"comfy_api.latest.ui.{what}", "not provided")

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(message)

    return staticmethod(refuse)


class ImageSaveHelper:
    """Save a batch of images as numbered PNGs (Steerflow's writer)."""

    @staticmethod
    def save_images(images: Any, filename_prefix: str, folder_type: FolderType | str,
                    cls: Any = None, compress_level: int = 4) -> list[SavedResult]:
        from nodes.image import save_images

        role = FolderType(folder_type).value
        written = save_images(images, _context("ImageSaveHelper.save_images"), role,
                              filename_prefix)
        return [SavedResult(r["filename"], r["subfolder"], r["type"]) for r in written]

    @staticmethod
    def get_save_images_ui(images: Any, filename_prefix: str, cls: Any = None,
                           compress_level: int = 4) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix,
                                                       FolderType.output, cls, compress_level))

    save_animated_png = _refuse("ImageSaveHelper.save_animated_png")
    get_save_animated_png_ui = _refuse("ImageSaveHelper.get_save_animated_png_ui")
    save_animated_webp = _refuse("ImageSaveHelper.save_animated_webp")
    get_save_animated_webp_ui = _refuse("ImageSaveHelper.get_save_animated_webp_ui")


class PreviewImage(_UIOutput):
    """Images shown under the node (the temp folder, as Steerflow's PreviewImage)."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **_kwargs: Any):
        from nodes.image import preview_images

        shown = preview_images(image, _context(type(self).__name__)).ui or {}
        self.values = [SavedResult(r["filename"], r["subfolder"], r["type"])
                       for r in shown.get("images", ())]
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """A mask shown as a grey image."""

    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kwargs: Any):
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1)
        super().__init__(image.expand(-1, -1, -1, 3), animated, cls, **kwargs)


class PreviewText(_UIOutput):
    def __init__(self, value: str, **_kwargs: Any):
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}


class PreviewVideo(_UIOutput):
    """Files the node already wrote, shown as an animation."""

    def __init__(self, values: list[Any], **_kwargs: Any):
        self.values = values

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (True,)}


class AudioSaveHelper:
    save_audio = _refuse("AudioSaveHelper.save_audio")
    get_save_audio_ui = _refuse("AudioSaveHelper.get_save_audio_ui")


class PreviewAudio(_UIOutput):
    def __init__(self, *args: Any, **kwargs: Any):
        _refuse("PreviewAudio").__func__()


__all__ = ["AudioSaveHelper", "ImageSaveHelper", "PreviewAudio", "PreviewImage",
           "PreviewMask", "PreviewText", "PreviewVideo", "SavedAudios", "SavedImages",
           "SavedResult"]

__getattr__ = missing_attributes("comfy_api.latest.ui", "not provided")
