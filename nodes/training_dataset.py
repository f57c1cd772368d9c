"""ComfyUI's training-dataset nodes (the training part of comfy_extras/nodes_dataset.py):
Make Training Dataset, Resolution Bucket, Save and Load Training Dataset.

A data set is two lists of the same length (ComfyUI's list semantics, see
:mod:`engine.lists`): LATENTs (one per image, or per batch of images) and CONDITIONINGs
(the captions, one entry per image). Train LoRA (``TrainLoraNode``) takes both.
"""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from nodes.comfy_training import first
from nodes.diffusion.handles import TextEncoder, Vae
from nodes.limits import name_problem

CATEGORY = "dataset"
MAX_ITEMS = 10_000
DATASET_FOLDER = "training_dataset"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class MakeTrainingDataset(Node):
    """Encode images with the VAE and captions with CLIP: the latents and conditionings
    Train LoRA learns from (ComfyUI's Make Training Dataset).

    ``images`` is a list (Load Image Dataset from Folder's, or any IMAGE: each batch
    becomes one LATENT of that many images); ``texts`` holds one caption per image, one
    caption for all, or nothing (empty captions: unconditional training). The outputs are
    lists of the same length, in the images' order. Images are cropped to a multiple of
    the VAE's downscale factor (8), as VAE Encode does; captions are encoded as Encode
    Prompt does (weights, embeddings)."""

    TYPE = "MakeTrainingDataset"
    DISPLAY_NAME = "Make Training Dataset"
    CATEGORY = CATEGORY
    INPUT_IS_LIST = True
    OUTPUTS = (Output("LATENT", "latents", is_list=True, tooltip="List of latent dicts"),
               Output("CONDITIONING", "conditioning", is_list=True,
                      tooltip="List of conditioning lists"))

    images: Any = Input(type="IMAGE", description="List of images to encode")
    vae: Vae = Input(type="VAE", description="VAE model for encoding images to latents")
    clip: TextEncoder = Input(type="CLIP", description="CLIP model for encoding text")
    texts: str | None = Input(None, optional=True, type="STRING", description="Captions: "
                              "one per image, one for all, or none (empty captions)")

    def execute(self, ctx: ExecutionContext) -> tuple[list[Any], list[Any]]:
        from nodes.conditioning import CLIPTextEncode
        from nodes.latent import encode

        images = _as_list(self.images)
        vae, clip = first(self, "vae", ctx.env), first(self, "clip", ctx.env)
        texts = [t for t in _as_list(self.texts) if t is not None]
        if len(images) > MAX_ITEMS:
            raise ValueError(f"{len(images)} images; at most {MAX_ITEMS} per data set")
        if not images:
            raise ValueError("images is empty: link a list of images")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be strings (captions)")
        texts = texts or [""]
        if len(texts) == 1:
            texts = texts * len(images)
        elif len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts for {len(images)} images: give one caption "
                             "per image, one for all, or none")
        latents = []
        for i, image in enumerate(images):
            ctx.check_interrupt()
            try:
                latents.append(vae.latent(encode(vae, image)))
            except ValueError as exc:
                raise ValueError(f"images[{i}]: {exc}") from None
        encoded: dict[str, Any] = {}  # each distinct caption encoded once
        for text in texts:
            if text not in encoded:
                ctx.check_interrupt()
                node = CLIPTextEncode.model_construct(text=text, clip=clip)
                encoded[text] = node.execute(ctx)[0]
        return latents, [encoded[t] for t in texts]


def _entries(cond: Any, index: int) -> tuple[Any, ...]:
    entries = getattr(cond, "entries", None)
    if entries is None:
        raise ValueError(f"conditioning[{index}] is not a CONDITIONING")
    return tuple(entries)


class ResolutionBucket(Node):
    """Group a data set's images by latent size into buckets (ComfyUI's Resolution
    Bucket): one LATENT batch and one CONDITIONING (an entry per image) per size, in the
    order the sizes first appear. Feed them to Train LoRA with ``bucket_mode`` on: each
    batch is then drawn from one bucket, so images of different sizes train in batches."""

    TYPE = "ResolutionBucket"
    DISPLAY_NAME = "Resolution Bucket"
    CATEGORY = CATEGORY
    INPUT_IS_LIST = True
    OUTPUTS = (Output("LATENT", "latents", is_list=True,
                      tooltip="List of batched latent dicts, one per resolution bucket"),
               Output("CONDITIONING", "conditioning", is_list=True,
                      tooltip="List of condition lists, one per resolution bucket"))

    latents: Any = Input(type="LATENT", description="List of latents to bucket by size")
    conditioning: Any = Input(type="CONDITIONING", description="List of conditionings "
                              "(as many as latents; an entry per image)")

    def execute(self, ctx: ExecutionContext) -> tuple[list[Any], list[Any]]:
        import torch

        from nodes.diffusion.handles import Conditioning, Latent
        from nodes.limits import check_latent

        latents, conds = _as_list(self.latents), _as_list(self.conditioning)
        if len(latents) != len(conds):
            raise ValueError(f"{len(latents)} latents but {len(conds)} conditionings: give "
                             "one conditioning per latent (Make Training Dataset's)")
        buckets: dict[tuple[int, ...], tuple[list[Any], list[Any]]] = {}
        for i, (latent, cond) in enumerate(zip(latents, conds, strict=True)):
            samples = getattr(latent, "samples", None)
            if not isinstance(samples, torch.Tensor):
                raise ValueError(f"latents[{i}] is not a LATENT")
            check_latent(samples, f"latents[{i}]")
            entries = _entries(cond, i)
            if len(entries) not in (1, samples.shape[0]):
                raise ValueError(f"conditioning[{i}] has {len(entries)} entries for "
                                 f"{samples.shape[0]} images: give one per image, or one")
            for row in range(samples.shape[0]):
                rows, row_conds = buckets.setdefault(tuple(samples.shape[1:]), ([], []))
                rows.append(samples[row])
                row_conds.append(entries[row if len(entries) > 1 else 0])
        return ([Latent(torch.stack(rows)) for rows, _ in buckets.values()],
                [Conditioning(tuple(c)) for _, c in buckets.values()])


def _folder_problem(name: Any, env: Environment) -> str | None:
    if not isinstance(name, str):
        return None
    if not name.strip():
        return "give a folder name, e.g. training_dataset"
    if problem := name_problem(name.strip(), len("shard_0000.safetensors") + 24):
        return problem
    try:
        env.resolve("output", name.strip())
    except ValueError as exc:
        return str(exc)
    return None


class SaveTrainingDataset(Node):
    """Save a data set (Make Training Dataset's latents and conditioning) under
    output/<folder_name> to train from later without encoding again (ComfyUI's Save
    Training Dataset).

    Unlike ComfyUI, whose shards are pickles, the shards here are safetensors
    (``shard_0000.safetensors``, ``shard_size`` items each, each written atomically)
    plus ``metadata.json``; saving again into the same folder replaces the data set.
    Only tensors, numbers and text in the conditionings can be saved (a conditioning
    that carries other objects is refused)."""

    TYPE = "SaveTrainingDataset"
    DISPLAY_NAME = "Save Training Dataset"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    OUTPUTS = ()

    latents: Any = Input(type="LATENT", description="List of latents from Make Training "
                         "Dataset")
    conditioning: Any = Input(type="CONDITIONING", description="List of conditionings from "
                              "Make Training Dataset")
    folder_name: str = Input(DATASET_FOLDER, description="Folder to save the data set in "
                             "(inside output/)")
    shard_size: int = Input(1000, min=1, max=100000, description="Items per shard file")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problem = _folder_problem(inputs.get("folder_name"), env)
        return [("folder_name", problem)] if problem else []

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.training_shards import write_dataset

        name = str(first(self, "folder_name", ctx.env)).strip()
        if problem := _folder_problem(name, ctx.env):
            raise ValueError(f"folder_name: {problem}")
        latents, conds = _as_list(self.latents), _as_list(self.conditioning)
        if len(latents) != len(conds):
            raise ValueError(f"{len(latents)} latents but {len(conds)} conditionings: they "
                             "must pair up (Make Training Dataset's outputs)")
        if not latents:
            raise ValueError("the data set is empty")
        for i, (latent, cond) in enumerate(zip(latents, conds, strict=True)):
            if getattr(latent, "samples", None) is None:
                raise ValueError(f"latents[{i}] is not a LATENT")
            _entries(cond, i)
        folder = ctx.env.resolve("output", name)
        shards = write_dataset(folder, latents, conds, int(first(self, "shard_size", ctx.env)))
        return NodeResult((), {"text": [f"{len(latents)} items in {shards} shard(s) in "
                                        f"output/{name}"]})


class LoadTrainingDataset(Node):
    """Load a data set saved by Save Training Dataset from output/<folder_name> (ComfyUI's
    Load Training Dataset): its latents and conditionings, as lists, for Train LoRA.

    ComfyUI's own pickled shards (``shard_*.pkl``) are refused unless the server runs
    with ``--allow-pickle`` (they are then read as plain tensors and lists only, and
    their raw SD latents scaled into this program's latent space)."""

    TYPE = "LoadTrainingDataset"
    DISPLAY_NAME = "Load Training Dataset"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("LATENT", "latents", is_list=True, tooltip="List of latent dicts"),
               Output("CONDITIONING", "conditioning", is_list=True,
                      tooltip="List of conditioning lists"))

    folder_name: str = Input(DATASET_FOLDER, description="Folder holding the saved data "
                             "set (inside output/)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problem = _folder_problem(inputs.get("folder_name"), env)
        return [("folder_name", problem)] if problem else []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        from nodes.models import path_fingerprint

        name = inputs.get("folder_name")
        try:
            folder = env.resolve("output", str(name).strip())
        except ValueError:
            return None
        return path_fingerprint(folder) if folder.is_dir() else None

    def execute(self, ctx: ExecutionContext) -> tuple[list[Any], list[Any]]:
        from nodes.diffusion.training_shards import read_dataset

        name = self.folder_name.strip()
        latents, conds = read_dataset(ctx.env.resolve("output", name), f"output/{name}",
                                      ctx.env.allow_pickle)
        if not latents:
            raise ValueError(f"output/{name} holds an empty data set")
        return latents, conds


NODE_CLASSES = (MakeTrainingDataset, ResolutionBucket, SaveTrainingDataset,
                LoadTrainingDataset)
