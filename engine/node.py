"""The public node API: typed inputs, typed outputs, metadata and schema.

A node is a pydantic model whose fields are its inputs. Constant inputs
(INT, FLOAT, STRING, BOOLEAN, choices) are validated by pydantic before the
workflow runs; linked inputs carry arbitrary Python objects (models, tensors)
and are checked by socket type across the link instead.

    class EmptyLatentImage(Node):
        TYPE = "EmptyLatentImage"
        CATEGORY = "latent"
        OUTPUTS = (Output("LATENT"),)

        width: int = Input(512, min=16, max=8192, step=8)

        def execute(self, ctx): ...
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from engine.autogrow import Autogrow
    from engine.context import ExecutionContext
    from engine.environment import Environment

PRIMITIVE_TYPES = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_PYTHON_TYPES = {v: k for k, v in PRIMITIVE_TYPES.items()}
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
ANY_TYPE = "*"
# ComfyUI's /object_info spelling of a DynamicCombo input and a MatchType input/output.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"

Choices = Sequence[str] | Callable[["Environment"], Sequence[str]]
_SPEC_KEY = "steerflow"


def Input(
    default: Any = ...,
    *,
    type: str | None = None,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: Choices | None = None,
    also_accept: Callable[[Any, Environment], bool] | None = None,
    multiline: bool = False,
    dynamic_prompts: bool = False,
    optional: bool = False,
    description: str = "",
    display: str | None = None,
    upload: str | None = None,
    control_after_generate: bool = False,
    force_input: bool = False,
    wide: bool = False,
    allow_nonfinite: bool = False,
    lazy: bool = False,
    raw_link: bool = False,
    match: str | None = None,
) -> Any:
    """Declare a node input.

    ``type`` is the socket type (MODEL, LATENT, ...); for primitives it is
    inferred from the annotation. ``choices`` is a list or a callable taking the
    :class:`Environment` (for lists that depend on the model folders).
    ``dynamic_prompts`` marks a prompt text whose ``{a|b}`` choices and ``//`` comments
    the front end resolves when it queues (ComfyUI's ``dynamicPrompts``).
    ``optional`` inputs may be left unconnected; their value is then ``default``
    (or ``None``). ``force_input`` makes a primitive a socket rather than a widget.
    ``also_accept(value, env)`` admits values outside ``choices`` that the canvas does
    not list (LoadImage's annotated ``name.png [output]``); choices are checked first.

    Numbers are bounded even without ``min``/``max``: an INT side without a declared
    bound is limited to 64-bit signed (``wide=True`` lifts that), and a FLOAT must be
    finite (``allow_nonfinite=True`` admits inf and NaN). An INT ``step`` is enforced:
    the value must be ``min + k * step`` (``k * step`` without a ``min``); a FLOAT
    ``step`` is only the widget's increment, as in ComfyUI.

    ``lazy`` inputs are evaluated only when the node's ``check_lazy_status`` asks for
    them (until then they are None). A ``raw_link`` input receives the link itself,
    ``[source_id, output_index]``, not the value (its source still runs first).
    A growing list of like inputs (ComfyUI's Autogrow) is declared with
    :func:`engine.autogrow.autogrow`.
    ``match`` names a type template (ComfyUI's MatchType): the input takes any of the
    comma-separated types of ``type`` (``"IMAGE,MASK"``), and an :class:`Output` with
    the same ``match`` has the type of whatever is linked to it (see
    :mod:`engine.dynamic`). A DynamicCombo (a choice that brings its own inputs) is
    declared with :func:`engine.dynamic.dynamic_combo`.
    """
    spec = {
        "type": type,
        "min": min,
        "max": max,
        "step": step,
        "choices": choices,
        "also_accept": also_accept,
        "multiline": multiline,
        "dynamic_prompts": dynamic_prompts,
        "optional": optional,
        "display": display,
        "upload": upload,
        "control_after_generate": control_after_generate,
        "force_input": force_input,
        "wide": wide,
        "allow_nonfinite": allow_nonfinite,
        "lazy": lazy,
        "raw_link": raw_link,
        "match": match,
    }
    if default is ... and optional:
        default = None
    return Field(
        default,
        ge=min,
        le=max,
        description=description or None,
        json_schema_extra={_SPEC_KEY: spec},
    )


@dataclass(frozen=True)
class Output:
    """A typed output socket.

    The executor checks primitive outputs as it checks inputs: an INT is a 64-bit
    int unless ``wide``, a FLOAT is finite unless ``allow_nonfinite``. An output with a
    ``match`` template has the type of the inputs of that template (``type`` lists the
    types it may take, comma-separated).
    """

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str = ""
    wide: bool = False
    allow_nonfinite: bool = False
    match: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass(frozen=True)
class InputSpec:
    """Everything the engine, validator and canvas need to know of one input."""

    name: str
    type: str
    required: bool
    default: Any
    min: float | None
    max: float | None
    step: float | None
    choices: Choices | None
    multiline: bool
    description: str
    display: str | None
    upload: str | None
    control_after_generate: bool
    force_input: bool
    adapter: TypeAdapter[Any] | None = field(repr=False, compare=False)
    wide: bool = False
    allow_nonfinite: bool = False
    also_accept: Callable[[Any, Environment], bool] | None = field(
        default=None, repr=False, compare=False)
    lazy: bool = False
    raw_link: bool = False
    # A slot of a growing list (ComfyUI's Autogrow, engine.autogrow): its group.
    autogrow: Autogrow | None = None
    match: str | None = None
    # A DynamicCombo: its options, each with the inputs it brings (engine.dynamic).
    dynamic: tuple[DynamicOption, ...] | None = None
    # An input a DynamicCombo option brings: the combo's name (this name is "combo.sub").
    parent: str | None = None
    # A socket input whose constant is passed on as it is, unchecked (ComfyUI's rule for
    # a type it draws no widget for: "IMAGE,FLOAT", "INT:seed", a pack's own type).
    pass_constants: bool = False
    # Further output types a link may come from (comma-separated), beyond ``type``.
    also_links: str | None = None
    dynamic_prompts: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not None

    @property
    def is_widget(self) -> bool:
        """A widget input holds a constant; it may still be linked from a primitive."""
        return self.type in WIDGET_TYPES and not self.force_input

    def accepts_as_is(self, value: Any) -> bool:
        """True when a linked value needs no validation: exact type, no bounds or choices.

        The implicit limits still apply (64-bit INT, finite FLOAT), checked inline
        because this is the executor's per-link fast path.
        """
        kind = type(value)
        if (kind is not _PYTHON_TYPES.get(self.type) or self.min is not None
                or self.max is not None or self.choices is not None):
            return False
        if kind is int:
            return self.step is None and (self.wide or INT64_MIN <= value <= INT64_MAX)
        if kind is float:
            return self.allow_nonfinite or math.isfinite(value)
        return True

    def resolve_choices(self, env: Environment | None) -> list[str] | None:
        if self.choices is None:
            return None
        if callable(self.choices):
            return list(self.choices(env)) if env is not None else []
        return list(self.choices)


@dataclass(frozen=True)
class DynamicOption:
    """One choice of a DynamicCombo and the inputs it brings (named ``"combo.sub"``)."""

    key: str
    inputs: tuple[InputSpec, ...]


@dataclass
class NodeResult:
    """What ``execute`` returns when a node also has UI outputs (images, text), or
    expands into a subgraph.

    ``expand`` is a subgraph in the API format (build one with
    :class:`engine.expansion.Subgraph`) that runs in the node's place: an output
    that is a link ``[node_id, index]`` then takes that node's output as its value.
    """

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None
    expand: dict[str, Any] | None = None


def _socket_type(annotation: Any, spec: dict[str, Any]) -> str:
    if spec.get("type"):
        return spec["type"]
    if spec.get("choices") is not None:
        return "COMBO"
    if annotation in PRIMITIVE_TYPES:
        return PRIMITIVE_TYPES[annotation]
    raise TypeError(f"cannot infer socket type from {annotation!r}; pass Input(type=...)")


class Node(BaseModel):
    """Base class of every node; subclasses declare inputs as fields."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="ignore", frozen=False)

    TYPE: ClassVar[str] = ""
    DISPLAY_NAME: ClassVar[str] = ""
    CATEGORY: ClassVar[str] = "misc"
    VERSION: ClassVar[int] = 1
    OUTPUT_NODE: ClassVar[bool] = False
    OUTPUTS: ClassVar[tuple[Output, ...]] = ()
    DEPRECATED: ClassVar[bool] = False
    #: other words the node palette finds it by (ComfyUI's ``search_aliases``): the
    #: technique's short name or its paper's words
    SEARCH_ALIASES: ClassVar[tuple[str, ...]] = ()
    #: the name ComfyUI shows this TYPE under, set by the pack (the built-in one sets it
    #: from ``nodes/assets/comfy_display_names.json``): where it is not DISPLAY_NAME it is
    #: a search alias too, so a ComfyUI user's "KSampler" finds "Sample". A subclass
    #: with another TYPE does not inherit it.
    COMFY_DISPLAY_NAME: ClassVar[str] = ""
    # True: every input arrives as a whole list, and the node runs once (else a node
    # fed lists runs once per element, see engine.lists).
    INPUT_IS_LIST: ClassVar[bool] = False
    INPUT_SPECS: ClassVar[dict[str, InputSpec]] = {}
    # True: ``execute`` may return more values than OUTPUTS declares; a link to an output
    # past the declared ones is accepted (type ``*``) and gets that value (None if the
    # run returned fewer). For nodes whose outputs are set per workflow (ComfyUI packs).
    EXTRA_OUTPUTS: ClassVar[bool] = False
    # True: the outputs depend on which node this is (its id), so two such nodes with the
    # same inputs are never merged into one run, and each is cached on its own
    # (ComfyUI packs whose nodes take their UNIQUE_ID, or are NOT_IDEMPOTENT).
    PER_NODE: ClassVar[bool] = False
    # Non-empty: the node must see all of its inputs in one call (a training run), and
    # linked to a list (which would run it once per item) it is refused with this advice.
    ONE_CALL_ONLY: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if inspect.isabstract(cls) or not cls.TYPE:
            return
        cls.INPUT_SPECS = {name: _make_spec(name, info) for name, info in cls.model_fields.items()}

    # --- hooks -----------------------------------------------------------------
    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        """Return a value that changes when the outside world the node reads changes.

        Called with the node's constant inputs before the run; the result is part
        of the cache signature. Nodes that read files return their content hash.
        """
        return None

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        """Extra checks on constant inputs; return ``(input_name | None, message)`` pairs.

        A third item ``"warning"`` makes one a warning: reported, but the prompt runs.
        """
        return []

    @classmethod
    def undeclared_input(cls, name: str, linked: bool) -> InputSpec | None:
        """The spec of an input the node accepts without declaring it (``linked``: the
        prompt links it, rather than giving a constant), or None: the input is reported
        as unknown (a warning) and ignored, the default.

        A node that returns a spec receives the input by name like a declared one; it
        is validated against that spec (a link must name an existing node and output,
        and match the spec's type). Return the same spec object for the same arguments:
        validation memoizes checks per spec.
        """
        return None

    def check_lazy_status(self, ctx: ExecutionContext) -> Sequence[str]:
        """Names of the lazy inputs this node still needs, given the inputs it has.

        Called before ``execute`` (again after each requested input arrives); lazy
        inputs not evaluated yet are None. Inputs never named are never evaluated.
        """
        return [name for name, spec in self.INPUT_SPECS.items()
                if spec.lazy and getattr(self, name, None) is None]

    def execute(self, ctx: ExecutionContext) -> tuple[Any, ...] | NodeResult:
        """Compute the outputs; may be ``async def`` (independent async nodes of a
        prompt then run concurrently)."""
        raise NotImplementedError

    # --- schema ----------------------------------------------------------------
    @classmethod
    def comfy_display_name(cls) -> str | None:
        """The name ComfyUI shows this node by, when it was set for this TYPE (not
        inherited from a base class's)."""
        owner = next(c for c in cls.__mro__ if "COMFY_DISPLAY_NAME" in vars(c))
        return cls.COMFY_DISPLAY_NAME if owner.TYPE == cls.TYPE else None

    @classmethod
    def search_aliases(cls) -> list[str]:
        """SEARCH_ALIASES, then COMFY_DISPLAY_NAME unless it is the name shown or one of
        them (case aside). Equal to the type id it is kept: the palette ranks a name ahead
        of an id, and ComfyUI users type the name they know ("ksamp" found KSampler
        (Advanced) by its name before KSampler by its id)."""
        names = list(dict.fromkeys(cls.SEARCH_ALIASES))
        comfy = cls.comfy_display_name()
        if comfy:
            known = {n.casefold() for n in (cls.DISPLAY_NAME or cls.TYPE, *names)}
            if comfy.casefold() not in known:
                names.append(comfy)
        return names

    @classmethod
    def schema(cls, env: Environment | None = None) -> dict[str, Any]:
        """JSON schema of this node, a superset of ComfyUI's /object_info entry."""
        sections: dict[str, dict[str, Any]] = {"required": {}, "optional": {}}
        # A DynamicCombo's inputs are listed under its options, not at the top, and an
        # Autogrow's slots as one entry, the group (ComfyUI).
        for spec in cls.INPUT_SPECS.values():
            grow = spec.autogrow
            if grow is not None:
                section = sections["optional" if grow.optional else "required"]
                if grow.group not in section:
                    section[grow.group] = grow.schema(_input_schema(spec, env))
            elif spec.parent is None:
                section = sections["required" if spec.required else "optional"]
                section[spec.name] = _input_schema(spec, env)
        matched = [o.match for o in cls.OUTPUTS]
        extra: dict[str, Any] = {"output_matchtypes": matched} if any(matched) else {}
        aliases = cls.search_aliases()
        if aliases:
            extra["search_aliases"] = aliases
        return {
            "name": cls.TYPE,
            "display_name": cls.DISPLAY_NAME or cls.TYPE,
            "description": markdown_code(inspect.getdoc(cls) or ""),
            "category": cls.CATEGORY,
            "version": cls.VERSION,
            "output_node": cls.OUTPUT_NODE,
            "deprecated": cls.DEPRECATED,
            "input": sections,
            "input_order": {key: list(section) for key, section in sections.items()},
            "output": [MATCH_TYPE if o.match else o.type for o in cls.OUTPUTS],
            "output_name": [o.label for o in cls.OUTPUTS],
            "output_is_list": [o.is_list for o in cls.OUTPUTS],
            "output_tooltips": [o.tooltip for o in cls.OUTPUTS],
            "python_module": cls.__module__,
            **extra,
        }


class NamedInputsNode(Node):
    """Base of nodes whose input names need not be Python identifiers (ComfyUI names such
    as ``input_blocks.0.``, or names a pack chose): the class sets ``INPUT_SPECS``
    itself (see :func:`input_spec`) and a node reads its inputs from :attr:`inputs`."""

    _inputs: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None,
                        **values: Any) -> NamedInputsNode:
        node = super().model_construct(_fields_set)
        node._inputs = values
        return node

    @property
    def inputs(self) -> dict[str, Any]:
        return self._inputs


def input_spec(name: str, annotation: Any, field: Any) -> InputSpec:
    """The spec of an input declared with ``Input(...)`` and its Python type, for a
    :class:`NamedInputsNode`'s ``INPUT_SPECS``."""
    field.annotation = annotation
    return _make_spec(name, field)


def _make_spec(name: str, info: FieldInfo) -> InputSpec:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    spec: dict[str, Any] = dict(extra.get(_SPEC_KEY) or {})
    socket = _socket_type(info.annotation, spec)
    # "required" in ComfyUI's sense: shown and expected; widgets still have defaults.
    required = not spec.get("optional")
    default = None if info.is_required() else info.default
    # Constants are validated against the annotation plus the field's constraints;
    # linked values are opaque objects checked by socket type instead.
    adapter = TypeAdapter(_annotated(info)) if socket in WIDGET_TYPES else None
    return InputSpec(
        name=name,
        type=socket,
        required=required,
        default=default,
        min=spec.get("min"),
        max=spec.get("max"),
        step=spec.get("step"),
        choices=spec.get("choices"),
        multiline=bool(spec.get("multiline")),
        description=info.description or "",
        display=spec.get("display"),
        upload=spec.get("upload"),
        control_after_generate=bool(spec.get("control_after_generate")),
        force_input=bool(spec.get("force_input")),
        adapter=adapter,
        wide=bool(spec.get("wide")),
        allow_nonfinite=bool(spec.get("allow_nonfinite")),
        also_accept=spec.get("also_accept"),
        lazy=bool(spec.get("lazy")),
        raw_link=bool(spec.get("raw_link")),
        match=spec.get("match"),
        dynamic_prompts=bool(spec.get("dynamic_prompts")),
    )


def _annotated(info: FieldInfo) -> Any:
    from typing import Annotated

    return Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation


#: reST's inline literal (``code``), as docstrings write it
_REST_LITERAL = re.compile(r"``([^`\n]+?)``")


def markdown_code(text: str) -> str:
    """A docstring's ``code`` as Markdown's `code`: ComfyUI's front end shows the
    description raw in tooltips and as Markdown in its node help (where double backticks
    showed); our canvas reads either."""
    return _REST_LITERAL.sub(r"`\1`", text)


def _input_schema(spec: InputSpec, env: Environment | None) -> list[Any]:
    options: dict[str, Any] = {}
    if spec.default is not None:
        options["default"] = spec.default
    for key in ("min", "max", "step", "display", "upload"):
        value = getattr(spec, key)
        if value is not None:
            options[key] = value
    if spec.multiline:
        options["multiline"] = True
    if spec.dynamic_prompts:
        options["dynamicPrompts"] = True
    if spec.description:
        options["tooltip"] = markdown_code(spec.description)
    if spec.control_after_generate:
        options["control_after_generate"] = True
    if spec.force_input:
        options["forceInput"] = True
    if spec.wide:
        options["wide"] = True
    if spec.allow_nonfinite:
        options["allow_nonfinite"] = True
    if spec.lazy:
        options["lazy"] = True
    if spec.raw_link:
        options["rawLink"] = True
    if spec.match:  # ComfyUI's MatchType: its front end narrows the sockets as linked
        options["template"] = {"template_id": spec.match, "allowed_types": spec.type}
        return [MATCH_TYPE, options]
    if spec.dynamic is not None:  # ComfyUI's DynamicCombo: options with their inputs
        options["options"] = [{"key": o.key, "inputs": _option_inputs(o, env)}
                              for o in spec.dynamic]
        return [DYNAMIC_COMBO, options]
    if spec.type == "COMBO":
        # ComfyUI's shape: the first element of a combo input is its list of choices.
        return [spec.resolve_choices(env) or [], options]
    return [spec.type, options]


def _option_inputs(option: DynamicOption, env: Environment | None) -> dict[str, Any]:
    """A DynamicCombo option's inputs as ComfyUI lists them: by their own names."""
    out: dict[str, Any] = {"required": {}}
    for spec in option.inputs:
        short = spec.name[len(spec.parent or "") + 1:]
        out.setdefault("required" if spec.required else "optional", {})[short] = \
            _input_schema(spec, env)
    return out
