"""Every node's own input check (``validate_inputs``) sees only constants: an input that is
linked is absent. Linking any of them must never make the check raise (a KSampler whose
sampler_name came from a KSampler Config node made /prompt answer 500)."""

from __future__ import annotations

import pytest

from engine import Environment, default_registry
from engine.validation import _checks_inputs, validate_prompt


def _checked_classes():
    registry = default_registry()
    return [(name, cls) for name, cls in sorted(registry.classes.items())
            if _checks_inputs(cls)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Environment.create(tmp_path_factory.mktemp("vi"), device="cpu")


def test_no_input_check_raises_when_an_input_is_linked(env):
    crashed = []
    for type_id, cls in _checked_classes():
        widgets = {n: s.default for n, s in cls.INPUT_SPECS.items()
                   if s.is_widget and s.default is not None}
        for name in [None, *widgets]:
            constants = {k: v for k, v in widgets.items() if k != name}
            try:
                cls.validate_inputs(constants, env)
            except Exception as exc:
                crashed.append(f"{type_id} without {name!r}: {type(exc).__name__}: {exc}")
    assert not crashed, "\n".join(crashed)


def test_a_check_that_raises_is_a_structured_error_not_a_crash(env):
    from engine import Input, Node, NodeRegistry, Output

    class Fragile(Node):
        TYPE = "TestFragileCheck"
        OUTPUT_NODE = True
        OUTPUTS = (Output("INT"),)
        value: int = Input(1)

        @classmethod
        def validate_inputs(cls, inputs, env):
            raise KeyError("value")

        def execute(self, ctx):
            return (self.value,)

    registry = NodeRegistry()
    registry.register(Fragile)
    with pytest.raises(Exception) as info:
        validate_prompt({"1": {"class_type": "TestFragileCheck", "inputs": {"value": 2}}},
                        registry, env)
    issues = getattr(info.value, "issues", None)
    assert issues and issues[0].kind == "node_error" and "KeyError" in issues[0].message
