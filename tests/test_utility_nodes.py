"""ComfyUI's utility nodes: String (Multiline), Load Image (from Outputs), Preview Mask and
the RGB ⇄ YUV conversions — schemas as ComfyUI defines them, outputs, and the output
folder's confinement."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import PromptValidationError
from engine.paths import PathError
from engine.session import Session
from nodes.image import LoadImage, LoadImageOutput, MaskPreview, PreviewImage
from nodes.image_ops import ImageRGBToYUV, ImageYUVToRGB, rgb_to_yuv, yuv_to_rgb
from nodes.primitives import MAX_STRING_CHARS, PrimitiveString, PrimitiveStringMultiline
from tests.graph_nodes import CAPTURED, registry_with_capture


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    for role in ("input", "output", "temp"):
        (home / role).mkdir()
    return Session(home, device="cpu", registry=registry_with_capture())


def put(session, role: str, rel: str, color=(255, 0, 0, 255), size=(8, 6)) -> str:
    path = session.env.folder(role) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, color).save(path)
    return rel


def capture(session, prompt: dict[str, Any], *outputs: tuple[str, int]) -> list[Any]:
    """Run ``prompt`` with a capture node on each ``(node, index)``; the captured values."""
    keys = [uuid.uuid4().hex for _ in outputs]
    prompt = dict(prompt)
    for k, (key, src) in enumerate(zip(keys, outputs, strict=True)):
        prompt[f"cap{k}"] = {"class_type": "TestCapture",
                             "inputs": {"value": list(src), "key": key}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return [CAPTURED.pop(key) for key in keys]


def issues(session, prompt: dict[str, Any]) -> list[tuple[str, str | None]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.kind, i.input_name) for i in info.value.issues if i.severity == "error"]


# --- String (Multiline) -----------------------------------------------------------------------

def test_primitive_string_multiline_is_comfyuis():
    schema = PrimitiveStringMultiline.schema()
    assert (schema["name"], schema["display_name"], schema["category"]) == (
        "PrimitiveStringMultiline", "String (Multiline)", "utils/primitive")
    assert schema["input"]["required"] == {"value": ["STRING", {"default": "",
                                                                "multiline": True}]}
    assert schema["output"] == ["STRING"] and not schema["output_node"]
    text = "line one\n  line two ✓\n"
    assert PrimitiveStringMultiline(value=text).execute(None) == (text,)
    assert PrimitiveStringMultiline(value="").execute(None) == ("",)
    with pytest.raises(ValueError, match="PrimitiveStringMultiline: value is 1000001"):
        PrimitiveStringMultiline(value="x" * (MAX_STRING_CHARS + 1)).execute(None)
    assert PrimitiveString.schema()["category"] == schema["category"]


def test_a_comfyui_file_with_string_multiline_converts_and_runs(session):
    wf = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {},
          "extra": {},
          "nodes": [{"id": 1, "type": "PrimitiveStringMultiline", "pos": [0, 0],
                     "size": [300, 100], "mode": 0,
                     "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}],
                     "widgets_values": ["[\n  {\"x\": 393}\n]"]},
                    {"id": 2, "type": "PreviewAny", "pos": [400, 0], "size": [300, 100],
                     "mode": 0, "inputs": [{"name": "source", "type": "*", "link": 1}],
                     "widgets_values": []}],
          "links": [[1, 1, 0, 2, 0, "STRING"]]}
    result = session.run(wf)
    assert result.ok, result.run.error
    assert result.run.outputs["2"]["text"] == ['[\n  {"x": 393}\n]']


# --- Load Image (from Outputs) ----------------------------------------------------------------

def load_output(session, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = capture(session, {"l": {"class_type": "LoadImageOutput",
                                          "inputs": {"image": name}}}, ("l", 0), ("l", 1))
    return image, mask


def test_load_image_output_schema_is_comfyuis(session):
    schema = LoadImageOutput.schema(session.env)
    assert (schema["name"], schema["display_name"], schema["category"]) == (
        "LoadImageOutput", "Load Image (from Outputs)", "image")
    assert schema["input_order"] == {"required": ["image"], "optional": []}
    assert schema["output"] == ["IMAGE", "MASK"]
    assert schema["description"]
    assert issubclass(LoadImageOutput, LoadImage)  # one loading code path


def test_load_image_output_lists_the_output_folder_newest_first(session):
    put(session, "output", "list/old.png")
    put(session, "output", "list/new.png")
    put(session, "input", "list_input_only.png")
    out = session.env.folder("output")
    os.utime(out / "list/old.png", (time.time() - 100, time.time() - 100))
    choices = LoadImageOutput.schema(session.env)["input"]["required"]["image"][0]
    assert all(c.endswith(" [output]") for c in choices)
    assert choices.index("list/new.png [output]") < choices.index("list/old.png [output]")
    assert not any("list_input_only" in c for c in choices)
    (out / "list" / "notes.txt").write_text("not an image")
    assert "list/notes.txt [output]" not in LoadImageOutput.schema(
        session.env)["input"]["required"]["image"][0]


def test_load_image_output_loads_annotated_and_plain_names(session):
    put(session, "output", "run1/result.png", color=(0, 255, 0, 128))
    image, mask = load_output(session, "run1/result.png [output]")
    assert image.shape == (1, 6, 8, 3) and mask.shape == (1, 6, 8)
    assert image[0, 0, 0].tolist() == [0, 1, 0]
    assert mask[0, 0, 0].item() == pytest.approx(1 - 128 / 255)  # 1 - alpha, as LoadImage
    # ComfyUI's UI files hold the annotated name; a plain name means the output folder too
    plain, _ = load_output(session, "run1/result.png")
    assert torch.equal(plain, image)
    # LoadImage with the same annotated name reads the same file the same way
    same, same_mask = capture(session, {"l": {"class_type": "LoadImage", "inputs": {
        "image": "run1/result.png [output]"}}}, ("l", 0), ("l", 1))
    assert torch.equal(same, image) and torch.equal(same_mask, mask)
    # a new result under the same name re-runs it (the cache follows the file's content)
    put(session, "output", "run1/result.png", color=(0, 0, 255, 255))
    assert load_output(session, "run1/result.png [output]")[0][0, 0, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize(("name", "error"), [
    ("../input/in.png [output]", PathError),        # .. out of the output folder
    ("../input/in.png", PathError),
    ("/etc/passwd [output]", PathError),            # absolute
    ("in.png [input]", PathError),                  # another folder's annotation
    ("prev.png [temp]", PathError),
    ("escape.png [output]", PathError),             # a symlink to a file outside it
    ("escape_dir/in.png [output]", PathError),      # through a symlinked folder
    (" [output]", PathError),                       # no name
    ("missing.png [output]", FileNotFoundError),
    ("sub [output]", ValueError),                   # a folder, not an image
])
def test_load_image_output_never_leaves_the_output_folder(session, name, error):
    put(session, "input", "in.png")
    put(session, "temp", "prev.png")
    put(session, "output", "sub/x.png")
    out = session.env.folder("output")
    if not (out / "escape.png").is_symlink():
        (out / "escape.png").symlink_to(session.env.folder("input") / "in.png")
        (out / "escape_dir").symlink_to(session.env.folder("input"), target_is_directory=True)
    prompt = {"l": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
              "c": {"class_type": "TestCapture", "inputs": {"value": ["l", 0]}}}
    assert issues(session, prompt) == [("not_in_choices", "image")]
    # nor when the node runs without validation: one confined lookup for both
    with pytest.raises(error):
        LoadImageOutput.model_construct(image=name).execute(_Ctx(session))
    assert LoadImageOutput.fingerprint({"image": name}, session.env) is None
    choices = LoadImageOutput.schema(session.env)["input"]["required"]["image"][0]
    assert not any("escape" in c for c in choices)


def test_symlinks_inside_the_output_folder_load(session):
    put(session, "output", "real/target.png", color=(255, 255, 0, 255))
    out = session.env.folder("output")
    link = out / "alias.png"
    if not link.is_symlink():
        link.symlink_to(out / "real" / "target.png")
    assert "alias.png [output]" in LoadImageOutput.schema(
        session.env)["input"]["required"]["image"][0]
    assert load_output(session, "alias.png [output]")[0][0, 0, 0].tolist() == [1, 1, 0]


class _Ctx:
    """The little of an ExecutionContext that loading reads."""

    def __init__(self, session: Session):
        self.env = session.env
        self.device = "cpu"


def test_load_image_output_refuses_broken_files(session):
    (session.env.folder("output") / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"'broken.png \[output\]' is not a readable image"):
        LoadImageOutput(image="broken.png [output]").execute(_Ctx(session))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels (a bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_a_clear_error_in_every_loader(session):
    """Pillow's own DecompressionBombError ("could be decompression bomb DOS attack")
    came out as the error's type: every loader says how many pixels, and what to do."""
    from nodes.masks import LoadImageMask

    (session.env.folder("input") / "bomb.png").write_bytes(_png_header(20000, 20000))
    for node in (LoadImage(image="bomb.png"), LoadImageMask(image="bomb.png", channel="alpha")):
        with pytest.raises(ValueError, match=r"'bomb.png' is not a readable image: it has "
                                             r"400000000 pixels, over the \d+ .*scale it down"):
            node.execute(_Ctx(session))


# --- Preview Mask -----------------------------------------------------------------------------

def test_mask_preview_schema_is_comfyuis():
    schema = MaskPreview.schema()
    assert (schema["name"], schema["display_name"], schema["category"]) == (
        "MaskPreview", "Preview Mask", "mask")
    assert schema["output_node"] and schema["output"] == []
    assert schema["input"]["required"] == {"mask": ["MASK", {}]}


def test_mask_preview_writes_a_grey_preview_to_temp(session):
    prompt = {"m": {"class_type": "SolidMask", "inputs": {"value": 0.25, "width": 10,
                                                          "height": 7}},
              "p": {"class_type": "MaskPreview", "inputs": {"mask": ["m", 0]}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    (entry,) = result.run.outputs["p"]["images"]
    assert entry["type"] == "temp" and entry["filename"].endswith(".png")
    (path,) = result.image_paths
    assert path.parent == session.env.folder("temp") / entry["subfolder"]
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (10, 7)
        assert np.unique(np.asarray(img)).tolist() == [int(0.25 * 255)]  # ComfyUI cuts down
    assert not any(session.env.folder("output").glob("preview_*"))  # not kept


def test_mask_preview_takes_every_mask_layout_and_a_batch(session):
    ctx = _Ctx(session)
    ctx.prompt, ctx.extra = {}, {}
    ramp = torch.linspace(0, 1, 12).reshape(3, 4)
    for mask in (ramp, ramp[None].repeat(2, 1, 1), ramp[None, None]):
        entries = MaskPreview(mask=mask).execute(ctx).ui["images"]
        assert len(entries) == mask.reshape(-1, 3, 4).shape[0]
        with Image.open(session.env.resolve("temp", entries[0]["subfolder"],
                                            entries[0]["filename"])) as img:
            pixels = np.asarray(img)
        assert pixels.shape == (3, 4, 3)
        assert (pixels == np.floor(ramp.numpy() * 255)[..., None]).all()
    with pytest.raises(ValueError, match="the mask is empty"):
        MaskPreview(mask=torch.zeros(1, 0, 4)).execute(ctx)
    with pytest.raises(ValueError, match="a mask must be"):
        MaskPreview(mask=torch.zeros(1, 2, 3, 4)).execute(ctx)


def test_mask_preview_and_preview_image_write_the_same_file(session):
    ctx = _Ctx(session)
    ctx.prompt, ctx.extra = {}, {}
    mask = torch.rand(1, 5, 6)

    def pixels(result) -> np.ndarray:
        (entry,) = result.ui["images"]
        with Image.open(session.env.resolve("temp", entry["subfolder"], entry["filename"])) as im:
            return np.asarray(im)

    grey = mask[..., None].expand(-1, -1, -1, 3)
    assert np.array_equal(pixels(MaskPreview(mask=mask).execute(ctx)),
                          pixels(PreviewImage(images=grey).execute(ctx)))


# --- RGB ⇄ YUV --------------------------------------------------------------------------------

def test_yuv_schemas_are_comfyuis():
    to_yuv, to_rgb = ImageRGBToYUV.schema(), ImageYUVToRGB.schema()
    assert to_yuv["name"] == "ImageRGBToYUV" and to_rgb["name"] == "ImageYUVToRGB"
    assert to_yuv["input_order"]["required"] == ["image"]
    assert to_yuv["output"] == ["IMAGE"] * 3 and to_yuv["output_name"] == ["Y", "U", "V"]
    assert to_rgb["input_order"]["required"] == ["Y", "U", "V"]
    assert all(spec == ["IMAGE", {}] for spec in to_rgb["input"]["required"].values())
    assert to_rgb["output"] == ["IMAGE"]


@pytest.mark.parametrize(("rgb", "yuv"), [
    # kornia's rgb_to_ycbcr: Y = .299R + .587G + .114B, U = (B - Y)·.564 + .5,
    # V = (R - Y)·.713 + .5
    ((0, 0, 0), (0, 0.5, 0.5)),
    ((1, 1, 1), (1, 0.5, 0.5)),
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((1, 0, 0), (0.299, 0.5 - 0.299 * 0.564, 0.5 + 0.701 * 0.713)),
    ((0, 1, 0), (0.587, 0.5 - 0.587 * 0.564, 0.5 - 0.587 * 0.713)),
    ((0, 0, 1), (0.114, 0.5 + 0.886 * 0.564, 0.5 - 0.114 * 0.713)),
    ((0.2, 0.4, 0.6), (0.363, 0.5 + 0.237 * 0.564, 0.5 - 0.163 * 0.713)),
])
def test_rgb_to_yuv_known_values(rgb, yuv):
    image = torch.tensor(rgb, dtype=torch.float32).expand(2, 3, 4, 3).contiguous()
    y, u, v = ImageRGBToYUV(image=image).execute(None)
    for plane, want in zip((y, u, v), yuv, strict=True):
        assert plane.shape == (2, 3, 4, 3)  # a grey IMAGE per channel, as ComfyUI's
        assert torch.allclose(plane, torch.full_like(plane, want), atol=1e-6)
    back = ImageYUVToRGB(Y=y, U=u, V=v).execute(None)[0]
    assert torch.allclose(back, image, atol=3e-4)


def test_yuv_round_trip_on_random_images():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 17, 23, 3, generator=gen)
    y, u, v = ImageRGBToYUV(image=image).execute(None)
    planes = torch.stack((y, u, v))
    assert planes.min() >= 0 and planes.max() <= 1
    back = ImageYUVToRGB(Y=y, U=u, V=v).execute(None)[0]
    assert back.shape == image.shape and back.dtype == image.dtype
    # kornia's constants are rounded to 3 decimals: the round trip is exact to ~2e-4
    assert (back - image).abs().max() < 3e-4
    # and the functions are inverses of each other on the YUV side too
    yuv = rgb_to_yuv(image)
    assert (rgb_to_yuv(yuv_to_rgb(yuv)) - yuv).abs().max() < 3e-4


def test_yuv_alpha_and_grey_images():
    rgba = torch.rand(1, 4, 5, 4)
    y, u, v = ImageRGBToYUV(image=rgba).execute(None)
    rgb = ImageRGBToYUV(image=rgba[..., :3].contiguous()).execute(None)
    assert y.shape[-1] == 3 and all(  # alpha left out
        torch.equal(a, b) for a, b in zip((y, u, v), rgb, strict=True))
    grey = torch.rand(1, 4, 5, 1)
    y, u, v = ImageRGBToYUV(image=grey).execute(None)
    assert torch.allclose(y[..., 0], grey[..., 0], atol=1e-6)
    assert torch.allclose(u, torch.full_like(u, 0.5), atol=1e-6)
    # Y, U, V given as one-channel images are read as they are
    back = ImageYUVToRGB(Y=y[..., :1], U=u[..., :1], V=v[..., :1]).execute(None)[0]
    assert torch.allclose(back, grey.expand(-1, -1, -1, 3), atol=3e-4)


def test_yuv_to_rgb_edits_and_errors():
    y = torch.full((1, 2, 2, 3), 0.5)
    grey = torch.full((1, 2, 2, 3), 0.5)
    # pushing V to its top turns grey red; beyond the RGB range the result is clamped
    red = ImageYUVToRGB(Y=y, U=grey, V=torch.ones(1, 2, 2, 3)).execute(None)[0]
    assert red[0, 0, 0].tolist() == pytest.approx([1.0, 0.5 - 0.714 * 0.5, 0.5], abs=1e-6)
    assert red.min() >= 0 and red.max() <= 1
    with pytest.raises(ValueError, match="same batch size, width and height"):
        ImageYUVToRGB(Y=y, U=grey, V=torch.ones(1, 3, 2, 3)).execute(None)
    with pytest.raises(ValueError, match="the V must be an IMAGE"):
        ImageYUVToRGB(Y=y, U=grey, V=torch.ones(2, 2, 3)).execute(None)
    with pytest.raises(ValueError, match="the image must be an IMAGE"):
        ImageRGBToYUV(image=torch.ones(1, 2, 2, 2)).execute(None)


def test_yuv_round_trip_through_the_engine(session):
    put(session, "output", "yuv/src.png", color=(200, 30, 90, 255), size=(5, 4))
    image, back = capture(session, {
        "l": {"class_type": "LoadImageOutput", "inputs": {"image": "yuv/src.png [output]"}},
        "s": {"class_type": "ImageRGBToYUV", "inputs": {"image": ["l", 0]}},
        "j": {"class_type": "ImageYUVToRGB", "inputs": {"Y": ["s", 0], "U": ["s", 1],
                                                        "V": ["s", 2]}},
    }, ("l", 0), ("j", 0))
    assert (back - image).abs().max() < 3e-4


@pytest.mark.parametrize("images", [torch.zeros(48, 64), [torch.zeros(1, 8, 8, 3)], "x"])
def test_save_and_preview_image_refuse_what_is_no_image_in_words(images):
    """A pack's malformed IMAGE reaching Save / Preview Image: our message, not the
    IndexError or AttributeError of reading its size."""
    from nodes.image import save_images

    with pytest.raises(ValueError, match=r"the image must be an IMAGE \[B, H, W, C\]"):
        save_images(images, None, "temp", "x")
