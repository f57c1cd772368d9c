"""Server settings, read from the command line and the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.environment import Environment

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "STEERFLOW_TOKEN"
ORIGINS_ENV = "STEERFLOW_ALLOW_ORIGINS"
LOOPBACK_NAMES = frozenset({"localhost"})
FRONT_ENDS = ("steerflow", "comfyui")
COMFYUI_FRONTEND_PACKAGE = "comfyui_frontend_package"
MIN_HEADER_TIMEOUT, MAX_HEADER_TIMEOUT = 1.0, 300.0
MIN_TOKEN_LENGTH = 8  # what `steerflow serve` accepts (a guessable token is no lock)
_ORIGIN_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")  # a name, an IPv4 or IPv6 literal


class ConfigError(ValueError):
    """The settings cannot be served safely (e.g. a public bind without a token)."""


@dataclass
class ServerConfig:
    """Everything the server needs; the defaults suit ``steerflow serve`` on loopback."""

    host: str = "127.0.0.1"
    port: int = 8188
    base_dir: Path = Path(".")
    models_dir: Path | None = None
    device: str | None = None
    allow_pickle: bool = False
    custom_nodes: Path | None = None
    token: str | None = None
    max_upload_bytes: int = 50 << 20
    max_prompt_bytes: int = 32 << 20
    # Seconds a client has to send a whole request head (slowloris guard, server/
    # connections.py); a request body may stall this long before it is refused with 408.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_pending_connections: int = 256  # connections waiting for a request head
    # Clients' prompts round-robin (a shared server) instead of in submission order,
    # which is ComfyUI's order and what /queue's numbers show.
    fair_queue: bool = False
    allow_origins: frozenset[str] = frozenset()
    max_history: int = 10000
    max_attempts: int = 3
    fsync: bool = False
    verbose: bool = False
    # Seconds a prompt has to honour an interrupt before its worker is killed.
    interrupt_grace: float = 3.0
    # The worker's cache budget ("8GiB", "50%", "cpu=4GiB,cuda=80%"); None: the default.
    cache_budget: str | None = None
    cache_max_entries: int | None = None
    # Weight precision of loaded models ("fp32", "fp16", "bf16"); None: fp32.
    dtype: str | None = None
    worker_module: str = "steerflow.worker"
    # Scale-out (server/pool.py, docs/scale.md): N local workers, or Ray actors on the
    # cluster at ``ray`` ("auto", "local" or an address), one per GPU (else CPU) slot
    # (``workers`` 0) or ``workers`` of them.
    workers: int = 1
    worker_devices: list[str] | None = None  # local workers: one device each, in turn
    ray: str | None = None
    # The address Ray workers connect back to (default: this node's address, or
    # 127.0.0.1 for a "local" cluster) and its port (0: any free one).
    worker_host: str | None = None
    worker_port: int = 0
    # The base folder (models/, output/) on the Ray nodes; default: --base-dir.
    remote_base_dir: Path | None = None
    worker_start_timeout: float = 600.0  # the first start installs the built-in models
    # "module:function" returning a NodeRegistry; for tests and benchmarks.
    registry_factory: str | None = None
    web_dir: Path = field(default_factory=lambda: REPO_ROOT / "web" / "dist")
    workflows_dir: Path = field(default_factory=lambda: REPO_ROOT / "workflows")
    # "steerflow": our canvas (web_dir); "comfyui": ComfyUI's official frontend, served
    # from the installed comfyui-frontend-package (it replaces web_dir).
    front_end: str = "steerflow"

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        if self.front_end not in FRONT_ENDS:
            raise ConfigError(f"--front-end must be one of {', '.join(FRONT_ENDS)}, "
                              f"got {self.front_end!r}")
        if self.front_end == "comfyui":
            self.web_dir = comfyui_frontend_dir()
        self.token = self.token or None
        self.allow_origins = frozenset(_allowed_origin(o) for o in self.allow_origins)

    @property
    def data_dir(self) -> Path:
        """Where the queue/history database lives (``/data/`` is git-ignored)."""
        return self.base_dir / "data"

    @property
    def user_dir(self) -> Path:
        """Per-user settings and saved workflows (ComfyUI's ``user/<user>/``)."""
        return self.base_dir / "user"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def environment(self) -> Environment:
        """The folders and options prompts are validated with (the worker's own has
        the device too)."""
        return Environment.create(self.base_dir, models_dir=self.models_dir, device="cpu",
                                  allow_pickle=self.allow_pickle)

    def check(self) -> None:
        """Refuse settings that would expose the server unauthenticated."""
        if not self.loopback and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host!r} without authentication: a non-loopback "
                f"address needs a token (--token, or the {TOKEN_ENV} environment variable)")
        if self.token is not None and self.token != self.token.strip():
            raise ConfigError("the token is blank or starts or ends with whitespace (a stray "
                              f"space?): give --token or {TOKEN_ENV} a real value")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid port {self.port}")
        if not (0 if self.ray else 1) <= self.workers <= 256:
            raise ConfigError(f"--workers must be 1..256, got {self.workers}")
        if not 0 <= self.worker_port <= 65535:
            raise ConfigError(f"invalid --worker-port {self.worker_port}")
        if self.ray:
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ConfigError("--ray needs Ray on this machine and the cluster's: "
                                  "pip install 'steerflow[ray]'")
        if not MIN_HEADER_TIMEOUT <= self.header_timeout <= MAX_HEADER_TIMEOUT:
            raise ConfigError(f"--header-timeout must be {MIN_HEADER_TIMEOUT:g}.."
                              f"{MAX_HEADER_TIMEOUT:g} seconds, got {self.header_timeout:g}")
        if not 0 <= self.interrupt_grace <= 3600:
            raise ConfigError(f"--interrupt-grace must be 0..3600 seconds, got "
                              f"{self.interrupt_grace}")
        if self.dtype is not None:
            from nodes.diffusion.precision import DTYPE_NAMES  # light: no torch

            if self.dtype not in DTYPE_NAMES:
                raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, "
                                  f"got {self.dtype!r}")
        if self.cache_budget is not None:
            from engine.cache import check_budget

            try:
                check_budget(self.cache_budget)
            except ValueError as exc:
                raise ConfigError(f"--cache-budget: {exc}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerConfig:
        def opt(name: str, default: object = None) -> object:
            value = getattr(args, name, None)
            return default if value is None else value

        origins = list(opt("allow_origin", []) or [])  # type: ignore[call-overload]
        origins += [o for o in re.split(r"[,\s]+", os.environ.get(ORIGINS_ENV, "")) if o]
        upload_mb = float(opt("max_upload_mb", 50))  # type: ignore[arg-type]
        custom = opt("custom_nodes")
        models = opt("models_dir")
        devices = str(opt("worker_devices", "") or "")
        remote = opt("remote_base_dir")
        token = opt("token") or os.environ.get(TOKEN_ENV) or None
        if token and token.strip() and len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the token must have at least {MIN_TOKEN_LENGTH} characters; "
                              "choose a long random one, e.g. python -c 'import secrets; "
                              "print(secrets.token_urlsafe())'")
        return cls(
            host=str(opt("host", "127.0.0.1")),
            port=int(opt("port", 8188)),  # type: ignore[call-overload]
            base_dir=Path(str(opt("base_dir", "."))),
            models_dir=Path(str(models)) if models else None,
            device=opt("device"),  # type: ignore[arg-type]
            allow_pickle=bool(opt("allow_pickle", False)),
            custom_nodes=Path(str(custom)) if custom else None,
            token=token,  # type: ignore[arg-type]
            max_upload_bytes=int(upload_mb * (1 << 20)),
            header_timeout=float(opt("header_timeout", 10.0)),  # type: ignore[arg-type]
            fair_queue=bool(opt("fair_queue", False)),
            allow_origins=frozenset(origins),
            fsync=bool(opt("fsync", False)),
            interrupt_grace=float(opt("interrupt_grace", 3.0)),  # type: ignore[arg-type]
            cache_budget=opt("cache_budget"),  # type: ignore[arg-type]
            dtype=opt("dtype"),  # type: ignore[arg-type]
            verbose=bool(opt("verbose", False)),
            registry_factory=opt("registry"),  # type: ignore[arg-type]
            front_end=str(opt("front_end", "steerflow")),
            workers=int(opt("workers", 0 if opt("ray") else 1)),  # type: ignore[call-overload]
            worker_devices=[d.strip() for d in devices.split(",") if d.strip()] or None,
            ray=opt("ray"),  # type: ignore[arg-type]
            worker_host=opt("worker_host"),  # type: ignore[arg-type]
            worker_port=int(opt("worker_port", 0)),  # type: ignore[call-overload]
            remote_base_dir=Path(str(remote)) if remote else None,
        )


def comfyui_frontend_dir() -> Path:
    """The static app of the installed ``comfyui-frontend-package``, or a ConfigError."""
    import importlib.util

    spec = importlib.util.find_spec(COMFYUI_FRONTEND_PACKAGE)
    origin = spec.origin if spec is not None else None
    static = Path(origin).parent / "static" if origin else None
    if static is None or not (static / "index.html").is_file():
        raise ConfigError("--front-end comfyui needs ComfyUI's frontend package: "
                          "pip install 'steerflow[comfyui-frontend]'")
    return static


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]``, lower-cased, default ports and trailing slash dropped;
    None for anything else (``*``, ``null``, a bare host, a path or query), which can
    never match an allowed origin."""
    from urllib.parse import urlsplit

    text = origin.strip().lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if (not parts.scheme or not text.startswith(f"{parts.scheme}://")
            or not _ORIGIN_HOST.fullmatch(host) or "@" in parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or "#" in text or "?" in text):
        return None
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}"


def _allowed_origin(value: str) -> str:
    """An ``--allow-origin`` value, normalized, or a ConfigError: a wildcard or ``null``
    would let in every page (any page can send ``Origin: null`` from a sandboxed frame)."""
    origin = normalize_origin(value)
    if origin is None:
        raise ConfigError(f"--allow-origin/{ORIGINS_ENV} {value!r} is not an origin: give "
                          "scheme://host[:port], e.g. http://localhost:5173, several of them "
                          "comma-separated (wildcards and 'null' are refused: they would let "
                          "any web page in)")
    return origin


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own options, for ``steerflow serve``."""
    parser.add_argument("--token", help="require this token (8 characters or more) from "
                        "clients (header 'Authorization: Bearer TOKEN' or ?token=TOKEN); "
                        "required on a non-loopback --host. Prefer the STEERFLOW_TOKEN "
                        "environment variable: a command line is visible to other local users")
    parser.add_argument("--max-upload-mb", type=float, default=50.0,
                        help="largest accepted image upload (default: 50)")
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a connection whose request line and headers have not "
                        f"all arrived after this long ({MIN_HEADER_TIMEOUT:g}.."
                        f"{MAX_HEADER_TIMEOUT:g}; default: 10)")
    parser.add_argument("--fair-queue", action="store_true",
                        help="serve several clients' prompts round-robin (a shared "
                        "server), not in submission order as ComfyUI does; /queue then "
                        "lists by number, not in run order")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="also accept browser requests from this origin, e.g. a "
                        "dev server http://localhost:5173, and send it CORS headers so a "
                        "page there may call the API directly; scheme://host[:port] only, "
                        "no wildcard or 'null' (repeatable; or STEERFLOW_ALLOW_ORIGINS=a,b)")
    parser.add_argument("--interrupt-grace", type=float, default=3.0, metavar="SECONDS",
                        help="how long an interrupted prompt may take to stop on its own "
                        "before its worker process is killed and restarted (default: 3)")
    parser.add_argument("--cache-budget", metavar="SIZE",
                        help="memory the worker's cache of node outputs may hold: bytes "
                        "('8GiB'), a share of memory ('50%%'), or per device "
                        "('cpu=8GiB,cuda=80%%'); default: half the RAM, 80%% of a GPU's")
    parser.add_argument("--front-end", choices=FRONT_ENDS, default="steerflow",
                        help="the web app served at /: Steerflow's canvas (default) or "
                        "ComfyUI's official frontend (pip install "
                        "'steerflow[comfyui-frontend]')")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="run prompts on N local worker processes, one per device "
                        "(see --worker-devices); with --ray: N Ray actors (default: one "
                        "per GPU of the cluster, else per CPU)")
    parser.add_argument("--worker-devices", metavar="LIST",
                        help="devices of the local workers, in turn, e.g. cuda:0,cuda:1")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the workers as Ray actors on the Ray cluster at ADDRESS "
                        "('auto': the one this machine belongs to; 'local': start one "
                        "here). pip install 'steerflow[ray]'")
    parser.add_argument("--worker-host", metavar="HOST",
                        help="the address Ray workers connect back to (default: this "
                        "node's Ray address)")
    parser.add_argument("--worker-port", type=int, default=0, metavar="PORT",
                        help="the port Ray workers connect back to (default: any free)")
    parser.add_argument("--remote-base-dir", metavar="DIR",
                        help="the base folder (models/) on the Ray nodes (default: "
                        "--base-dir, the same path on every node)")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync every queue change (survives power loss; slower)")
    parser.add_argument("--registry", help=argparse.SUPPRESS)  # MODULE:FUNC, tests/bench
