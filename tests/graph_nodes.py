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
