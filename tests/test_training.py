"""The shapes-world training code at toy scale: data, judge, every stage, resume, export."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from training import judge
from training.captions import SLOTS, caption_labels
from training.loop import LoopConfig, latest_checkpoint, train_loop
from training.models import ModelConfigs
from training.shapes import (
    COLORS,
    POSITIONS,
    ShapesDataset,
    generate,
)

# A model small enough to train a few steps per stage in about a second each.
TOY = ModelConfigs(
    vae={"sample_size": 32, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
         "block_out_channels": (8, 16, 16), "layers_per_block": 1,
         "down_block_types": ("DownEncoderBlock2D",) * 3,
         "up_block_types": ("UpDecoderBlock2D",) * 3, "norm_num_groups": 8,
         "scaling_factor": 1.0},
    text={"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 16,
          "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
          "projection_dim": 16, "hidden_act": "quick_gelu", "bos_token_id": 0,
          "eos_token_id": 2, "pad_token_id": 1},
    unet={"block_out_channels": (16, 32), "layers_per_block": 1,
          "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
          "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 4,
          "norm_num_groups": 8},
    hint_channels=(4, 8, 8, 16),
    image_size=32,
)


# --- data ------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_order_free() -> None:
    a, b = generate(3, 17), generate(3, 17)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert np.array_equal(a.masks, b.masks)
    assert not np.array_equal(generate(4, 17).image, a.image)
    ds = ShapesDataset(seed=3)
    batch = ds.batch(2, 4)
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["mask"].shape == (4, 1, 64, 64)
    assert batch["index"] == [8, 9, 10, 11]
    assert torch.equal(batch["pixel_values"][1], ShapesDataset(seed=3)[9]["pixel_values"])
    assert ds.caption(9) == ds[9]["caption"]


def test_metadata_and_masks_describe_the_image() -> None:
    for i in range(60):
        s = generate(0, i)
        assert s.masks.shape == (len(s.shapes), 64, 64)
        if len(s.shapes) == 2:
            assert not np.logical_and(*s.masks).any()
        for spec, mask in zip(s.shapes, s.masks, strict=True):
            assert spec.color in s.caption and spec.shape in s.caption
            assert f"{s.background} background" in s.caption
            # Interior pixels (2 px in from the edge) carry the shape's own color.
            inner = ndimage.binary_erosion(mask, iterations=2)
            if inner.any():
                assert np.abs(s.image[inner].astype(int) - spec.rgb).max() <= 1
            assert judge.position_of(mask) == spec.position
            assert spec.rgb and np.abs(np.array(spec.rgb) - COLORS[spec.color]).max() <= 12


def test_caption_labels_read_every_attribute() -> None:
    caption = ("a large red circle at the top left and a small blue square at the bottom "
               "right on a black background")
    labels = {name: vocab[v - 1] for (name, vocab), v in zip(SLOTS, caption_labels(caption),
                                                              strict=True) if v}
    assert labels == {"size1": "large", "color1": "red", "shape1": "circle",
                      "position1": "top left", "size2": "small", "color2": "blue",
                      "shape2": "square", "position2": "bottom right", "background": "black"}
    assert caption_labels("at the top") == [
        POSITIONS.index("top") + 1 if name == "position1" else 0 for name, _ in SLOTS]


def test_judge_scores_ground_truth() -> None:
    """The analytic judge must read the generator's own images right, or it judges nothing."""
    single = {"color": [], "shape": [], "position": []}
    multi, ious = [], []
    for i in range(200):
        s = generate(11, i)
        if len(s.shapes) == 1:
            for key, ok in judge.score_single(s.image, s.shapes[0]).items():
                if key in single:
                    single[key].append(ok)
        else:
            multi.append(judge.score_multi(s.image, s.shapes))
        ious.append(judge.mask_iou(judge.foreground(s.image), s.mask))
    for key, values in single.items():
        assert np.mean(values) >= 0.95, key
    assert np.mean(multi) >= 0.95
    assert np.mean(ious) >= 0.9
    assert judge.psnr(s.image, s.image) == float("inf")


def test_cubic_timesteps_lean_to_the_noisy_end() -> None:
    from training.train import sample_timesteps

    torch.manual_seed(0)
    uniform = sample_timesteps(20000, 1000, "uniform").float()
    cubic = sample_timesteps(20000, 1000, "cubic")
    assert int(cubic.min()) >= 0 and int(cubic.max()) <= 999
    # E[1 - u^3] = 3/4: three quarters of the way to pure noise, against a half.
    assert abs(float(cubic.float().mean()) - 750) < 10
    assert abs(float(uniform.mean()) - 500) < 10
    assert abs(float((cubic >= 500).float().mean()) - 0.5 ** (1 / 3)) < 0.02  # P(u³ ≤ ½)
    with pytest.raises(ValueError, match="timestep sampling"):
        sample_timesteps(4, 1000, "logit")


def test_judge_shape_pixels_drop_specks_only() -> None:
    """The ControlNet IoU reads the generated shapes: specks below the judge's noise size
    are not shapes, but a shape of any real size is kept whole."""
    s = generate(11, 3)
    noisy = s.image.copy()
    noisy[1:3, 1:3] = (220, 30, 30)  # a 4-pixel red speck in a corner
    assert judge.foreground(noisy)[1, 1]
    assert not judge.shape_pixels(noisy)[1, 1]
    assert np.array_equal(judge.shape_pixels(s.image), judge.foreground(s.image))
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert not judge.shape_pixels(blank).any()


# --- the loop --------------------------------------------------------------------------------

class _Interrupt(Exception):
    pass


def _toy_loop(folder: Path, stop_at: int | None = None,
              planned_stop: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    cfg = LoopConfig(steps=6, lr=1e-2, warmup_steps=2, save_every=2, ema_decay=0.9,
                     progress=False, stop_at=planned_stop)

    def loss_fn(step: int) -> torch.Tensor:
        if step == stop_at:
            raise _Interrupt
        x = torch.randn(16, 4)  # the global RNG, which a checkpoint must restore
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()

    _, ema = train_loop("toy", cfg, {"model": model}, list(model.parameters()), loss_fn, folder)
    ema.copy_to(model.parameters())
    return model


def test_resume_repeats_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _toy_loop(tmp_path / "a")
    with pytest.raises(_Interrupt):
        _toy_loop(tmp_path / "b", stop_at=3)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2.pt"
    torch.manual_seed(123)  # a resumed process starts with other RNG state
    resumed = _toy_loop(tmp_path / "b")
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert sorted(p.name for p in (tmp_path / "b").glob("*.pt")) == [
        "checkpoint-4.pt", "checkpoint-6.pt"]


def test_a_planned_stop_keeps_the_schedule_and_resumes_exactly(tmp_path: Path) -> None:
    """``stop_at`` ends a run early on the full run's LR schedule (checkpointed at the
    stop, e.g. to ship an early checkpoint); running on without it equals a straight run."""
    straight = _toy_loop(tmp_path / "a")
    _toy_loop(tmp_path / "b", planned_stop=3)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-3.pt"
    resumed = _toy_loop(tmp_path / "b")
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_time_budget_stops_checkpointed_and_resumes_exactly(tmp_path: Path,
                                                               monkeypatch) -> None:
    """``max_seconds`` ends a run after the step that crosses it, checkpointed there even
    off the save interval, so a later run without it goes on to the straight run's end."""
    import training.loop as loop_module

    clock = iter(float(t) for t in range(1000))  # every reading is one second later
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: next(clock))
    straight = _toy_loop(tmp_path / "a")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    cfg = LoopConfig(steps=6, lr=1e-2, warmup_steps=2, save_every=2, ema_decay=0.9,
                     progress=False, max_seconds=2.5)

    def loss_fn(step: int) -> torch.Tensor:
        x = torch.randn(16, 4)
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()

    result, _ = train_loop("toy", cfg, {"model": model}, list(model.parameters()), loss_fn,
                           tmp_path / "b")
    assert len(result.losses) == 3
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-3.pt"
    resumed = _toy_loop(tmp_path / "b")
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


# --- the stages ------------------------------------------------------------------------------

class _FixedDataset(ShapesDataset):
    """Every step sees the same ``period`` samples (and captions): a fixed batch."""

    def __init__(self, period: int, **kwargs: object):
        super().__init__(**kwargs)
        self.period = period

    def sample(self, index: int):  # type: ignore[no-untyped-def]
        return super().sample(index % self.period)

    def caption(self, index: int, variant: int = 0) -> str:
        return super().caption(index % self.period, 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every stage for a few steps on a fixed batch, then the export."""
    from training import train, train_controlnet
    from training.export import export_model

    out = tmp_path_factory.mktemp("run")

    class Options(train.StageOptions):
        def dataset(self, **kwargs: object) -> ShapesDataset:
            return _FixedDataset(4, seed=self.seed, size=self.configs.image_size, **kwargs)

    opts = Options(out_dir=out, models=TOY)

    def loop(steps: int, lr: float, ema: float | None = None) -> LoopConfig:
        return LoopConfig(steps=steps, lr=lr, save_every=1000, ema_decay=ema, progress=False,
                          lr_schedule="constant")

    results = {
        "vae": train.train_vae(opts, loop(12, 3e-3), batch_size=4, crop=0)[1],
        "text": train.train_text_encoder(opts, loop(12, 3e-3), batch_size=4)[1],
        "unet": train.train_unet(opts, loop(12, 2e-3, ema=0.9), batch_size=4,
                                 latent_cache=8)[1],
        # Uniform timesteps: 12 cubic draws sit at too different noise levels for the
        # first-vs-last loss comparison below (cubic sampling has its own test).
        "controlnet": train_controlnet.train_controlnet(opts, loop(12, 2e-3), batch_size=4,
                                                        latent_cache=8, timesteps="uniform")[1],
    }
    from training.train_lora import train_lora

    lora_path, results["lora"] = train_lora(opts, loop(3, 1e-3), batch_size=2, rank=2)
    return {"out": out, "results": results, "paths": export_model(out), "lora": lora_path}


@pytest.mark.parametrize("stage", ["vae", "text", "unet", "controlnet"])
def test_each_stage_reduces_its_loss(trained: dict[str, object], stage: str) -> None:
    losses = trained["results"][stage].losses  # type: ignore[index]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_export_loads_in_the_engine(trained: dict[str, object]) -> None:
    from nodes.diffusion.controlnet_loading import load_controlnet
    from nodes.diffusion.loading import load_components

    paths = trained["paths"]
    folder = load_components(paths["diffusers"])  # type: ignore[index]
    single = load_components(paths["single_file"])  # type: ignore[index]
    assert folder.vae.config.scaling_factor != 1.0  # measured from the trained latents
    for a, b in ((folder.unet, single.unet), (folder.vae, single.vae),
                 (folder.text_encoder, single.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    nets = [load_controlnet(paths[k]) for k in ("controlnet", "controlnet_single_file")]  # type: ignore[index]
    assert tuple(nets[0].config.conditioning_embedding_out_channels) == (4, 8, 8, 16)
    sa, sb = nets[0].state_dict(), nets[1].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ship_writes_float16_files_that_install_in_both_formats(
        trained: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    from nodes.diffusion import builtin_models, shapes_model
    from nodes.diffusion.loading import load_components
    from training.export import ship_lora, ship_weights

    out = trained["out"]
    shipped = ship_weights(out / "export", tmp_path / "weights")  # type: ignore[operator]
    assert sorted(p.name for p in shipped) == ["steerflow-shapes-controlnet.safetensors",
                                               "steerflow-shapes.safetensors"]
    lora = ship_lora(out, tmp_path / "loras")  # type: ignore[arg-type]
    for path in (*shipped, lora):
        with safe_open(str(path), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    monkeypatch.setattr(builtin_models, "WEIGHTS_DIR", tmp_path / "weights")
    folder = shapes_model.ensure_shapes_model(tmp_path / "models")
    assert folder is not None and (tmp_path / "models" / "controlnet" /
                                   "steerflow-shapes-controlnet" / "config.json").is_file()
    installed = load_components(folder)
    exported = load_components(trained["paths"]["diffusers"])  # type: ignore[index]
    single = load_components(folder.parent / "steerflow-shapes.safetensors")
    for a, b, c in ((installed.unet, exported.unet, single.unet),
                    (installed.vae, exported.vae, single.vae)):
        for key, value in a.state_dict().items():
            assert torch.equal(value, c.state_dict()[key])  # the two formats: same values
            torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-3, atol=1e-4)


def test_evaluation_runs_through_the_graph(trained: dict[str, object]) -> None:
    from training.evaluate import EvalConfig, evaluate

    # no adapter metric: set-up puts the shipped adapter (made for the real UNet) beside the toy
    cfg = EvalConfig(samples=2, two_shape_samples=1, sega_samples=1, controlnet_samples=1,
                     adapter_samples=0, lora_samples=1, inversion_samples=1, steps=2,
                     inversion_steps=2, sega_warmup=0, image_size=32, progress=False)
    export = trained["out"] / "export"  # type: ignore[operator]
    # The toy LoRA under the name the shipped one has (which would not fit the toy UNet).
    (export / "loras").mkdir(exist_ok=True)
    shutil.copyfile(trained["lora"], export / "loras" / cfg.lora)  # type: ignore[arg-type]
    report = evaluate(export, cfg)
    assert set(report.metrics) == {"color", "shape", "position", "size", "two_shapes",
                                   "sega_edit", "sega_replace", "controlnet_iou",
                                   "controlnet_iou_pixels", "lora_night", "lora_night_off",
                                   "inversion_psnr", "vae_psnr"}
    assert "inversion_psnr" in report.table()


def test_unet_stage_resumes_exactly(trained: dict[str, object], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted UNet stage (RNG-heavy: noise, timesteps, caption dropout, posterior
    samples, EMA) resumed from its checkpoint ends with the same weights as a straight run."""

    from training import train

    def run(out: Path) -> dict[str, torch.Tensor]:
        opts = train.StageOptions(out_dir=out, models=TOY)
        cfg = LoopConfig(steps=4, lr=1e-3, warmup_steps=1, save_every=2, ema_decay=0.9,
                         progress=False)
        unet, _ = train.train_unet(opts, cfg, batch_size=2, latent_cache=6)
        return unet.state_dict()

    for out in (tmp_path / "a", tmp_path / "b"):
        for part in ("vae", "text_encoder"):
            shutil.copytree(trained["out"] / part, out / part)  # type: ignore[operator]
    straight = run(tmp_path / "a")

    calls = {"n": 0}
    real = train.caption_keep

    def flaky(n: int, prob: float) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:  # step 3, after checkpoint-2
            raise _Interrupt
        return real(n, prob)

    monkeypatch.setattr(train, "caption_keep", flaky)
    with pytest.raises(_Interrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(train, "caption_keep", real)
    torch.manual_seed(99)
    resumed = run(tmp_path / "b")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_step_data_is_the_same_with_worker_processes() -> None:
    """Batches prepared ahead by DataLoader workers equal the inline ones, resumed
    mid-run too; token ids equal the pipelines' one-prompt-at-a-time encoding."""
    from nodes.diffusion.tokenizer import load_clip_tokenizer
    from training.latents import StepData, StepPrefetcher

    tokenizer = load_clip_tokenizer()
    data = StepData(ShapesDataset(seed=3, size=32), tokenizer, batch_size=4, cache_size=10,
                    seed=3, masks=True)
    inline, ahead = StepPrefetcher(data, 0), StepPrefetcher(data, 2)
    for step in (0, 1, 2, 7, 8):  # 2 -> 7 restarts the workers at a resumed step
        a, b = inline(step), ahead(step)
        assert a["indices"] == b["indices"] and a["captions"] == b["captions"]
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert np.array_equal(np.asarray(a["masks"]), np.asarray(b["masks"]))
    one = [tokenizer(c, padding="max_length", max_length=77, truncation=True).input_ids
           for c in a["captions"]]
    assert a["input_ids"].tolist() == one
