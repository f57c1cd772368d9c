"""Textual inversion training (diffusers' ``textual_inversion.py``) on a CLIP handle.

New tokens (the placeholder, then ``<placeholder>_1`` ... for more vectors) are
added to a copy of the tokenizer; their embedding rows start as the initializer
token's. AdamW (the script's defaults, learning rate not scaled) optimises the
whole token-embedding matrix and every row but the new ones is restored after
each step, as the script does; the learning-rate schedule (``lr_scheduler``,
``lr_warmup_steps``) is the script's too. The rest of the text encoder, the UNet and the
VAE are frozen.

The trained CLIP is a new handle: a text encoder that shares every weight with
the base one except its token embedding (a copy with the new rows), and the
tokenizer copy. The base handle is never changed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion import train_common as tc

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
    from nodes.diffusion.train_preview import TrainingSample


def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """The script's names: ``placeholder``, ``placeholder_1``, ... ``placeholder_{n-1}``."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


#: what prompts rewrite before a token can be looked up: CLIP Text Encode's weighting
#: (nodes.diffusion.prompt_weighting) and the front ends' dynamic prompts ({a|b}, comments)
PROMPT_SYNTAX = ("(", ")", "[", "]", "\\", "{", "}", "|", "//", "/*")


def syntax_problem(token: str, what: str = "placeholder") -> str | None:
    """Why ``token`` would never reach the tokenizer as written, or None."""
    if any(part in token for part in PROMPT_SYNTAX) or token.lower().startswith("embedding:"):
        # "(sks)" is "sks" weighted 1.1, "{sks}" a dynamic prompt's choice: the trained
        # vectors would never be looked up, and prompts would draw the base model's word
        return (f"{token!r} holds prompt syntax (brackets, braces, '|', a backslash, a // or "
                f"/* comment, or embedding:), which prompts rewrite before the {what} is "
                "looked up: pick a word such as <sks>")
    return None


def token_problems(tokenizer: Any, placeholder: str, initializer: str, num_vectors: int
                   ) -> list[tuple[str, str]]:
    """``[(input, message)]`` for a placeholder the tokenizer knows or a bad initializer."""
    problems = []
    if not placeholder.strip() or placeholder != placeholder.strip() or " " in placeholder:
        problems.append(("placeholder_token", "the placeholder must be one word without spaces "
                         "(e.g. <sks>)"))
    elif (problem := syntax_problem(placeholder)) is not None:
        problems.append(("placeholder_token", problem))
    else:
        vocab = tokenizer.get_vocab()
        known = [t for t in placeholder_tokens(placeholder, num_vectors)
                 if t in vocab or t.lower() in vocab]
        if known:
            problems.append(("placeholder_token", f"the tokenizer already has the token "
                             f"{known[0]!r}: pick a new placeholder such as <{placeholder}>"))
    ids = tokenizer.encode(initializer, add_special_tokens=False) if initializer.strip() else []
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids) if ids else []
        problems.append(("initializer_token", f"the initializer must be a single token of the "
                         f"vocabulary; {initializer!r} is {len(ids)} tokens {pieces}: pick one "
                         "word close to the concept (e.g. shape, dog, style)"))
    return problems


class ExpandingTokenizer:
    """A tokenizer that reads a multi-vector placeholder as all its tokens (what diffusers'
    ``maybe_convert_prompt`` does for pipelines): ``<p>`` → ``<p> <p>_1 ...``.
    Everything else is the wrapped tokenizer's."""

    def __init__(self, inner: Any, expansions: dict[str, str]) -> None:
        self.inner = inner
        self.expansions = dict(expansions)

    def expand(self, text: Any) -> Any:
        if isinstance(text, (list, tuple)):
            return [self.expand(t) for t in text]
        if not isinstance(text, str):
            return text
        for token, expansion in self.expansions.items():
            rest = expansion[len(token):]
            # not a written <p>_1, nor a <p> already followed by its other tokens
            pattern = re.escape(token) + r"(?!_\d)" + (f"(?!{re.escape(rest)})" if rest else "")
            text = re.sub(pattern, expansion, text)
        return text

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner(self.expand(text), *args, **kwargs)

    def encode(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner.encode(self.expand(text), *args, **kwargs)

    def tokenize(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner.tokenize(self.expand(text), *args, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "expansions"):  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __deepcopy__(self, memo: dict[int, Any]) -> ExpandingTokenizer:
        return ExpandingTokenizer(copy.deepcopy(self.inner, memo), self.expansions)


def base_tokenizer(tokenizer: Any) -> tuple[Any, dict[str, str]]:
    """The plain tokenizer under any expansions, and the expansions."""
    if isinstance(tokenizer, ExpandingTokenizer):
        return tokenizer.inner, tokenizer.expansions
    return tokenizer, {}


def extended_clip(clip: TextEncoder, tokens: list[str], init_id: int) -> TextEncoder:
    """A new CLIP handle whose tokenizer knows ``tokens`` and whose text encoder has a row
    for each (the initializer's embedding); every other weight is shared, not copied."""
    import torch

    inner, expansions = base_tokenizer(clip.tokenizer)
    inner = copy.deepcopy(inner)
    if inner.add_tokens(tokens) != len(tokens):
        raise ValueError(f"the tokenizer already has one of {tokens}: pick a new placeholder")
    tokenizer = ExpandingTokenizer(inner, {**expansions, tokens[0]: " ".join(tokens)})
    weight = clip.text_encoder.get_input_embeddings().weight.detach()
    rows = weight[init_id].unsqueeze(0).repeat(len(tokens), 1)
    return _with_table(clip, tokenizer, torch.cat([weight, rows]))


def retrained_clip(clip: TextEncoder, token_ids: list[int], init_id: int | None
                   ) -> TextEncoder:
    """A new CLIP handle with its own copy of the token-embedding table, to train rows
    ``token_ids`` the tokenizer already has (set to ``init_id``'s row when given); the
    tokenizer and every other weight are shared."""
    weight = clip.text_encoder.get_input_embeddings().weight.detach().clone()
    if init_id is not None:
        weight[token_ids] = weight[init_id].clone()  # a view of the written table
    return _with_table(clip, clip.tokenizer, weight)


def _with_table(clip: TextEncoder, tokenizer: Any, weight: torch.Tensor) -> TextEncoder:
    """``clip`` with ``tokenizer`` and a text encoder whose token embedding is ``weight``
    (a new table); every other parameter is shared with the base encoder."""
    import torch

    base = clip.text_encoder
    old = base.get_input_embeddings()
    # deepcopy with every parameter but the token embedding pre-filled in the memo: the
    # copy shares them (no memory), and only the embedding table is new.
    memo = {id(p): p for p in base.parameters() if p is not old.weight}
    encoder = copy.deepcopy(base, memo)
    table = torch.nn.Embedding(weight.shape[0], weight.shape[1], device=weight.device,
                               dtype=weight.dtype)
    with torch.no_grad():
        table.weight.copy_(weight)
    encoder.set_input_embeddings(table)
    encoder.config.vocab_size = weight.shape[0]
    return replace(clip, text_encoder=encoder, tokenizer=tokenizer)


def restore_other_rows(table: torch.Tensor, original: torch.Tensor, token_ids: list[int]
                       ) -> None:
    """Put back every row of ``table`` but ``token_ids`` (the script's step: AdamW's weight
    decay and momentum must not move the vocabulary's other words)."""
    import torch

    keep = torch.ones(original.shape[0], dtype=torch.bool)
    keep[list(token_ids)] = False
    with torch.no_grad():
        table[keep] = original[keep]


def vocabulary_word(tokenizer: Any, token: str) -> bool:
    """Whether the tokenizer reads ``token`` as one token of its own vocabulary ("sks"):
    pivotal tuning then trains that row rather than adding a placeholder."""
    inner, _ = base_tokenizer(tokenizer)
    own = inner.encode(token, add_special_tokens=False) if token.strip() else []
    return len(own) == 1 and inner.convert_ids_to_tokens(own)[0] in (token, token + "</w>")


def token_clip(clip: TextEncoder, token: str, initializer: str, num_vectors: int
               ) -> tuple[TextEncoder, list[int]]:
    """The CLIP handle and row ids for training ``token``'s embedding (pivotal tuning: a
    LoRA's concept word learned with it). A word the tokenizer reads as one token of its
    vocabulary ("sks") trains that row in a copy of the table (set to ``initializer``'s row
    when one is given, else kept); any other word is a new placeholder of
    ``num_vectors`` tokens, as textual inversion adds them (:func:`extended_clip`)."""
    inner, _ = base_tokenizer(clip.tokenizer)
    own = inner.encode(token, add_special_tokens=False) if token.strip() else []
    if vocabulary_word(clip.tokenizer, token) and num_vectors == 1:
        init_id = None
        if initializer.strip():
            ids = inner.encode(initializer, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"the initializer must be a single token; {initializer!r} "
                                 f"is {len(ids)}")
            init_id = ids[0]
        trained = retrained_clip(clip, own, init_id)
        return trained, own
    problems = token_problems(clip.tokenizer, token, initializer or "shape", num_vectors)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    tokens = placeholder_tokens(token, num_vectors)
    init_id = inner.encode(initializer or "shape", add_special_tokens=False)[0]
    trained = extended_clip(clip, tokens, init_id)
    return trained, trained.tokenizer.convert_tokens_to_ids(tokens)


@dataclass
class InversionTraining:
    """One run's state; :meth:`step` is one optimiser step."""

    model: DiffusionModel
    clip: TextEncoder  # the extended handle being trained
    token_ids: list[int]
    posterior: tc.Posterior
    ids: torch.Tensor
    scheduler: Any
    optimizer: Any
    original: torch.Tensor  # the embedding table before training
    generator: torch.Generator
    lr_scheduler: Any = None

    def step(self, index: torch.Tensor, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None, latents: torch.Tensor | None = None
             ) -> float:
        context = self.clip.text_encoder(self.ids[index])[0]
        loss = tc.batch_loss(self.model.unet, self.scheduler, self.posterior, self.generator,
                             index, context, noise, timesteps, latents)
        loss.backward()
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad()
        restore_other_rows(self.clip.text_encoder.get_input_embeddings().weight,
                           self.original, self.token_ids)
        return float(loss.detach())

    def vectors(self) -> torch.Tensor:
        """The learned vectors ``[num_vectors, dim]``."""
        weight = self.clip.text_encoder.get_input_embeddings().weight
        return weight[self.token_ids].detach().clone()


@contextmanager
def inversion_training(model: DiffusionModel, clip: TextEncoder, vae: Vae,
                       images: torch.Tensor, captions: list[str], placeholder: str,
                       initializer: str, num_vectors: int, settings: tc.TrainSettings,
                       loss_mask: tc.LossMask | None = None) -> Iterator[InversionTraining]:
    """Set up a run (captions must contain ``placeholder``; it stands for all the vectors);
    ``loss_mask`` weights the loss per pixel (a masked loss)."""
    import torch

    from nodes.diffusion.lora import patched

    problems = token_problems(clip.tokenizer, placeholder, initializer, num_vectors)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    missing = [i + 1 for i, c in enumerate(captions) if placeholder not in c]
    if missing:
        raise ValueError(f"caption(s) {missing[:5]} do not contain the placeholder "
                         f"{placeholder!r}: write it where the concept goes, e.g. "
                         f"'a photo of {placeholder}'")
    tokens = placeholder_tokens(placeholder, num_vectors)
    init_id = clip.tokenizer.encode(initializer, add_special_tokens=False)[0]
    trained = extended_clip(clip, tokens, init_id)
    token_ids = trained.tokenizer.convert_tokens_to_ids(tokens)
    expanded = trained.tokenizer.expand(captions)  # <p> → <p> <p>_1 ..., as the script
    ids = tc.tokenize(trained.tokenizer, expanded, "cpu")
    cut = [i + 1 for i, row in enumerate(ids.tolist()) if not set(token_ids) <= set(row)]
    if cut:  # truncated away: those captions would train nothing (and say nothing)
        raise ValueError(f"caption(s) {cut[:5]} put the placeholder {placeholder!r} past the "
                         f"{trained.tokenizer.model_max_length - 2} tokens the text encoder "
                         "reads, where it is cut off: put it near the start, or shorten "
                         "the caption")
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    tc.check_resolution(model.unet, vae, settings.resolution)
    pixels = tc.prepare_pixels(images, settings.resolution)
    posterior = tc.encode_posterior(vae.scaled_for(model.latent_scale), pixels)
    if loss_mask is not None:
        posterior = loss_mask.applied(posterior, images, settings.resolution)
    encoder = trained.text_encoder
    table = encoder.get_input_embeddings().weight
    optimizer = tc.make_optimizer([table], settings.learning_rate)
    with ExitStack() as stack:
        # The shared weights are frozen; the new table alone is trained (and left without
        # gradient after, whatever happens).
        stack.callback(table.requires_grad_, False)
        stack.enter_context(tc.frozen(model.unet, encoder, vae.vae))
        stack.enter_context(patched(model.unet, model.patches))
        stack.enter_context(patched(encoder, clip.patches))
        table.requires_grad_(True)
        stack.enter_context(tc.unet_checkpointing(model.unet, settings.gradient_checkpointing))
        yield InversionTraining(
            model=model, clip=trained, token_ids=token_ids,
            posterior=posterior,
            ids=ids.to(encoder.device),
            scheduler=tc.noise_scheduler(model.scheduler_config),
            optimizer=optimizer, original=table.detach().clone(), generator=generator,
            lr_scheduler=tc.make_lr_scheduler(optimizer, settings))


def train_textual_inversion(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder,
                            vae: Vae, images: torch.Tensor, captions: list[str],
                            placeholder: str, initializer: str, num_vectors: int,
                            settings: tc.TrainSettings, checkpoint: Path | None = None, *,
                            sample: TrainingSample | None = None,
                            loss_mask: tc.LossMask | None = None
                            ) -> tuple[TextEncoder, torch.Tensor, list[float]]:
    """Train (resuming from ``checkpoint`` when an interrupted run left one); the new CLIP
    handle, the learned vectors and the loss per step. With ``sample``, an image is drawn
    with the vectors as they are every ``sample.every`` steps (``train_preview``)."""
    import torch

    with inversion_training(model, clip, vae, images, captions, placeholder, initializer,
                            num_vectors, settings, loss_mask) as run:
        order = tc.BatchOrder(images.shape[0], settings.batch_size, run.generator)
        table = run.clip.text_encoder.get_input_embeddings().weight

        def state() -> dict[str, Any]:
            return {"rows": table.detach()[run.token_ids].clone(),
                    "optimizer": run.optimizer.state_dict(),
                    "lr_scheduler": run.lr_scheduler.state_dict(),
                    "generator": run.generator.get_state(), "pending": list(order.pending)}

        def restore(saved: dict[str, Any]) -> None:
            with torch.no_grad():
                table[run.token_ids] = saved["rows"].to(table.dtype)
            run.optimizer.load_state_dict(saved["optimizer"])
            run.lr_scheduler.load_state_dict(saved["lr_scheduler"])
            run.generator.set_state(saved["generator"])
            order.pending = list(saved["pending"])

        saving = (tc.Checkpointing(checkpoint, state, restore, rewind=order.streams)
                  if checkpoint else None)
        losses = tc.optimise(ctx, settings, lambda: run.step(order.next()), saving, sample,
                             (run.model, run.clip, vae))
        return run.clip, run.vectors(), losses
