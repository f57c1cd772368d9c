"""The sampler's attention store: hooks on chosen layers, maps by role, always restored."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import torch

from engine.context import Interrupted
from engine.session import Session
from nodes.diffusion.attention import AttentionHook, AttentionLayer, AttentionRecorder
from nodes.diffusion.extensions import SamplerExtension
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import make_scheduler
from tests.graph_nodes import CAPTURED, registry_with_capture

WIDTH, HEIGHT = 48, 32  # non-square: 6x4 latents on the tiny model


@pytest.fixture(scope="module")
def parts(models_dir, tmp_path_factory):
    """MODEL, positive and negative CONDITIONING and a LATENT of the tiny model."""
    session = Session(tmp_path_factory.mktemp("attention"), models_dir=models_dir,
                      device="cpu", registry=registry_with_capture())
    key = uuid.uuid4().hex
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT,
                                                            "batch_size": 2}},
    }
    for node, slot in (("1", 0), ("2", 0), ("3", 0), ("4", 0)):
        prompt[f"c{node}"] = {"class_type": "TestCapture",
                              "inputs": {"value": [node, slot], "key": key + node}}
    assert session.run(prompt).ok
    return [CAPTURED.pop(key + n) for n in "1234"]


@dataclass(eq=False)
class Hooks(SamplerExtension):
    hooks: tuple[AttentionHook, ...]
    fail_at: int | None = None

    def attention_hooks(self, run):
        return self.hooks

    def guidance(self, run, step, preds, guidance):
        if self.fail_at is not None and step.index == self.fail_at:
            raise RuntimeError("boom")
        return guidance


def run(parts, *extensions, steps=3, callback=None):
    model, pos, neg, latent = parts
    for ext in extensions:
        model = model.with_extension(ext)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    return sample(model, scheduler, pos, neg, latent, SamplingParams(seed=1, steps=steps,
                                                                     cfg=7.5),
                  callback=callback)


def processors(parts):
    return dict(parts[0].unet.attn_processors)


def test_recording_maps_changes_nothing_and_sees_every_role(parts):
    before = processors(parts)
    plain = run(parts)
    recorder = AttentionRecorder(cross=True)
    selves = AttentionRecorder(cross=False, places=("mid",))
    ext = Hooks((recorder, selves))
    hooked = run(parts, ext)
    # classic attention on the hooked layers vs SDPA elsewhere: float noise only
    assert (hooked - plain).abs().max() < 1e-4
    assert processors(parts) == before
    state = ext_state = None  # the run's state is gone; record maps through a live run
    seen: dict[str, list] = {}

    @dataclass(eq=False)
    class Peek(Hooks):
        def post_step(self, run_, step, latents):
            for role in run_.roles:
                seen.setdefault(role, []).append(recorder.maps(run_, role))
            nonlocal state, ext_state
            state, ext_state = run_.roles, selves.maps(run_, "cond")
            return latents

    run(parts, Peek((recorder, selves)), steps=1)
    assert state == ("uncond", "cond")
    for role in state:
        (maps,) = seen[role]
        cross_layers = [name for name in before if name.endswith("attn2.processor")]
        names = [layer.name for layer, _, _ in maps]  # in the order they ran: down, mid, up
        assert sorted(names) == sorted(cross_layers)
        assert [n.split("_")[0] for n in names] == sorted(
            (n.split("_")[0] for n in names), key=["down", "mid", "up"].index)
        for layer, m, heads in maps:
            assert layer.cross and heads >= 1
            assert m.shape[0] == 2 and m.shape[-1] == 77  # images, ..., text tokens
            assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5)  # rows are softmaxed
    (layer, m, _), = ext_state
    assert layer == AttentionLayer.parse(layer.name) and layer.place == "mid"
    assert m.shape[-1] == m.shape[-2]  # self-attention: image tokens to image tokens


def test_an_edit_hook_acts_on_its_layers_only(parts):
    @dataclass(eq=False)
    class Uniform(AttentionHook):
        def selects(self, layer):
            return layer.cross

        def on_probs(self, call, probs):
            edited = probs.clone()
            edited[call.rows("cond")] = 1.0 / probs.shape[-1]
            return edited

    plain = run(parts)
    edited = run(parts, Hooks((Uniform(),)))
    assert (edited - plain).abs().max() > 1e-3


def test_processors_are_restored_after_an_error_and_an_interrupt(parts):
    before = processors(parts)
    with pytest.raises(RuntimeError, match="boom"):
        run(parts, Hooks((AttentionRecorder(),), fail_at=1))
    assert processors(parts) == before

    def interrupt(i, total, latents):
        raise Interrupted("p")

    with pytest.raises(Interrupted):
        run(parts, Hooks((AttentionRecorder(),)), callback=interrupt)
    assert processors(parts) == before


def test_token_sizes_are_known_for_non_square_latents(parts):
    sizes = {}

    @dataclass(eq=False)
    class Sizes(AttentionHook):
        def selects(self, layer):
            return True

        def on_probs(self, call, probs):
            sizes[call.query_tokens] = call.size
            return probs

    run(parts, Hooks((Sizes(),)), steps=1)
    assert sizes[HEIGHT // 8 * WIDTH // 8] == (HEIGHT // 8, WIDTH // 8)
    assert all(h * w == tokens for tokens, (h, w) in sizes.items())


@dataclass(eq=False)
class Lifecycle(SamplerExtension):
    """Records its setup and teardown; may fail in either."""

    log: list
    name: str
    fail_setup: bool = False
    fail_teardown: bool = False

    def setup(self, run):
        self.log.append(f"setup {self.name}")
        if self.fail_setup:
            raise ValueError(f"{self.name} cannot run")

    def teardown(self, run):
        self.log.append(f"teardown {self.name}")
        if self.fail_teardown:
            raise RuntimeError(f"{self.name} teardown failed")


def test_every_extension_is_torn_down_when_a_setup_or_a_teardown_fails(parts):
    log: list = []
    with pytest.raises(ValueError, match="b cannot run"):
        run(parts, Lifecycle(log, "a"), Lifecycle(log, "b", fail_setup=True),
            Lifecycle(log, "c"))
    # a was set up before b failed: both are torn down; c was never set up
    assert log == ["setup a", "setup b", "teardown a", "teardown b"]
    log.clear()
    with pytest.raises(RuntimeError, match="a teardown failed"):
        run(parts, Lifecycle(log, "a", fail_teardown=True), Lifecycle(log, "b"), steps=1)
    assert log == ["setup a", "setup b", "teardown a", "teardown b"]
