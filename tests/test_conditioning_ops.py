"""ConditioningConcat and ConditioningAverage (nodes/conditioning_ops.py): each against a
hand computation on small tensors, inputs left unchanged, bad input refused, and both
in an API-format prompt on the tiny model."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.validation import PromptValidationError
from nodes.conditioning_ops import ConditioningAverage, ConditioningConcat
from nodes.diffusion.handles import CondEntry, Conditioning
from tests.graph_nodes import CAPTURED


def out(cls, **inputs) -> Conditioning:
    return cls(**inputs).execute(None)[0]


def cond(*entries: CondEntry) -> Conditioning:
    return Conditioning(tuple(entries))


def states(*rows) -> torch.Tensor:
    """[1, tokens, width] from token rows."""
    return torch.tensor([rows], dtype=torch.float32)


def snapshot(c: Conditioning) -> list:
    return [(e.embeds.clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                for k, v in e.options.items()}) for e in c.entries]


def unchanged(c: Conditioning, before: list) -> bool:
    for entry, (embeds, options) in zip(c.entries, before, strict=True):
        if not torch.equal(entry.embeds, embeds) or entry.options.keys() != options.keys():
            return False
        for key, value in options.items():
            now = entry.options[key]
            if isinstance(value, torch.Tensor) and not torch.equal(now, value):
                return False
    return True


# --- ConditioningConcat ----------------------------------------------------------------------


def test_concat_appends_from_tokens_to_every_to_entry():
    ext = object()  # an attached technique (ControlNet...) stays conditioning_to's
    to = cond(CondEntry(states([1, 2], [3, 4]), {"strength": 0.5, "extensions": (ext,)}),
              CondEntry(states([5, 6]), {"area": (1, 1, 0, 0)}))
    frm = cond(CondEntry(states([7, 8], [9, 10], [11, 12]), {"strength": 3.0}),
               CondEntry(states([0, 0])))  # only the first entry is used
    before_to, before_from = snapshot(to), snapshot(frm)
    result = out(ConditioningConcat, conditioning_to=to, conditioning_from=frm)
    first, second = result.entries
    assert torch.equal(first.embeds, states([1, 2], [3, 4], [7, 8], [9, 10], [11, 12]))
    assert torch.equal(second.embeds, states([5, 6], [7, 8], [9, 10], [11, 12]))
    assert first.options == {"strength": 0.5, "extensions": (ext,)}
    assert second.options == {"area": (1, 1, 0, 0)}
    assert first.options is not to.entries[0].options
    assert unchanged(to, before_to) and unchanged(frm, before_from)


def test_concat_keeps_to_pooled_and_repeats_a_single_from_over_a_batch():
    pooled = torch.tensor([[1.0, 2.0]])
    to = cond(CondEntry(torch.ones(2, 1, 2), {"pooled_output": pooled, "width": 1024}))
    frm = cond(CondEntry(states([3, 4]), {"pooled_output": torch.zeros(1, 2)}))
    entry = out(ConditioningConcat, conditioning_to=to, conditioning_from=frm).entries[0]
    assert torch.equal(entry.embeds, torch.tensor([[[1.0, 1], [3, 4]]] * 2))
    assert entry.options["pooled_output"] is pooled and entry.options["width"] == 1024


def test_concat_warns_when_from_has_several_entries(caplog):
    frm = cond(CondEntry(states([1])), CondEntry(states([2])))
    with caplog.at_level(logging.WARNING, logger="nodes.conditioning_ops"):
        out(ConditioningConcat, conditioning_to=cond(CondEntry(states([0]))),
            conditioning_from=frm)
    assert "only the first" in caplog.text


# --- ConditioningAverage ---------------------------------------------------------------------


def test_average_blends_states_token_by_token():
    to = cond(CondEntry(states([1, 2], [3, 4]), {"strength": 2.0}))
    frm = cond(CondEntry(states([5, 6], [7, 8]), {"area": (1, 1, 0, 0)}))
    before_to, before_from = snapshot(to), snapshot(frm)
    entry = out(ConditioningAverage, conditioning_to=to, conditioning_from=frm,
                conditioning_to_strength=0.25).entries[0]
    # 0.25 * to + 0.75 * from
    assert torch.allclose(entry.embeds, states([4, 5], [6, 7]))
    assert entry.options == {"strength": 2.0}  # conditioning_from's area is dropped
    assert unchanged(to, before_to) and unchanged(frm, before_from)
    for weight, expected in ((1.0, to.entries[0].embeds), (0.0, frm.entries[0].embeds)):
        blended = out(ConditioningAverage, conditioning_to=to, conditioning_from=frm,
                      conditioning_to_strength=weight).entries[0].embeds
        assert torch.equal(blended, expected)


def test_average_cuts_a_longer_from_and_pads_a_shorter_one_with_zeros():
    long_to = cond(CondEntry(states([2, 2], [4, 4], [6, 6])))
    short_to = cond(CondEntry(states([2, 2])))
    frm = cond(CondEntry(states([10, 20], [30, 40])))
    padded = out(ConditioningAverage, conditioning_to=long_to, conditioning_from=frm,
                 conditioning_to_strength=0.5).entries[0].embeds
    assert torch.allclose(padded, states([6, 11], [17, 22], [3, 3]))  # from's 3rd row: 0
    cut = out(ConditioningAverage, conditioning_to=short_to, conditioning_from=frm,
              conditioning_to_strength=0.5).entries[0].embeds
    assert torch.allclose(cut, states([6, 11]))


def test_average_pooled_outputs():
    p_to, p_from = torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 7.0]])
    sizes = {"width": 1024, "height": 768}
    to = cond(CondEntry(states([0, 0]), {"pooled_output": p_to, **sizes}))
    frm = cond(CondEntry(states([0, 0]), {"pooled_output": p_from, "width": 64}))
    before = snapshot(to)
    options = out(ConditioningAverage, conditioning_to=to, conditioning_from=frm,
                  conditioning_to_strength=0.75).entries[0].options
    assert torch.allclose(options["pooled_output"], torch.tensor([[2.0, 4.0]]))
    assert options["width"] == 1024 and options["height"] == 768  # to's sizes kept
    assert unchanged(to, before)
    # only conditioning_from pooled: it is used; only conditioning_to pooled: kept as is
    bare = cond(CondEntry(states([0, 0])))
    got = out(ConditioningAverage, conditioning_to=bare, conditioning_from=frm,
              conditioning_to_strength=0.75).entries[0].options
    assert torch.equal(got["pooled_output"], p_from)
    got = out(ConditioningAverage, conditioning_to=to, conditioning_from=bare,
              conditioning_to_strength=0.75).entries[0].options
    assert got["pooled_output"] is p_to


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ConditioningConcat, ConditioningAverage])
def test_bad_inputs(cls):
    good = cond(CondEntry(torch.zeros(1, 2, 768)))
    extra = {"conditioning_to_strength": 0.5} if cls is ConditioningAverage else {}
    with pytest.raises(ValueError, match="conditioning_to is empty"):
        out(cls, conditioning_to=cond(), conditioning_from=good, **extra)
    with pytest.raises(ValueError, match="conditioning_from is empty"):
        out(cls, conditioning_to=good, conditioning_from=cond(), **extra)
    sd2 = cond(CondEntry(torch.zeros(1, 2, 1024)))  # SD 1.x 768 vs SD 2.x 1024
    with pytest.raises(ValueError, match="768 wide and conditioning_from's 1024"):
        out(cls, conditioning_to=good, conditioning_from=sd2, **extra)
    with pytest.raises(ValueError, match=r"\[batch, tokens, width\]"):
        out(cls, conditioning_to=good, conditioning_from=cond(CondEntry(torch.zeros(2, 768))),
            **extra)
    with pytest.raises(ValueError, match="batch of 3"):
        out(cls, conditioning_to=cond(CondEntry(torch.zeros(3, 2, 768))),
            conditioning_from=cond(CondEntry(torch.zeros(2, 2, 768))), **extra)


def test_average_bad_strength_and_pooled_width():
    c = cond(CondEntry(states([1.0])))
    with pytest.raises(ValueError, match="less than or equal to 1"):
        out(ConditioningAverage, conditioning_to=c, conditioning_from=c,
            conditioning_to_strength=1.5)
    to = cond(CondEntry(states([1.0]), {"pooled_output": torch.zeros(1, 1280)}))
    frm = cond(CondEntry(states([1.0]), {"pooled_output": torch.zeros(1, 768)}))
    with pytest.raises(ValueError, match="pooled outputs are 1280 and 768"):
        out(ConditioningAverage, conditioning_to=to, conditioning_from=frm,
            conditioning_to_strength=0.5)


# --- through a session: an API-format prompt on the tiny model -------------------------------


def prompt(strength: float = 0.3) -> dict:
    def capture(value: list, key: str) -> dict:
        return {"class_type": "TestCapture", "inputs": {"value": value, "key": key}}

    def sampler(positive: list) -> dict:
        return {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": positive, "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}}

    def encode(text: str) -> dict:
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}}

    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "a": encode("a red square"),
        "b": encode("a blue circle"),
        "neg": encode(""),
        "concat": {"class_type": "ConditioningConcat",
                   "inputs": {"conditioning_to": ["a", 0], "conditioning_from": ["b", 0]}},
        "avg": {"class_type": "ConditioningAverage",
                "inputs": {"conditioning_to": ["a", 0], "conditioning_from": ["b", 0],
                           "conditioning_to_strength": strength}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "ks_concat": sampler(["concat", 0]),
        "ks_avg": sampler(["avg", 0]),
        "c_a": capture(["a", 0], "cond_ops_a"),
        "c_b": capture(["b", 0], "cond_ops_b"),
        "c_concat": capture(["concat", 0], "cond_ops_concat"),
        "c_avg": capture(["avg", 0], "cond_ops_avg"),
        "c_ks_concat": capture(["ks_concat", 0], "cond_ops_ks_concat"),
        "c_ks_avg": capture(["ks_avg", 0], "cond_ops_ks_avg"),
    }


def test_api_prompt_encodes_merges_and_samples(session):
    graph = prompt()
    session.validate(graph)
    result = session.run(graph)
    assert result.ok, result.run.error
    a, b = CAPTURED.pop("cond_ops_a").embeds, CAPTURED.pop("cond_ops_b").embeds
    concat = CAPTURED.pop("cond_ops_concat").embeds
    avg = CAPTURED.pop("cond_ops_avg").embeds
    assert a.shape[1] == b.shape[1] == 77
    assert torch.equal(concat, torch.cat((a, b), dim=1))
    assert torch.allclose(avg, 0.3 * a + 0.7 * b, atol=1e-6)
    for key in ("cond_ops_ks_concat", "cond_ops_ks_avg"):
        samples = CAPTURED.pop(key).samples
        assert samples.shape[:2] == (1, 4) and torch.isfinite(samples).all()


def test_api_prompt_refuses_strength_out_of_bounds(session):
    with pytest.raises(PromptValidationError):
        session.validate(prompt(strength=1.5))


# --- Conditioning Set Timestep Range ---------------------------------------------------------


def test_timestep_range_reads_the_noise_level_as_comfyui():
    from nodes.diffusion.combine import active

    # 0-0.5: the noisy first half (timesteps 999 .. 499.5); 0.5-1: the rest
    assert active((0.0, 0.5), 999, 1000) and active((0.0, 0.5), 499.5, 1000)
    assert not active((0.0, 0.5), 499.4, 1000)
    assert active((0.5, 1.0), 499.5, 1000) and active((0.5, 1.0), 0, 1000)
    assert not active((0.5, 1.0), 600, 1000)
    assert active(None, 3, 1000) and active((0.0, 1.0), 0, 1000)
    assert not active((0.2, 0.2), 0, 1000) and not active((0.2, 0.2), 999, 1000)


def test_set_timestep_range_marks_every_entry_and_keeps_the_rest():
    from nodes.conditioning_ops import ConditioningSetTimestepRange

    source = cond(CondEntry(states([1.0]), {"strength": 0.5}), CondEntry(states([2.0]), {}))
    before = snapshot(source)
    result = out(ConditioningSetTimestepRange, conditioning=source, start=0.2, end=0.7)
    assert [e.options["timestep_range"] for e in result.entries] == [(0.2, 0.7)] * 2
    assert result.entries[0].options["strength"] == 0.5
    assert unchanged(source, before)


def timestep_prompt(boundary: float, *, gap: bool = False) -> dict:
    def encode(text: str) -> dict:
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}}

    def advanced(positive: list, latent: list, start: int, end: int, first: bool) -> dict:
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["ckpt", 0], "add_noise": "enable" if first else "disable",
            "noise_seed": 3, "steps": 10, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": positive, "negative": ["neg", 0],
            "latent_image": latent, "start_at_step": start, "end_at_step": end,
            "return_with_leftover_noise": "enable" if first else "disable"}}

    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "a": encode("a red square"),
        "b": encode("a blue circle"),
        "neg": encode(""),
        "ra": {"class_type": "ConditioningSetTimestepRange",
               "inputs": {"conditioning": ["a", 0], "start": 0.0, "end": boundary}},
        "rb": {"class_type": "ConditioningSetTimestepRange",
               "inputs": {"conditioning": ["b", 0], "start": boundary + (0.2 if gap else 0),
                          "end": 1.0}},
        "both": {"class_type": "ConditioningCombine",
                 "inputs": {"conditioning_1": ["ra", 0], "conditioning_2": ["rb", 0]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 48, "height": 32, "batch_size": 1}},
        "switched": advanced(["both", 0], ["latent", 0], 0, 10, True),
        # the reference: prompt a for the first five steps, then prompt b
        "first": advanced(["a", 0], ["latent", 0], 0, 5, True),
        "second": advanced(["b", 0], ["first", 0], 5, 10, False),
        "c_switched": {"class_type": "TestCapture",
                       "inputs": {"value": ["switched", 0], "key": "ts_switched"}},
        "c_ref": {"class_type": "TestCapture",
                  "inputs": {"value": ["second", 0], "key": "ts_reference"}},
    }


def test_prompts_switch_at_the_timestep_range_boundary(session, tiny_model_paths):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_pretrained(tiny_model_paths["diffusers"],
                                                       subfolder="scheduler")
    scheduler.set_timesteps(10)
    t = scheduler.timesteps.tolist()
    last = scheduler.config.num_train_timesteps - 1
    boundary = 1 - (t[4] + t[5]) / 2 / last  # a's range ends between steps 5 and 6
    result = session.run(timestep_prompt(boundary))
    assert result.ok, result.run.error
    switched = CAPTURED.pop("ts_switched").samples
    reference = CAPTURED.pop("ts_reference").samples
    print(f"switched vs two-stage reference: {(switched - reference).abs().max():.2e}")
    assert (switched - reference).abs().max() <= 1e-5


def test_a_gap_between_timestep_ranges_is_an_error(session):
    graph = timestep_prompt(0.4, gap=True)
    for key in ("first", "second", "c_ref"):
        graph.pop(key)
    result = session.run(graph)
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    assert "no positive prompt is active" in message and "0.6-1" in message


def test_timestep_range_end_before_start_is_refused(session):
    graph = timestep_prompt(0.5)
    graph["ra"]["inputs"].update(start=0.8, end=0.3)
    with pytest.raises(PromptValidationError, match="before start"):
        session.validate(graph)


def test_set_area_strength_is_comfyuis_name_for_set_strength():
    from nodes.conditioning_ops import ConditioningSetAreaStrength

    source = cond(CondEntry(states([1.0]), {"area": (8, 8, 0, 0)}))
    result = out(ConditioningSetAreaStrength, conditioning=source, strength=2.5)
    assert result.entries[0].options == {"area": (8, 8, 0, 0), "strength": 2.5}


def test_a_timestep_range_runs_without_cfg_and_its_gap_is_still_an_error(session):
    graph = timestep_prompt(0.5)
    for key in ("first", "second", "c_ref", "rb", "both"):
        graph.pop(key)
    graph["switched"]["inputs"].update(positive=["ra", 0], cfg=1.0)
    graph["ra"]["inputs"].update(start=0.0, end=1.0)
    result = session.run(graph)
    assert result.ok, result.run.error
    CAPTURED.pop("ts_switched")
    graph["ra"]["inputs"].update(end=0.5)
    graph["c_switched"]["inputs"]["key"] = "ts_gap"
    result = session.run(graph)
    assert result.run.status == "error"
    assert "no positive prompt is active" in result.run.error["exception_message"]
