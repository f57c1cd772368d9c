"""Textual inversion: learned token embeddings from ``models/embeddings``.

A prompt names one as ``embedding:name`` (ComfyUI's syntax), where ``name`` is
the file's path under ``models/embeddings`` with or without its suffix
(``embedding:style/glow`` finds ``style/glow.safetensors``). The A1111 habit of
writing a bare file stem is *not* recognised: an ordinary word would silently
change meaning the day a file of that name is added.

File formats: A1111 ``.safetensors`` (``emb_params``, or ``string_to_param.*``),
A1111 ``.pt`` (``{"string_to_param": {"*": tensor}}``, pickle: only with the
user's opt-in, read with ``weights_only=True``), diffusers
``learned_embeds.safetensors`` (``{token: tensor}``), and SDXL files with ``clip_l``
and ``clip_g`` entries (each text encoder takes the one of its width). Several vectors
per embedding are supported.

The vectors reach the text encoder through a forward hook on its token-embedding
layer for the duration of one call, so the cached encoder is never changed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Environment
from engine.paths import confined_path
from nodes.diffusion.prompt_weighting import (
    EMBEDDING_PATTERN,
    MAX_PROMPT_CHARS,
    parse_prompt_weights,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".safetensors", ".sft", ".pt", ".bin")
PICKLE_SUFFIXES = (".pt", ".bin")
FOLDER = "embeddings"
_TRAILING_PUNCTUATION = re.compile(r"[.:!?]+$")


def embedding_names(text: str) -> list[str]:
    """Names used as ``embedding:name`` in a prompt (after weight syntax), without repeats."""
    spans = parse_prompt_weights(text)
    return list(dict.fromkeys(n for s in spans for n in EMBEDDING_PATTERN.findall(s.text)))


def list_embeddings(env: Environment) -> list[str]:
    return env.list_files("models", FOLDER, suffixes=EMBEDDING_SUFFIXES)


def find_embedding(env: Environment, name: str) -> Path | None:
    """The file ``name`` refers to (exact name, then with each suffix), or None.

    A sentence's final punctuation ("... embedding:glow.") is forgiven.
    """
    for candidate in dict.fromkeys((name, _TRAILING_PUNCTUATION.sub("", name))):
        if not candidate:
            continue
        names = [candidate] if candidate.lower().endswith(EMBEDDING_SUFFIXES) else [
            candidate + suffix for suffix in EMBEDDING_SUFFIXES]
        for option in names:
            try:  # confined to models/embeddings ("../loras/x" is outside: unknown)
                path = confined_path(env.folder("models", FOLDER), option)
            except (KeyError, ValueError):
                return None
            if path.is_file():
                return path
        if (found := _suffix_any_case(env, candidate)) is not None:
            return found
    return None


def _suffix_any_case(env: Environment, name: str) -> Path | None:
    """``name`` with a suffix in another case ("x.SafeTensors", which the list shows as x)."""
    try:
        parent = confined_path(env.folder("models", FOLDER), name).parent
        entries = sorted(parent.iterdir()) if parent.is_dir() else []
    except (KeyError, ValueError, OSError):
        return None
    stem = Path(name).name
    for suffix in EMBEDDING_SUFFIXES:
        for entry in entries:
            if entry.stem == stem and entry.suffix.lower() == suffix:
                try:  # the entry confined too (a symlink out of the folder is not taken)
                    path = confined_path(env.folder("models", FOLDER),
                                         str(Path(name).parent / entry.name))
                except (KeyError, ValueError):
                    continue
                if path.is_file():
                    return path
    return None


def unknown_embedding_message(env: Environment, name: str) -> str:
    known = [n.rsplit(".", 1)[0] for n in list_embeddings(env)]
    hint = f"; available: {', '.join(known[:10])}" if known else ""
    return f"embedding:{name} does not exist (not in models/{FOLDER}), ignoring{hint}"


def prompt_problems(env: Environment, text: str) -> list[tuple[str, str]]:
    """``(severity, message)`` for a prompt's text (for validation): its length and its
    ``embedding:name`` references.

    An unknown name is a warning and is dropped from the prompt, as in ComfyUI (a
    workflow from another machine still runs); a pickle without the opt-in is an error.
    """
    if len(text) > MAX_PROMPT_CHARS:
        return [("error", f"the prompt is {len(text):,} characters; at most "
                 f"{MAX_PROMPT_CHARS:,} are encoded: shorten it")]
    problems = []
    for name in embedding_names(text):
        path = find_embedding(env, name)
        if path is None:
            problems.append(("warning", unknown_embedding_message(env, name)))
        elif path.suffix.lower() in PICKLE_SUFFIXES and not env.allow_pickle:
            problems.append(("error", f"embedding {name!r} is a pickle file ({path.name}); "
                             "convert it to .safetensors or start with --allow-pickle"))
    return problems


def embedding_fingerprint(env: Environment, text: Any) -> list[Any] | None:
    """What a prompt's ``embedding:`` files are now (a text node's cache fingerprint:
    editing an embedding file re-encodes the prompt); None when it names none."""
    from nodes.models import path_fingerprint

    if not isinstance(text, str):
        return None
    paths = [find_embedding(env, name) for name in embedding_names(text)]
    return [path_fingerprint(p) for p in paths if p is not None] or None


def load_embedding(path: Path, *, allow_pickle: bool = False, dim: int | None = None
                   ) -> torch.Tensor:
    """The vectors ``[n, dim]`` (float32, CPU) of one embedding file; ``dim``: the text
    encoder's width, which picks an SDXL file's ``clip_l`` or ``clip_g`` vectors."""
    import torch

    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"embedding {path.name} is a pickle file; loading pickles needs "
                             "the allow-pickle opt-in")
        from nodes.diffusion.loading import torch_load_weights_only

        data: Any = torch_load_weights_only(path)
    else:
        from safetensors.torch import load_file

        from nodes.diffusion.safetensors_io import checked

        with checked(path):
            data = load_file(str(path), device="cpu")
    vectors = _vectors_of(data, path.name, dim)
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.dim() != 2 or vectors.shape[0] == 0:
        raise ValueError(f"embedding {path.name} has shape {tuple(vectors.shape)}; "
                         "expected [vectors, dim]")
    vectors = vectors.detach().to(torch.float32)
    if not bool(torch.isfinite(vectors).all()):  # it would turn the whole prompt to NaN
        raise ValueError(f"embedding {path.name} holds NaN or infinite values: the file is "
                         "damaged, or its training diverged")
    return vectors


def _vectors_of(data: Any, filename: str, dim: int | None = None) -> torch.Tensor:
    import torch

    if isinstance(data, torch.Tensor):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"embedding {filename} is not a tensor or a dict of tensors")
    if "string_to_param" in data and isinstance(data["string_to_param"], dict):
        params = data["string_to_param"]
        return params.get("*", next(iter(params.values())))
    # SDXL files hold one entry per text encoder (clip_l, clip_g): the one of this width
    known = [data[key] for key in ("emb_params", "clip_l", "clip_g", "string_to_param.*")
             if isinstance(data.get(key), torch.Tensor)]
    if known:
        return next((t for t in known if dim is not None and t.shape[-1] == dim), known[0])
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: {token: tensor}
        return next(iter(tensors.values()))
    raise ValueError(f"embedding {filename}: no vectors found (keys {sorted(data)[:5]}); "
                     "expected emb_params, string_to_param or a single {token: tensor}")


class EmbeddingLibrary:
    """Looks up ``embedding:name`` in an environment and checks the vector width."""

    def __init__(self, env: Environment, dim: int) -> None:
        self.env, self.dim = env, dim
        self._loaded: dict[str, torch.Tensor] = {}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._loaded:
            path = find_embedding(self.env, name)
            if path is None:  # ComfyUI warns and leaves it out of the prompt
                import torch

                log.warning("warning, %s", unknown_embedding_message(self.env, name))
                self._loaded[name] = torch.zeros(0, self.dim)
                return self._loaded[name]
            vectors = load_embedding(path, allow_pickle=self.env.allow_pickle, dim=self.dim)
            if vectors.shape[1] != self.dim:
                raise ValueError(
                    f"embedding {name!r} has {vectors.shape[1]}-wide vectors but this text "
                    f"encoder expects {self.dim} (made for another model family?)")
            self._loaded[name] = vectors
        return self._loaded[name]


@contextmanager
def injected_vectors(encoder: Any, positions: torch.Tensor,
                     vectors: torch.Tensor) -> Iterator[None]:
    """Replace token embeddings at ``positions [k, 2]`` (batch, token) by ``vectors [k, dim]``.

    A forward hook on the encoder's input embedding layer, removed on exit.
    """
    if len(positions) == 0:
        yield
        return
    layer = encoder.get_input_embeddings()

    def replace(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[positions[:, 0], positions[:, 1]] = vectors.to(output.device, output.dtype)
        return output

    handle = layer.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
