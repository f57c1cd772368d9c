"""The Instruct-Pix2Pix training code at toy scale: triplets, the stage, export, ship, install,
and the evaluation protocol through the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from scipy import ndimage

from training import judge
from training.ip2p_data import (
    EDIT_KINDS,
    instruction,
    make_triplet,
    move_targets,
    plan_edit,
)
from training.ip2p_eval import background_of, iter_cases, score_edit, summarise
from training.shapes import (
    BACKGROUNDS,
    CELL_CENTERS,
    POSITIONS,
    generate,
    render,
)

INDICES = range(40)


def _far(masks: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels well away from every shape of ``masks`` (anti-aliased edges excluded)."""
    return ~ndimage.binary_dilation(masks.any(axis=0), iterations=margin)


# --- triplets --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_triplets_change_only_what_the_instruction_names(kind: str) -> None:
    for index in INDICES:
        t = make_triplet(5, index, kind=kind)
        if t is None:
            continue
        plan, before = t.plan, t.before
        assert np.array_equal(before.image, generate(5, index).image)  # a sample of the world
        assert np.array_equal(t.after, make_triplet(5, index, kind=kind).after)  # deterministic
        others = [k for k in range(len(plan.shapes)) if k != plan.target]
        for k in others:  # every other shape: the same spec and the same pixels
            assert plan.after_shapes[k] == plan.shapes[k]
            inside = ndimage.binary_erosion(before.masks[k], iterations=2)
            assert np.array_equal(before.image[inside], t.after[inside])
        if kind == "background":
            assert plan.after_shapes == plan.shapes and plan.after_background != plan.background
            assert np.array_equal(t.after_masks, before.masks)
            inside = ndimage.binary_erosion(before.mask, iterations=2)
            assert np.array_equal(before.image[inside], t.after[inside])
            assert plan.value in t.instruction
            continue
        # the background is kept wherever neither the old nor the new shape is
        far = _far(np.concatenate([before.masks, t.after_masks]))
        assert np.array_equal(before.image[far], t.after[far])
        old, new = plan.shapes[plan.target], plan.after_shapes[plan.target]
        assert (old.rotation, old.radius, old.size) == (new.rotation, new.radius, new.size)
        if kind == "recolour":
            assert new.color != old.color and new.color not in {s.color for s in plan.shapes}
            assert np.array_equal(t.after_masks, before.masks) and plan.value in t.instruction
            assert (old.shape, old.center) == (new.shape, new.center)
        elif kind == "shape":
            assert new.shape != old.shape and plan.value in t.instruction
            assert (old.color, old.center, old.rgb) == (new.color, new.center, new.rgb)
        else:
            col, row = POSITIONS.index(old.position) % 3, POSITIONS.index(old.position) // 3
            ncol, nrow = POSITIONS.index(new.position) % 3, POSITIONS.index(new.position) // 3
            assert abs(ncol - col) + abs(nrow - row) == 1
            assert new.center[0] - old.center[0] == pytest.approx(
                CELL_CENTERS[ncol] - CELL_CENTERS[col])
            assert new.center[1] - old.center[1] == pytest.approx(
                CELL_CENTERS[nrow] - CELL_CENTERS[row])
            assert judge.position_of(t.after_masks[plan.target]) == new.position
            for k in others:  # two shapes stay two cells apart, so they never touch
                o = POSITIONS.index(plan.shapes[k].position)
                assert max(abs(o % 3 - ncol), abs(o // 3 - nrow)) >= 2


def test_kinds_are_drawn_evenly_and_wordings_vary() -> None:
    plans = [plan_edit(0, i) for i in range(400)]
    counts = {k: sum(p.kind == k for p in plans) for k in EDIT_KINDS}
    assert all(70 <= c <= 130 for c in counts.values()), counts
    assert any(len({instruction(p, v) for v in range(8)}) > 2 for p in plans[:10])
    assert instruction(plans[0], 3) == instruction(plan_edit(0, 0), 3)


def test_every_cell_has_a_move_for_one_shape() -> None:
    from training.shapes import ShapeSpec

    for position in POSITIONS:
        spec = ShapeSpec("circle", "red", position, "small", (0.5, 0.5), 0.1)
        assert len(move_targets((spec,), 0)) >= 2


# --- the stage -------------------------------------------------------------------------------

def test_widened_unet_computes_the_base_unet() -> None:
    from diffusers import UNet2DConditionModel

    from training.train_instruct_pix2pix import widen_conv_in

    torch.manual_seed(0)
    base = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4).eval()
    wide = widen_conv_in(base).eval()
    assert wide.config.in_channels == 8
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = base(x, 10, ctx).sample
        for image in (torch.zeros_like(x), torch.randn_like(x) * 5):
            assert torch.allclose(wide(torch.cat([x, image], 1), 10, ctx).sample, plain,
                                  atol=1e-5)


def test_conditioning_dropout_rates() -> None:
    from training.train_instruct_pix2pix import dropout_masks

    torch.manual_seed(0)
    text, image = dropout_masks(200_000)
    rates = [float(m.float().mean()) for m in (text & ~image, image & ~text, text & image)]
    assert all(abs(r - 0.05) < 0.003 for r in rates), rates


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy shapes model saved as a pipeline folder (the stage's base) and as the shipped
    float16 single file (what installing pairs the Instruct-Pix2Pix UNet with)."""
    from nodes.diffusion.original_layout import save_original_checkpoint
    from nodes.diffusion.tokenizer import load_clip_tokenizer
    from tests.test_training import TOY
    from training.export import save_half_precision
    from training.models import SCHEDULER_CONFIG, build_text_encoder, build_unet, build_vae

    root = tmp_path_factory.mktemp("ip2p_toy")
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=build_vae(TOY), text_encoder=build_text_encoder(TOY),
        tokenizer=load_clip_tokenizer(), unet=build_unet(TOY),
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "base", safe_serialization=True)
    save_original_checkpoint(root / "full.safetensors", unet=pipe.unet, vae=pipe.vae,
                             text_encoder=pipe.text_encoder,
                             scheduler_config=dict(pipe.scheduler.config))
    (root / "weights").mkdir()
    save_half_precision(root / "full.safetensors",
                        root / "weights" / "steerflow-shapes.safetensors")
    return {"root": root, "base": root / "base", "weights": root / "weights"}


def _train(out: Path, base: Path, steps: int, init: Path | None = None, lr: float = 1e-3
           ) -> dict[str, torch.Tensor]:
    from tests.test_training import TOY
    from training.loop import LoopConfig
    from training.train import StageOptions
    from training.train_instruct_pix2pix import train_instruct_pix2pix

    cfg = LoopConfig(steps=steps, lr=lr, save_every=2, ema_decay=0.9, progress=False,
                     lr_schedule="constant")
    unet, result = train_instruct_pix2pix(StageOptions(out_dir=out, models=TOY), cfg,
                                          base=base, batch_size=3, latent_cache=6, init=init)
    assert all(np.isfinite(result.losses))
    return unet.state_dict()


def test_stage_resumes_exports_ships_and_installs(toy, tmp_path, monkeypatch) -> None:
    from safetensors import safe_open

    from nodes.diffusion import builtin_models, shapes_model
    from nodes.diffusion.loading import load_components
    from training.export import export_instruct_pix2pix, ship_weights

    straight = _train(tmp_path / "a", toy["base"], 4)
    _train(tmp_path / "b", toy["base"], 2)
    resumed = _train(tmp_path / "b", toy["base"], 4)  # continues from checkpoint-2
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    paths = export_instruct_pix2pix(tmp_path / "a", tmp_path / "export")  # the recorded base
    folder, single = load_components(paths["ip2p"]), load_components(paths["ip2p_single_file"])
    assert folder.unet.config.in_channels == single.unet.config.in_channels == 8
    for a, b in ((folder.unet, single.unet), (folder.vae, single.vae)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, straight[k]) for k, v in folder.unet.state_dict().items())
    # going on from the exported UNet (--init): at lr 0 it stays that UNet
    again = _train(tmp_path / "c", toy["base"], 1, init=paths["ip2p"] / "unet", lr=0.0)
    assert all(torch.equal(again[k], straight[k]) for k in straight)

    shipped = ship_weights(tmp_path / "export", toy["weights"])
    assert [p.name for p in shipped] == ["steerflow-shapes-ip2p-unet.safetensors"]
    with safe_open(str(shipped[0]), framework="pt") as f:
        assert all(k.startswith("model.diffusion_model.") for k in f.keys())  # noqa: SIM118
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    monkeypatch.setattr(builtin_models, "WEIGHTS_DIR", toy["weights"])
    models = tmp_path / "models"
    shapes_model.ensure_shapes_model(models)
    assert builtin_models.is_installed(models, "checkpoints", "steerflow-shapes-ip2p")
    installed = load_components(models / "checkpoints" / "steerflow-shapes-ip2p")
    base = load_components(models / "checkpoints" / "steerflow-shapes.safetensors")
    assert installed.unet.config.in_channels == 8
    for key, value in installed.unet.state_dict().items():
        torch.testing.assert_close(value, straight[key], rtol=1e-3, atol=1e-4)  # float16
    assert all(torch.equal(v, base.vae.state_dict()[k])
               for k, v in installed.vae.state_dict().items())


# --- the evaluation protocol ---------------------------------------------------------------

def test_background_reader_and_scores_on_renders() -> None:
    sample = generate(3, 0)
    for name in BACKGROUNDS:
        image, _ = render(sample.shapes, name, 64, np.random.default_rng(11))
        assert background_of(image) == name
    cases = list(iter_cases(77, 8))
    assert [c.kind for c in cases] == list(EDIT_KINDS) * 2
    expected = [score_edit(c, c.after) for c in cases]
    unchanged = [score_edit(c, c.before.image) for c in cases]
    assert all(s.ok for s in expected)
    assert not any(s.done for s in unchanged) and all(s.kept for s in unchanged)
    summary = summarise(expected)
    assert summary["ok"] == 1.0 and summary["ok_move"] == 1.0


def test_measurement_script_runs_end_to_end(toy, tmp_path, capsys, monkeypatch) -> None:
    import importlib.util
    import sys

    from training.export import export_instruct_pix2pix

    _train(tmp_path / "run", toy["base"], 1)
    export_instruct_pix2pix(tmp_path / "run", tmp_path / "models")
    path = Path(__file__).resolve().parents[1] / "scripts" / "measure_instruct_pix2pix.py"
    spec = importlib.util.spec_from_file_location("measure_instruct_pix2pix", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, spec.name, module)  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.main(["--models", str(tmp_path / "models"), "--cases", "4", "--steps", "2",
                 "--image-cfg", "1.5", "1.0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 cases (world 77)")
    assert len([line for line in lines if line.lstrip().startswith("2 ")]) == 2
