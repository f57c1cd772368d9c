"""Training data sets on disk: Save/Load Training Dataset's shards.

Ours are safetensors, never pickles: ``shard_NNNN.safetensors`` holds, for each item
(one element of the latents/conditioning lists), ``<k>.samples`` (the LATENT, in UNet
space), ``<k>.noise_mask`` when there is one, ``<k>.cond.<j>.embeds`` per conditioning
entry and ``<k>.cond.<j>.option.<name>`` for tensor options; the other options (numbers,
text) are JSON in the file's metadata. ``metadata.json`` beside them records the counts
and the format, and lists the shards to read.

ComfyUI's Save Training Dataset pickles its shards (``shard_NNNN.pkl``, ``torch.save``).
They are read only when the server allows pickles (``--allow-pickle``), then with
``torch.load(weights_only=True)`` (tensors, lists, dicts and numbers only); their
latents are ComfyUI's raw VAE latents, multiplied by SD 1.x/2.x's scaling factor
(0.18215) into our UNet space.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import Conditioning, Latent

FORMAT = "steerflow-training-dataset"
VERSION = 1
META_KEY = "steerflow.training_dataset"
SD_SCALE = 0.18215  # ComfyUI's raw SD latents -> UNet space
MAX_SHARD_BYTES = 8 << 30
MAX_SHARDS = 10_000


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def shard_content(latents: list[Latent], conds: list[Conditioning], first: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one shard (``first``: the index of its first item, for
    error messages)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    items = []
    for k, (latent, cond) in enumerate(zip(latents, conds, strict=True)):
        tensors[f"{k}.samples"] = latent.samples
        if latent.noise_mask is not None:
            tensors[f"{k}.noise_mask"] = latent.noise_mask
        entries = []
        for j, entry in enumerate(cond.entries):
            tensors[f"{k}.cond.{j}.embeds"] = entry.embeds
            options, tensor_options = {}, []
            for name, value in entry.options.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{k}.cond.{j}.option.{name}"] = value
                    tensor_options.append(name)
                elif _json_value(value):
                    options[name] = value
                else:
                    raise ValueError(f"conditioning {first + k} has option {name!r} (a "
                                     f"{type(value).__name__}), which cannot be saved: only "
                                     "tensors, numbers and text can")
            entries.append({"options": options, "tensors": tensor_options})
        items.append({"entries": entries})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return tensors, {META_KEY: json.dumps({"version": VERSION, "items": items})}


def write_dataset(folder: Path, latents: list[Latent], conds: list[Conditioning],
                  shard_size: int) -> int:
    """Write the shards (each atomically), then ``metadata.json``; the shard count."""
    from nodes.diffusion.train_common import save_atomic

    count = len(latents)
    shards = (count + shard_size - 1) // shard_size
    if shards > MAX_SHARDS:
        raise ValueError(f"{count} items in shards of {shard_size} make {shards} files; at "
                         f"most {MAX_SHARDS}: raise shard_size")
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        start, end = s * shard_size, min((s + 1) * shard_size, count)
        tensors, metadata = shard_content(latents[start:end], conds[start:end], start)
        save_atomic(tensors, metadata, folder / f"shard_{s:04d}.safetensors")
    info = {"format": FORMAT, "version": VERSION, "num_samples": count, "num_shards": shards,
            "shard_size": shard_size, "latent_space": "unet (VAE latents x scaling factor)"}
    tmp = folder / f".metadata.json.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(tmp, folder / "metadata.json")
    finally:
        tmp.unlink(missing_ok=True)
    return shards


def read_dataset(folder: Path, shown: str, allow_pickle: bool
                 ) -> tuple[list[Latent], list[Conditioning]]:
    """The items of a saved data set (ours, or ComfyUI's pickles when allowed)."""
    if not folder.is_dir():
        raise ValueError(f"no data set folder {shown}: save one with Save Training Dataset")
    shards = _our_shards(folder, shown)
    if shards:
        latents: list[Latent] = []
        conds: list[Conditioning] = []
        for path in shards:
            more_latents, more_conds = _read_shard(path, shown)
            latents += more_latents
            conds += more_conds
        return latents, conds
    pickles = sorted(folder.glob("shard_*.pkl"))
    if not pickles:
        raise ValueError(f"no shard files in {shown}: save a data set there with Save "
                         "Training Dataset")
    if not allow_pickle:
        raise ValueError(f"{shown} holds ComfyUI's pickled shards (shard_*.pkl), which are "
                         "not loaded by default (unpickling can run code): make the data set "
                         "again here with Make Training Dataset and Save Training Dataset, or "
                         "start the server with --allow-pickle if you trust these files")
    return _read_pickles(pickles, shown)


def _our_shards(folder: Path, shown: str) -> list[Path]:
    meta = folder / "metadata.json"
    info: dict[str, Any] = {}
    if meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
    if isinstance(info, dict) and info.get("format") == FORMAT:
        count = info.get("num_shards")
        if not isinstance(count, int) or not 0 < count <= MAX_SHARDS:
            raise ValueError(f"{shown}/metadata.json has no valid num_shards")
        paths = [folder / f"shard_{s:04d}.safetensors" for s in range(count)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"{shown} lacks {', '.join(missing[:3])}: save the data set again")
        return paths
    return sorted(folder.glob("shard_*.safetensors"))[:MAX_SHARDS]


def _read_shard(path: Path, shown: str) -> tuple[list[Latent], list[Conditioning]]:
    from safetensors import SafetensorError, safe_open

    from nodes.diffusion.handles import CondEntry, Conditioning, Latent

    where = f"{shown}/{path.name}"
    if path.is_symlink():
        raise ValueError(f"{where} is a link; shards must be plain files")
    if path.stat().st_size > MAX_SHARD_BYTES:
        raise ValueError(f"{where} is larger than {MAX_SHARD_BYTES >> 30} GiB")
    try:
        with safe_open(str(path), "pt") as fh:
            info = json.loads((fh.metadata() or {}).get(META_KEY) or "null")
            if not isinstance(info, dict) or not isinstance(info.get("items"), list):
                raise ValueError(f"{where} is not a Save Training Dataset shard")
            latents, conds = [], []
            for k, item in enumerate(info["items"]):
                samples = fh.get_tensor(f"{k}.samples").float()
                mask = (fh.get_tensor(f"{k}.noise_mask").float()
                        if f"{k}.noise_mask" in fh.keys() else None)  # noqa: SIM118
                entries = []
                for j, entry in enumerate(item["entries"]):
                    options = dict(entry["options"])
                    for name in entry["tensors"]:
                        options[name] = fh.get_tensor(f"{k}.cond.{j}.option.{name}")
                    entries.append(CondEntry(fh.get_tensor(f"{k}.cond.{j}.embeds").float(),
                                             options))
                latents.append(Latent(samples, noise_mask=mask))
                conds.append(Conditioning(tuple(entries)))
    except SafetensorError as exc:
        raise ValueError(f"{where} is not a valid safetensors file ({exc})") from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where} is damaged (missing {exc}): save the data set again"
                         ) from exc
    return latents, conds


def _read_pickles(paths: list[Path], shown: str) -> tuple[list[Latent], list[Conditioning]]:
    import torch

    from nodes.diffusion.handles import CondEntry, Conditioning, Latent

    latents, conds = [], []
    for path in paths:
        where = f"{shown}/{path.name}"
        if path.is_symlink():
            raise ValueError(f"{where} is a link; shards must be plain files")
        if path.stat().st_size > MAX_SHARD_BYTES:
            raise ValueError(f"{where} is larger than {MAX_SHARD_BYTES >> 30} GiB")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors of any kind
            raise ValueError(f"{where} cannot be read as a plain ComfyUI shard (tensors, "
                             f"lists, dicts): {str(exc).splitlines()[0][:200]}") from None
        try:
            for latent, cond in zip(data["latents"], data["conditioning"], strict=True):
                samples = latent["samples"].float()
                if samples.dim() != 4 or samples.shape[1] != 4:
                    raise ValueError(f"{where} holds latents of shape {tuple(samples.shape)}; "
                                     "only SD 1.x/2.x's 4-channel latents are converted")
                latents.append(Latent(samples * SD_SCALE, scaling_factor=SD_SCALE))
                conds.append(Conditioning(tuple(
                    CondEntry(e[0].float(), dict(e[1]) if len(e) > 1 else {}) for e in cond)))
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"{where} is not a ComfyUI training shard ({exc})") from None
    return latents, conds
