"""Numbered files in output/ (``<prefix>_00001_.<ext>``), shared by the save nodes:
the prefix checked at validation, and a write that is atomic and never replaces a file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar

from engine import Node
from engine.paths import give_plain_mode
from nodes.limits import name_problem

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pathlib import Path

    from engine import Environment, ExecutionContext


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def prefix_problems(inputs: dict[str, Any], env: Environment, suffix: str
                    ) -> list[tuple[str | None, str]]:
    """Validation of a ``filename_prefix`` input: a safe name whose subfolder lies inside
    output/ (with room for the counter and ``suffix``)."""
    prefix = expand_prefix(str(inputs.get("filename_prefix", "")).strip())
    if problem := name_problem(prefix, len(f"_00000_{suffix}") + 8):  # counters may grow
        return [("filename_prefix", problem)]
    subfolder = prefix.replace("\\", "/").rpartition("/")[0]
    try:
        env.folder("output", subfolder) if subfolder else None
    except ValueError as exc:
        return [("filename_prefix", str(exc))]
    return []


class SavesNumberedFiles(Node):
    """A save node's ``filename_prefix`` check (a base class, not a node): its files are
    ``<prefix>_NNNNN_<SUFFIX>`` under output/."""

    SUFFIX: ClassVar[str] = ".png"

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return prefix_problems(inputs, env, cls.SUFFIX)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return prefix_fingerprint(inputs.get("filename_prefix"))


def prefix_fingerprint(prefix: Any) -> Any:
    """What a save node's identity gains from its prefix's front-end tokens: the date a
    ``%date:...%`` names (a new day saves anew), and for ``%Node.widget%``, which reads
    other nodes' values at save time, a fresh value (it always saves, as the value may
    have changed). None without tokens."""
    if not isinstance(prefix, str) or "%" not in prefix:
        return None
    tokens = _TOKEN.findall(prefix)
    if any("." in t and not t.startswith("date:") for t in tokens):
        return secrets.token_hex(8)
    dated = [t for t in tokens if t.startswith("date:")]
    return expand_prefix("".join(f"%{t}%" for t in dated)) if dated else None


def api_prompt(ctx: ExecutionContext) -> dict[str, Any]:
    """The run's prompt in ComfyUI's API format, for a saved file's ``prompt`` metadata:
    muted and bypassed nodes left out and links rewired through them as the run did, no
    ``mode`` key (ComfyUI ignores it, so a replay would run the bypassed nodes)."""
    from engine.validation import node_shape
    from engine.workflow import resolve_modes

    # the run's registry, so a bypass resolves with the node types the run used
    registry = getattr(getattr(getattr(ctx, "run", None), "ex", None), "registry", None)

    def shape_of(type_id: str) -> Any:
        cls = registry.get(type_id) if registry is not None and isinstance(type_id, str) \
            else None
        return node_shape(cls) if cls is not None else None

    return resolve_modes(ctx.prompt, shape_of)[0]


#: the metadata key (a PNG text chunk) of our own workflow document; ``workflow`` holds
#: ComfyUI's UI format, which ComfyUI's front end opens from a dropped image
DOCUMENT_KEY = "steerflow"


def file_metadata(ctx: ExecutionContext) -> dict[str, Any]:
    """What a saved file carries: ``prompt`` (ComfyUI's API format), the client's
    ``extra_pnginfo``, our workflow document under ``steerflow`` and a ComfyUI UI view of
    it under ``workflow`` (so ComfyUI opens the image: it reads ``workflow`` first). A
    ComfyUI client's own UI workflow is kept as it sent it."""
    from engine.comfy_export import ui_view
    from engine.comfy_workflow import RegistrySchemas
    from engine.workflow import is_document, prompt_to_document

    info = dict(ctx.extra.get("extra_pnginfo") or {})
    workflow = info.get("workflow")
    document = workflow if is_document(workflow) else (
        prompt_to_document(ctx.prompt) if workflow is None else None)  # keeps node modes
    if document is not None:
        registry = getattr(getattr(getattr(ctx, "run", None), "ex", None), "registry", None)
        info.setdefault(DOCUMENT_KEY, document)
        try:
            info["workflow"] = ui_view(document, RegistrySchemas(registry)
                                       if registry is not None else {})
        except Exception:  # a client's odd document must never cost the run its file
            logger.warning("the workflow could not be written in ComfyUI's format; the "
                           "file keeps the prompt and our document", exc_info=True)
            info.pop("workflow", None)
    return {"prompt": api_prompt(ctx), **info}


def expand_prefix(prefix: str, width: int = 0, height: int = 0,
                  now: time.struct_time | None = None,
                  prompt: Mapping[str, Any] | None = None) -> str:
    """ComfyUI's ``filename_prefix`` variables: ``%width%`` and ``%height%`` (the saved
    image's; 0 for other files), ``%year%``, ``%month%``, ``%day%``, ``%hour%``,
    ``%minute%``, ``%second%`` (local time, two digits but the year), as its
    ``folder_paths.compute_vars``: ``%year%-%month%-%day%/img`` makes dated folders.

    Also what ComfyUI's front end fills in before it queues (so that the canvas, the CLI
    and API clients get them too): ``%date:yyyy-MM-dd%`` (``yyyy``, ``yy``, ``M``/``MM``,
    ``d``/``dd``, ``h``/``hh``, ``m``/``mm``, ``s``/``ss``) and ``%Node.widget%``, a
    widget's value in ``prompt`` (the node found by type, else by title; characters a
    file name cannot hold become ``_``). A token that names nothing stays as it is."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    values = {"width": width, "height": height, "year": now.tm_year,
              "month": f"{now.tm_mon:02d}", "day": f"{now.tm_mday:02d}",
              "hour": f"{now.tm_hour:02d}", "minute": f"{now.tm_min:02d}",
              "second": f"{now.tm_sec:02d}"}
    for name, value in values.items():
        prefix = prefix.replace(f"%{name}%", str(value))

    def front_end(match: re.Match[str]) -> str:
        found = _front_end_value(match.group(1), now, prompt)
        return match.group(0) if found is None else found

    return _TOKEN.sub(front_end, prefix)


_TOKEN = re.compile(r"%([^%]+)%")
_MAX_TOKEN = 1000  # characters of a widget's value put in a name (longer is refused anyway)
_DATE_FIELDS = re.compile(r"yyyy|yy|dd?|MM?|hh?|mm?|ss?")
_NOT_IN_NAMES = re.compile(r'[/?<>\\:*|"]')


def _front_end_value(token: str, now: time.struct_time,
                     prompt: Mapping[str, Any] | None) -> str | None:
    if token.startswith("date:"):
        fields = {"d": now.tm_mday, "M": now.tm_mon, "h": now.tm_hour, "m": now.tm_min,
                  "s": now.tm_sec}

        def field(m: re.Match[str]) -> str:
            text = m.group(0)
            if text.startswith("y"):
                return str(now.tm_year) if text == "yyyy" else f"{now.tm_year % 100:02d}"
            value = fields[text[0]]
            return f"{value:02d}" if len(text) == 2 else str(value)

        return _DATE_FIELDS.sub(field, token[len("date:"):])
    node_name, dot, widget = token.partition(".")
    if not dot or "." in widget or not isinstance(prompt, Mapping):
        return None
    entries = [e for e in prompt.values() if isinstance(e, Mapping)]
    by_type = [e for e in entries if e.get("class_type") == node_name]
    titled = [e for e in entries if isinstance(e.get("_meta"), Mapping)
              and e["_meta"].get("title") == node_name]
    for entry in (by_type or titled)[:1]:
        inputs = entry.get("inputs")
        value = _constant(inputs.get(widget) if isinstance(inputs, Mapping) else None, prompt)
        if value is None:
            return None
        text = str(value).lower() if isinstance(value, bool) else str(value)
        # what a file name cannot hold, and control characters, surrogates, NUL: "_"
        return "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c
                       for c in _NOT_IN_NAMES.sub("_", text[:_MAX_TOKEN]))
    return None


def _constant(value: Any, prompt: Mapping[str, Any]) -> Any:
    """A widget's value; for one linked from a primitive node (Int, Float, String, Boolean:
    what a ComfyUI PrimitiveNode becomes) the primitive's value; else None."""
    for _ in range(16):
        if not (isinstance(value, list) and len(value) == 2):
            return None if isinstance(value, dict) else value
        source = prompt.get(str(value[0]))
        if not (isinstance(source, Mapping) and str(source.get("class_type", ""))
                .startswith("Primitive") and isinstance(source.get("inputs"), Mapping)):
            return None
        value = source["inputs"].get("value")
    return None


def split_prefix(env: Environment, role: str, prefix: str, default: str,
                 size: tuple[int, int] = (0, 0), *,
                 prompt: Mapping[str, Any] | None = None) -> tuple[Path, str, str]:
    """``(folder, subfolder, stem)`` of a prefix such as ``latents/cat`` (folder created),
    its variables filled in (:func:`expand_prefix`; ``size`` is the image's width and
    height, ``prompt`` the run's, for ``%Node.widget%``)."""
    prefix = expand_prefix(prefix.strip() or default, *size, prompt=prompt)
    # the least any saver reserves at validation (prefix_problems): never stricter
    if problem := name_problem(prefix, len("_00000_.png") + 8):
        raise ValueError(f"filename_prefix {prefix[:80]!r} (its %...% filled in): {problem}")
    subfolder, _, stem = prefix.replace("\\", "/").rpartition("/")
    folder = env.folder(role, subfolder, create=True) if subfolder \
        else env.folder(role, create=True)
    return folder, subfolder, stem


def next_number(folder: Path, stem: str, suffix: str) -> int:
    """One past the highest ``<stem>_NNNNN_<suffix>`` counter in ``folder`` (1 if none).

    The counter is what directly follows ``<stem>_``, as ComfyUI's get_save_image_path
    reads it: a longer prefix sharing the start (``<stem>_plain_00001_``) is not counted."""
    counter = re.compile(rf"{re.escape(stem)}_(\d{{5,}})_{re.escape(suffix)}")
    return 1 + max((int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}_*_{suffix}")
                    if (m := counter.fullmatch(p.name))), default=0)


def save_numbered(folder: Path, stem: str, suffix: str, write: Callable[[Path], None],
                  number: int | None = None) -> tuple[Path, int]:
    """``write`` a temporary file, then give it the first free ``<stem>_NNNNN_<suffix>``
    name from ``number`` (default: :func:`next_number`) with a hard link: readers never
    see a half-written file, and a file of that name (another save, a user's) is never
    replaced. Returns the path and the number after it (for the next file of a batch)."""
    tmp = folder / write_temp_name(stem)
    try:
        write(tmp)
        give_plain_mode(tmp)  # safetensors' writer makes 0600 files
        if number is None:
            number = next_number(folder, stem, suffix)
        while True:
            path = folder / f"{stem}_{number:05d}_{suffix}"
            try:
                _claim(tmp, path)
                return path, number + 1
            except FileExistsError:
                number += 1
    except FileExistsError:
        raise
    except OSError as exc:
        # the user's file and folder, not the temporary file's absolute path (or no name)
        reason = ("no space left on the disk" if exc.errno == errno.ENOSPC
                  else exc.strerror or str(exc))
        raise OSError(f"{stem}_NNNNN_{suffix} could not be saved in {folder.name}/: "
                      f"{reason}") from None
    finally:
        # a read-only folder refuses even to unlink nothing: the write's error is the one
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_temp_name(name: str) -> str:
    """The hidden temp file of an atomic write of ``name``: ``.<name>.<pid>.<token>.tmp``,
    the convention of every atomic writer (``.<name>.<pid>.tmp`` without the token): the
    writer's pid lets the pool, when it replaces a killed worker, and the start-up
    clean-up remove what a dead writer left (server.files.remove_leftovers); the token
    keeps two writes of one name in one process apart. A long name is cut so that the
    marks fit in a file name (the reserved bytes of :func:`prefix_problems` are fewer)."""
    short = name.encode("utf-8", "surrogatepass")[:200].decode("utf-8", "ignore") or "write"
    return f".{short}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _claim(tmp: Path, path: Path) -> None:
    """``tmp`` becomes ``path``; FileExistsError if ``path`` exists. A hard link where the
    file system has them; elsewhere the name is reserved (O_EXCL) and replaced."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network mounts)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(tmp, path)
