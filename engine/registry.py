"""The node registry: built-in packs, custom packs, and the exported schema.

A node pack is any importable module exposing ``NODE_CLASSES`` (a sequence of
:class:`engine.node.Node` subclasses) and optionally ``setup(env)``, called once
before the first run (e.g. to create a default model). Built-in packs and
custom packs use exactly this API.

A custom pack's import runs in a daemon thread with a time limit
(:data:`PACK_IMPORT_TIMEOUT`): an exception, ``sys.exit()``, a
``KeyboardInterrupt`` raised by the pack, or an import that never finishes is
recorded as a :class:`PackError` and loading goes on with the next pack.
The thread behaves as a main thread would at import: it has an event loop, and
the signal handlers a pack sets are installed when its import is done.

Pack adapters let packs written against another node API load too: an adapter
(entry-point group ``steerflow.pack_adapters``, or :func:`register_pack_adapter`)
is prepared before the first custom pack imports (e.g. to provide the modules
such packs import), then turns a module it claims into node classes. The engine
knows no adapter by name; ``comfy_compat`` registers ComfyUI's this way.
A pack may also ship frontend extensions: its ``WEB_DIRECTORY`` (relative to the
pack) is recorded in :attr:`NodeRegistry.web_directories` under the pack's name.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from engine.environment import Environment
from engine.node import Node

log = logging.getLogger(__name__)

BUILTIN_PACKS = ("nodes",)
ENTRY_POINT_GROUP = "steerflow.nodes"
CUSTOM_PACKAGE = "steerflow_custom_nodes"
#: the script of a pack folder run before any pack imports (ComfyUI's convention)
PRESTARTUP_SCRIPT = "prestartup_script.py"

PACK_IMPORT_TIMEOUT: float | None = 30.0
"""Seconds one custom pack's import may take (None: no limit)."""

# Module names whose timed-out import is still running in its thread: importing
# them again would wait on the same module lock, so a retry fails at once.
_stuck: set[str] = set()
_stuck_lock = threading.Lock()
_import_loop: asyncio.AbstractEventLoop | None = None


ADAPTER_GROUP = "steerflow.pack_adapters"


class PackAdapter(Protocol):
    """Loads packs written against another node API (see the module docstring)."""

    def prepare(self) -> None:
        """Called once per process before the first custom pack imports."""

    def claims(self, module: ModuleType) -> bool:
        """True when ``module`` is a pack this adapter understands."""

    def node_classes(self, module: ModuleType) -> tuple[list[type[Node]], list[str]]:
        """The module's nodes as :class:`Node` subclasses, and one message per node
        that could not be adapted (the others still load)."""

    def setup(self, env: Environment) -> None:
        """Run once with the run's environment before the first prompt."""


_adapters: list[PackAdapter] | None = None
_adapters_lock = threading.Lock()


def register_pack_adapter(adapter: PackAdapter) -> None:
    """Add a pack adapter in this process (besides the installed entry points)."""
    adapters = pack_adapters()
    if adapter not in adapters:
        adapter.prepare()
        adapters.append(adapter)


def pack_adapters() -> list[PackAdapter]:
    """The installed pack adapters, loaded and prepared on first use."""
    global _adapters
    with _adapters_lock:
        if _adapters is None:
            _adapters = []
            for ep in entry_points(group=ADAPTER_GROUP):
                try:
                    adapter = ep.load()
                    adapter.prepare()
                    _adapters.append(adapter)
                except Exception:
                    log.exception("pack adapter %s failed to load", ep.value)
        return _adapters


class _PackFailed(Exception):
    """A pack's import failed, exited, was interrupted or timed out."""


@dataclass
class PackError:
    """A pack that failed to load, or (``whole`` False) one of its nodes that was
    skipped while the rest loaded."""

    pack: str
    message: str
    whole: bool = True

    def describe(self) -> str:
        """One log line: what failed, and whether the pack's other nodes loaded."""
        if self.whole:
            return f"node pack {self.pack} failed to load: {self.message}"
        return f"node pack {self.pack} loaded, but: {self.message}"


@dataclass
class NodeRegistry:
    """Type id → node class, plus the packs they came from."""

    classes: dict[str, type[Node]] = field(default_factory=dict)
    setups: list[Callable[[Environment], None]] = field(default_factory=list)
    errors: list[PackError] = field(default_factory=list)
    web_directories: dict[str, Path] = field(default_factory=dict)
    #: the custom-nodes folder's sources as loaded (engine.pack_sources); None: no folder
    sources: str | None = None

    def register(self, cls: type[Node], *, replace: bool = False) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Node)) or not cls.TYPE:
            raise TypeError(f"{cls!r} is not a Node subclass with a TYPE")
        if cls.TYPE in self.classes and not replace and self.classes[cls.TYPE] is not cls:
            raise ValueError(f"node type {cls.TYPE!r} is already registered")
        self.classes[cls.TYPE] = cls

    def get(self, type_id: str) -> type[Node] | None:
        return self.classes.get(type_id)

    def __contains__(self, type_id: object) -> bool:
        return type_id in self.classes

    def add_module(self, module: ModuleType, label: str | None = None) -> int:
        """Register a pack module's ``NODE_CLASSES`` (or what a pack adapter makes of
        it) and its ``WEB_DIRECTORY``; returns how many classes were added."""
        self._add_web_directory(module)
        if not hasattr(module, "NODE_CLASSES"):
            adapter = next((a for a in pack_adapters() if a.claims(module)), None)
            if adapter is not None:
                return self._add_adapted(module, adapter, label or module.__name__)
            if hasattr(module, "NODE_CLASS_MAPPINGS"):
                raise ImportError("the pack defines NODE_CLASS_MAPPINGS but no NODE_CLASSES, "
                                  "and no installed pack adapter accepts it (reinstall "
                                  "steerflow: pip install -e .)")
        classes: Iterable[type[Node]] = getattr(module, "NODE_CLASSES", ())
        if label is None:  # a built-in pack: a clash is a bug, not a user's problem
            classes = list(classes)
            for cls in classes:
                self.register(cls)
            count = len(classes)
        else:
            count = self._register_each(classes, label)
        setup = getattr(module, "setup", None)
        if callable(setup):
            self.setups.append(setup)
        return count

    def _add_adapted(self, module: ModuleType, adapter: PackAdapter, label: str) -> int:
        classes, problems = adapter.node_classes(module)
        self.errors.extend(PackError(label, message, whole=False) for message in problems)
        count = self._register_each(classes, label)
        if adapter.setup not in self.setups:
            self.setups.append(adapter.setup)
        return count

    def _register_each(self, classes: Iterable[Any], label: str) -> int:
        """Register a pack's classes; one that clashes or is no node is skipped and
        reported, and the rest of the pack still loads."""
        count = 0
        for cls in classes:
            try:
                self.register(cls)
                count += 1
            except (TypeError, ValueError) as exc:
                name = getattr(cls, "TYPE", None) or getattr(cls, "__name__", repr(cls))
                kept = " (the one registered first is kept)" if name in self else ""
                self.errors.append(PackError(label, f"node {name!r} skipped: {exc}{kept}",
                                             whole=False))
        return count

    def _add_web_directory(self, module: ModuleType) -> None:
        web = getattr(module, "WEB_DIRECTORY", None)
        source = getattr(module, "__file__", None)
        if not isinstance(web, str) or not source:
            return
        folder = (Path(source).parent / web).resolve()
        if folder.is_dir():
            self.web_directories[module.__name__.rpartition(".")[2]] = folder

    def load_pack(self, name: str, *, timeout: float | None = None) -> None:
        """Import a pack by module name, recording (not raising) its failure.

        ``timeout`` defaults to :data:`PACK_IMPORT_TIMEOUT`.
        """
        self._load_guarded(name, name, lambda: importlib.import_module(name), timeout)

    def load_directory(self, directory: Path, *, timeout: float | None = None) -> None:
        """Load every pack (a package or a ``.py`` file) in a custom-nodes folder.

        A folder that is missing, or a file, raises FileNotFoundError / NotADirectoryError
        naming it: a mistyped path must not load nothing in silence (the packs' node types
        would only show up later as unknown). A single-file pack goes inside the folder,
        as in ComfyUI's ``custom_nodes/``."""
        if not directory.exists():
            raise FileNotFoundError(f"custom nodes folder {directory} does not exist")
        if not directory.is_dir():
            raise NotADirectoryError(f"custom nodes folder {directory} is not a folder (a "
                                     "single-file pack goes inside the folder)")
        from engine.pack_sources import sources_fingerprint

        with _folder_lock(directory):
            self._load_folder(directory, timeout)
            # after the imports: a pack that writes its settings file on its first import
            # (ComfyUI-Custom-Scripts' pysssss.json) made every worker's start look like
            # an edit, and the server loaded every pack twice
            self.sources = sources_fingerprint(directory)

    def _load_folder(self, directory: Path, timeout: float | None) -> None:
        self._run_prestartup_scripts(directory, timeout)
        for path in sorted(directory.iterdir()):
            if path.name.startswith((".", "_")):
                continue
            if path.is_dir() and (path / "__init__.py").is_file():
                init = path / "__init__.py"
            elif path.suffix == ".py":
                init = path
            else:
                continue
            mod_name = f"{CUSTOM_PACKAGE}.{path.stem}"
            _forget_modules(mod_name, set())  # a reload imports the pack's files anew
            self._load_guarded(str(path), mod_name,
                               lambda p=path, i=init, m=mod_name: _exec_file(p, i, m), timeout)

    def _run_prestartup_scripts(self, directory: Path, timeout: float | None) -> None:
        """Each pack folder's ``prestartup_script.py``, before any pack imports, as
        ComfyUI runs them at its start (they set paths and variables the packs' imports
        read). One that fails is recorded as its pack's error; the packs still load."""
        for path in sorted(directory.iterdir()):
            script = path / PRESTARTUP_SCRIPT
            if path.name.startswith((".", "_")) or not path.is_dir() or not script.is_file():
                continue
            mod_name = f"{CUSTOM_PACKAGE}_prestartup.{path.stem}"
            pack_adapters()  # folder_paths and the rest, as for an import
            try:
                _import_guarded(f"{path}/{PRESTARTUP_SCRIPT}", mod_name,
                                lambda s=script, m=mod_name: _exec_file(s, s, m),
                                PACK_IMPORT_TIMEOUT if timeout is None else timeout)
            except _PackFailed as exc:
                self.errors.append(PackError(f"{path}/{PRESTARTUP_SCRIPT}", str(exc)))

    def load_entry_points(self, *, timeout: float | None = None) -> None:
        """Load the packs installed under the ``steerflow.nodes`` entry-point group."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._load_guarded(ep.value, ep.module, ep.load, timeout)

    def _load_guarded(self, label: str, module_name: str, importer: Callable[[], Any],
                      timeout: float | None) -> None:
        try:
            pack_adapters()  # prepared before the pack imports what they provide
            pack = _import_guarded(label, module_name, importer,
                                   PACK_IMPORT_TIMEOUT if timeout is None else timeout)
            self.add_module(pack, label)
        except _PackFailed as exc:
            self.errors.append(PackError(label, str(exc)))
        except (Exception, SystemExit) as exc:  # NODE_CLASSES itself may be broken
            log.exception("failed to register node pack %s", label)
            self.errors.append(PackError(label, f"{type(exc).__name__}: {exc}"))

    def setup(self, env: Environment) -> None:
        for hook in self.setups:
            hook(env)

    def schema(self, env: Environment | None = None) -> dict[str, dict[str, Any]]:
        """Every node's schema: the JSON the server, canvas and CLI all read."""
        return {type_id: cls.schema(env) for type_id, cls in sorted(self.classes.items())}


def default_registry(custom_nodes: Path | None = None, *,
                     env: Environment | None = None) -> NodeRegistry:
    """Built-in packs, installed entry-point packs, and a custom-nodes folder.

    With ``env`` (the run's folders), the pack adapters are set up with it before any
    custom pack imports: a pack that reads its input folder at import time finds the
    server's, not the working directory's.
    """
    registry = NodeRegistry()
    for name in BUILTIN_PACKS:
        registry.add_module(importlib.import_module(name))
    if env is not None:
        for adapter in pack_adapters():
            adapter.setup(env)
    registry.load_entry_points()
    if custom_nodes is not None:
        registry.load_directory(custom_nodes)
    return registry


def _exec_file(path: Path, init: Path, mod_name: str) -> ModuleType:
    """Import a custom-nodes folder entry (package or ``.py`` file) as ``mod_name``."""
    spec = importlib.util.spec_from_file_location(
        mod_name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # before exec: the pack's relative imports need it
    spec.loader.exec_module(module)
    return module


def _import_guarded(label: str, module_name: str, importer: Callable[[], Any],
                    timeout: float | None) -> Any:
    """Run ``importer`` in a daemon thread and return what it returns.

    Raises :class:`_PackFailed` for anything it raises, ``SystemExit`` and
    ``KeyboardInterrupt`` included (a pack's, not the user's: a real Ctrl+C
    reaches this thread's wait and propagates), and when it has not finished
    after ``timeout`` seconds. A thread cannot be killed, so a hung import
    keeps running; its modules are dropped from ``sys.modules`` and a retry
    fails at once until it ends.
    """
    with _stuck_lock:
        if module_name in _stuck:
            raise _PackFailed(f"an earlier import of {module_name!r} timed out and is "
                              "still running")
    before = set(sys.modules)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        # As in a main thread: get_event_loop() and signal.signal() work at import
        loop, own = _event_loop_for_import()
        asyncio.set_event_loop(loop)
        _import_thread.signals = signals
        try:
            box["value"] = importer()
        except BaseException as exc:  # the pack's sys.exit() must not end the engine
            box["error"] = exc
        finally:
            asyncio.set_event_loop(None)
            if own and not loop.is_running():
                loop.close()
            with _stuck_lock:
                done.set()
                if module_name in _stuck:  # abandoned: whatever it left is not loaded
                    _stuck.discard(module_name)
                    _forget_modules(module_name, before)

    signals: list[tuple[int, Any]] = []
    thread = threading.Thread(target=target, name=f"pack-import {module_name}", daemon=True)
    with _signals_deferred():
        thread.start()
        finished = done.wait(timeout)
    if not finished:
        with _stuck_lock:
            if not done.is_set():
                _stuck.add(module_name)
                _forget_modules(module_name, before)
                where = _thread_position(thread)
                _stop_thread(thread)
                log.error("node pack %s: import still running after %gs%s; skipped",
                          label, timeout, where)
                raise _PackFailed(f"TimeoutError: import did not finish within {timeout:g}s"
                                  f"{where}; the pack is not loaded")
    exc = box.get("error")
    if exc is None:
        _install_signal_handlers(label, signals)
        return box["value"]
    _forget_modules(module_name, before)
    log.error("failed to load node pack %s", label,
              exc_info=(type(exc), exc, exc.__traceback__))
    if isinstance(exc, SystemExit):
        raise _PackFailed(f"SystemExit: the pack called sys.exit({exc.code!r}) at import")
    if isinstance(exc, KeyboardInterrupt):
        raise _PackFailed("KeyboardInterrupt: the pack raised KeyboardInterrupt at import")
    raise _PackFailed(f"{type(exc).__name__}: {exc}")


def _event_loop_for_import() -> tuple[asyncio.AbstractEventLoop, bool]:
    """The loop a pack's import sees as current, and whether it is this import's own.

    One loop, never run by us, serves every import, as ComfyUI's main thread has one
    loop while its packs import: a loop per pack would keep a descriptor per pack open.
    While a stuck import still runs that loop, the next import gets one of its own.
    """
    global _import_loop
    with _stuck_lock:
        if _import_loop is None or _import_loop.is_closed():
            _import_loop = asyncio.new_event_loop()
        if _import_loop.is_running():
            return asyncio.new_event_loop(), True
        return _import_loop, False


_import_thread = threading.local()
_real_signal = signal.signal


def _deferring_signal(signalnum: Any, handler: Any) -> Any:
    """``signal.signal`` while packs import: a pack's call from its import thread is
    kept for :func:`_install_signal_handlers` (Python allows it in the main thread only)."""
    pending = getattr(_import_thread, "signals", None)
    if pending is None or threading.current_thread() is threading.main_thread():
        return _real_signal(signalnum, handler)
    previous = signal.getsignal(signalnum)
    pending.append((signalnum, handler))
    return previous


@contextmanager
def _signals_deferred() -> Iterator[None]:
    signal.signal = _deferring_signal  # type: ignore[assignment]
    try:
        yield
    finally:
        signal.signal = _real_signal


def _install_signal_handlers(label: str, signals: list[tuple[int, Any]]) -> None:
    """Install the handlers a pack set at import, as its import in a main thread would
    have; where packs load off the main thread (the server's copy of the registry),
    they are left out: the process keeps its own."""
    if not signals:
        return
    if threading.current_thread() is not threading.main_thread():
        log.debug("node pack %s: its signal handlers are not installed here", label)
        return
    for signalnum, handler in signals:
        try:
            _real_signal(signalnum, handler)
        except (ValueError, TypeError, OSError) as exc:
            log.warning("node pack %s: signal handler for %s not installed: %s",
                        label, signalnum, exc)


#: in a custom-nodes folder: held while one process imports the folder's packs
FOLDER_LOCK = ".steerflow-import.lock"


@contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """One process at a time imports a folder's packs. The server and each worker load
    the same packs, and a pack that pip-installs what it lacks at import (Comfyroll,
    smZNodes) ran pip in all of them at once, into one environment; in turn, the first
    installs and the others find it installed. Without a writable folder, no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        fd = os.open(directory / FOLDER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel lets go if the holder dies
        yield
    finally:
        os.close(fd)


class ImportAbandoned(BaseException):
    """Raised inside a pack's import that ran past its time (see :func:`_stop_thread`)."""


def _stop_thread(thread: threading.Thread) -> None:
    """Ask an abandoned import's thread to stop: the exception is raised in it at its
    next bytecode, so a pack looping in Python stops burning a core; one blocked in C
    (a socket, a sleep) stops when that call returns. CPython's documented C API."""
    import ctypes

    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                               ctypes.py_object(ImportAbandoned))


def _forget_modules(module_name: str, before: set[str]) -> None:
    """Drop the pack's module and submodules that its import added to ``sys.modules``."""
    prefix = module_name + "."
    for name in [n for n in sys.modules if n == module_name or n.startswith(prefix)]:
        if name not in before:
            sys.modules.pop(name, None)


def _thread_position(thread: threading.Thread) -> str:
    """' (at FILE:LINE)' where a running thread currently is, for the hang report."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return ""
    last = traceback.extract_stack(frame)[-1]
    return f" (at {last.filename}:{last.lineno})"


def load_registry(factory: str | None = None,
                  custom_nodes: str | os.PathLike[str] | None = None, *,
                  env: Environment | None = None) -> NodeRegistry:
    """The registry a server and its worker both build: ``factory`` ("module:function",
    for tests and benchmarks) when given, else the built-in, installed and custom packs
    (imported with ``env`` bound, see :func:`default_registry`)."""
    if factory:
        module, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module), attr or "make_registry")()
    return default_registry(Path(custom_nodes) if custom_nodes else None, env=env)
