"""``steerflow submit``: run a workflow on a server, stream progress, download images.

    steerflow submit workflows/txt2img.json --server http://127.0.0.1:8188 \\
        --set 3.seed=42 --output-dir out/

Exit codes as ``steerflow run``: 0 success, 1 failed/interrupted/unreachable,
2 bad input (unreadable workflow, validation errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.autogrow import AUTOGROW
from engine.comfy_workflow import DYNAMIC_COMBO, TRAILING_KEY, schema_inputs

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_SERVER = "http://127.0.0.1:8188"


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow JSON (API format, our document or "
                        "ComfyUI's UI format) or PNG")
    parser.add_argument("--server", default=os.environ.get("STEERFLOW_SERVER", DEFAULT_SERVER),
                        help=f"server URL (default: $STEERFLOW_SERVER or {DEFAULT_SERVER})")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override an input (VALUE is parsed as JSON if it can be)")
    parser.add_argument("--output-dir", default=".", help="where to save images (default: .)")
    parser.add_argument("--token", help="the server's token (default: $STEERFLOW_TOKEN)")
    parser.add_argument("--no-progress", action="store_true")


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.paths import writable_folder
    from engine.session import Workflow, WorkflowInputError, parse_override
    from engine.workflow import WorkflowFormatError

    token = args.token or os.environ.get("STEERFLOW_TOKEN") or None
    schemas = ServerSchemas(args.server.rstrip("/"), token)
    try:
        wf = Workflow.load(args.workflow, schemas)
        for warning in wf.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        inputs = _SchemaInputs(schemas) if args.set else None
        for item in args.set:
            target, value = parse_override(item)
            wf.set(target, value, inputs)  # run's check, with the server's schemas
    except (WorkflowFormatError, WorkflowInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SchemaFetchError as exc:
        return _fail(str(exc))
    parts = urlsplit(args.server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"error: --server must be an http(s) URL, got {args.server!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        writable_folder(Path(args.output_dir))  # now, not once the server has run it
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    submit = _Submit(args.server.rstrip("/"), token, Path(args.output_dir),
                     progress=not args.no_progress)
    return asyncio.run(submit.run(wf.prompt, wf.to_document()))


class SchemaFetchError(RuntimeError):
    """The server's node schemas could not be read."""


class ServerSchemas(Mapping[str, Any]):
    """The server's ``/object_info``, fetched on first use: a ComfyUI UI-format file is
    converted, and ``--set`` names are checked, with the schemas of the server that will
    run it (an API-format file or our document without ``--set`` never touches it)."""

    def __init__(self, base: str, token: str | None):
        self.base, self.token = base, token
        self._info: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._info is None:
            import urllib.error
            import urllib.request

            parts = urlsplit(self.base)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SchemaFetchError(f"--server must be an http(s) URL, got {self.base!r}")
            request = urllib.request.Request(self.base + "/object_info")
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    info = json.loads(resp.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise SchemaFetchError(f"cannot read the node schemas from {self.base} "
                                       f"(needed to convert a ComfyUI UI-format workflow "
                                       f"or check a --set input): {exc}") from exc
            if not isinstance(info, dict):
                raise SchemaFetchError(f"{self.base}/object_info did not return an object")
            self._info = info
        return self._info

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


@dataclass(frozen=True)
class _SchemaNode:
    """What :meth:`engine.session.Workflow.set` checks of a node class, from the server."""

    TYPE: str
    INPUT_SPECS: dict[str, None]
    DISPLAY_NAME: str = ""  # the server's display name (its type id is ComfyUI's name)

    def comfy_display_name(self) -> str | None:
        return None


class _SchemaInputs:
    """The server's node types as ``Workflow.set`` reads a registry (``get(type)``), so
    ``submit --set`` refuses an input the node does not have exactly as ``run`` does."""

    def __init__(self, schemas: Mapping[str, Any]):
        self.schemas = schemas

    def get(self, type_id: str) -> _SchemaNode | None:
        entry = self.schemas.get(type_id)
        if not isinstance(entry, Mapping):
            return None  # a type the server lacks: its validation says so
        names = dict.fromkeys(_input_names(entry.get("input"), entry.get("input_order")))
        trailing = entry.get(TRAILING_KEY)  # widgets the front end adds (Custom Combo's)
        for widget in trailing if isinstance(trailing, list) else []:
            if isinstance(widget, list) and widget and isinstance(widget[0], str):
                names[widget[0]] = None
        shown = entry.get("display_name")
        return _SchemaNode(type_id, names, shown if isinstance(shown, str) else "")


def _input_names(inputs: Any, order: Any, prefix: str = "") -> Iterator[str]:
    """An ``/object_info`` entry's input names as an API prompt spells them: a
    DynamicCombo's options' inputs and an Autogrow's slots as ``"group.sub"``."""
    for name, kind, options in schema_inputs(inputs, order):
        if kind == AUTOGROW:
            template = options.get("template")
            template = template if isinstance(template, Mapping) else {}
            slots = template.get("names")
            if not isinstance(slots, list):
                count = template.get("max")
                slots = [f"{template.get('prefix', '')}{k}"
                         for k in range(count if isinstance(count, int) else 0)]
            yield from (f"{prefix}{name}.{slot}" for slot in slots)
            continue
        yield prefix + name
        if kind == DYNAMIC_COMBO and isinstance(options.get("options"), list):
            for option in options["options"]:
                if isinstance(option, Mapping):
                    yield from _input_names(option.get("inputs"), {}, f"{prefix}{name}.")


class _Submit:
    def __init__(self, base: str, token: str | None, output_dir: Path, *, progress: bool):
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.output_dir = output_dir
        self.progress = progress
        self.client_id = uuid.uuid4().hex

    async def run(self, prompt: dict[str, Any], document: dict[str, Any]) -> int:
        import aiohttp

        ws_url = "ws" + self.base[4:] + f"/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession(headers=self.headers) as http:
            try:
                ws = await http.ws_connect(ws_url, max_msg_size=0)
            except (aiohttp.ClientError, OSError) as exc:
                return _fail(f"cannot connect to {self.base}: {exc}")
            async with ws:
                body = {"prompt": prompt, "client_id": self.client_id,
                        "extra_data": {"extra_pnginfo": {"workflow": document}}}
                async with http.post(self.base + "/prompt", json=body) as resp:
                    reply = await _json(resp)
                    if resp.status != 200:
                        return _rejected(resp.status, reply)
                prompt_id = reply["prompt_id"]
                _print_warnings(reply.get("warnings"))
                try:
                    await self._follow(ws, prompt_id)
                except asyncio.CancelledError:
                    await http.post(self.base + "/interrupt", json={"prompt_id": prompt_id})
                    raise KeyboardInterrupt from None
            return await self._collect(http, prompt_id)

    async def _follow(self, ws: Any, prompt_id: str) -> None:
        """Print events for our prompt until its final ``executing`` (node None)."""
        import aiohttp

        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue  # binary preview frames
            event = json.loads(msg.data)
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = event.get("type")
            if kind == "executing":
                if data.get("node") is None:
                    return
                self._say(f"\nrunning node {data['node']}")
            elif kind == "progress":
                self._say(f"\r  node {data.get('node')}: {data.get('value')}/{data.get('max')}")
        # The socket closed early: the history will still tell how it ended.

    async def _collect(self, http: Any, prompt_id: str) -> int:
        entry = None
        for _ in range(600):
            async with http.get(f"{self.base}/history/{prompt_id}") as resp:
                entry = (await _json(resp)).get(prompt_id)
            if entry is not None:
                break
            await asyncio.sleep(0.5)
        self._say("\n")
        if entry is None:
            return _fail(f"prompt {prompt_id} did not finish")
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            return _fail(_describe_failure(status.get("messages") or []))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for node_id, ui in (entry.get("outputs") or {}).items():
            for image in ui.get("images", []):
                params = {k: image.get(k, "") for k in ("filename", "subfolder", "type")}
                async with http.get(self.base + "/view", params=params) as resp:
                    if resp.status != 200:
                        return _fail(f"cannot download {params['filename']}: HTTP {resp.status}")
                    path = _save(self.output_dir, params["filename"], await resp.read())
                print(f"image: {path}")
            for text in ui.get("text", []):
                print(f"{node_id}: {text}")
        print(f"done: prompt {prompt_id}")
        return EXIT_OK

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, end="", file=sys.stderr, flush=True)


async def _json(resp: Any) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except (ValueError, UnicodeDecodeError):
        data = None
    return data if isinstance(data, dict) else {}


def _rejected(status: int, reply: dict[str, Any]) -> int:
    error = reply.get("error") or {}
    print(f"error: the server refused the workflow (HTTP {status}): "
          f"{error.get('message', 'no details')}", file=sys.stderr)
    for node_id, node in (reply.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            print(f"  node {node_id} ({node.get('class_type')}): "
                  f"{err.get('details') or err.get('message')}",
                  file=sys.stderr)
    return EXIT_BAD_INPUT if status == 400 else EXIT_FAILED


def _print_warnings(warnings: Any) -> None:
    """The server's validation warnings (the prompt runs anyway), as ``run`` prints its
    own: one ``warning:`` line each."""
    from engine.validation import Issue, describe_issues

    known = {f.name for f in fields(Issue)}
    issues = [Issue(**{k: v for k, v in w.items() if k in known})
              for w in warnings or [] if isinstance(w, dict) and {"kind", "message"} <= w.keys()]
    for line in describe_issues(issues).splitlines():
        print(f"warning: {line}", file=sys.stderr)


def _describe_failure(messages: list[Any]) -> str:
    for name, data in (m for m in messages if isinstance(m, list) and len(m) == 2):
        if name == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_message')}")
        if name == "execution_interrupted":
            return "interrupted"
    return "the prompt failed"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _save(folder: Path, filename: str, data: bytes) -> Path:
    """Write without overwriting: ``name.png``, ``name_1.png``, ..."""
    name = os.path.basename(filename.replace("\\", "/")).lstrip(".") or "image.png"
    stem, suffix = os.path.splitext(name)
    for n in range(100000):
        path = folder / (name if n == 0 else f"{stem}_{n}{suffix}")
        try:
            with path.open("xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue
    raise OSError(f"no free file name for {name} in {folder}")
