"""Turn a ComfyUI node class into a Steerflow :class:`engine.Node` subclass.

The adapted class's inputs come from ``INPUT_TYPES()`` (required, optional; hidden
inputs are filled in at run time: PROMPT, EXTRA_PNGINFO, UNIQUE_ID), its outputs
from ``RETURN_TYPES`` / ``RETURN_NAMES`` / ``OUTPUT_IS_LIST``. Running it creates one
instance of the ComfyUI class per workflow node id (kept across runs, as ComfyUI
does) and calls ``FUNCTION`` under ``torch.no_grad()``.

Lists, as ComfyUI defines them: every output slot holds a list. Steerflow's
engine passes one value per slot, so a slot that holds a list travels as a
:class:`ComfyList`, and any other value stands for a list of one. A node called
with list inputs runs ``FUNCTION`` once per element (the longest list sets the
count, shorter ones repeat their last element) unless ``INPUT_IS_LIST`` is set,
in which case it gets every input as a list in one call. Output slots flagged in
``OUTPUT_IS_LIST`` are concatenated, the others collected one per call; a slot
that ends up with one value leaves as that value. Built-in Steerflow nodes do not
map over lists: a :class:`ComfyList` reaching one arrives as a plain list.

Values: IMAGE ``[B, H, W, C]`` and MASK ``[B, H, W]`` are the same tensors in both
worlds. LATENT is a :class:`nodes.diffusion.handles.Latent` here and a dict
``{"samples": ..., "noise_mask": ...}`` in ComfyUI: converted at the boundary
(samples stay in Steerflow's UNet space, i.e. scaled by the VAE's scaling
factor, which ComfyUI's are not; other dict keys do not survive the trip).

``IS_CHANGED`` (called with the constant inputs, as ComfyUI calls it) joins the
cache signature; NaN or an exception means "always changed". ``VALIDATE_INPUTS``
runs with prompt validation; True passes, anything else is the error message, and
the inputs it takes skip the built-in choice and range checks, as in ComfyUI.
"""

from __future__ import annotations

import inspect
import logging
import math
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, PrivateAttr, TypeAdapter

from comfy_compat import runtime
from engine.node import InputSpec, Node, NodeResult, Output

if TYPE_CHECKING:
    from engine.context import ExecutionContext
    from engine.environment import Environment

log = logging.getLogger(__name__)

DEFAULT_CATEGORY = "custom"
_PRIMITIVES: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
_HIDDEN = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG",
           "API_KEY_COMFY_ORG")


class ComfyList(list):  # type: ignore[type-arg]
    """An output slot that holds a list in ComfyUI's sense (mapped over downstream)."""


class ComfyInputSpec(InputSpec):
    """An input of an adapted node: list values pass the engine's link check as they
    are; the adapter checks their elements itself before calling the node."""

    def accepts_as_is(self, value: Any) -> bool:
        return isinstance(value, ComfyList) or super().accepts_as_is(value)


class ComfyNode(Node):
    """Base of every adapted ComfyUI class (abstract: no TYPE)."""

    COMFY_CLASS: ClassVar[type] = object
    PACK: ClassVar[str] = ""
    HIDDEN: ClassVar[dict[str, str]] = {}
    INPUT_IS_LIST: ClassVar[bool] = False
    OUTPUT_IS_LIST: ClassVar[tuple[bool, ...]] = ()
    VALIDATED_BY_NODE: ClassVar[frozenset[str]] = frozenset()
    _instances: ClassVar[dict[str, Any]]

    _inputs: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> ComfyNode:
        # Inputs are kept as a dict, not pydantic fields: ComfyUI input names need not
        # be Python identifiers (or may clash with BaseModel's own attributes).
        node = super().model_construct(_fields_set)
        node._inputs = values
        return node

    # --- hooks -----------------------------------------------------------------
    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        fn = getattr(cls.COMFY_CLASS, "IS_CHANGED", None)
        if fn is None:
            return None
        try:
            with runtime.bound_environment(env):
                value = fn(**_accepted(fn, _present(inputs)))
        except Exception as exc:  # ComfyUI: a failing IS_CHANGED means "changed"
            log.warning("%s.IS_CHANGED failed (%s: %s); the node runs again",
                        cls.TYPE, type(exc).__name__, exc)
            return str(uuid.uuid4())
        if _is_nan(value):  # ComfyUI's idiom for "always run"
            return str(uuid.uuid4())
        return value

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        fn = getattr(cls.COMFY_CLASS, "VALIDATE_INPUTS", None)
        if fn is None:
            return []
        kwargs = _accepted(fn, _present(inputs))
        if "input_types" in _parameters(fn)[0]:
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
        data["python_module"] = f"custom_nodes.{cls.PACK}"
        data["experimental"] = bool(getattr(cls.COMFY_CLASS, "EXPERIMENTAL", False))
        return data

    # --- execution -------------------------------------------------------------
    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch

        comfy = self.COMFY_CLASS
        inputs = self._input_lists(ctx)
        instance = self._instances.get(ctx.node_id)
        if type(instance) is not comfy:
            instance = self._instances[ctx.node_id] = comfy()
        function = getattr(instance, comfy.FUNCTION)
        results: list[tuple[Any, ...]] = []
        uis: list[dict[str, Any]] = []
        with runtime.running(ctx), torch.no_grad():
            for kwargs in _calls(inputs, self.INPUT_IS_LIST):
                ctx.check_interrupt()
                returned = function(**kwargs)
                result, ui = _split(returned, self.TYPE, len(self.OUTPUTS))
                results.append(result)
                if ui is not None:
                    uis.append(ui)
        return NodeResult(self._merge(results), _merge_ui(uis))

    def _input_lists(self, ctx: ExecutionContext) -> dict[str, list[Any]]:
        """Every input as ComfyUI holds it: a list of values."""
        from engine.validation import check_constant

        lists: dict[str, list[Any]] = {}
        for name, value in self._inputs.items():
            spec = self.INPUT_SPECS.get(name)
            if value is None and spec is not None and not spec.required:
                continue  # ComfyUI does not pass an optional input that is not set
            items = list(value) if isinstance(value, ComfyList) else [value]
            if isinstance(value, ComfyList) and spec is not None and spec.is_widget:
                for i, item in enumerate(items):
                    items[i], issue = check_constant(spec, item, ctx.env)
                    if issue is not None:
                        raise ValueError(f"list item {i}: {issue.message}")
            lists[name] = [_to_comfy(item) for item in items]
        for name, kind in self.HIDDEN.items():
            if kind == "PROMPT":
                lists[name] = [ctx.prompt]
            elif kind == "EXTRA_PNGINFO":
                if "extra_pnginfo" in ctx.extra:
                    lists[name] = [ctx.extra["extra_pnginfo"]]
            elif kind == "UNIQUE_ID":
                lists[name] = [ctx.node_id]
            else:
                lists[name] = [None]
        return lists

    def _merge(self, results: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        outputs = []
        for i, (out, is_list) in enumerate(zip(self.OUTPUTS, self.OUTPUT_IS_LIST, strict=True)):
            items = ([x for result in results for x in result[i]] if is_list
                     else [result[i] for result in results])
            items = [_from_comfy(x, out.type) for x in items]
            outputs.append(ComfyList(items) if is_list or len(items) != 1 else items[0])
        return tuple(outputs)


class ComfyPackAdapter:
    """The ``steerflow.pack_adapters`` entry for ComfyUI packs."""

    def prepare(self) -> None:
        from comfy_compat import shims
        from comfy_compat.prompt_server import PromptServer

        shims.install()
        PromptServer.instance.sink = _send_to_running_node

    def claims(self, module: ModuleType) -> bool:
        return isinstance(getattr(module, "NODE_CLASS_MAPPINGS", None), dict)

    def node_classes(self, module: ModuleType) -> tuple[list[type[Node]], list[str]]:
        pack = module.__name__.rpartition(".")[2]
        names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        classes: list[type[Node]] = []
        problems: list[str] = []
        for type_id, comfy in module.NODE_CLASS_MAPPINGS.items():
            try:
                classes.append(adapt_class(str(type_id), comfy, pack=pack,
                                           display_name=names.get(type_id)))
            except Exception as exc:
                problems.append(f"node {type_id!r} skipped: {type(exc).__name__}: {exc}")
        return classes, problems

    def setup(self, env: Environment) -> None:
        runtime.set_default_environment(env)


ADAPTER = ComfyPackAdapter()


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
    return_types = tuple(getattr(comfy, "RETURN_TYPES", ()))
    names = tuple(getattr(comfy, "RETURN_NAMES", None) or ())
    tooltips = tuple(getattr(comfy, "OUTPUT_TOOLTIPS", None) or ())
    is_list = tuple(getattr(comfy, "OUTPUT_IS_LIST", None) or ())
    is_list = tuple(bool(is_list[i]) if i < len(is_list) else False
                    for i in range(len(return_types)))
    # Every slot may hold a ComfyList, so none is a checked primitive (is_list=True);
    # the schema reports the class's own OUTPUT_IS_LIST.
    outputs = tuple(Output(_output_type(t), names[i] if i < len(names) else None, True,
                           tooltips[i] if i < len(tooltips) else "")
                    for i, t in enumerate(return_types))
    validate = getattr(comfy, "VALIDATE_INPUTS", None)
    by_node = frozenset()
    if validate is not None:
        params, var_kw = _parameters(validate)
        by_node = frozenset(params) if not var_kw else frozenset(
            n for section in ("required", "optional") for n in raw.get(section) or {})
    namespace = {
        "__module__": f"custom_nodes.{pack}" if pack else __name__,
        "__doc__": getattr(comfy, "DESCRIPTION", None) or inspect.getdoc(comfy) or "",
        "__qualname__": comfy.__name__,
        "TYPE": type_id,
        "DISPLAY_NAME": display_name or getattr(comfy, "DISPLAY_NAME", None) or type_id,
        "CATEGORY": getattr(comfy, "CATEGORY", None) or DEFAULT_CATEGORY,
        "OUTPUT_NODE": bool(getattr(comfy, "OUTPUT_NODE", False)),
        "DEPRECATED": bool(getattr(comfy, "DEPRECATED", False)),
        "OUTPUTS": outputs,
        "COMFY_CLASS": comfy,
        "PACK": pack,
        "HIDDEN": {str(k): str(v) for k, v in (raw.get("hidden") or {}).items()},
        "INPUT_IS_LIST": bool(getattr(comfy, "INPUT_IS_LIST", False)),
        "OUTPUT_IS_LIST": is_list,
        "VALIDATED_BY_NODE": by_node,
        "_instances": {},
    }
    cls: type[ComfyNode] = type(comfy.__name__, (ComfyNode,), namespace)
    specs: dict[str, InputSpec] = {}
    for section in ("required", "optional"):
        for name, entry in (raw.get(section) or {}).items():
            specs[str(name)] = _input_spec(cls, str(name), entry, section == "required",
                                           str(name) in by_node)
    cls.INPUT_SPECS = specs
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
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    choices: Callable[[Environment], list[Any]] | None = None
    if isinstance(kind, list | tuple) or kind == "COMBO":
        socket, python = "COMBO", Any
        choices = _combo_choices(cls, name)
    elif isinstance(kind, str):
        socket, python = kind, _PRIMITIVES.get(kind, Any)
    else:
        raise TypeError(f"input {name!r}: type must be a string or a list of choices, "
                        f"got {kind!r}")
    force = bool(options.get("forceInput") or options.get("defaultInput"))
    low, high = _number(options.get("min")), _number(options.get("max"))
    adapter = None
    if socket in _PRIMITIVES or socket == "COMBO":
        bounds = [] if by_node or socket not in ("INT", "FLOAT") else \
            [Field(ge=low, le=high)]
        adapter = TypeAdapter(Annotated[python, *bounds] if bounds else python)
    default = options.get("default")
    return ComfyInputSpec(
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
    )


def _combo_choices(cls: type[ComfyNode], name: str) -> Callable[[Environment], list[Any]]:
    def choices(env: Environment) -> list[Any]:
        # Called per schema request and validation, as ComfyUI calls INPUT_TYPES:
        # model lists are read fresh, from this environment's folders.
        with runtime.bound_environment(env):
            raw = cls.COMFY_CLASS.INPUT_TYPES()
        for section in ("required", "optional"):
            entry = (raw.get(section) or {}).get(name)
            if entry is not None:
                kind = entry[0] if isinstance(entry, list | tuple) else entry
                if isinstance(kind, list | tuple):
                    return list(kind)
                options = entry[1] if isinstance(entry, list | tuple) and len(entry) > 1 \
                    and isinstance(entry[1], dict) else {}
                return list(options.get("options") or [])
        return []

    return choices


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _output_type(kind: Any) -> str:
    return "COMBO" if isinstance(kind, list | tuple) else str(kind)


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Names ``fn`` accepts by keyword, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _accepted(fn: Callable[..., Any], inputs: dict[str, Any]) -> dict[str, Any]:
    names, var_kw = _parameters(fn)
    return dict(inputs) if var_kw else {k: v for k, v in inputs.items() if k in names}


def _present(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if v is not None}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --- running ----------------------------------------------------------------------

def _calls(inputs: dict[str, list[Any]], input_is_list: bool) -> list[dict[str, Any]]:
    """The keyword arguments of each call, by ComfyUI's list rules."""
    if input_is_list:
        return [inputs]
    count = max((len(v) for v in inputs.values()), default=0)
    if count == 0:
        return [{}]
    return [{k: v[i if i < len(v) else -1] for k, v in inputs.items() if v}
            for i in range(count)]


def _split(returned: Any, type_id: str, expected: int
           ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """A call's ``(result, ui)``: from a tuple, or ``{"ui": ..., "result": ...}``."""
    ui = None
    if isinstance(returned, dict):
        ui = returned.get("ui")
        returned = returned.get("result", ())
    result = () if returned is None else tuple(returned)
    if len(result) != expected:
        raise RuntimeError(f"{type_id} returned {len(result)} value(s) but RETURN_TYPES "
                           f"declares {expected}")
    if ui is not None and not isinstance(ui, dict):
        raise TypeError(f"{type_id} returned a 'ui' that is not a dict: {type(ui).__name__}")
    return result, ui


def _merge_ui(uis: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ComfyUI's merge: each key's lists, concatenated across calls."""
    if not uis:
        return None
    merged = {key: [item for ui in uis for item in (ui.get(key) or [])] for key in uis[0]}
    return merged or None


def _to_comfy(value: Any) -> Any:
    from nodes.diffusion.handles import Latent

    if isinstance(value, Latent):
        latent: dict[str, Any] = {"samples": value.samples}
        if value.noise_mask is not None:
            latent["noise_mask"] = value.noise_mask
        if value.inpaint is not None:
            latent["steerflow_inpaint"] = value.inpaint
        return latent
    return value


def _from_comfy(value: Any, socket: str) -> Any:
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
    return Latent(samples, mask, inpaint)


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
