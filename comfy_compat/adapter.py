"""Turn a ComfyUI node class into a Steerflow :class:`engine.Node` subclass.

The adapted class's inputs come from ``INPUT_TYPES()`` (required, optional; hidden
inputs are filled in at run time: PROMPT, EXTRA_PNGINFO, UNIQUE_ID), its outputs
from ``RETURN_TYPES`` / ``RETURN_NAMES`` / ``OUTPUT_IS_LIST``. Running it creates one
instance of the ComfyUI class per workflow node id (kept across runs, as ComfyUI
does) and calls ``FUNCTION`` under ``torch.no_grad()``.

Lists (``INPUT_IS_LIST``, ``OUTPUT_IS_LIST``) and ``ExecutionBlocker`` are the
engine's own (:mod:`engine.lists`): the engine calls ``FUNCTION`` once per list
element, or once with whole lists, and the adapter converts one call's values.
Lazy inputs (``{"lazy": True}`` and ``check_lazy_status``), ``rawLink`` inputs and
node expansion (``{"result": ..., "expand": graph}``, built with the
``comfy_execution.graph_utils.GraphBuilder`` shim) map onto the engine's too, and
the hidden ``DYNPROMPT`` is the run's :class:`engine.expansion.DynamicGraph`.

Values: IMAGE ``[B, H, W, C]`` and MASK ``[B, H, W]`` are the same tensors in both
worlds. LATENT is a :class:`nodes.diffusion.handles.Latent` here and a dict
``{"samples": ..., "noise_mask": ...}`` in ComfyUI: converted at the boundary
(samples divided by the VAE scaling factor the latent knows, so a pack sees raw VAE
latents as in ComfyUI, and multiplied back on the way out; ``batch_index`` travels
both ways; other dict keys do not survive a Steerflow node).

``IS_CHANGED`` (called with the constant inputs, as ComfyUI calls it) joins the
cache signature; NaN or an exception means "always changed". ``VALIDATE_INPUTS``
runs with prompt validation; True passes, anything else is the error message, and
the inputs it takes skip the built-in choice and range checks, as in ComfyUI.

V3 classes (``comfy_api.latest.io.ComfyNode``, from a module's ``comfy_entrypoint`` or
its mappings) present this V1 surface themselves; the adapter only passes them their
hidden values in one keyword (``STEERFLOW_HIDDEN_KWARG``), apart from the inputs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, TypeAdapter

from comfy_compat import runtime
from comfy_compat.dynamic_inputs import dynamic_specs, entry_of, is_dynamic
from comfy_compat.nodes_module import record_pack_class
from comfy_compat.signatures import accepted, parameters
from comfy_compat.ui_workflow import comfy_pnginfo
from engine.context import linked_inputs, node_being_signed
from engine.lists import NotReturned
from engine.node import (
    ANY_TYPE,
    WIDGET_TYPES,
    InputSpec,
    NamedInputsNode,
    Node,
    NodeResult,
    Output,
)

if TYPE_CHECKING:
    from engine.context import ExecutionContext
    from engine.environment import Environment

log = logging.getLogger(__name__)

DEFAULT_CATEGORY = "custom"
_PRIMITIVES: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
_HIDDEN = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG",
           "API_KEY_COMFY_ORG")


class ComfyNode(NamedInputsNode):
    """Base of every adapted ComfyUI class (abstract: no TYPE). Its inputs are a dict
    (:class:`engine.node.NamedInputsNode`): ComfyUI input names need not be Python
    identifiers, and may clash with BaseModel's own attributes."""

    COMFY_CLASS: ClassVar[type] = object
    PACK: ClassVar[str] = ""
    HIDDEN: ClassVar[dict[str, str]] = {}
    # "hidden" entries of no hidden kind (ComfyUI's TestForLoopOpen's initial_value0):
    # inputs a prompt or an expansion may set, not shown as widgets (name: the entry)
    HIDDEN_INPUTS: ClassVar[dict[str, Any]] = {}
    OUTPUT_IS_LIST: ClassVar[tuple[bool, ...]] = ()
    # ComfyUI does not check what a node returns (a numpy int for an INT is common)
    LAX_OUTPUTS: ClassVar[bool] = True
    VALIDATED_BY_NODE: ClassVar[frozenset[str]] = frozenset()
    # the names of its Autogrow groups and DynamicCombos (dynamic_inputs)
    DYNAMIC_GROUPS: ClassVar[frozenset[str]] = frozenset()
    # INPUT_TYPES sections that claim every name (rgthree's FlexibleOptionalInputType: a
    # dict whose __contains__ is always True): (section, the dict), required first
    FLEXIBLE: ClassVar[tuple[tuple[str, Any], ...]] = ()
    _instances: ClassVar[dict[str, Any]]
    _undeclared: ClassVar[dict[tuple[str, bool], InputSpec | None]]

    # --- hooks -----------------------------------------------------------------
    @classmethod
    def undeclared_input(cls, name: str, linked: bool) -> InputSpec | None:
        """ComfyUI's rule (``get_input_data``): every linked input reaches the node,
        declared or not (``TestVariadicAverage``'s ``input2``, ...), as type ``*``; a
        constant only when a section claims its name (a flexible dict: its entry for the
        name gives the type). Other constants are dropped (ours warn)."""
        key = (name, linked)
        if key in cls._undeclared:
            return cls._undeclared[key]
        if name.partition(".")[0] in cls.DYNAMIC_GROUPS:
            return None  # past an Autogrow's last slot, another option's input: ignored
        spec: InputSpec | None = None
        if name in cls.HIDDEN_INPUTS:  # ComfyUI's get_input_info reads "hidden" too
            spec = _input_spec(cls, name, cls.HIDDEN_INPUTS[name], False,
                               name in cls.VALIDATED_BY_NODE)
            cls._undeclared[key] = spec
            return spec
        for _section, flexible in cls.FLEXIBLE:
            try:
                entry = flexible[name]
                spec = _input_spec(cls, name, entry, False, name in cls.VALIDATED_BY_NODE)
            except Exception:  # a flexible dict's entry we cannot read: any type
                spec = _input_spec(cls, name, (ANY_TYPE,), False, False)
            break
        if spec is None and linked:
            spec = _input_spec(cls, name, (ANY_TYPE,), False, False)
        if len(cls._undeclared) < _MAX_UNDECLARED:  # same spec, same memo (see Node)
            cls._undeclared[key] = spec
        return spec

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        fn = getattr(cls.COMFY_CLASS, "IS_CHANGED", None)
        if fn is None:
            return None
        signing = node_being_signed()
        # as ComfyUI: a linked input (its value not known yet) is passed as None
        kwargs = {**dict.fromkeys(cls._linked_names(inputs, signing)), **_present(inputs)}
        hidden: dict[str, Any] = {}
        if signing is not None:  # ComfyUI gives IS_CHANGED the hidden inputs too
            node_id, prompt = signing
            hidden = {name: {"UNIQUE_ID": node_id, "PROMPT": prompt}.get(kind)
                      for name, kind in cls.HIDDEN.items()}
        bundle = _hidden_kwarg(cls.COMFY_CLASS)
        for name, value in ({} if bundle else hidden).items():
            kwargs.setdefault(name, value)
        kwargs = accepted(fn, kwargs)
        if bundle:
            kwargs[bundle] = hidden
        try:
            with runtime.bound_environment(env):
                value = fn(**kwargs)
        except Exception as exc:  # ComfyUI: a failing IS_CHANGED means "changed"
            log.warning("%s.IS_CHANGED failed (%s: %s); the node runs again",
                        cls.TYPE, type(exc).__name__, exc)
            return str(uuid.uuid4())
        if _is_nan(value):  # ComfyUI's idiom for "always run"
            return str(uuid.uuid4())
        return value

    @classmethod
    def _linked_names(cls, constants: dict[str, Any],
                      signing: tuple[str, dict[str, Any]] | None) -> list[str]:
        """The inputs of the node being signed that are links: as its prompt entry
        says, else (a node an expansion added) the required ones without a constant."""
        entry = signing[1].get(signing[0]) if signing is not None else None
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        if isinstance(inputs, dict):
            return [name for name, value in inputs.items()
                    if name not in constants and isinstance(value, list) and len(value) == 2]
        return [name for name, spec in cls.INPUT_SPECS.items()
                if spec.required and name not in constants]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        fn = getattr(cls.COMFY_CLASS, "VALIDATE_INPUTS", None)
        if fn is None:
            return []
        # as ComfyUI's validation: a linked input the check names arrives as None
        kwargs = accepted(fn, {**dict.fromkeys(linked_inputs()), **_present(inputs)})
        if "input_types" in parameters(fn)[0]:
            kwargs["input_types"] = {}  # linked inputs' types are checked by the engine
        try:
            with runtime.bound_environment(env):
                result = fn(**kwargs)
        except Exception as exc:
            return [(None, f"VALIDATE_INPUTS raised {type(exc).__name__}: {exc}")]
        if result is True:
            return []
        return [(None, f"custom validation failed: {result}")]

    # --- schema ----------------------------------------------------------------
    @classmethod
    def schema(cls, env: Environment | None = None) -> dict[str, Any]:
        """Our schema, with the inputs exactly as ``INPUT_TYPES()`` gives them now
        (fresh model lists, and option keys the pack's frontend code may read)."""
        data = super().schema(env)
        try:
            with runtime.bound_environment(env):
                raw = cls.COMFY_CLASS.INPUT_TYPES()
            data["input"] = {section: _jsonable(raw.get(section) or {})
                             for section in ("required", "optional", "hidden")}
        except Exception as exc:
            log.warning("%s.INPUT_TYPES failed: %s", cls.TYPE, exc)
            data["input"]["hidden"] = dict(cls.HIDDEN)
        data["output_is_list"] = list(cls.OUTPUT_IS_LIST)
        # ComfyUI's fields for the node's own kind: None for an output without a tooltip,
        # the hidden inputs' order, whole-list inputs (search aliases: the base's schema)
        data["output_tooltips"] = [t or None for t in data["output_tooltips"]]
        if data["input"].get("hidden"):
            data["input_order"]["hidden"] = list(data["input"]["hidden"])
        if cls.INPUT_IS_LIST:
            data["is_input_list"] = True
        data["python_module"] = f"custom_nodes.{cls.PACK}"
        data["experimental"] = bool(getattr(cls.COMFY_CLASS, "EXPERIMENTAL", False))
        return data

    # --- execution -------------------------------------------------------------
    def check_lazy_status(self, ctx: ExecutionContext) -> list[str]:
        fn = getattr(self.COMFY_CLASS, "check_lazy_status", None)
        if fn is None:  # as in ComfyUI: lazy inputs are then left unevaluated
            return []
        instance = self._instance(ctx)
        with runtime.running(ctx):
            needed = instance.check_lazy_status(**self._kwargs(ctx))
        return [str(n) for n in needed or ()]

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch

        GraphBuilder = _graph_builder()
        instance = self._instance(ctx)
        function = getattr(instance, self.COMFY_CLASS.FUNCTION)
        with runtime.running(ctx), torch.no_grad():
            # as ComfyUI before each call: this call's builders, rooted at this node
            # (the root is allocated from ctx on first use)
            GraphBuilder.set_default_prefix(None, 0, 0)
            returned = function(**self._kwargs(ctx))
        return self._result(returned)

    def _result(self, returned: Any) -> NodeResult:
        result, ui, expand = _split(returned, self.TYPE, len(self.OUTPUTS), self.EXTRA_OUTPUTS)
        if expand is not None:
            return NodeResult(result, ui, expand)
        # fewer values than declared run in ComfyUI (its outputs are what came back):
        # only a node linked to a missing one fails (engine.lists.NotReturned)
        missing = tuple(NotReturned(i, len(result)) for i in range(len(result), len(self.OUTPUTS)))
        return NodeResult((*(self._from_comfy(i, v) for i, v in enumerate(result)), *missing), ui)

    def _instance(self, ctx: ExecutionContext) -> Any:
        """One instance per prompt node, kept across runs as ComfyUI does; a fresh
        one for a node an expansion added (a loop makes thousands)."""
        comfy = self.COMFY_CLASS
        if ctx.run is not None and ctx.graph.get_parent_node_id(ctx.node_id) is not None:
            return comfy()
        instance = self._instances.get(ctx.node_id)
        if type(instance) is not comfy:
            instance = self._instances[ctx.node_id] = comfy()
        return instance

    def _kwargs(self, ctx: ExecutionContext) -> dict[str, Any]:
        """One call's inputs as ComfyUI passes them (lists for ``INPUT_IS_LIST``)."""
        whole = self.INPUT_IS_LIST
        kwargs: dict[str, Any] = {}
        for name, value in self._inputs.items():
            spec = self.INPUT_SPECS.get(name)
            unset = value is None or (whole and value == [None])
            if unset and spec is not None and not spec.required and not spec.lazy:
                continue  # ComfyUI does not pass an optional input that is not set
            if whole and isinstance(value, list) and not (spec is not None and spec.raw_link):
                kwargs[name] = [_to_comfy(item) for item in value]
            else:
                kwargs[name] = _to_comfy(value)
        bundle = _hidden_kwarg(self.COMFY_CLASS)
        hidden: dict[str, Any] = {}
        for name, kind in self.HIDDEN.items():
            if kind == "PROMPT":
                value = ctx.prompt
            elif kind == "EXTRA_PNGINFO":
                # None when the prompt carries none, as ComfyUI passes it ([None] to a
                # node that takes its inputs as lists)
                value = comfy_pnginfo(ctx.extra["extra_pnginfo"], _schemas(ctx)) \
                    if "extra_pnginfo" in ctx.extra else None
            elif kind == "UNIQUE_ID":
                value = ctx.node_id
            elif kind == "DYNPROMPT":
                value = ctx.graph
            else:
                value = None
            hidden[name] = value if bundle else [value] if whole else value
        if bundle:  # a V3 class: apart from the inputs, whose names they may share
            kwargs[bundle] = hidden
        else:
            kwargs.update(hidden)
        return kwargs

    def _from_comfy(self, index: int, value: Any) -> Any:
        if index >= len(self.OUTPUTS):  # EXTRA_OUTPUTS: an output the workflow added
            return value
        socket = self.OUTPUTS[index].type
        scale = self._input_scale() if socket == "LATENT" else None
        if self.OUTPUT_IS_LIST[index] and isinstance(value, list | tuple):
            return [_from_comfy(item, socket, scale) for item in value]
        return _from_comfy(value, socket, scale)

    def _input_scale(self) -> float | None:
        """The VAE scaling the node's LATENT (or VAE) inputs carry: a latent dict the pack
        built afresh (``{"samples": x}``) holds raw latents of that VAE too."""
        from nodes.diffusion.handles import Latent, Vae

        for value in self._inputs.values():
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, Latent) and item.scaling_factor:
                    return item.scaling_factor
                if isinstance(item, Vae):
                    return item.scaling_factor
        return None


class ComfyAsyncNode(ComfyNode):
    """An adapted class whose ``FUNCTION`` is ``async def``: the engine runs it on its
    event loop, concurrently with other async nodes; the shims see each one's context
    within its own task (a thread the pack starts sees none)."""

    async def execute(self, ctx: ExecutionContext) -> NodeResult:  # type: ignore[override]
        GraphBuilder = _graph_builder()
        function = getattr(self._instance(ctx), self.COMFY_CLASS.FUNCTION)
        with runtime.running_task(ctx):
            GraphBuilder.set_default_prefix(None, 0, 0)  # in this task's context
            returned = await function(**self._kwargs(ctx))
        return self._result(returned)


class ComfyPackAdapter:
    """The ``steerflow.pack_adapters`` entry for ComfyUI packs."""

    def prepare(self) -> None:
        from comfy_compat import shims
        from comfy_compat.prompt_server import PromptServer

        shims.install()
        PromptServer.instance.sink = _send_to_running_node
        _ensure_custom_package()

    def claims(self, module: ModuleType) -> bool:
        return isinstance(getattr(module, "NODE_CLASS_MAPPINGS", None), dict) or \
            callable(getattr(module, "comfy_entrypoint", None))  # V3 nodes

    def node_classes(self, module: ModuleType) -> tuple[list[type[Node]], list[str]]:
        from comfy_compat.shims.comfy_api._loader import extension_nodes

        pack = module.__name__.rpartition(".")[2]
        names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        entries = [(str(type_id), comfy, names.get(type_id)) for type_id, comfy in
                   (mappings.items() if isinstance(mappings, dict) else ())]
        extension, problems = extension_nodes(module)  # V3: comfy_entrypoint()
        classes: list[type[Node]] = []
        for type_id, comfy, display_name in entries + extension:
            try:
                classes.append(adapt_class(type_id, comfy, pack=pack, display_name=display_name))
                record_pack_class(type_id, comfy, display_name)
            except Exception as exc:
                problems.append(f"node {type_id!r} skipped: {type(exc).__name__}: {exc}")
        return classes, problems

    def setup(self, env: Environment) -> None:
        runtime.set_default_environment(env)


ADAPTER = ComfyPackAdapter()


def _ensure_custom_package() -> None:
    """Make ``steerflow_custom_nodes`` (the parent of the custom-nodes folder's packs,
    :data:`engine.registry.CUSTOM_PACKAGE`) an importable, empty namespace package.

    The registry imports each pack as ``steerflow_custom_nodes.<pack>`` without that
    parent module; a pack whose relative import goes through a folder with no
    ``__init__.py`` (a namespace subpackage: ComfyUI-KJNodes' ``nodes/``) then fails
    with "No module named 'steerflow_custom_nodes'". The registry should create the
    parent itself; until it does, the adapter does, before the first pack imports.
    """
    import sys
    import types

    from engine.registry import CUSTOM_PACKAGE

    if CUSTOM_PACKAGE not in sys.modules:
        package = types.ModuleType(CUSTOM_PACKAGE, "Custom node packs (a namespace).")
        package.__path__ = []
        sys.modules[CUSTOM_PACKAGE] = package


def adapt_class(type_id: str, comfy: type, *, pack: str = "",
                display_name: str | None = None) -> type[ComfyNode]:
    """The :class:`ComfyNode` subclass that runs ComfyUI class ``comfy`` as ``type_id``."""
    if not isinstance(comfy, type):
        raise TypeError(f"{comfy!r} is not a class")
    function = getattr(comfy, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(comfy, function, None)):
        raise TypeError(f"FUNCTION {function!r} does not name a method of {comfy.__name__}")
    raw = comfy.INPUT_TYPES()
    if not isinstance(raw, dict):
        raise TypeError("INPUT_TYPES() must return a dict")
    declared = getattr(comfy, "RETURN_TYPES", ())
    return_types = tuple(declared)
    names = tuple(getattr(comfy, "RETURN_NAMES", None) or ())
    tooltips = tuple(getattr(comfy, "OUTPUT_TOOLTIPS", None) or ())
    is_list = tuple(getattr(comfy, "OUTPUT_IS_LIST", None) or ())
    is_list = tuple(bool(is_list[i]) if i < len(is_list) else False
                    for i in range(len(return_types)))
    outputs = tuple(Output(_output_type(t), names[i] if i < len(names) else None, is_list[i],
                           tooltips[i] if i < len(tooltips) else "")
                    for i, t in enumerate(return_types))
    # V3 classes give ComfyUI's V1 view of hidden values: ("UNIQUE_ID",). An entry of
    # another kind is no hidden value: ComfyUI passes it only when the prompt sets it.
    hidden: dict[str, str] = {}
    hidden_inputs: dict[str, Any] = {}
    for key, entry in (raw.get("hidden") or {}).items():
        kind = entry[0] if isinstance(entry, list | tuple) and entry else entry
        if isinstance(kind, str) and kind in _HIDDEN:
            hidden[str(key)] = str(kind)
        else:
            hidden_inputs[str(key)] = entry
    validate = getattr(comfy, "VALIDATE_INPUTS", None)
    by_node = frozenset()
    if validate is not None:
        params, var_kw = parameters(validate)
        by_node = frozenset(params) if not var_kw else frozenset(
            n for section in ("required", "optional") for n in raw.get(section) or {})
    namespace = {
        "__module__": f"custom_nodes.{pack}" if pack else __name__,
        # the class's own docstring, never one inherited from a base (ComfyUI shows
        # only DESCRIPTION; a V3 node's base is ours)
        "__doc__": getattr(comfy, "DESCRIPTION", None)
        or inspect.cleandoc(comfy.__dict__.get("__doc__") or ""),
        "__qualname__": comfy.__name__,
        "TYPE": type_id,
        "DISPLAY_NAME": display_name or getattr(comfy, "DISPLAY_NAME", None) or type_id,
        "CATEGORY": getattr(comfy, "CATEGORY", None) or DEFAULT_CATEGORY,
        "OUTPUT_NODE": bool(getattr(comfy, "OUTPUT_NODE", False)),
        "DEPRECATED": bool(getattr(comfy, "DEPRECATED", False)),
        "SEARCH_ALIASES": _aliases(getattr(comfy, "SEARCH_ALIASES", None)),
        "OUTPUTS": outputs,
        "COMFY_CLASS": comfy,
        "PACK": pack,
        "HIDDEN": hidden,
        "HIDDEN_INPUTS": hidden_inputs,
        # ComfyUI keys these by node id too (its include_unique_id_in_input)
        "PER_NODE": "UNIQUE_ID" in hidden.values() or bool(getattr(comfy, "NOT_IDEMPOTENT",
                                                                    False)),
        "INPUT_IS_LIST": bool(getattr(comfy, "INPUT_IS_LIST", False)),
        "OUTPUT_IS_LIST": is_list,
        "VALIDATED_BY_NODE": by_node,
        "EXTRA_OUTPUTS": _answers_any_index(declared),
        "FLEXIBLE": tuple((section, raw[section]) for section in ("required", "optional")
                          if _claims_any_name(raw.get(section))),
        "_instances": {},
        "_undeclared": {},
    }
    base = ComfyAsyncNode if inspect.iscoroutinefunction(getattr(comfy, function)) \
        else ComfyNode
    cls: type[ComfyNode] = type(comfy.__name__, (base,), namespace)
    specs: dict[str, InputSpec] = {}
    for section in ("required", "optional"):
        for name, entry in (raw.get(section) or {}).items():
            name, required, checked = str(name), section == "required", str(name) in by_node
            if is_dynamic(entry):
                specs.update(dynamic_specs(name, entry, required, lambda n, e, r, c=checked:
                                           _input_spec(cls, n, e, r, c)))
            else:
                specs[name] = _input_spec(cls, name, entry, required, checked)
    cls.INPUT_SPECS = specs
    cls.DYNAMIC_GROUPS = frozenset(
        s.autogrow.group if s.autogrow else s.name for s in specs.values()
        if s.autogrow or s.dynamic is not None)
    return cls


# --- inputs -----------------------------------------------------------------------

def _input_spec(cls: type[ComfyNode], name: str, entry: Any, required: bool,
                by_node: bool) -> InputSpec:
    """One ``INPUT_TYPES`` entry (``(type_or_choices, options?)``) as an input spec."""
    if isinstance(entry, str):
        entry = (entry,)
    if not isinstance(entry, list | tuple) or not entry:
        raise TypeError(f"input {name!r}: expected (type, options), got {entry!r}")
    kind = entry[0]
    if isinstance(kind, str):
        # a plain str: packs' "any type" str subclasses (ComfyUI-Logic's AlwaysEqualProxy)
        # define __eq__ without __hash__
        kind = "".join(kind)
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    choices: Callable[[Environment], list[Any]] | None = None
    if isinstance(kind, list | tuple) or kind == "COMBO":
        socket, python = "COMBO", Any
        choices = _combo_choices(cls, name)
    elif kind == "BOOLEAN":  # a number too, as ComfyUI's bool(value) (a loop's count)
        socket, python = "BOOLEAN", Annotated[bool, BeforeValidator(_number_as_bool)]
    elif isinstance(kind, str):
        socket, python = str(kind), _PRIMITIVES.get(kind, Any)
    else:
        raise TypeError(f"input {name!r}: type must be a string or a list of choices, "
                        f"got {kind!r}")
    force = bool(options.get("forceInput") or options.get("defaultInput"))
    low, high = _number(options.get("min")), _number(options.get("max"))
    if socket == "INT":  # float bounds (WAS): the same integers, as ComfyUI's comparison
        low = None if low is None or not math.isfinite(low) else math.ceil(low)
        high = None if high is None or not math.isfinite(high) else math.floor(high)
    adapter = None
    if socket in _PRIMITIVES or socket == "COMBO":
        bounds = [] if by_node or socket not in ("INT", "FLOAT") else \
            [Field(ge=low, le=high)]
        adapter = TypeAdapter(Annotated[python, *bounds] if bounds else python)
    default = options.get("default")
    return InputSpec(
        name=name, type=socket, required=required, default=default,
        min=low if socket in ("INT", "FLOAT") else None,
        max=high if socket in ("INT", "FLOAT") else None,
        step=_number(options.get("step")) if socket in ("INT", "FLOAT") else None,
        choices=choices, multiline=bool(options.get("multiline")),
        description=str(options.get("tooltip") or ""), display=options.get("display"),
        upload="image" if options.get("image_upload") else None,
        control_after_generate=bool(options.get("control_after_generate")),
        force_input=force, adapter=adapter,
        also_accept=(lambda _value, _env: True) if by_node else None,
        lazy=bool(options.get("lazy")), raw_link=bool(options.get("rawLink")),
        pass_constants=_passes_constants(socket),
        # "INT:seed" (ComfyUI_essentials): an INT with a widget hint; INT links fit it
        also_links=socket.partition(":")[0] if ":" in socket
        and socket.partition(":")[0] in _PRIMITIVES else None,
    )


def _aliases(value: Any) -> tuple[str, ...]:
    """A pack's ``SEARCH_ALIASES`` as words (anything else is left out)."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(str(a)[:100] for a in value[:50] if isinstance(a, str) and a.strip())


def _passes_constants(socket: str) -> bool:
    """ComfyUI converts and checks constants only for its widget types and passes any
    other constant on (to VALIDATE_INPUTS where there is one): so do we, except for the
    object types Steerflow's own nodes produce (IMAGE, MODEL, ...), where a constant can
    only be a mistake and "must be linked" is the useful answer."""
    return socket not in WIDGET_TYPES and socket != ANY_TYPE and socket not in _object_types()


@functools.cache
def _object_types() -> frozenset[str]:
    """The non-primitive output types of Steerflow's built-in nodes."""
    import nodes

    return frozenset(o.type for cls in nodes.NODE_CLASSES for o in cls.OUTPUTS
                     if "," not in o.type) - WIDGET_TYPES - {ANY_TYPE}


_MAX_UNDECLARED = 4096  # undeclared input specs kept per class
_PROBE = "\x00steerflow: any name"


def _claims_any_name(section: Any) -> bool:
    """A dict subclass answering ``in`` for any name (rgthree's
    FlexibleOptionalInputType): ComfyUI's ``get_input_info`` then counts every input
    as declared there, with the type its ``__getitem__`` gives."""
    if not isinstance(section, dict) or type(section) is dict:
        return False
    try:
        return _PROBE in section
    except Exception:
        return False


def _answers_any_index(return_types: Any) -> bool:
    """A tuple subclass answering past its end (rgthree's ByPassTypeTuple, ``"*"`` at
    any index): ComfyUI then accepts a link to any output index, and keeps as many
    outputs as ``FUNCTION`` returns."""
    if not isinstance(return_types, tuple) or type(return_types) is tuple:
        return False
    try:
        return_types[len(return_types)]
    except Exception:
        return False
    return True


def _combo_choices(cls: type[ComfyNode], name: str) -> Callable[[Environment], list[Any]]:
    def choices(env: Environment) -> list[Any]:
        # Called per schema request and validation, as ComfyUI calls INPUT_TYPES:
        # model lists are read fresh, from this environment's folders.
        with runtime.bound_environment(env):
            raw = cls.COMFY_CLASS.INPUT_TYPES()
        entry = entry_of(raw, name)
        if entry is None:
            return []
        kind = entry[0] if isinstance(entry, list | tuple) else entry
        if isinstance(kind, list | tuple):
            return list(kind)
        options = entry[1] if isinstance(entry, list | tuple) and len(entry) > 1 \
            and isinstance(entry[1], dict) else {}
        return list(options.get("options") or [])

    return choices


def _graph_builder() -> type:
    """The GraphBuilder packs import (``comfy_execution.graph_utils``): one copy of the
    module for the adapter and the packs, never a second under ``comfy_compat.shims``."""
    from comfy_compat import shims

    shims.install()
    from comfy_execution.graph_utils import GraphBuilder

    return GraphBuilder


def _number_as_bool(value: Any) -> Any:
    """A number's truth (ComfyUI converts a BOOLEAN with ``bool``); other values are
    left to pydantic (text such as "false" means False, not ComfyUI's True)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return bool(value)
    return value


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _output_type(kind: Any) -> str:
    return "COMBO" if isinstance(kind, list | tuple) else str(kind)


def _hidden_kwarg(comfy: type) -> str | None:
    """The one keyword a V3 class (``comfy_api``) takes its hidden values in, if any."""
    name = getattr(comfy, "STEERFLOW_HIDDEN_KWARG", None)
    return name if isinstance(name, str) else None


def _present(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if v is not None}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --- running ----------------------------------------------------------------------

def _split(returned: Any, type_id: str, expected: int, extra: bool = False
           ) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]:
    """A call's ``(result, ui, expand)``: from a tuple, or ``{"ui": ..., "result": ...,
    "expand": ...}``. As in ComfyUI, values past the declared outputs are dropped (kept
    with ``extra``, ``EXTRA_OUTPUTS``) and fewer are fine (see :meth:`_result`)."""
    ui = expand = None
    if isinstance(returned, dict):
        ui = returned.get("ui")
        expand = returned.get("expand")
        returned = returned.get("result", ())
    if returned is not None and not isinstance(returned, tuple | list):
        # a bare value (a string, a tensor) would be split into characters or images
        kind = type(returned).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise TypeError(f"{type_id} returned {article} {kind}, not a tuple of "
                        "its outputs: a node returns (value,) for one output")
    result = () if returned is None else tuple(returned)
    if len(result) > expected and not extra:
        result = result[:expected]  # ComfyUI keeps the declared outputs only
    if ui is not None and not isinstance(ui, dict):
        raise TypeError(f"{type_id} returned a 'ui' that is not a dict: {type(ui).__name__}")
    return result, ui, expand


#: the LATENT dict key carrying the scale its samples were divided by (ours, private)
SCALE_KEY = "steerflow_scaling_factor"


def _to_comfy(value: Any) -> Any:
    from nodes.diffusion.handles import Latent

    if isinstance(value, Latent):
        scale = value.scaling_factor
        latent: dict[str, Any] = {"samples": value.samples / scale if scale else value.samples}
        if scale:
            latent[SCALE_KEY] = scale
        if value.noise_mask is not None:
            latent["noise_mask"] = value.noise_mask
        if value.inpaint is not None:
            latent["steerflow_inpaint"] = value.inpaint
        if value.batch_index is not None:
            latent["batch_index"] = list(value.batch_index)
        return latent
    return value


def _from_comfy(value: Any, socket: str, default_scale: float | None = None) -> Any:
    if socket != "LATENT" or not isinstance(value, dict) or "samples" not in value:
        return value
    from nodes.diffusion.handles import Latent

    samples = value["samples"]
    mask = value.get("noise_mask")
    if mask is not None:
        import torch.nn.functional as F

        # ComfyUI allows [H, W], [B, H, W] or [B, 1, H, W] at any size; ours is
        # [B, 1, h, w] at the latent size.
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(samples.dtype)
        if tuple(mask.shape[-2:]) != tuple(samples.shape[-2:]):
            mask = F.interpolate(mask, size=tuple(samples.shape[-2:]), mode="bilinear")
    inpaint = value.get("steerflow_inpaint")
    if inpaint is not None and tuple(inpaint.mask.shape[-2:]) != tuple(samples.shape[-2:]):
        inpaint = None  # resized latents: the stored inpainting input no longer fits
    # a dict the pack built itself says no scale: that of the node's latent or VAE
    # inputs (a fresh {"samples": x} from raw latents); with neither, kept as it is
    scale = value.get(SCALE_KEY, default_scale)
    scale = float(scale) if isinstance(scale, int | float) and scale > 0 else None
    index = value.get("batch_index")
    index = (tuple(int(i) for i in index) if isinstance(index, list | tuple)
             and len(index) == samples.shape[0] and all(isinstance(i, int) for i in index)
             else None)
    return Latent(samples * scale if scale else samples, mask, inpaint, batch_index=index,
                  scaling_factor=scale)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _schemas(ctx: ExecutionContext) -> Any:
    """The running registry's node schemas (for a ComfyUI view of our workflow)."""
    registry = getattr(getattr(ctx.run, "ex", None), "registry", None)
    if registry is None:
        return None
    from engine.comfy_workflow import RegistrySchemas

    return RegistrySchemas(registry)


def _send_to_running_node(event: Any, data: Any, sid: str | None) -> None:
    """PromptServer.send_sync → an event on the running node's context."""
    from comfy_compat.prompt_server import BinaryEventTypes

    ctx = runtime.current_context()
    if ctx is None:
        log.debug("PromptServer.send_sync(%r) outside a node's run; dropped", event)
        return
    if event in (BinaryEventTypes.PREVIEW_IMAGE, BinaryEventTypes.UNENCODED_PREVIEW_IMAGE):
        image = data[1] if isinstance(data, tuple | list) and len(data) > 1 else data
        ctx.emit("preview", {"prompt_id": ctx.prompt_id, "node": ctx.node_id, "image": image})
        return
    if not isinstance(event, str):
        log.debug("PromptServer.send_sync: binary event %r is not relayed", event)
        return
    ctx.emit(event, data if isinstance(data, dict) else {"data": data})
