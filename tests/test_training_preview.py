"""Sample images every N steps during training (nodes/diffusion/train_preview.py and
run_steps' ``sample``): called on the right steps, drawn with the weights as they are,
never changing what is trained, never leaving the model patched."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.context import ExecutionContext, Interrupted, InterruptFlag
from engine.environment import Environment
from nodes.diffusion import train_common as tc
from nodes.diffusion.train_preview import TrainingSample, draw_sample, training_sample
from tests.test_training_nodes import RES, graph, handles, lora_node, session, ti_node

__all__ = ["session"]  # the module-scoped fixture, shared with the training tests


class Recorder:
    """An ExecutionContext whose events are kept."""

    def __init__(self, tmp_path, *, preview: bool = True):
        self.events: list[tuple[str, dict]] = []
        self.ctx = ExecutionContext("p", "train", Environment.create(tmp_path, device="cpu"),
                                    self.emit, InterruptFlag(),
                                    extra={"preview": preview})

    def emit(self, name: str, data: dict) -> None:
        self.events.append((name, data))

    def previews(self) -> list[Image.Image]:
        return [d["image"] for n, d in self.events if n == "preview"]


# --- run_steps' sample callback ---------------------------------------------------------------

@pytest.mark.parametrize("steps,every,expected", [
    (7, 3, [3, 6, 7]),  # every third step, and the last
    (6, 3, [3, 6]),
    (4, 1, [1, 2, 3, 4]),
    (5, 0, []),  # off
    (3, 10, [3]),  # only the last
])
def test_sample_is_called_every_n_steps_and_after_the_last(tmp_path, steps, every, expected):
    rec = Recorder(tmp_path)
    called: list[int] = []
    losses = tc.run_steps(rec.ctx, steps, lambda i: float(i), None, sample=called.append,
                          sample_every=every)
    assert called == expected
    assert losses == [float(i) for i in range(steps)]
    # the positional form (no sampling) still works
    assert tc.run_steps(rec.ctx, 2, lambda i: 1.0, None) == [1.0, 1.0]


def test_sample_follows_the_step_progress_event(tmp_path):
    order: list[str] = []
    ctx = ExecutionContext("p", "train", Environment.create(tmp_path, device="cpu"),
                           lambda name, data: order.append(f"{name}:{data['value']}"),
                           InterruptFlag())
    tc.run_steps(ctx, 2, lambda i: 0.5, sample=lambda n: order.append(f"sample:{n}"),
                 sample_every=1)
    assert order == ["progress:1", "sample:1", "progress:2", "sample:2"]


def test_a_resumed_runs_first_step_says_where_it_goes_on_from(tmp_path):
    """The canvas marks a resume on the loss curve: a tab that did not see the stopped run
    (a reopened example, another tab) learns it from the first step's ``resumed_from``."""

    class Resumed:  # a checkpoint of 3 steps done
        every, rewind = 1000, None

        def load(self):
            return 3, [1.0, 1.0, 1.0]

        def save(self, step, losses, state=None):
            return True

    rec = Recorder(tmp_path)
    assert tc.run_steps(rec.ctx, 5, lambda i: 0.5, Resumed()) == [1.0, 1.0, 1.0, 0.5, 0.5]
    progress = [d for n, d in rec.events if n == "progress"]
    assert [(d["value"], d.get("resumed_from")) for d in progress] == [(4, 3), (5, None)]
    fresh = Recorder(tmp_path)
    tc.run_steps(fresh.ctx, 2, lambda i: 0.5)
    assert all("resumed_from" not in d for n, d in fresh.events if n == "progress")


def test_a_damaged_checkpoint_is_a_warning_and_a_fresh_start(tmp_path):
    """The fault drill: a checkpoint cut in half was thrown away without a word and the
    run started again at step 1 (no resumed_from, no warning)."""
    state = {"w": torch.zeros(3)}
    path = tmp_path / "run.pt"

    def restore(saved):
        state["w"] = saved["w"]

    def checkpointing():
        return tc.Checkpointing(path, lambda: {"w": state["w"].clone()}, restore, every=2)

    first = Recorder(tmp_path)
    with pytest.raises(Interrupted):
        tc.run_steps(first.ctx, 6, lambda i: first.ctx.interrupt_flag.set() or 0.5
                     if i == 3 else 0.5, checkpointing())
    assert path.is_file()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rec = Recorder(tmp_path)
    assert tc.run_steps(rec.ctx, 3, lambda i: 0.5, checkpointing()) == [0.5] * 3
    warnings = [d["message"] for n, d in rec.events if n == "node_warning"]
    assert len(warnings) == 1 and "could not be read" in warnings[0], rec.events
    assert "starts again from step 0" in warnings[0]
    progress = [d for n, d in rec.events if n == "progress"]
    assert progress[0]["value"] == 1 and "resumed_from" not in progress[0]


# --- drawn with the weights as they are, without changing training --------------------------

def lora_run(tiny_model_paths, tmp_path, sample: TrainingSample | None):
    from nodes.diffusion import train_lora as tl

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, RES, RES, 3, generator=g)
    settings = tc.TrainSettings(steps=4, learning_rate=1e-2, batch_size=1, seed=3,
                                resolution=RES)
    rec = Recorder(tmp_path)
    spec = tl.LoraSpec(4, 4.0, text_targets=tl.TEXT_TARGETS)
    before = tc.weights_hash(model.unet, clip.text_encoder)
    rng = torch.get_rng_state()
    unet_layers, text_layers, losses, _clip = tl.train_lora(
        rec.ctx, model, clip, vae, images, ["a red sks", "a blue sks"], spec, settings,
        sample=sample)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is left as found
    assert tc.weights_hash(model.unet, clip.text_encoder) == before  # nothing left patched
    label = "trained"
    trained = (replace(model, patches=(unet_layers.patch(label),)),
               replace(clip, patches=(text_layers.patch(label),)), vae)
    return unet_layers, text_layers, losses, rec, trained


def flat(layers) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in layers.parameters()])


def test_lora_sampling_does_not_change_the_trained_weights(tiny_model_paths, tmp_path):
    spec = TrainingSample(every=2, prompt="a red sks", resolution=RES, seed=3, steps=3)
    u1, t1, l1, rec, trained = lora_run(tiny_model_paths, tmp_path, spec)
    u0, t0, l0, plain, _ = lora_run(tiny_model_paths, tmp_path, None)
    print(f"LoRA steps with a sample every 2 vs none: losses {l1} vs {l0}")
    assert torch.equal(flat(u1), flat(u0)) and torch.equal(flat(t1), flat(t0))
    assert l1 == l0
    assert not plain.previews()
    previews = rec.previews()
    assert len(previews) == 2  # steps 2 and 4
    assert all(p.size == (RES, RES) for p in previews)
    assert all(d["node"] == "train" and d["format"] == "PNG"
               for n, d in rec.events if n == "preview")
    # the last sample is what the trained MODEL and CLIP draw through the ordinary path
    # (their patch lists applied by the sampler): the LoRA was applied, and only once
    model, clip, vae = trained
    ctx = Recorder(tmp_path).ctx
    via_handles = draw_sample(ctx, model, clip, vae, spec)
    last = torch.from_numpy(np.asarray(previews[-1], dtype=np.float32) / 255.0)
    diff = (via_handles[0] - last).abs().max().item()
    print(f"last sample vs the trained handles' image: max diff {diff:.4f} (8-bit PNG)")
    assert diff <= 2 / 255
    base = draw_sample(ctx, *handles_of(tiny_model_paths), spec)
    assert (via_handles - base).abs().max().item() > 2 / 255  # the LoRA shows


def handles_of(tiny_model_paths):
    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    return model, clip, vae


def test_an_interrupt_during_a_sample_stops_the_run(tiny_model_paths, tmp_path, monkeypatch):
    import nodes.conditioning
    from nodes.diffusion import train_lora as tl

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    rec = Recorder(tmp_path)
    encode = nodes.conditioning.encode_text

    def stop_then_encode(*args, **kwargs):  # Stop pressed while the sample is drawn
        rec.ctx.interrupt_flag.set()
        return encode(*args, **kwargs)

    monkeypatch.setattr(nodes.conditioning, "encode_text", stop_then_encode)
    settings = tc.TrainSettings(steps=4, learning_rate=1e-2, batch_size=1, seed=3,
                                resolution=RES)
    spec = TrainingSample(every=2, prompt="a", resolution=RES, seed=3, steps=3)
    before = tc.weights_hash(model.unet, clip.text_encoder)
    with pytest.raises(Interrupted):
        tl.train_lora(rec.ctx, model, clip, vae, torch.rand(1, RES, RES, 3), ["a"],
                      tl.LoraSpec(4, 4.0), settings, sample=spec)
    assert not rec.previews()  # stopped within the sample, before it was sent
    assert [d["value"] for n, d in rec.events if n == "progress"] == [1, 2]
    assert tc.weights_hash(model.unet, clip.text_encoder) == before


def test_textual_inversion_sampling_gives_the_same_vectors(tiny_model_paths, tmp_path):
    from nodes.diffusion.train_textual_inversion import train_textual_inversion

    results = []
    for spec in (TrainingSample(every=1, prompt="", resolution=RES, seed=0, steps=2), None):
        model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
        rec = Recorder(tmp_path)
        settings = tc.TrainSettings(steps=3, learning_rate=1e-2, batch_size=1, seed=0,
                                    resolution=RES)
        if spec:  # the node's default prompt: the first caption, with the placeholder
            spec = training_sample(rec.ctx, 1, "", ["a <tok> shape"], RES, 0)
            spec = replace(spec, steps=2)
        _, vectors, losses = train_textual_inversion(
            rec.ctx, model, clip, vae, torch.rand(1, RES, RES, 3,
                                                  generator=torch.Generator().manual_seed(2)),
            ["a <tok> shape"], "<tok>", "square", 2, settings, sample=spec)
        results.append((vectors, losses, len(rec.previews())))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert results[0][2] == 3 and results[1][2] == 0


def test_training_sample_settings(tmp_path):
    ctx = Recorder(tmp_path).ctx
    spec = training_sample(ctx, 5, "  ", ["first caption", "second"], 64, 7)
    assert spec == TrainingSample(every=5, prompt="first caption", resolution=64, seed=7)
    assert training_sample(ctx, 5, "my prompt", ["c"], 64, 7).prompt == "my prompt"
    assert training_sample(ctx, 0, "", ["c"], 64, 7) is None  # off
    unwatched = Recorder(tmp_path, preview=False).ctx
    assert training_sample(unwatched, 5, "", ["c"], 64, 7) is None  # nobody sees it


# --- as nodes in a graph ----------------------------------------------------------------------

@pytest.mark.parametrize("node", [lora_node, ti_node], ids=["lora", "textual_inversion"])
def test_nodes_send_samples_while_a_client_watches(session, node):
    prompt = graph(node(sample_every=2, steps=4, seed=11),
                   text="a", clip_from=["train", 1 if node is lora_node else 0])
    frames = []

    def on_event(name, data):
        if name == "preview" and data["node"] == "train":
            buf = io.BytesIO()
            data["image"].save(buf, "PNG")
            frames.append(buf.getvalue())

    result = session.run(prompt, on_event=on_event, extra={"preview": True})
    assert result.ok, result.run.error
    assert len(frames) == 2  # after steps 2 and 4
    assert all(Image.open(io.BytesIO(f)).size == (RES, RES) for f in frames)
    # the last sample is the node's UI image (in temp/, as Preview Image's): the history
    # keeps it, and a reloaded canvas shows it on the node
    (entry,) = result.run.outputs["train"]["images"]
    assert entry["type"] == "temp"
    kept = session.env.folder("temp") / entry["subfolder"] / entry["filename"]
    with Image.open(kept) as saved, Image.open(io.BytesIO(frames[-1])) as last:
        # (Save Image's levels truncate, as ComfyUI's; the preview's round)
        diff = np.asarray(saved.convert("RGB"), int) - np.asarray(last.convert("RGB"), int)
        assert np.abs(diff).max() <= 1
    # the result is cached as for any node: run again without a watcher, nothing trains,
    # and the node's UI image comes with it
    prompt["cap"]["inputs"]["key"] = uuid.uuid4().hex
    again = session.run(prompt)
    assert again.ok and "train" not in again.run.executed
    assert again.run.outputs["train"] == result.run.outputs["train"]


def test_sample_inputs_are_bounded(session):
    from tests.test_training_nodes import messages

    text = messages(session, graph(lora_node(sample_every=-1), text="a", clip_from=["train", 1]))
    assert "sample_every" in text
