"""Training nodes: teach a model a concept from a few images, in the graph that uses it.

The math lives in :mod:`nodes.diffusion.train_lora`, :mod:`nodes.diffusion.train_textual_inversion`
and their shared loop :mod:`nodes.diffusion.train_common` (diffusers' example scripts'
steps). Heavy imports happen inside ``execute``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from nodes.diffusion.handles import DiffusionModel, Tensor, TextEncoder, Vae
from nodes.diffusion.schedulers import SAMPLERS
from nodes.diffusion.train_common import LR_SCHEDULERS
from nodes.diffusion.train_preview import with_last_sample
from nodes.diffusion.train_textual_inversion import syntax_problem
from nodes.limits import name_problem

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- /]*$")
_SUFFIX = ".safetensors"
UNET_TARGETS = "to_k, to_q, to_v, to_out.0"


def save_name(raw: str) -> str:
    """The name a training saves under: ``raw`` without surrounding spaces or a trailing
    ``.safetensors`` (any case), which users type because Load LoRA lists names with it;
    the file is then <name>.safetensors, never <name>.safetensors.safetensors."""
    name = raw.strip()
    if name.lower().endswith(_SUFFIX):
        name = name[:-len(_SUFFIX)].rstrip()
    return name


def _syntax_problem(raw: str, folder: str) -> str | None:
    """Why ``raw`` (a ``save_name`` as typed) cannot name a file under models/<folder>,
    its existing files left aside (None: fine or empty)."""
    name = save_name(raw)
    if not name:
        return (f"{raw.strip()!r} names no file: write the name before .safetensors"
                if raw.strip() else None)
    if not _NAME.match(name) or ".." in name.split("/"):
        return (f"{name!r}: use letters, digits, '_', '-', '.' and '/' for subfolders "
                f"(the file is models/{folder}/<name>.safetensors)")
    if name.endswith((".", "/")):  # "x." would be x..safetensors, "x/" a hidden .safetensors
        return (f"{name!r} ends with {name[-1]!r}: leave it out (the file is "
                f"models/{folder}/<name>.safetensors)")
    # the atomic write's temporary file: .<name>.safetensors.<pid>.tmp
    return name_problem(name, len("..safetensors..tmp") + 10)


def _name_problem(raw: str, folder: str, env: Environment) -> str | None:
    """Why ``raw`` (a ``save_name`` as typed) cannot be a file name under models/<folder>
    (None: fine or empty)."""
    if problem := _syntax_problem(raw, folder):
        return problem
    name = save_name(raw)
    if not name:
        return None
    try:
        path = env.resolve("models", folder, f"{name}.safetensors")
    except Exception as exc:  # PathError and the like: outside the folder
        return f"{name!r}: {exc}"
    if (path.exists() or path.is_symlink()) and _run_key_of(path) is None:
        return _taken(folder, name, path)
    return None


def _target(env: Environment, folder: str, name: str) -> Path:
    return env.resolve("models", folder, f"{save_name(name)}.safetensors")


#: the metadata key of a trained file naming the run that made it (its checkpoint's name)
RUN_KEY = "steerflow.run_key"


def _run_key_of(path: Path) -> str | None:
    """The run key in a safetensors file's metadata (None: none, or not readable)."""
    from nodes.diffusion.safetensors_io import read_header

    try:
        return (read_header(path)[1] or {}).get(RUN_KEY)
    except Exception:  # not a safetensors file, unreadable: not ours to replace
        return None


def _taken(folder: str, name: str, path: Path | None = None) -> str:
    what = "folder" if path is not None and path.is_dir() else "file"
    return (f"models/{folder}/{name}.safetensors already exists and was not trained from "
            f"these inputs: choose another save_name, or delete that {what} to replace it "
            "(a training never writes over another file)")


def _claim(env: Environment, folder: str, name: str, checkpoint: Path) -> Path:
    """Where the run of ``checkpoint`` saves ``name``: refused, before any training, when
    a file of that name exists that another run or anything else wrote (a file this
    same run wrote before, e.g. in an earlier session, is written again). ``name`` as
    typed: a linked save_name was not validated."""
    if problem := _syntax_problem(name, folder):
        raise ValueError(f"save_name {problem}")
    name = save_name(name)
    path = _target(env, folder, name)
    if _written_by_another(path, checkpoint):
        raise FileExistsError(_taken(folder, name, path))
    _check_writable(path.parent, folder)
    return path


def _written_by_another(path: Path, checkpoint: Path) -> bool:
    """A file (or anything) at ``path`` that the run of ``checkpoint`` did not write."""
    return (path.exists() or path.is_symlink()) and _run_key_of(path) != checkpoint.stem


def _check_writable(where: Path, folder: str) -> None:
    """Before any training: a folder the result cannot be written to (read-only, or
    full) would throw the finished run away at the save."""
    import tempfile

    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        culprit = Path(exc.filename) if isinstance(exc.filename, str) else None
        if culprit is not None and culprit.is_file() and where.is_relative_to(culprit):
            # save_name's folder part names a file ("x.safetensors/y"): not the folder's fault
            raise ValueError(f"save_name puts the result in a folder {culprit.name}/, but "
                             f"models/{folder} has a file of that name: choose another "
                             "save_name; nothing was trained") from None
        raise OSError(f"models/{folder} cannot be written ({exc.strerror or exc}): free space "
                      "or fix its permissions, or leave save_name empty; nothing was "
                      "trained") from None


#: what a failed save says of the run: its final checkpoint stays (see :func:`_release`)
_KEPT = "the trained weights are kept, and saved without training again when you"


def _save(ctx: ExecutionContext, tensors: dict[str, Any], metadata: dict[str, str],
          path: Path, checkpoint: Path) -> None:
    """Write a trained file, unless another run wrote that name while this one trained
    (two workers, one save_name): :func:`_claim` checked before training, this checks
    again, under a lock every worker takes, right before the file goes in place. A Stop
    meanwhile waits for the file (``finishing``): a large one takes seconds to write."""
    from nodes.diffusion import train_common as tc

    shown = f"models/{path.parent.name}/{path.name}"
    with ctx.finishing(f"saving {shown}"), _save_lock(checkpoint.parent):
        if _written_by_another(path, checkpoint):
            raise FileExistsError(f"{shown} was written by something else while this run "
                                  f"trained; {_KEPT} give another save_name and queue the "
                                  "prompt again")
        try:
            tc.save_atomic(tensors, {**metadata, RUN_KEY: checkpoint.stem}, path)
        except OSError as exc:  # not the temporary file's name: the user's
            raise OSError(f"{shown} could not be written ({_os_reason(exc, path)}); {_KEPT} "
                          "have fixed that and queue the prompt again") from None


def _os_reason(exc: OSError, path: Path) -> str:
    """``exc``'s reason, naming the folder when the folder was the trouble (a file where
    models/<folder> should be: "File exists" is not about the trained file)."""
    reason = exc.strerror or str(exc)
    culprit = Path(exc.filename) if isinstance(exc.filename, str) else None
    if culprit is not None and culprit != path and path.is_relative_to(culprit):
        reason += f": its folder {culprit.parent.name}/{culprit.name} cannot be made or used"
    return reason


@contextmanager
def _save_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this base folder (``fcntl``; none
    where the platform has no ``flock``)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "save.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _release(checkpoint: Path) -> None:
    """The run's outputs are saved (or it saves none): its final checkpoint can go. Until
    then it stays, so a failed save loses no training."""
    checkpoint.unlink(missing_ok=True)


def _settings(node: Any) -> Any:
    from nodes.diffusion.train_common import TrainSettings

    # The schedule and loss options exist on the nodes that take them (LrScheduleInputs,
    # Train LoRA's snr_gamma / noise_offset); elsewhere they keep the scripts' defaults.
    return TrainSettings(steps=node.steps, learning_rate=node.learning_rate,
                         batch_size=node.batch_size, seed=node.seed,
                         resolution=node.resolution,
                         gradient_checkpointing=node.gradient_checkpointing,
                         lr_scheduler=getattr(node, "lr_scheduler", "constant"),
                         lr_warmup_steps=getattr(node, "lr_warmup_steps", 0),
                         snr_gamma=getattr(node, "snr_gamma", 0.0),
                         noise_offset=getattr(node, "noise_offset", 0.0))


#: inputs that never change the trained weights (or are not plain values: the handles, the
#: images, the mask; captions are taken parsed, one per image)
_NOT_SETTINGS = frozenset({"model", "clip", "vae", "images", "captions", "save_name",
                           "gradient_checkpointing", "sample_every", "sample_prompt",
                           "loss_mask"})


def _run_settings(node: Any) -> dict[str, Any]:
    """Every plain input of ``node`` that changes the trained weights."""
    return {k: getattr(node, k) for k in type(node).model_fields if k not in _NOT_SETTINGS}


def training_info(node: Any, captions: list[str], base_hash: str, steps: int,
                  losses: list[float], **extra: Any) -> dict[str, Any]:
    """A saved file's ``steerflow.*`` metadata (every training node's): the base model's
    hash, the steps, the final loss and, as ``parameters``, every input that changes the
    weights (those of the run key, so a file tells apart any two runs that differ),
    the captions one per image and the masked loss; ``extra`` adds or overrides
    parameters (a parsed form of an input, say)."""
    params = _run_settings(node)
    params.pop("unmasked_weight", None)  # recorded by mask_info, with a mask only
    mask_info = node.mask_info() if hasattr(node, "mask_info") else {}
    return {"base_model_hash": base_hash, "steps": steps, "final_loss": losses[-1],
            "parameters": {**params, "captions": list(captions), "images": len(captions),
                           **mask_info, **extra}}


def _checkpoint(ctx: ExecutionContext, kind: str, node: Any, captions: list[str],
                base_hash: str) -> Path:
    """temp/training/<kind>-<digest of every input that changes the result>.pt: where an
    interrupted run leaves its state, so the same inputs run again resume from it."""
    from nodes.diffusion.train_common import checkpoint_path, run_key

    key = run_key(kind, _run_settings(node), node.images, captions, base_hash,
                  (*node.model.patches, *node.clip.patches),
                  (getattr(node, "loss_mask", None),))
    return checkpoint_path(ctx, kind, key)


def _sample(ctx: ExecutionContext, node: Any, captions: list[str]) -> Any:
    from nodes.diffusion.train_preview import training_sample

    return training_sample(ctx, node.sample_every, node.sample_prompt, captions,
                           node.resolution, node.seed)


def check_training_inputs(node: Node) -> None:
    """What every training node checks first: an SD 1.x / 2.x model and some images."""
    from nodes.diffusion.sdxl import require_sd_unet

    require_sd_unet(node.model.unet, node.DISPLAY_NAME or node.TYPE)  # type: ignore[attr-defined]
    _check_images(node.images)  # type: ignore[attr-defined]


def training_captions(ctx: ExecutionContext, node: Node) -> list[str]:
    """The node's captions, one per image. An empty caption (Load Image Batch's for an
    image without a .txt) trains that image with no word tied to it: allowed, as in the
    scripts, but never silently, whether every caption is empty or only some."""
    from nodes.diffusion.train_common import parse_captions

    captions = parse_captions(node.captions, int(node.images.shape[0]))  # type: ignore[attr-defined]
    _warn_cut(ctx, getattr(getattr(node, "clip", None), "tokenizer", None), captions)
    empty = [i for i, caption in enumerate(captions) if not caption]
    if not empty:
        return captions
    why = ("Load Image Batch gives an empty caption for an image without a .txt beside "
           "it")
    if len(empty) == len(captions):
        what = (f"all {len(captions)} captions are empty" if len(captions) > 1
                else "the only image's caption is empty")
        ctx.warn(f"{what} ({why}), so no word is tied to what is learned: add the .txt "
                 "files, or give Load Image Batch a caption_template such as 'a photo of "
                 "sks'")
    else:
        ctx.warn(f"{len(empty)} of {len(captions)} captions are empty "
                 f"({_some_images(ctx, empty)}; {why}), so those images teach no word: "
                 "add their .txt files or captions")
    return captions


def _warn_cut(ctx: ExecutionContext, tokenizer: Any, captions: list[str]) -> None:
    """Captions longer than the text encoder reads are cut (as the scripts tokenize): a
    trigger word past the cut is never learned, so it is said."""
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
        return
    room = limit - 2  # the start and end tokens
    cut = [i for i, c in enumerate(captions)
           if c and len(tokenizer(c, add_special_tokens=False).input_ids) > room]
    if cut:
        shown = ", ".join(str(i + 1) for i in cut[:5]) + (" ..." if len(cut) > 5 else "")
        ctx.warn(f"caption(s) {shown} are longer than the text encoder reads ({room} tokens): "
                 "the words past that are cut, and a trigger word there is never learned; "
                 "put it first or shorten the caption")


def _some_images(ctx: ExecutionContext, positions: list[int], shown: int = 3) -> str:
    """Up to ``shown`` of the images at ``positions``: their files when the images come
    straight from a Load Image Batch with constant inputs, else their numbers."""
    names = _batch_files(ctx)
    if names is not None and len(names) > max(positions):
        listed = [repr(names[i]) for i in positions[:shown]]
    else:
        listed = [f"image {i + 1}" for i in positions[:shown]]
    more = len(positions) - len(listed)
    return ", ".join(listed) + (f" and {more} more" if more else "")


def _batch_files(ctx: ExecutionContext) -> list[str] | None:
    """The file of each image when this node's ``images`` is linked straight from a Load
    Image Batch whose inputs are constants (None otherwise): for messages only."""
    prompt = getattr(ctx, "prompt", None) or {}
    link = (prompt.get(getattr(ctx, "node_id", None)) or {}).get("inputs", {}).get("images")
    if not (isinstance(link, list) and len(link) == 2):
        return None
    source = prompt.get(str(link[0])) or {}
    inputs = source.get("inputs") or {}
    folder, images = inputs.get("folder", ""), inputs.get("images", "")
    if source.get("class_type") != "LoadImageBatch" or not isinstance(folder, str) \
            or not isinstance(images, str):
        return None
    from nodes.image_batch import collect_entries

    try:
        return [entry.label for entry in collect_entries(ctx.env, folder, images)]
    except Exception:  # a name is a courtesy: the numbers do without
        return None


def _check_images(images: Any) -> None:
    if images is None or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError("no images: link an IMAGE batch with at least one image (Load Image "
                         "Batch)")


class TrainingNode(Node):
    """The inputs every training node takes (a base class, not a node): the model to train
    from, the captioned images, the optimisation, the file to save and the samples."""

    # one run on every image: a list (Load Image-Text (from Folder)) would make one per image
    ONE_CALL_ONLY = ("it trains on one batch of images: save the list with Save Image-Text "
                     "(to Folder) and read that folder with Load Image Batch (one batch, its "
                     "captions from the .txt files), or train from the lists with Make "
                     "Training Dataset and Train LoRA (latents)")

    model: DiffusionModel = Input(type="MODEL")
    clip: TextEncoder = Input(type="CLIP")
    vae: Vae = Input(type="VAE")
    images: Tensor = Input(type="IMAGE")
    captions: str = Input("", multiline=True, description="One caption per image (a line "
                          "each), or one for all")
    learning_rate: float = Input(1e-4, min=1e-8, max=1.0, step=1e-6,
                                 description="AdamW learning rate (constant)")
    steps: int = Input(200, min=1, max=100_000, description="Optimiser steps")
    batch_size: int = Input(1, min=1, max=64, description="Images per step")
    seed: int = Input(0, min=0, max=2**63 - 1, description="Seeds the run: initial weights, "
                      "order, noise, timesteps (and class images)")
    resolution: int = Input(512, min=8, max=2048, step=8,
                            description="Training size: shorter side scaled to it, centre "
                            "crop")
    gradient_checkpointing: bool = Input(False, description="Recompute activations in the "
                                         "backward pass: less memory, slower")
    save_name: str = Input("", description="Also save the result under this name (empty: "
                           "do not save)")
    sample_every: int = Input(0, min=0, max=100_000, description="Draw a sample image "
                              "every N steps (and after the last), shown on the node; 0: off")
    sample_prompt: str = Input("", description="Prompt of the sample images (empty: the "
                               "first caption)")


class LrScheduleInputs(Node):
    """The scripts' learning-rate schedule (diffusers' ``get_scheduler``), stepped after
    every optimiser step; "constant" (their default) keeps the learning rate."""

    lr_scheduler: str = Input("constant", choices=LR_SCHEDULERS,
                              description="Learning-rate schedule over the steps")
    # The scripts default to 500 warm-up steps for their ~15k-step runs; unused by
    # "constant", so 0 here keeps short runs' schedules meaningful.
    lr_warmup_steps: int = Input(0, min=0, max=100_000, description="Steps the learning "
                                 "rate rises linearly from 0 (not with \"constant\")")


class LossMaskInputs(Node):
    """A masked loss: the loss counts fully where the mask is 1 (the subject) and
    ``unmasked_weight`` elsewhere, each image's loss the weighted mean over its pixels."""

    loss_mask: Tensor | None = Input(type="MASK", optional=True, description="Masked loss: "
                                     "1 on the subject to learn, 0 on the rest (one mask "
                                     "for all images or one per image; Load Image Batch's "
                                     "alpha mask is 1 where transparent: Invert Mask it for "
                                     "cut-outs)")
    unmasked_weight: float = Input(0.1, min=0.0, max=1.0, step=0.01,
                                   description="Loss weight outside loss_mask (1: no "
                                   "masking; 0: the background is not learned at all)")

    def loss_mask_spec(self) -> Any:
        """The masked loss, or None without a mask."""
        if self.loss_mask is None:
            return None
        from nodes.diffusion.train_common import LossMask

        return LossMask(self.loss_mask, self.unmasked_weight)

    def mask_info(self) -> dict[str, Any]:
        """The saved file's record of the masked loss (nothing without one)."""
        return {} if self.loss_mask is None else {"masked_loss": True,
                                                  "unmasked_weight": self.unmasked_weight}


class PriorPreservationInputs(Node):
    """Prior preservation's inputs (DreamBooth, Custom Diffusion): class images the base
    model draws, trained on beside the instances so the class keeps its meaning."""

    with_prior_preservation: bool = Input(False, description="Also train on class images "
                                          "the base model draws, so the class keeps its "
                                          "meaning")
    class_prompt: str = Input("", multiline=True, description="The class without the new "
                              "word, e.g. 'a shape' (prior preservation); several lines: "
                              "class images of each in turn, keeping every word's meaning")
    num_class_images: int = Input(100, min=1, max=1000,
                                  description="Class images to draw (prior preservation)")
    prior_loss_weight: float = Input(1.0, min=0.0, max=100.0, step=0.1,
                                     description="Weight of the class images' loss")
    class_steps: int = Input(25, min=1, max=500, description="Sampling steps per class "
                             "image")
    class_cfg: float = Input(7.5, min=0.0, max=100.0, step=0.1,
                             description="Guidance scale of the class images")
    class_sampler: str = Input("euler", choices=tuple(SAMPLERS),
                               description="Sampler of the class images")

    @staticmethod
    def prior_problems(inputs: dict[str, Any], word: str) -> list[tuple[str | None, str]]:
        prompt = inputs.get("class_prompt")
        if inputs.get("with_prior_preservation") is True and isinstance(prompt, str) \
                and not prompt.strip():
            return [("class_prompt", "prior preservation needs a class prompt: the "
                     f"captions' class without the {word}, e.g. 'a shape'")]
        return []

    def prior(self) -> Any:
        """The prior-preservation settings, or None when it is off."""
        if not self.with_prior_preservation:
            return None
        from nodes.diffusion.prior_preservation import PriorPreservation

        return PriorPreservation(
            class_prompt=self.class_prompt.strip(), num_class_images=self.num_class_images,
            prior_loss_weight=self.prior_loss_weight, sampling_steps=self.class_steps,
            cfg=self.class_cfg, sampler_name=self.class_sampler)


#: what a pivot token's file adds to save_name (diffusers' advanced script's ``<name>_emb``):
#: a textual inversion saved under the same name keeps its own file
EMB_SUFFIX = "_emb"

_PIVOT_INPUTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "token": ("", {"description": "Pivotal tuning: also learn this word's embedding (a "
                   "vocabulary word such as sks: its row; a new placeholder such as <sks>: "
                   "new vectors); empty: off"}),
    "initializer": ("", {"description": "Pivotal tuning: the word whose embedding the token "
                         "starts from (empty: its own row, or 'shape' for a new "
                         "placeholder)"}),
    "vectors": (1, {"min": 1, "max": 16, "description": "Pivotal tuning: vectors of a new "
                    "placeholder"}),
    "learning_rate": (5e-3, {"min": 0.0, "max": 1.0, "step": 1e-5, "description": "Pivotal "
                             "tuning: the token's learning rate (the run's schedule)"}),
    "ti_steps": (0, {"min": 0, "max": 100_000, "description": "Pivotal tuning: the first "
                     "steps train the token alone"}),
}


def pivot_input(key: str) -> Any:
    """One of the pivotal-tuning inputs (``pivot_<key>``), the same on every training node
    that offers it (declared in each, so each keeps its own input order)."""
    default, options = _PIVOT_INPUTS[key]
    return Input(default, **options)


def pivot_problems(inputs: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Validation of the pivot token against the captions."""
    token, captions = inputs.get("pivot_token"), inputs.get("captions")
    if not isinstance(token, str) or not token.strip():
        return []
    token = token.strip()
    if any(c.isspace() for c in token):
        return [("pivot_token", "one word without spaces, e.g. sks or <sks>")]
    if problem := syntax_problem(token):
        return [("pivot_token", problem)]
    if isinstance(captions, str) and captions.strip() and token not in captions:
        return [("captions", f"the captions must contain the pivot token {token!r} where "
                 "the concept goes")]
    return []


def pivot_spec(node: Any) -> Any:
    """The node's pivotal tuning, or None when ``pivot_token`` is empty."""
    if not node.pivot_token.strip():
        return None
    from nodes.diffusion.pivotal_tuning import PivotSpec

    return PivotSpec(node.pivot_token.strip(), node.pivot_initializer.strip(),
                     node.pivot_vectors, node.pivot_learning_rate, node.pivot_ti_steps)


class TrainLoRA(LossMaskInputs, LrScheduleInputs, TrainingNode):
    """Train a LoRA on a few captioned images and use it at once (diffusers'
    train_text_to_image_lora.py: MSE on the noise, or on v for v-prediction models,
    uniform timesteps, AdamW, gradient norm clipped to 1, PEFT's LoRA layers).

    Wire Load Image Batch's IMAGE and captions (one line per image, or one line for all)
    with an SD 1.x / 2.x checkpoint's MODEL, CLIP and VAE (SDXL is refused); the outputs
    are the MODEL and CLIP with the LoRA applied (as Load LoRA would; the base model is
    untouched) and the file name for Load LoRA when ``save_name`` is set (written
    atomically to models/loras/<save_name>.safetensors, with the base model's hash, the
    steps and the parameters in its metadata). Images of any size are scaled so their
    shorter side is ``resolution`` and cropped in the middle (``resolution`` must be a
    multiple of the model's total downsampling: 64 for SD 1.x, 16 for the default model,
    whose images are 64).

    Using it well: put a rare word in every caption ("a red sks shape") and use it in
    the prompt afterwards. rank 4-16, alpha = rank (the script's choice), learning rate
    1e-4 (the script's) to 1e-3 for a few hundred steps; ``unet+text_encoder`` learns
    words faster. ``target_modules`` may name convolutions too (PEFT's Conv2d LoRA):
    the ResNets' ``conv1, conv2`` and ``proj_in, proj_out`` give a new *shape* spatial
    capacity that attention alone lacks. A ``loss_mask`` (1 on each image's subject)
    makes a small subject count as much as a large one and keeps a busy background out
    of the concept (``unmasked_weight`` 0.1 is a good start; on the default model it
    lifted small new shapes from 45% to 57%). Pivotal tuning (``pivot_token``: the
    caption's concept word; diffusers' advanced DreamBooth-LoRA script's
    ``--train_text_encoder_ti``) trains that word's embedding with the LoRA, at its own
    ``pivot_learning_rate`` (2e-2 on the default model): the word then means the concept
    from the first layer on, and the LoRA need not re-route a random word. On the default
    model it took a new shape from 68% to 83% (four training seeds) for about 15% more time
    per step. A vocabulary word (sks) trains its own row; a new placeholder (<sks>) gets
    ``pivot_vectors`` new ones from ``pivot_initializer``. The output CLIP carries it; with
    ``save_name`` it is also written to models/embeddings/<save_name>_emb.safetensors (the
    advanced script's name): elsewhere, load the LoRA and write ``embedding:<save_name>_emb``
    where the word was. The
    same inputs are never trained twice (the result is cached); progress events carry the
    loss (the canvas draws it as a live
    curve on the node);
    Stop acts between steps. Cost: each step is a forward and backward UNet pass over
    the batch (the default model: a few hundred steps take a minute or two on a CPU).
    ``gradient_checkpointing`` saves memory on big models for about a third more time.

    ``sample_every`` N > 0 draws ``sample_prompt`` (empty: the first caption) every N
    steps and after the last, with the LoRA as it is at that step, through the
    KSampler's sampler (12 euler steps, cfg 7.5, the training resolution, noise from
    ``seed``), and shows it on the node; only while a client watches. It never changes
    the result: same weights with or without, the base model untouched. Each sample
    costs about as much as 6-7 training steps of batch 1 (the default model, 64 px).
    """

    TYPE = "TrainLoRA"
    DISPLAY_NAME = "Train LoRA"
    CATEGORY = "training"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("STRING", "lora_name"))

    rank: int = Input(4, min=1, max=128, description="LoRA rank r")
    alpha: float = Input(4.0, min=0.01, max=1024.0, step=0.01,
                         description="LoRA alpha (scale alpha / rank); the script uses rank")
    learning_rate: float = Input(1e-4, min=1e-7, max=1e-1, step=1e-5,
                                 description="AdamW learning rate (the peak, with lr_scheduler)")
    steps: int = Input(200, min=1, max=100_000, description="Optimiser steps")
    seed: int = Input(0, min=0, max=2**63 - 1,
                      description="Seeds LoRA init, order, noise, timesteps")
    target: str = Input("unet", choices=("unet", "unet+text_encoder"),
                        description="What the LoRA adapts")
    target_modules: str = Input(UNET_TARGETS, description="UNet linear or convolution "
                                "layers to adapt (comma-separated, e.g. add conv1, conv2; the "
                                "text encoder's are q/k/v/out_proj)")
    snr_gamma: float = Input(0.0, min=0.0, max=100.0, step=0.1,
                             description="Min-SNR-γ loss weighting (5 is the paper's); 0: "
                             "plain MSE")
    noise_offset: float = Input(0.0, min=0.0, max=1.0, step=0.01,
                                description="Offset noise (e.g. 0.05-0.1); 0: off")
    save_name: str = Input("", description="Also write models/loras/<name>.safetensors "
                           "(empty: do not save)")
    pivot_token: str = pivot_input("token")
    pivot_initializer: str = pivot_input("initializer")
    pivot_vectors: int = pivot_input("vectors")
    pivot_learning_rate: float = pivot_input("learning_rate")
    pivot_ti_steps: int = pivot_input("ti_steps")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        name = inputs.get("save_name")
        if isinstance(name, str) and (problem := _name_problem(name, "loras", env)):
            problems.append(("save_name", problem))
        modules = inputs.get("target_modules")
        if isinstance(modules, str) and not [t for t in modules.split(",") if t.strip()]:
            problems.append(("target_modules", "name at least one module, e.g. " + UNET_TARGETS))
        captions = inputs.get("captions")
        if isinstance(captions, str) and not captions.strip():
            problems.append(("captions", "write a caption (one for all images) or link Load "
                             "Image Batch's captions"))
        problems += pivot_problems(inputs)
        token = inputs.get("pivot_token")
        if isinstance(token, str) and token.strip() and isinstance(name, str) \
                and name.strip() and (
                    problem := _name_problem(name.strip() + EMB_SUFFIX, "embeddings", env)):
            problems.append(("save_name", problem + " (the pivot token's embedding is "
                             "saved under the same name)"))
        return problems

    def execute(self, ctx: ExecutionContext
                ) -> tuple[DiffusionModel, TextEncoder, str] | NodeResult:
        from dataclasses import replace

        from nodes.diffusion import pivotal_tuning as pt
        from nodes.diffusion import train_common as tc
        from nodes.diffusion import train_lora as tl

        check_training_inputs(self)
        captions = training_captions(ctx, self)
        spec = tl.LoraSpec(rank=self.rank, alpha=self.alpha,
                           unet_targets=tl.parse_targets(self.target_modules),
                           text_targets=tl.TEXT_TARGETS if "text_encoder" in self.target
                           else ())
        settings = _settings(self)
        base_hash = tc.weights_hash(self.model.unet, self.clip.text_encoder)
        checkpoint = _checkpoint(ctx, "lora", self, captions, base_hash)
        pivot = pivot_spec(self)
        if name := save_name(self.save_name):
            target = _claim(ctx.env, "loras", name, checkpoint)
            if pivot is not None:
                token_target = _claim(ctx.env, "embeddings", name + EMB_SUFFIX, checkpoint)
        sample = _sample(ctx, self, captions)
        unet_layers, text_layers, losses, clip = tl.train_lora(
            ctx, self.model, self.clip, self.vae, self.images, captions, spec, settings,
            checkpoint, sample=sample, loss_mask=self.loss_mask_spec(), pivot=pivot)
        label = f"{name}.safetensors" if name else f"trained-lora-{ctx.node_id}"
        model = replace(self.model, patches=(*self.model.patches, unet_layers.patch(label)))
        if text_layers is not None:
            clip = replace(clip, patches=(*clip.patches, text_layers.patch(label)))
        if name:
            info = training_info(self, captions, base_hash, settings.steps, losses,
                                 target_modules=list(spec.unet_targets))
            tensors, metadata = tl.lora_file(unet_layers, text_layers, spec, info)
            _save(ctx, tensors, metadata, target, checkpoint)
            if pivot is not None:
                # the token's vectors as a textual-inversion file: outside this graph the
                # LoRA is used with embedding:<name>_emb where the token was written
                _save(ctx, {pivot.token: pt.pivot_vectors(clip, pivot.token)},
                      {f"steerflow.{k}": v if isinstance(v, str) else json.dumps(v)
                       for k, v in info.items()}, token_target, checkpoint)
        _release(checkpoint)
        return with_last_sample(ctx, sample, (model, clip, label if name else ""))


class TrainTextualInversion(LossMaskInputs, LrScheduleInputs, TrainingNode):
    """Learn new token embeddings for a concept from a few images (diffusers'
    textual_inversion.py: only the new rows of the token-embedding table train; the
    rest of the model is frozen).

    Wire Load Image Batch's IMAGE and captions with the checkpoint's MODEL, CLIP and
    VAE; every caption must contain ``placeholder_token`` where the concept goes ("a
    red <sks> shape"; a single caption serves all images). The output CLIP is a new
    handle that knows the placeholder (write it in prompts of the same graph); with
    ``save_name`` the vectors are also written to models/embeddings/<name>.safetensors,
    usable in any prompt as ``embedding:<name>``. Images are scaled so their shorter
    side is ``resolution`` and cropped in the middle (as Train LoRA).

    Using it well: an ``initializer_token`` close to the concept (one vocabulary word:
    "shape", "dog"), 1-4 vectors, learning rate 5e-4 to 5e-3 (the script's example uses
    5e-4 with batch 4 and lr scaling; here it is not scaled) for a few hundred to a few
    thousand steps. The same inputs are never trained twice (cached); progress events
    carry the loss (drawn as a live curve on the node); Stop acts between steps. Cost:
    as Train LoRA (a forward and backward UNet pass per step), the memory of a second
    token-embedding table. ``sample_every`` and ``sample_prompt`` show sample images
    with the vectors as they are, as in Train LoRA (the prompt may use the placeholder).
    """

    TYPE = "TrainTextualInversion"
    DISPLAY_NAME = "Train Textual Inversion"
    SEARCH_ALIASES = ("TI", "textual inversion", "embedding")
    CATEGORY = "training"
    OUTPUTS = (Output("CLIP"), Output("STRING", "embedding"))

    captions: str = Input("a photo of <sks>", multiline=True, description="One caption per "
                          "image, or one for all; each contains the placeholder")
    placeholder_token: str = Input("<sks>", description="The new word (not yet in the "
                                   "tokenizer)")
    initializer_token: str = Input("shape", description="One vocabulary word the vectors "
                                   "start from")
    num_vectors: int = Input(1, min=1, max=16, description="Vectors for the concept")
    learning_rate: float = Input(5e-4, min=1e-7, max=1.0, step=1e-5,
                                 description="AdamW learning rate (not scaled; the peak, "
                                 "with lr_scheduler)")
    steps: int = Input(500, min=1, max=100_000, description="Optimiser steps")
    gradient_checkpointing: bool = Input(False, description="Recompute UNet activations in "
                                         "the backward pass: less memory, slower")
    save_name: str = Input("", description="Also write models/embeddings/<name>.safetensors "
                           "(use as embedding:<name>; empty: do not save)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        name = inputs.get("save_name")
        if isinstance(name, str) and (problem := _name_problem(name, "embeddings", env)):
            problems.append(("save_name", problem))
        token = inputs.get("placeholder_token")
        if isinstance(token, str) and (not token.strip() or any(c.isspace() for c in token)):
            problems.append(("placeholder_token", "one word without spaces, e.g. <sks>"))
        elif isinstance(token, str) and (problem := syntax_problem(token)):
            problems.append(("placeholder_token", problem))
        init = inputs.get("initializer_token")
        if isinstance(init, str) and not init.strip():
            problems.append(("initializer_token", "one vocabulary word, e.g. shape"))
        captions = inputs.get("captions")
        if (isinstance(captions, str) and isinstance(token, str) and token.strip()
                and token not in captions):
            problems.append(("captions", f"the captions must contain the placeholder {token!r}"
                             f", e.g. 'a photo of {token}'"))
        return problems

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder, str] | NodeResult:
        from nodes.diffusion import train_common as tc
        from nodes.diffusion.train_textual_inversion import train_textual_inversion

        check_training_inputs(self)
        captions = training_captions(ctx, self)
        settings = _settings(self)
        base_hash = tc.weights_hash(self.model.unet, self.clip.text_encoder)
        checkpoint = _checkpoint(ctx, "embedding", self, captions, base_hash)
        if name := save_name(self.save_name):
            target = _claim(ctx.env, "embeddings", name, checkpoint)
        sample = _sample(ctx, self, captions)
        clip, vectors, losses = train_textual_inversion(
            ctx, self.model, self.clip, self.vae, self.images, captions,
            self.placeholder_token, self.initializer_token.strip(), self.num_vectors, settings,
            checkpoint, sample=sample, loss_mask=self.loss_mask_spec())
        if name:
            info = training_info(self, captions, base_hash, settings.steps, losses)
            metadata = {f"steerflow.{k}": v if isinstance(v, str) else json.dumps(v)
                        for k, v in info.items()}
            # diffusers' learned_embeds layout: {placeholder: [vectors, dim]}
            _save(ctx, {self.placeholder_token: vectors}, metadata, target, checkpoint)
        _release(checkpoint)
        return with_last_sample(ctx, sample, (clip, name))


NODE_CLASSES = (TrainLoRA, TrainTextualInversion)
