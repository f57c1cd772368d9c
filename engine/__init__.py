"""Steerflow's engine: typed nodes over a DAG, validated and cached.

The engine knows nothing of diffusion; node packs (``nodes/`` and custom packs)
register node classes through this public API.
"""

from engine.cache import OutputCache
from engine.context import ExecutionContext, Interrupted
from engine.environment import Environment
from engine.executor import Executor, RunResult
from engine.node import Input, Node, NodeResult, Output
from engine.registry import NodeRegistry, default_registry
from engine.validation import Issue, PromptValidationError, validate_prompt

__all__ = [
    "Environment",
    "ExecutionContext",
    "Executor",
    "Input",
    "Interrupted",
    "Issue",
    "Node",
    "NodeRegistry",
    "NodeResult",
    "Output",
    "OutputCache",
    "PromptValidationError",
    "RunResult",
    "default_registry",
    "validate_prompt",
]
