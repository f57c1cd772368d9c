"""Save Image (Advanced) (ComfyUI's ``SaveImageAdvanced``) and Convert Image Color Space
(``ImageColorSpace``): the transfer functions against the standards' reference values,
16-bit PNG and float EXR round trips, metadata, numbered atomic files confined to
output/, the DynamicCombo schema and UI workflows, and the errors."""

from __future__ import annotations

import io
import json
import math
import struct
import uuid
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine import ExecutionContext, Input, Node, Output, PromptValidationError
from engine.comfy_workflow import map_widget_values, node_def
from engine.session import Session
from nodes import color_space as cs
from nodes.color_space import ImageColorSpace, convert_color_space
from nodes.image_encoders import avif_quality, encode_exr, encode_png16
from nodes.image_formats import SaveImageAdvanced
from tests.graph_nodes import CAPTURED, registry_with_capture

F = "format"
SOURCES: dict[str, torch.Tensor] = {}


class Source(Node):
    """A float IMAGE the test put in ``SOURCES[key]``."""

    TYPE = "TestFloatImage"
    OUTPUTS: ClassVar = (Output("IMAGE"),)
    key: str = Input("image")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        return (SOURCES[self.key],)



@pytest.fixture(scope="module")
def session(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    for role in ("input", "output", "temp"):
        (home / role).mkdir()
    registry = registry_with_capture()
    registry.register(Source)
    return Session(home, device="cpu", registry=registry)


def save(session, image: torch.Tensor, prefix: str, **fmt: Any):
    """Run Source → SaveImageAdvanced → capture; (result, ui images, passed-through)."""
    key = uuid.uuid4().hex
    SOURCES[key] = image
    prompt = {"src": {"class_type": "TestFloatImage", "inputs": {"key": key}},
              "save": {"class_type": "SaveImageAdvanced",
                       "inputs": {"images": ["src", 0], "filename_prefix": prefix, **fmt}},
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["save", 0],
                                                             "key": key}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return result, result.run.outputs["save"]["images"], CAPTURED.pop(key)


def out_file(session, entry: dict):
    assert entry["type"] == "output"
    return session.env.folder("output") / entry["subfolder"] / entry["filename"]


def read_exr(data: bytes) -> tuple[dict[str, tuple[str, bytes]], np.ndarray]:
    """An uncompressed scanline float EXR: (attributes by name, pixels [H, W, C] in the
    file's alphabetical channel order)."""
    assert data[:4] == b"\x76\x2f\x31\x01"
    pos, attrs = 8, {}
    while data[pos] != 0:
        name_end = data.index(b"\x00", pos)
        type_end = data.index(b"\x00", name_end + 1)
        size = struct.unpack_from("<i", data, type_end + 1)[0]
        attrs[data[pos:name_end].decode()] = (data[name_end + 1:type_end].decode(),
                                              data[type_end + 5:type_end + 5 + size])
        pos = type_end + 5 + size
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    channels = attrs["channels"][1].count(b"\x00\x02\x00\x00\x00")  # FLOAT channels
    offsets = np.frombuffer(data, "<u8", height, pos + 1)
    rows = []
    for y, offset in enumerate(offsets):
        line_y, nbytes = struct.unpack_from("<ii", data, int(offset))
        assert (line_y, nbytes) == (y, channels * width * 4)
        rows.append(np.frombuffer(data, "<f4", channels * width, int(offset) + 8)
                    .reshape(channels, width).T)
    return attrs, np.stack(rows)


# --- transfer functions: the standards' reference values ---------------------------------------

def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_pq_reference_values():
    # SMPTE ST 2084: 100 cd/m² ≈ 0.5081, 1000 ≈ 0.7518, 10000 = 1, 0 = c1^m2
    pq = cs.pq_encode(t(0.0, 100.0, 203.0, 1000.0, 10000.0))
    expected = [cs.PQ_C1 ** cs.PQ_M2, 0.50808, 0.58069, 0.75183, 1.0]
    assert pq.tolist() == pytest.approx(expected, abs=2e-5)
    assert cs.pq_decode(pq).tolist() == pytest.approx([0.0, 100.0, 203.0, 1000.0, 10000.0],
                                                      rel=1e-9, abs=1e-6)
    assert (cs.PQ_M1, cs.PQ_M2, cs.PQ_C1, cs.PQ_C2, cs.PQ_C3) == (
        0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875)


def test_hlg_reference_values():
    # BT.2100: the OETF maps 1/12 to 0.5 (where the curves meet) and 1 to 1
    assert cs.hlg_encode(t(0.0, 1 / 12, 1.0)).tolist() == pytest.approx([0.0, 0.5, 1.0],
                                                                        abs=1e-7)
    constants = (cs.HLG_B, cs.HLG_C)
    assert constants == pytest.approx((0.28466892, 0.55991073))
    signal = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(cs.hlg_encode(cs.hlg_decode(signal)), signal, atol=1e-12)


def test_srgb_reference_values():
    assert cs.srgb_encode(t(0.0031308, 1.0, 0.0)).tolist() == pytest.approx(
        [0.04045, 1.0, 0.0], abs=1e-5)
    assert cs.srgb_decode(t(0.5)).item() == pytest.approx(0.214041, abs=1e-6)
    v = torch.linspace(0, 1, 257, dtype=torch.float64)
    assert torch.allclose(cs.srgb_decode(cs.srgb_encode(v)), v, atol=1e-12)


def test_primaries_matrices_are_inverse_and_keep_white():
    a = torch.tensor(cs.BT709_TO_BT2020, dtype=torch.float64)
    b = torch.tensor(cs.BT2020_TO_BT709, dtype=torch.float64)
    assert torch.allclose(a @ b, torch.eye(3, dtype=a.dtype), atol=1e-9)
    assert torch.allclose(a.sum(1), torch.ones(3, dtype=a.dtype), atol=1e-9)


# --- Convert Image Color Space ---------------------------------------------------------------

def test_sdr_white_lands_on_the_bt2408_reference_levels():
    white = torch.ones(1, 1, 1, 3)
    pq = convert_color_space(white, "sRGB", "HDR PQ")
    hlg = convert_color_space(white, "sRGB", "HDR")
    assert pq.flatten().tolist() == pytest.approx([0.5807] * 3, abs=2e-4)  # 203 nits
    assert hlg.flatten().tolist() == pytest.approx([0.75] * 3, abs=2e-3)  # HLG 75 %


@pytest.mark.parametrize("middle", ["HDR PQ", "HDR"])
def test_round_trips_through_hdr(middle):
    image = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    there = convert_color_space(image, "sRGB", middle)
    back = convert_color_space(there, middle, "sRGB")
    assert there.dtype == torch.float32 and (there - image).abs().max() > 0.05
    assert torch.allclose(back, image, atol=2e-4)
    assert torch.allclose(convert_color_space(convert_color_space(there, middle, "HDR PQ"
                                                                  if middle == "HDR" else "HDR"),
                                              "HDR" if middle == "HDR PQ" else "HDR PQ",
                                              "sRGB"),
                          image, atol=5e-3)


def test_hdr_to_sdr_tone_maps_into_range_and_keeps_alpha():
    image = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    image[0, 0, 0, :3] = 1.0  # 10000 nits
    out = convert_color_space(image, "HDR PQ", "sRGB")
    assert out.shape == image.shape and bool(out.isfinite().all())
    assert float(out[..., :3].min()) >= 0.0 and float(out[..., :3].max()) <= 1.0
    assert torch.equal(out[..., 3], image[..., 3])
    assert torch.equal(convert_color_space(image, "HDR", "HDR"), image)


def test_color_space_node_and_errors():
    node = ImageColorSpace(image=torch.full((1, 2, 2, 3), 0.5), source="sRGB",
                           destination="HDR PQ")
    assert node.execute(None)[0].shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="IMAGE"):
        convert_color_space(torch.rand(1, 2, 2, 1), "sRGB", "HDR")
    with pytest.raises(ValueError, match="IMAGE"):
        convert_color_space(torch.rand(2, 2, 3), "sRGB", "HDR")
    with pytest.raises(ValueError, match="destination 'P3'"):
        convert_color_space(torch.rand(1, 2, 2, 3), "sRGB", "P3")
    # one bad pixel neither fails silently nor moves the rest of the batch
    bad = torch.rand(2, 4, 4, 3)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        convert_color_space(bad, "HDR PQ", "sRGB")
    clean = torch.rand(2, 4, 4, 3)
    loud = clean.clone()
    loud[1, 0, 0] = 255.0  # an unscaled 0..255 pixel reads as full signal
    same = convert_color_space(clean.clamp(0, 1).where(loud <= 1, torch.ones(())), "HDR PQ",
                               "sRGB")
    assert torch.allclose(convert_color_space(loud, "HDR PQ", "sRGB"), same)
    schema = ImageColorSpace.schema()
    assert schema["input_order"]["required"] == ["image", "source", "destination"]
    assert schema["input"]["required"]["source"][0] == ["sRGB", "HDR", "HDR PQ"]
    assert (schema["display_name"], schema["category"]) == ("Convert Image Color Space",
                                                            "image/color")


# --- encoders ----------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png16_round_trip_and_text_chunks(channels):
    pixels = np.random.default_rng(channels).integers(0, 65536, (5, 7, channels), np.uint16)
    data = encode_png16(pixels, {"prompt": {"1": {"x": "é"}}, "workflow": {"nodes": []}})
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    back = back.reshape(5, 7, -1)
    if channels >= 3:
        back = back[..., [2, 1, 0, 3][:channels]]  # OpenCV reads BGR(A)
    assert np.array_equal(back, pixels)
    info = Image.open(io.BytesIO(data)).info
    assert json.loads(info["prompt"]) == {"1": {"x": "é"}}
    assert json.loads(info["workflow"]) == {"nodes": []}


def test_exr_layout_metadata_and_long_names():
    pixels = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32) * 4
    data = encode_exr(pixels, {"prompt": {"a": 1}, "k" * 40: [1]}, "BT.2020")
    attrs, back = read_exr(data)
    assert struct.unpack("<I", data[4:8])[0] == 2 | 0x400  # long attribute names flagged
    assert np.array_equal(back[..., [3, 2, 1, 0]], pixels)  # A, B, G, R on disk
    assert attrs["prompt"] == ("string", b'{"a": 1}')
    assert attrs["compression"] == ("compression", b"\x00")
    assert struct.unpack("<8f", attrs["chromaticities"][1])[:2] == pytest.approx((0.708, 0.292))
    with pytest.raises(ValueError, match="cannot name an EXR attribute"):
        encode_exr(pixels, {"x" * 300: 1})
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        encode_exr(pixels[..., :2], {})


def test_avif_quality_follows_crf():
    assert [avif_quality(c) for c in (1, 18, 63)] == [98, 71, 0]


# --- the node in a prompt ----------------------------------------------------------------------

def test_png16_round_trip_through_the_node(session):
    image = torch.rand(2, 6, 9, 3, generator=torch.Generator().manual_seed(2))
    _, files, passed = save(session, image, "deep/px", **{
        F: "png", f"{F}.bit_depth": "16-bit", f"{F}.input_color_space": "sRGB"})
    assert passed is image
    assert [f["filename"] for f in files] == ["px_00001_.png", "px_00002_.png"]
    assert {f["subfolder"] for f in files} == {"deep"}
    for entry, expected in zip(files, image, strict=True):
        raw = cv2.imread(str(out_file(session, entry)), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16
        back = torch.from_numpy(raw[..., ::-1].astype(np.float32) / 65535)
        assert (back - expected).abs().max() <= 0.5 / 65535 + 1e-7
        info = Image.open(out_file(session, entry)).info
        assert json.loads(info["prompt"])["save"]["class_type"] == "SaveImageAdvanced"
        assert "workflow" in info
    assert not list(out_file(session, files[0]).parent.glob(".*tmp"))  # no temporaries


def test_png8_is_save_images_png(session):
    image = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    _, files, _ = save(session, image, "eight", **{F: "png"})  # sub-inputs defaulted
    with Image.open(out_file(session, files[0])) as img:
        assert img.mode == "RGBA" and "prompt" in img.info
        # 8-bit levels cut down as ComfyUI's Save Image does (255 * v, truncated)
        assert np.array_equal(np.asarray(img), (image[0].numpy() * 255).astype(np.uint8))


@pytest.mark.parametrize(("space", "primaries"), [("sRGB", 0.64), ("HDR", 0.708),
                                                  ("linear", 0.64)])
def test_exr_is_scene_linear(session, space, primaries):
    image = torch.rand(1, 3, 4, 3, generator=torch.Generator().manual_seed(4)) * 1.5
    _, files, _ = save(session, image, f"lin_{space}", **{
        F: "exr", f"{F}.bit_depth": "32-bit float", f"{F}.input_color_space": space})
    assert files[0]["filename"] == f"lin_{space}_00001_.exr"
    attrs, back = read_exr(out_file(session, files[0]).read_bytes())
    decode = {"sRGB": cs.srgb_decode, "HDR": cs.hlg_decode}.get(space, lambda v: v)
    assert np.allclose(back[..., ::-1], decode(image[0]).numpy(), atol=1e-6)
    assert struct.unpack("<8f", attrs["chromaticities"][1])[0] == pytest.approx(primaries)
    assert json.loads(attrs["workflow"][1])  # the workflow, as a string attribute


def test_avif_still_and_animated(session):
    ramp = torch.linspace(0.1, 0.9, 16)
    image = torch.stack([ramp[None, :].expand(16, 16), ramp[:, None].expand(16, 16),
                         torch.full((16, 16), 0.5)], dim=-1)[None].repeat(3, 1, 1, 1)
    _, files, _ = save(session, image, "small", **{F: "avif"})
    assert [f["filename"] for f in files] == [f"small_0000{i}_.avif" for i in (1, 2, 3)]
    with Image.open(out_file(session, files[0])) as img:
        exif = img.getexif()
        assert exif[0x0110].startswith("prompt:") and exif[0x010F].startswith("workflow:")
        assert np.abs(np.asarray(img.convert("RGB")) / 255 - image[0].numpy()).max() < 0.05
    result, files, _ = save(session, image, "anim", **{
        F: "avif", f"{F}.save_mode": "animated", f"{F}.save_mode.fps": 10.0})
    assert len(files) == 1 and result.run.outputs["save"]["animated"] == [True]
    with Image.open(out_file(session, files[0])) as img:
        assert img.n_frames == 3


def test_numbers_never_replace_files(session):
    folder = session.env.folder("output")
    (folder / "keep_00001_.png").write_bytes(b"a user's file")
    image = torch.rand(1, 2, 2, 3)
    args = {F: "png", f"{F}.bit_depth": "16-bit"}
    names = [save(session, image, "keep", **args)[1][0]["filename"] for _ in range(2)]
    assert names == ["keep_00002_.png", "keep_00003_.png"]
    assert (folder / "keep_00001_.png").read_bytes() == b"a user's file"


def errors(session, prompt_inputs: dict) -> list[tuple[str, str | None]]:
    prompt = {"src": {"class_type": "TestFloatImage", "inputs": {"key": "none"}},
              "save": {"class_type": "SaveImageAdvanced",
                       "inputs": {"images": ["src", 0], **prompt_inputs}}}
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.input_name, i.message) for i in info.value.issues if i.severity == "error"]


def test_paths_are_confined_to_output(session, tmp_path):
    assert errors(session, {"filename_prefix": "../escape", F: "png"})[0][0] == \
        "filename_prefix"
    assert errors(session, {"filename_prefix": "/abs/x", F: "exr"})[0][0] == "filename_prefix"
    outside = tmp_path / "outside"
    outside.mkdir()
    (session.env.folder("output") / "link").symlink_to(outside, target_is_directory=True)
    assert errors(session, {"filename_prefix": "link/x", F: "png"})[0][0] == "filename_prefix"
    assert not list(outside.iterdir())
    # control characters: a newline, a right-to-left override hiding the real suffix
    for bad in ("two\nlines", "evil\u202egnp.exe"):
        (name, message), = errors(session, {"filename_prefix": bad, F: "png"})
        assert name == "filename_prefix" and "control character" in message


def test_unsupported_choices_are_structured_errors(session):
    found = errors(session, {"filename_prefix": "x", F: "avif",
                             f"{F}.input_color_space": "HDR PQ"})
    assert found[0][0] == f"{F}.input_color_space" and "exr" in found[0][1]
    found = errors(session, {"filename_prefix": "x", F: "avif",
                             f"{F}.bit_depth": "10-bit YUV420"})
    assert found[0][0] == f"{F}.bit_depth"
    # another format's choice is not this one's
    found = errors(session, {"filename_prefix": "x", F: "png", f"{F}.bit_depth": "32-bit float"})
    assert found[0][0] == f"{F}.bit_depth"
    found = errors(session, {"filename_prefix": "x", F: "tiff"})
    assert found[0][0] == F
    found = errors(session, {"filename_prefix": "x", F: "avif", f"{F}.crf": 0})
    assert found[0][0] == f"{F}.crf"


def test_bad_images_fail_clearly(session):
    key = uuid.uuid4().hex
    SOURCES[key] = torch.rand(4, 4, 3)  # no batch dimension
    result = session.run({
        "src": {"class_type": "TestFloatImage", "inputs": {"key": key}},
        "save": {"class_type": "SaveImageAdvanced",
                 "inputs": {"images": ["src", 0], "filename_prefix": "bad", F: "exr"}}})
    assert result.run.status == "error"
    assert "IMAGE [B, H, W, C]" in result.run.error["exception_message"]


# --- schema and ComfyUI UI workflows ------------------------------------------------------------

def test_schema_is_comfyuis_dynamic_combo():
    schema = SaveImageAdvanced.schema()
    assert schema["input_order"]["required"] == ["images", "filename_prefix", F]
    assert schema["output"] == ["IMAGE"] and schema["output_node"] is True
    kind, options = schema["input"]["required"][F]
    assert kind == "COMFY_DYNAMICCOMBO_V3" and options["default"] == "png"
    by_key = {o["key"]: o["inputs"]["required"] for o in options["options"]}
    assert list(by_key) == ["png", "exr", "avif"]
    assert by_key["png"]["bit_depth"][0] == ["8-bit", "16-bit"]
    assert by_key["png"]["input_color_space"][0] == ["sRGB"]
    assert by_key["exr"]["bit_depth"] == [["32-bit float"], {"default": "32-bit float"}]
    assert by_key["exr"]["input_color_space"][0] == ["sRGB", "HDR", "linear"]
    assert by_key["avif"]["bit_depth"][0] == ["auto", "8-bit YUV420", "10-bit YUV420"]
    assert by_key["avif"]["bit_depth"][1]["default"] == "auto"
    assert by_key["avif"]["input_color_space"][0] == ["sRGB", "HDR", "HDR PQ"]
    assert {k: by_key["avif"]["crf"][1][k] for k in ("default", "min", "max")} == {
        "default": 18, "min": 1, "max": 63}
    assert by_key["avif"]["save_mode.fps"][1]["min"] == 0.01


def test_ui_widget_values_map_by_format():
    nd = node_def(SaveImageAdvanced.schema())
    for values, expected in [
        (["cat", "png", "16-bit", "sRGB"], {f"{F}.bit_depth": "16-bit",
                                             f"{F}.input_color_space": "sRGB"}),
        (["cat", "exr", "32-bit float", "HDR"], {f"{F}.bit_depth": "32-bit float",
                                                  f"{F}.input_color_space": "HDR"}),
        (["cat", "avif", "auto", "sRGB", 20, "still images"], {
            f"{F}.bit_depth": "auto", f"{F}.input_color_space": "sRGB", f"{F}.crf": 20,
            f"{F}.save_mode": "still images"}),
        (["cat", "avif", "auto", "sRGB", 20, "animated", 12.0, 0], {
            f"{F}.bit_depth": "auto", f"{F}.input_color_space": "sRGB", f"{F}.crf": 20,
            f"{F}.save_mode": "animated", f"{F}.save_mode.fps": 12.0,
            f"{F}.save_mode.loop_count": 0}),
    ]:
        out, _ = map_widget_values(values, nd)
        assert out == {"filename_prefix": "cat", F: values[1], **expected}


@pytest.mark.parametrize("fmt", [{F: "png"}, {F: "png", f"{F}.bit_depth": "16-bit"},
                                 {F: "exr"}, {F: "exr", f"{F}.input_color_space": "HDR"},
                                 {F: "avif"}, {F: "avif", f"{F}.save_mode": "animated"}])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 3, 4), (1, 2, 1, 3)])
def test_tiny_grey_alpha_and_non_finite_images_save(session, fmt, shape):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(6))
    image.view(-1)[0] = float("nan")
    image.view(-1)[-1] = float("inf")
    _, files, _ = save(session, image, "edge", **fmt)
    expected = 1 if fmt.get(f"{F}.save_mode") == "animated" else shape[0]
    assert len(files) == expected and all(out_file(session, f).stat().st_size for f in files)
    if fmt[F] == "exr":
        attrs, back = read_exr(out_file(session, files[0]).read_bytes())
        assert back.shape == (shape[1], shape[2], shape[3])
        assert attrs["channels"][1].startswith(b"Y\x00" if shape[3] == 1 else b"A\x00"
                                               if shape[3] == 4 else b"B\x00")


def test_float_bounds_are_finite():
    assert math.isfinite(SaveImageAdvanced.INPUT_SPECS[f"{F}.save_mode.fps"].max)
