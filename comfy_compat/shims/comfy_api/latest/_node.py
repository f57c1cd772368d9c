"""ComfyUI's V3 node class (``io.ComfyNode``), its ``io.Schema``, ``io.NodeOutput`` and
hidden inputs, presented as ComfyUI's V1 class surface.

A V3 class answers ``INPUT_TYPES()``, ``RETURN_TYPES``, ``RETURN_NAMES``,
``OUTPUT_TOOLTIPS``, ``OUTPUT_IS_LIST``, ``INPUT_IS_LIST``, ``FUNCTION``, ``CATEGORY``,
``OUTPUT_NODE``, ``DESCRIPTION``, ``DEPRECATED``, ``IS_CHANGED`` (its
``fingerprint_inputs``), ``VALIDATE_INPUTS`` (its ``validate_inputs``) and
``check_lazy_status`` as ComfyUI's V1 view of it does, so the ComfyUI pack adapter
turns it into a Steerflow node like any V1 class.

Hidden values reach a V3 node as ``cls.hidden.unique_id`` and the like. As in ComfyUI,
each call runs on a throwaway subclass holding that call's hidden values, so concurrent
runs never share them (and class attributes a node sets stay on its clone). The adapter
passes them in one keyword argument, :data:`HIDDEN_KWARG`, the class names it as
``STEERFLOW_HIDDEN_KWARG``: a V3 input may share a hidden value's name (``prompt``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from comfy_compat.signatures import accepted
from engine.lists import ExecutionBlocker

from ._dynamic import DynamicInput, has_dynamic, nest_inputs
from ._types import Input, Output

HIDDEN_KWARG = "\x00steerflow_hidden"


class Hidden(StrEnum):
    """The hidden values a node may ask for (``Schema(hidden=[...])``)."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """One call's hidden values; any value the node did not ask for reads ``None``."""

    def __init__(self, unique_id: str | None = None, prompt: Any = None,
                 extra_pnginfo: Any = None, dynprompt: Any = None,
                 auth_token_comfy_org: str | None = None,
                 api_key_comfy_org: str | None = None, **_others: Any):
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        self.auth_token_comfy_org = auth_token_comfy_org
        self.api_key_comfy_org = api_key_comfy_org

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return None

    @classmethod
    def from_dict(cls, values: dict[Any, Any] | None) -> HiddenHolder:
        """From ``{Hidden.x or "x": value}``."""
        names = {h.value: h.name for h in Hidden}
        return cls(**{names.get(str(getattr(k, "value", k)), str(getattr(k, "name", k))): v
                      for k, v in (values or {}).items()})


class Schema:
    """What a V3 node declares (``define_schema``); ComfyUI's fields, in its order.
    Fields newer ComfyUI versions add are accepted and ignored."""

    def __init__(self, node_id: str, display_name: str | None = None, category: str = "sd",
                 inputs: list[Input] | None = None, outputs: list[Output] | None = None,
                 hidden: list[Hidden] | None = None, description: str = "",
                 is_input_list: bool = False, is_output_node: bool = False,
                 is_deprecated: bool = False, is_experimental: bool = False,
                 is_api_node: bool = False, not_idempotent: bool = False,
                 enable_expand: bool = False, **extra: Any):
        self.node_id = node_id
        self.display_name = display_name
        self.category = category
        self.inputs = list(inputs or [])
        self.outputs = list(outputs or [])
        self.hidden = [Hidden(h) for h in hidden or []]
        self.description = description
        self.is_input_list = is_input_list
        self.is_output_node = is_output_node
        self.is_deprecated = is_deprecated
        self.is_experimental = is_experimental
        self.is_api_node = is_api_node
        self.not_idempotent = not_idempotent
        self.enable_expand = enable_expand
        self.extra = extra

    def finalize(self) -> None:
        """ComfyUI's additions: output nodes see the prompt and PNG info, API nodes the
        comfy.org tokens; outputs without an id get one."""
        wanted = ([Hidden.prompt, Hidden.extra_pnginfo] if self.is_output_node else []) + \
            ([Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org] if self.is_api_node else [])
        self.hidden += [h for h in wanted if h not in self.hidden]
        for i, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"

    def validate(self) -> None:
        # as ComfyUI: a dynamic input's own inputs are not compared (DynamicCombo options
        # may share an input id)
        inputs = [i.id for top in self.inputs
                  for i in ([top] if isinstance(top, DynamicInput) else top.get_all())]
        outputs = [o.id for o in self.outputs]
        issues = [f"{kind} ids must be unique, but "
                  f"{sorted(k for k, n in Counter(ids).items() if n > 1)} are not"
                  for kind, ids in (("Input", inputs), ("Output", outputs))
                  if len(set(ids)) != len(ids)]
        if both := set(inputs) & set(outputs):
            issues.append(f"Ids must be unique between inputs and outputs, but {both} are not")
        if issues:
            raise ValueError("; ".join(issues))
        for socket in [*self.inputs, *self.outputs]:
            socket.validate()

    def v1_inputs(self) -> dict[str, Any]:
        """ComfyUI's V1 ``INPUT_TYPES()`` of this schema."""
        sections: dict[str, Any] = {"required": {}}
        for item in self.inputs:
            options = item.as_dict()
            options.pop("optional", None)
            section = "optional" if item.optional else "required"
            sections.setdefault(section, {})[item.id] = (item.get_io_type(), options)
        for hidden in self.hidden:
            sections.setdefault("hidden", {})[hidden.name] = (hidden.value,)
        return sections


class _UIOutput:
    """Base of the ``ui.*`` outputs: ``as_dict()`` is the node's ``executed`` payload."""

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class NodeOutput:
    """A V3 node's return: outputs, and optionally ``ui``, ``expand`` (a graph to run in
    the node's place, with ``Schema(enable_expand=True)``) or ``block_execution``."""

    def __init__(self, *args: Any, ui: _UIOutput | dict[str, Any] | None = None,
                 expand: dict[str, Any] | None = None, block_execution: str | None = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args or None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeOutput:
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class classproperty:
    """A read-only attribute computed from the class (the V1 names)."""

    def __init__(self, fget: Callable[[Any], Any]):
        self.fget = fget

    def __get__(self, obj: Any, owner: type) -> Any:
        return self.fget(owner)


def _overrides(cls: type, name: str) -> bool:
    mine = getattr(cls, name, None)
    return getattr(mine, "__func__", mine) is not getattr(ComfyNode.__dict__[name], "__func__",
                                                         None)


def _clone(cls: type, hidden: dict[str, Any] | None) -> type:
    """A throwaway subclass holding one call's hidden values (ComfyUI's class clone)."""
    return type(cls.__name__, (cls,), {"hidden": HiddenHolder.from_dict(hidden),
                                       "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def _entry(cls: type, name: str) -> Callable[..., Any]:
    """V1 entry point for classmethod ``name``: runs it on a clone with the call's hidden
    values; its signature is the method's, so the adapter passes the inputs it takes.
    With dynamic inputs it takes every input, nests them as ComfyUI does, and passes
    the method those it accepts."""
    method = getattr(cls, name)
    dynamic = name != "check_lazy_status" and has_dynamic(cls._v1().schema.inputs)

    def call(*args: Any, **kwargs: Any) -> Any:
        hidden = kwargs.pop(HIDDEN_KWARG, None)
        if dynamic:
            kwargs = accepted(method, nest_inputs(cls._v1().schema.inputs, kwargs))
        return getattr(_clone(cls, hidden), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    if not dynamic:
        with contextlib.suppress(TypeError, ValueError):  # a builtin: kwargs as they are
            call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return call


class _V1Info:
    def __init__(self, schema: Schema):
        outputs = schema.outputs
        self.schema = schema
        self.return_types = tuple(o.get_io_type() for o in outputs)
        self.return_names = tuple(o.display_name or o.get_io_type() for o in outputs)
        self.output_is_list = tuple(bool(o.is_output_list) for o in outputs)
        self.output_tooltips = tuple(o.tooltip or "" for o in outputs)


class ComfyNode:
    """Base of V3 nodes: subclasses define ``define_schema`` and ``execute`` (both
    classmethods), optionally ``validate_inputs``, ``fingerprint_inputs`` and
    ``check_lazy_status``."""

    RELATIVE_PYTHON_MODULE: str | None = None
    SCHEMA: Schema | None = None
    STEERFLOW_HIDDEN_KWARG = HIDDEN_KWARG
    hidden: HiddenHolder = HiddenHolder()  # outside a call: every value None

    def __init__(self) -> None:
        cls = type(self)
        cls.VALIDATE_CLASS()
        # the adapter calls the instance's check_lazy_status with the hidden values
        # bundled: an instance attribute wins over the (user's) classmethod
        self.check_lazy_status = _entry(cls, "check_lazy_status")

    # --- what a node defines -----------------------------------------------------------
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        """ComfyUI's default: every input not evaluated yet."""
        return [name for name, value in kwargs.items() if value is None]

    # --- ComfyUI's internals packs call ------------------------------------------------
    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        for name in ("define_schema", "execute"):
            if not _overrides(cls, name):
                raise TypeError(f"No {name} function was defined for node class "
                                f"{cls.__name__}.")

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        if not isinstance(schema, Schema):
            raise TypeError(f"{cls.__name__}.define_schema() returned "
                            f"{type(schema).__name__}, not io.Schema")
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        cls._v1_info = _V1Info(schema)
        return schema

    @classmethod
    def _v1(cls) -> _V1Info:
        info = cls.__dict__.get("_v1_info")
        if info is None:  # the schema, once per class (INPUT_TYPES stays fresh)
            cls.GET_SCHEMA()
            info = cls.__dict__["_v1_info"]
        return info

    # --- the V1 surface ------------------------------------------------------------------
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return cls.FINALIZE_SCHEMA().v1_inputs()

    FUNCTION = classproperty(lambda cls: "EXECUTE_NORMALIZED_ASYNC"
                             if inspect.iscoroutinefunction(cls.execute) else "EXECUTE_NORMALIZED")
    RETURN_TYPES = classproperty(lambda cls: cls._v1().return_types)
    RETURN_NAMES = classproperty(lambda cls: cls._v1().return_names)
    OUTPUT_IS_LIST = classproperty(lambda cls: cls._v1().output_is_list)
    OUTPUT_TOOLTIPS = classproperty(lambda cls: cls._v1().output_tooltips)
    DISPLAY_NAME = classproperty(lambda cls: cls._v1().schema.display_name)
    CATEGORY = classproperty(lambda cls: cls._v1().schema.category)
    DESCRIPTION = classproperty(lambda cls: cls._v1().schema.description)
    OUTPUT_NODE = classproperty(lambda cls: cls._v1().schema.is_output_node)
    INPUT_IS_LIST = classproperty(lambda cls: cls._v1().schema.is_input_list)
    SEARCH_ALIASES = classproperty(lambda cls: list(
        cls._v1().schema.extra.get("search_aliases") or []))
    DEPRECATED = classproperty(lambda cls: cls._v1().schema.is_deprecated)
    EXPERIMENTAL = classproperty(lambda cls: cls._v1().schema.is_experimental)
    API_NODE = classproperty(lambda cls: cls._v1().schema.is_api_node)
    NOT_IDEMPOTENT = classproperty(lambda cls: cls._v1().schema.not_idempotent)
    IS_CHANGED = classproperty(lambda cls: _entry(cls, "fingerprint_inputs")
                               if _overrides(cls, "fingerprint_inputs") else None)
    VALIDATE_INPUTS = classproperty(lambda cls: _entry(cls, "validate_inputs")
                                    if _overrides(cls, "validate_inputs") else None)

    @classmethod
    def EXECUTE_NORMALIZED(cls, **kwargs: Any) -> dict[str, Any]:
        clone = _clone(cls, kwargs.pop(HIDDEN_KWARG, None))
        return cls._v1_return(clone.execute(**nest_inputs(cls._v1().schema.inputs, kwargs)))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, **kwargs: Any) -> dict[str, Any]:
        clone = _clone(cls, kwargs.pop(HIDDEN_KWARG, None))
        inputs = nest_inputs(cls._v1().schema.inputs, kwargs)
        return cls._v1_return(await clone.execute(**inputs))

    @classmethod
    def _v1_return(cls, returned: Any) -> dict[str, Any]:
        """``execute``'s answer as a V1 return ``{"result", "ui", "expand"}``."""
        if returned is None:
            returned = NodeOutput()
        elif isinstance(returned, tuple):
            returned = NodeOutput(*returned)
        elif isinstance(returned, dict):
            returned = NodeOutput.from_dict(returned)
        elif isinstance(returned, ExecutionBlocker):
            returned = NodeOutput(block_execution=returned.message)
        elif not isinstance(returned, NodeOutput):
            raise TypeError(f"{cls.__name__}.execute returned {type(returned).__name__}; "
                            "expected io.NodeOutput")
        info = cls._v1()
        if returned.expand is not None and not info.schema.enable_expand:
            raise RuntimeError(f"Node {cls.__name__} is not expandable, but expand included "
                               "in NodeOutput; set enable_expand=True on its Schema")
        count = len(info.return_types)
        result = returned.args
        if returned.block_execution is not None:
            result = (ExecutionBlocker(returned.block_execution),) * count
        elif not result:  # ComfyUI leaves such outputs empty; a link to one reads None
            result = (None,) * count
        answer: dict[str, Any] = {"result": result}
        ui = returned.ui
        if ui is not None:
            answer["ui"] = ui.as_dict() if isinstance(ui, _UIOutput) else ui
        if returned.expand is not None:
            answer["expand"] = returned.expand
        return answer


__all__ = ["ComfyNode", "Hidden", "HiddenHolder", "NodeOutput", "Schema"]
