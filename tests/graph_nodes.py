"""A capture node for tests that compare a graph's float output with a reference."""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult, default_registry

CAPTURED: dict[str, Any] = {}


class Capture(Node):
    """Keeps the value it receives in ``CAPTURED[key]`` (an output node)."""

    TYPE = "TestCapture"
    OUTPUT_NODE = True
    value: Any = Input(type="*")
    key: str = Input("image")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        CAPTURED[self.key] = self.value
        return NodeResult((), {"captured": [self.key]})


def reference_pipeline(pipeline_cls: Any, folder: Any) -> Any:
    """A diffusers reference pipeline on a model folder (DDIM, no safety checker, quiet);
    ``base_config`` keeps the scheduler config for swapping schedulers in tests."""
    from diffusers import DDIMScheduler

    from nodes.diffusion.loading import load_components

    c = load_components(folder)
    pipe = pipeline_cls(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=DDIMScheduler.from_config(c.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_config = dict(c.scheduler_config)
    return pipe


def registry_with_capture() -> NodeRegistry:
    reg = default_registry()
    reg.register(Capture)
    return reg


def run_error(session: Any, prompt: dict[str, Any]) -> str:
    """Run ``prompt``, which must fail; its exception message."""
    result = session.run(prompt)
    assert result.run.status == "error", "expected the run to fail"
    return result.run.error["exception_message"]


def run_graph(session: Any, prompt: dict[str, Any]) -> Any:
    """Run ``prompt`` and return (as numpy) what its capture node ``"10"`` kept."""
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()


def tiny_txt2img(model: Any = ("ckpt", 0), *, seed: int = 1, cfg: float = 6.0,
                 size: tuple[int, int] = (128, 96), steps: int = 3, scheduler: str = "normal",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """KSampler on ``steerflow-tiny`` (euler), its LATENT kept by the capture node
    ``"cap"``; ``extra`` nodes join (``model`` may name one of them)."""
    import uuid

    width, height = size
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": width, "height": height, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": list(model), "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": "euler", "scheduler": scheduler, "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["k", 0],
                                                        "key": uuid.uuid4().hex}},
        **(extra or {}),
    }


def captured_samples(session: Any, prompt: dict[str, Any]) -> Any:
    """Run ``prompt`` and return the samples of the LATENT its ``"cap"`` node kept."""
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples
