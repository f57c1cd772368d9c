"""The ``steerflow`` command line.

    steerflow run WORKFLOW [--set NODE.INPUT=VALUE ...] [--output-dir DIR]
    steerflow validate WORKFLOW
    steerflow nodes [--json]
    steerflow serve [--host H] [--port P] [--token T] [--workers N] [--ray ADDRESS|auto]
    steerflow submit WORKFLOW --server URL [--set NODE.INPUT=VALUE ...] [--output-dir DIR]

Exit codes: 0 success, 1 the run failed or was interrupted, 2 bad input
(unreadable workflow, validation errors, bad options). The first Ctrl-C during ``run``
interrupts the prompt as the server's /interrupt does; a second one quits at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from engine.paths import writable_folder
from engine.validation import PromptValidationError, describe_issues
from engine.workflow import WorkflowFormatError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-dir", default=os.environ.get("STEERFLOW_HOME", "."),
                        help="folder holding models/, input/, output/, temp/ (default: "
                             "$STEERFLOW_HOME, else .)")
    parser.add_argument("--models-dir", help="models folder (default: BASE/models)")
    parser.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt/.bin checkpoints (loaded with weights_only)")
    parser.add_argument("--custom-nodes", metavar="DIR",
                        help="folder of custom node packs (must exist; a single-file pack "
                             "goes inside it)")
    # = nodes.diffusion.precision.DTYPE_NAMES; importing it would load every node pack
    # for every command (tests/test_memory.py checks they agree).
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"),
                        help="weight precision of loaded models (default fp32; a loader's "
                             "weight_dtype overrides it; in fp16 the VAE stays fp32)")


VERBOSE_HELP = "log info messages too (also accepted before the sub-command)"


def _verbose(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose`` after the sub-command too. SUPPRESS: left out there, the
    sub-command must not reset a ``steerflow -v serve`` to False."""
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerflow", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a workflow (API or UI-format JSON, our document, "
                         "or a PNG saved by Steerflow or ComfyUI)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input (VALUE is parsed as JSON if it can be)")
    run.add_argument("--output-dir", help="where Save Image writes (default: BASE/output)")
    run.add_argument("--no-progress", action="store_true")
    _common(run)
    _verbose(run)

    val = sub.add_parser("validate", help="check a workflow without running it")
    val.add_argument("workflow")
    val.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    val.add_argument("--json", action="store_true", help="print issues as JSON")
    _common(val)
    _verbose(val)

    nodes = sub.add_parser("nodes", help="list node types")
    nodes.add_argument("--json", action="store_true", help="print every node's full schema")
    _common(nodes)
    _verbose(nodes)

    serve = sub.add_parser("serve", help="start the HTTP/websocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    _common(serve)
    from server.config import add_serve_arguments  # light: no aiohttp import

    add_serve_arguments(serve)
    _verbose(serve)

    from server.client import add_submit_arguments

    submit = sub.add_parser("submit", help="run a workflow on a running server")
    add_submit_arguments(submit)
    _verbose(submit)
    return parser


def _exit_interrupted() -> NoReturn:
    """End an interrupted run now, with EXIT_FAILED: its checkpoint and outputs are on disk,
    and the interpreter's teardown after a Ctrl-C mid-step could abort ("terminate called
    without an active exception", SIGABRT) in a native thread the step left behind."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from steerflow import tune_process

    tune_process()
    if not args.verbose:
        # Library chatter (weight-loading bars, optional-backend notices) hides our output.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    problem = _check_custom_nodes(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit_interrupted()
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `steerflow nodes | head`: the reader has gone. End quietly as a Unix tool does
        # (killed by SIGPIPE), with stdout on devnull so the exit's flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """stdout is a pipe whose reader has gone (not some other broken pipe)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


def _check_custom_nodes(args: argparse.Namespace) -> str | None:
    """Why ``--custom-nodes`` names no folder (an error line), or None. A file is refused,
    not loaded as a pack: the option names a folder of packs, like ComfyUI's
    ``custom_nodes/``, where a single-file pack is one entry."""
    # the folders made when missing: a file there is refused here, in one line (serve
    # started, and its worker failed on "File exists" again and again)
    for option in ("base_dir", "models_dir", "output_dir"):
        value = getattr(args, option, None)
        if value and Path(value).exists() and not Path(value).is_dir():
            return f"--{option.replace('_', '-')} {value}: a file is there, not a folder"
    text = getattr(args, "custom_nodes", None)
    if not text:
        return None
    path = Path(text)
    if not path.exists():
        return f"--custom-nodes {text}: no such folder"
    if not path.is_dir():
        return (f"--custom-nodes {text}: not a folder (the option names a folder of packs; "
                "put a single-file pack inside one)")
    return None


def _set_up(session: Any) -> None:
    """Run the packs' set-up now, inside the caller's OSError handling (a base or models
    folder that cannot be written is bad input). A first run installs the built-in models
    (about 140 MB): one stderr line says where, so a mistyped --base-dir shows."""
    from nodes.diffusion.builtin_models import all_installed

    models = session.env.folder("models")
    if not all_installed(models):
        made = "" if models.is_dir() else " (a new folder)"
        session.env.folder("models", create=True)  # a folder it cannot make: no notice
        print(f"installing the built-in models into {models}{made}", file=sys.stderr)
    session.executor.ensure_setup()
    _print_skipped_nodes(session.registry)


def _print_skipped_nodes(registry: Any) -> None:
    """A ``warning:`` line for each pack node skipped while the rest of its pack loaded
    (a clashing type id: the workflow would silently get the other node). A pack that
    failed whole is already logged as an error when it is imported."""
    for err in registry.errors:
        if not err.whole:
            print(f"warning: {err.describe()}", file=sys.stderr)


def _session(args: argparse.Namespace, **kwargs: Any) -> Any:
    from engine.session import Session

    session = Session(args.base_dir, models_dir=args.models_dir, device=args.device,
                      allow_pickle=args.allow_pickle, custom_nodes=args.custom_nodes, **kwargs)
    if getattr(args, "dtype", None):
        session.env.options["dtype"] = args.dtype
    return session


def _load(args: argparse.Namespace, session: Any) -> Any:
    from engine.session import parse_override

    wf = session.load(args.workflow)  # ComfyUI's UI format converts with its schemas
    for text in wf.warnings:
        print(f"warning: {text}", file=sys.stderr)
    for item in args.set:
        target, value = parse_override(item)
        wf.set(target, value, session.registry)
    return wf


def device_problem(text: str, *, check_available: bool = True) -> str | None:
    """Why ``text`` is not a torch device this machine can run on; None: it is one.

    Parsed as ``torch.device`` parses it; then, unless ``check_available`` is off (Ray
    workers run elsewhere), its backend must be present: cuda with CUDA and the index
    below the device count, mps with MPS, and likewise xpu. Imports torch."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        return "not a torch device (expected cpu, cuda, cuda:N, mps or xpu)"
    if not check_available or device.type == "cpu":
        return None
    kind = device.type
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        available, count = bool(mps is not None and mps.is_available()), 1
    else:
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
        device_count = getattr(backend, "device_count", None)
        count = int(device_count()) if available and callable(device_count) else 1
    if not available:
        return (f"no {kind} device is available on this machine (torch {torch.__version__}); "
                "use cpu, or leave the option out to use cuda when present")
    if device.index is not None and device.index >= count:
        return (f"this machine has {count} {kind} device(s): {kind}:0"
                + (f" to {kind}:{count - 1}" if count > 1 else ""))
    return None


def _check_devices(args: argparse.Namespace, *, check_available: bool = True) -> str | None:
    """The first bad ``--device`` (or ``--worker-devices`` entry) as an error line."""
    for option, text in _device_options(args):
        problem = device_problem(text, check_available=check_available)
        if problem:
            return f"{option} {text}: {problem}"
    return None


def _device_options(args: argparse.Namespace) -> list[tuple[str, str]]:
    devices = [("--device", args.device)] if getattr(args, "device", None) else []
    listed = str(getattr(args, "worker_devices", None) or "")
    devices += [("--worker-devices", d.strip()) for d in listed.split(",") if d.strip()]
    return devices


def _check_serve_devices(args: argparse.Namespace) -> str | None:
    """:func:`_check_devices` for ``serve``, in a child process: the server process never
    imports torch (a cpu device needs no check, and Ray workers' devices are elsewhere:
    they are only parsed). None when every device is usable, or the check itself failed
    (the workers then report the problem)."""
    import subprocess

    devices = [(o, d) for o, d in _device_options(args) if d != "cpu"]
    if not devices:
        return None
    code = ("import json, sys\n"
            "from steerflow.cli import device_problem\n"
            "check = sys.argv[1] == '1'\n"
            "for option, text in json.loads(sys.argv[2]):\n"
            "    problem = device_problem(text, check_available=check)\n"
            "    if problem:\n"
            "        print(f'{option} {text}: {problem}')\n"
            "        sys.exit(3)\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        check = "0" if getattr(args, "ray", None) else "1"
        done = subprocess.run([sys.executable, "-c", code, check, json.dumps(devices)],
                              capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        logging.getLogger(__name__).warning("cannot check the device: %s", exc)
        return None
    if done.returncode == 3 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1]
    if done.returncode != 0:
        logging.getLogger(__name__).warning("cannot check the device: %s",
                                            (done.stderr.strip().splitlines() or ["?"])[-1])
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from engine.session import WorkflowInputError

    problem = _check_devices(args)  # before any model loads, not at the first node
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.output_dir:  # refused now, not after the whole run at the first save
            writable_folder(Path(args.output_dir))
        session = _session(args, output_dir=args.output_dir)
        wf = _load(args, session)
        _set_up(session)
    except (WorkflowFormatError, WorkflowInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    progress = _Progress(enabled=not args.no_progress)
    try:
        with _CtrlC(session.executor):
            result = session.run(wf, on_event=progress)
    except PromptValidationError as exc:
        print("error: the workflow is invalid:\n" + describe_issues(exc.issues), file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        progress.close()
    _print_warnings(result.warnings)
    run = result.run
    if run.status == "error":
        err = run.error or {}
        print(f"error: node {err.get('node_id')} ({err.get('node_type')}) failed: "
              f"{err.get('exception_message')}", file=sys.stderr)
        return EXIT_FAILED
    if run.status == "interrupted":
        print("interrupted", file=sys.stderr)
        _exit_interrupted()
    print(f"done: {len(run.executed)} node(s) executed, {len(run.cached)} cached")
    for path in result.image_paths:
        print(f"image: {path}")
    for node_id, ui in run.outputs.items():
        for text in ui.get("text", []):
            print(f"{node_id}: {text}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.session import WorkflowInputError

    problem = _check_devices(args, check_available=False)  # nothing runs: parsed only
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        session = _session(args)
        wf = _load(args, session)
        _set_up(session)
        validated = session.validate(wf)
    except (WorkflowFormatError, WorkflowInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PromptValidationError as exc:
        if args.json:
            print(json.dumps([i.to_dict() for i in exc.issues], indent=2))
        else:
            print(describe_issues(exc.issues), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:  # warnings only: an empty list means valid and nothing to say
        print(json.dumps([i.to_dict() for i in validated.warnings], indent=2))
        return EXIT_OK
    _print_warnings(validated.warnings)
    print("valid")
    return EXIT_OK


def _print_warnings(issues: list[Any]) -> None:
    """Validation warnings (the prompt runs anyway), one ``warning:`` line each."""
    for line in describe_issues(issues).splitlines():
        print(f"warning: {line}", file=sys.stderr)


def cmd_nodes(args: argparse.Namespace) -> int:
    from engine.environment import Environment
    from engine.registry import default_registry

    env = Environment.create(args.base_dir, models_dir=args.models_dir, device="cpu")
    registry = default_registry(Path(args.custom_nodes) if args.custom_nodes else None, env=env)
    schema = registry.schema(env)
    if args.json:
        print(json.dumps(schema, indent=2, default=str))
        return EXIT_OK
    for type_id, node in schema.items():
        print(f"{type_id:28} {node['category']:20} {node['display_name']}")
    for err in registry.errors:
        print(f"warning: {err.describe()}", file=sys.stderr)
    return EXIT_OK


MAX_UPLOAD_MB = 4096  # an upload is held in memory whole


def _check_serve_options(args: argparse.Namespace) -> str | None:
    """An error line for a ``serve`` option the server would take and fail on later (or
    run with): an upload limit outside 1 byte..MAX_UPLOAD_MB, a --host that resolves to
    no address."""
    import math
    import socket

    mb = getattr(args, "max_upload_mb", None)
    if mb is not None and not (math.isfinite(mb) and mb * (1 << 20) >= 1
                               and mb <= MAX_UPLOAD_MB):
        return f"--max-upload-mb must be more than 0 and at most {MAX_UPLOAD_MB}, got {mb:g}"
    host = str(getattr(args, "host", "") or "")
    if host:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            return f"--host {host}: not an address or a resolvable name ({why})"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from server.app import serve
    except ImportError as exc:
        print(f"error: the server is not available: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    problem = _check_serve_options(args) or _check_serve_devices(args)  # before starting
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return serve(args)


class _CtrlC:
    """While ``steerflow run`` runs: the first Ctrl-C (SIGINT) stops the prompt as the
    server's /interrupt does, so a training node keeps a checkpoint at the step it
    reached and the same command resumes from it; a second one quits at once.

    Installed only in the main thread (where Python runs signal handlers); the previous
    handler is restored on exit."""

    MESSAGE = "interrupting… (Ctrl-C again to quit at once)"
    STUCK = ("the running node has not stopped: it may not check for interrupts, or be "
             "finishing a checkpoint; Ctrl-C again quits at once")
    HINT_AFTER = 3.0  # seconds: the server's default --interrupt-grace

    def __init__(self, executor: Any):
        self.executor = executor
        self.asked = False
        self.done = threading.Event()
        self.previous: Any = None

    def __enter__(self) -> _CtrlC:
        # None: a handler set outside Python, which could not be put back
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not None:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        # From a thread: the handler interrupts the main thread anywhere, maybe holding
        # the executor's lock or writing the progress bar to stderr.
        threading.Thread(target=self._interrupt, name="steerflow-ctrl-c", daemon=True).start()

    def _interrupt(self) -> None:
        from tqdm import tqdm

        tqdm.write(self.MESSAGE, file=sys.stderr)  # on its own line, not after a bar's
        # before the prompt has started (validation) there is nothing to interrupt yet
        while not self.executor.interrupt() and not self.done.wait(0.05):
            pass
        # in this process a node that never checks for interrupts cannot be stopped (the
        # server restarts its worker): say so, rather than seem to hang
        if not self.done.wait(self.HINT_AFTER):
            tqdm.write(self.STUCK, file=sys.stderr)


class _Progress:
    """A tqdm bar per sampling node, fed by executor events."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: Any = None
        self.node: str | None = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "node_warning":  # shown with or without the progress display
            self.close()
            print(f"warning: node {data.get('node')}: {data.get('message')}", file=sys.stderr)
            return
        if not self.enabled:
            return
        if event == "executing" and data.get("node") is not None:
            self.close()
            self.node = data["node"]
        elif event == "progress":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=data["max"], desc=f"node {data['node']}", unit="step",
                                file=sys.stderr, leave=False)
            self.bar.n = data["value"]
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_submit(args: argparse.Namespace) -> int:
    from server.client import cmd_submit as submit

    return submit(args)


_COMMANDS = {"run": cmd_run, "validate": cmd_validate, "nodes": cmd_nodes, "serve": cmd_serve,
             "submit": cmd_submit}

if __name__ == "__main__":
    sys.exit(main())
