"""Clear failures for the parts of a ComfyUI module that Steerflow does not provide.

A shim module that provides part of a ComfyUI module (``comfy.samplers``'s name lists,
say, but not its sampler objects) ends with
``__getattr__ = missing_attributes(__name__, "what it is")``: any other name raises
an :class:`AttributeError` saying which ComfyUI API is missing and why, so a pack
that imports the module loads, and a node that reaches for the missing part fails
with that message when it runs (``from module import name`` fails at import with
"cannot import name", naming it).

ComfyUI's model internals (``comfy.sd``, ``comfy.model_patcher``, ``comfy.ldm...``)
are imported by whole packs at the top, and by the names they define (``from
comfy.samplers import CFGGuider``; ``class MyGuider(CFGGuider)``), though only some
nodes use them. For those a module or a name gives an :func:`unavailable`
placeholder: a class that imports, can be subclassed and named, and raises
``NotImplementedError`` with the message above when it is called, instantiated,
iterated, tested for truth or computed with, so a node that really needs it fails
when it runs, never with a made-up value. ``isinstance(x, placeholder)`` is False:
nothing in Steerflow is one of those ComfyUI objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NoReturn


def missing_message(qualname: str, what: str = "") -> str:
    return (f"ComfyUI's {qualname} is not available in Steerflow"
            f"{': ' + what if what else ''}. Steerflow provides ComfyUI's small public "
            "helpers, not its model, sampler and execution internals; a node that needs "
            f"{qualname} runs only in ComfyUI itself.")


class Unavailable(type):
    """The metaclass of :func:`unavailable` placeholders (and of classes built on one)."""

    _missing_qualname: str
    _missing_what: str

    def _refuse(cls) -> NoReturn:
        message = missing_message(cls._missing_qualname, cls._missing_what)
        if cls.__qualname__ != cls._missing_qualname.rpartition(".")[2]:
            message += f" ({cls.__qualname__} is built on it.)"
        raise NotImplementedError(message)

    def __call__(cls, *_args: Any, **_kwargs: Any) -> NoReturn:
        cls._refuse()

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        # an attribute of a missing class (CallbacksMP.ON_LOAD, ops.disable_weight_init
        # .Conv2d) is missing too; a subclass's own attributes are found before this
        return unavailable(f"{cls._missing_qualname}.{name}", cls._missing_what)

    # a value read from a missing module must not pass for a real one
    def __bool__(cls) -> bool:
        cls._refuse()

    def __iter__(cls) -> NoReturn:
        cls._refuse()

    def __len__(cls) -> int:
        cls._refuse()

    def __getitem__(cls, _key: object) -> NoReturn:
        cls._refuse()

    def __contains__(cls, _item: object) -> bool:
        cls._refuse()

    def __int__(cls) -> int:
        cls._refuse()

    def __float__(cls) -> float:
        cls._refuse()

    def __index__(cls) -> int:
        cls._refuse()

    def __add__(cls, _other: object) -> NoReturn:
        cls._refuse()

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __add__
    __lt__ = __le__ = __gt__ = __ge__ = __add__


def unavailable(qualname: str, what: str = "") -> type:
    """A placeholder for ComfyUI's ``qualname`` that fails clearly when used."""
    module, _, name = qualname.rpartition(".")
    return Unavailable(name, (), {"_missing_qualname": qualname, "_missing_what": what,
                                  "__module__": module, "__qualname__": name,
                                  "__doc__": missing_message(qualname, what)})


def missing_attributes(module: str, what: str = "", comfy_names: Iterable[str] = ()
                       ) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``comfy_names`` (names ComfyUI's module defines that
    Steerflow lacks) are :func:`unavailable` placeholders, so ``from module import name``
    at a pack's top works; any other name is an ``AttributeError`` saying it is missing,
    as for a name ComfyUI does not have either (feature detection sees it absent)."""
    known = frozenset(comfy_names)
    cache: dict[str, type] = {}

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # import machinery probes (__path__, __wrapped__, ...)
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name in known:
            if name not in cache:
                cache[name] = unavailable(f"{module}.{name}", what)
            return cache[name]
        raise AttributeError(missing_message(f"{module}.{name}", what), name=name)

    return __getattr__


def stub_attributes(module: str, what: str = "") -> Callable[[str], Any]:
    """The ``__getattr__`` of a stub for a module that is all ComfyUI internals: every
    name is an :func:`unavailable` placeholder (a submodule not imported yet, too:
    ``comfy.ldm.modules.attention.x`` names a placeholder either way)."""
    cache: dict[str, type] = {}

    def __getattr__(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name not in cache:
            cache[name] = unavailable(f"{module}.{name}", what)
        return cache[name]

    return __getattr__
