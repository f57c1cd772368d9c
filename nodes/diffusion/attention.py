"""The sampler's one attention store: hooks on chosen attention layers, for one run.

Techniques that read or steer attention (SAG, PAG, Attend-and-Excite,
Pix2Pix-Zero, FABRIC, ...) never patch the UNet themselves. A sampler extension
returns :class:`AttentionHook` objects from ``attention_hooks(run)``; the sampler
installs a :class:`HookedAttnProcessor` on every layer some hook selects (the
others keep their processors, e.g. SDPA) and restores the UNet's processors
when the run ends, also on error or interrupt.

A hooked layer computes attention as diffusers' classic ``AttnProcessor`` does
(explicit scores, softmax, ``bmm``: the math the technique pipelines use), with
five places a hook may act:

- ``on_kv_inputs``: change what the key and value projections read (the text
  context in cross-attention, the image tokens in self-attention), e.g. a
  hypernetwork's MLPs;
- ``on_kv``: change the keys and values (attention inputs), e.g. append key/value
  tokens of other images (FABRIC's feedback);
- ``on_probs``: read the attention maps or return edited ones;
- ``on_output``: change the attended values before the output projection
  (e.g. PAG's identity attention for one batch role);
- ``on_projected``: change the layer's output after the projection (NAG).

When an ``on_kv`` hook appends key tokens, the layer's own tokens stay first and
``AttentionCall.key_tokens`` counts them: :class:`AttentionRecorder` records the
maps over those own keys only (so a reader's maps keep their spatial shape), and
``on_output`` gets the layer's own values (what identity attention returns).

The UNet batch is ``[role_0, role_1, ...]`` chunks of equal size (the sampler's
``[uncond, cond, extra...]``, or what an extension's own pass declares with
:meth:`AttentionStore.roles_for`); :class:`AttentionCall` maps roles to rows.
:class:`AttentionRecorder` is the common reader: head-averaged maps by layer,
resolution and role, optionally keeping the autograd graph.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of the UNet: its processor name, place and kind."""

    name: str  # the key of ``unet.attn_processors``
    place: str  # "down" | "mid" | "up"
    cross: bool  # a transformer block's text attention (attn2), not its attn1
    #: its keys are the text: attn2, and attn1 too in ``only_cross_attention`` blocks
    #: (the SD x4 upscaler's), which diffusers' Attend-and-Excite records as cross
    text: bool = False

    @classmethod
    def parse(cls, name: str, text: bool | None = None) -> AttentionLayer:
        place = name.split("_", 1)[0]
        cross = name.endswith("attn2.processor")
        return cls(name, place if place in ("down", "mid", "up") else "other", cross,
                   cross if text is None else text)


@dataclass
class AttentionCall:
    """What a hook sees of one attention call."""

    layer: AttentionLayer
    run: Any
    roles: tuple[str, ...]
    heads: int
    query_tokens: int
    #: the spatial size of the image tokens (height, width) when known
    size: tuple[int, int] | None = None
    #: the layer's own key tokens, first in ``key``; ``on_kv`` hooks may append more
    #: (0: unknown, all of them)
    key_tokens: int = 0
    #: the queries ``[images × heads, tokens, head_dim]`` and the diffusers ``Attention``
    #: module (for hooks that attend to tokens of their own, as IP-Adapter)
    query: torch.Tensor | None = None
    module: Any = None

    @property
    def batch(self) -> int:
        """Rows of the attention batch (images × heads)."""
        return self._rows

    def rows(self, role: str) -> slice:
        """Rows of ``[images × heads, ...]`` tensors that belong to ``role``."""
        per_role = self._rows // len(self.roles)
        index = self.roles.index(role)
        return slice(index * per_role, (index + 1) * per_role)

    _rows: int = 0


class AttentionHook:
    """Base class: select layers, then override the places the technique acts on."""

    #: a hook that only rearranges a self-attention layer's tokens (:meth:`on_tokens`:
    #: HyperTile); such a layer keeps its own fast processor
    layout_only = False

    def selects(self, layer: AttentionLayer) -> bool:
        return False

    def on_tokens(self, call: AttentionCall, hidden_states: torch.Tensor
                  ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        """For ``layout_only`` hooks: the self-attention layer's input ``[images, tokens,
        dim]`` rearranged (e.g. into tiles along the batch), and the function that puts
        the layer's output back (None: unchanged). The layer's processor then runs on
        the rearranged tokens, so queries, keys and values all follow the layout. Only
        where every hook of the layer is layout-only: a layer another technique reads or
        steers keeps its tokens as they are."""
        return hidden_states, None

    def on_kv_inputs(self, call: AttentionCall, key_input: torch.Tensor,
                     value_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[images, tokens, dim]`` inputs of ``to_k`` and ``to_v`` (the same tensor unless
        a hook before changed one); return them, changed or not, with the same shapes."""
        return key_input, value_input

    def on_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        return key, value

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def on_output(self, call: AttentionCall, attended: torch.Tensor, value: torch.Tensor
                  ) -> torch.Tensor:
        """``attended`` is ``probs @ value`` in ``[images × heads, tokens, head_dim]``;
        ``value`` holds the layer's own value tokens (none an ``on_kv`` hook appended)."""
        return attended

    def on_projected(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        """The layer's output after its output projection, ``[images, tokens, dim]``,
        before any residual (what ComfyUI's ``attn1_output_patch`` / ``attn2_output_patch``
        see); return it, changed or not."""
        return output


class SelfAttentionLayout(AttentionHook):
    """Base of the layout-only hooks on self-attention (HyperTile, Token Merging)."""

    layout_only = True

    def selects(self, layer: AttentionLayer) -> bool:
        return not layer.cross

    @staticmethod
    def level(call: AttentionCall) -> int | None:
        """The UNet resolution level of this call's layer (0: the latent's own), or None
        when its grid is unknown (another hook rearranged it, or an unlearnt size)."""
        return call.run.attention.depth(call.query_tokens) if call.size else None


@dataclass
class AttentionStore:
    """Per-run state of the hooked layers: the batch roles of the current UNet pass."""

    roles: tuple[str, ...] = ("cond",)
    #: spatial sizes by query-token count, learnt from the UNet's latent shape
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)

    @contextlib.contextmanager
    def roles_for(self, roles: Sequence[str]) -> Iterator[None]:
        """Declare the batch roles of an extension's own UNet pass."""
        before, self.roles = self.roles, tuple(roles)
        try:
            yield
        finally:
            self.roles = before

    def learn_sizes(self, height: int, width: int, levels: int = 4) -> None:
        """Token counts → (h, w) at each UNet resolution (halving, rounding up)."""
        for h, w in level_sizes(height, width, levels):
            self.sizes.setdefault(h * w, (h, w))

    def depth(self, tokens: int) -> int | None:
        """The UNet resolution level of a ``tokens``-token layer (0: the latent's own),
        or None when the count is not a learnt size."""
        for level, count in enumerate(self.sizes):
            if count == tokens:
                return level
        return None


def level_sizes(height: int, width: int, levels: int = 4) -> list[tuple[int, int]]:
    """The (h, w) of a UNet pass's token grids over a ``height`` x ``width`` latent, from the
    latent's own down ``levels`` halvings (rounding up)."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


class HookedAttnProcessor:
    """diffusers' ``AttnProcessor`` math with the hooks of one layer."""

    def __init__(self, layer: AttentionLayer, hooks: Sequence[AttentionHook],
                 store: AttentionStore, run: Any, original: Any = None):
        self.layer = layer
        self.store = store
        self.run = run
        self.original = original
        # layout-only hooks act where they are alone (see AttentionHook.on_tokens)
        layout = all(h.layout_only for h in hooks) and original is not None
        self.layout_hooks = tuple(hooks) if layout else ()
        self.hooks = () if layout else tuple(h for h in hooks if not h.layout_only)

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if self.layout_hooks:
            return self._rearranged(attn, hidden_states, encoder_hidden_states,
                                    attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        tokens = query.shape[1]
        call = AttentionCall(self.layer, self.run, self.store.roles, attn.heads, tokens,
                             self.store.sizes.get(tokens), encoder_hidden_states.shape[1],
                             query=query, module=attn, _rows=query.shape[0])
        key_input = value_input = encoder_hidden_states
        for hook in self.hooks:
            key_input, value_input = hook.on_kv_inputs(call, key_input, value_input)
        key = attn.head_to_batch_dim(attn.to_k(key_input))
        value = attn.head_to_batch_dim(attn.to_v(value_input))
        for hook in self.hooks:
            key, value = hook.on_kv(call, key, value)
        own_value = value[:, :call.key_tokens] if value.shape[1] > call.key_tokens else value
        probs = attn.get_attention_scores(query, key, attention_mask)
        for hook in self.hooks:
            probs = hook.on_probs(call, probs)
        hidden_states = torch.bmm(probs, value)
        for hook in self.hooks:
            hidden_states = hook.on_output(call, hidden_states, own_value)
        hidden_states = attn.batch_to_head_dim(hidden_states)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        for hook in self.hooks:
            hidden_states = hook.on_projected(call, hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _rearranged(self, attn: Any, hidden_states: torch.Tensor,
                    encoder_hidden_states: torch.Tensor | None,
                    attention_mask: torch.Tensor | None, temb: torch.Tensor | None,
                    *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer's own processor on the tokens the layout hooks rearranged."""
        plain = (encoder_hidden_states is not None or attention_mask is not None
                 or hidden_states.ndim != 3 or attn.group_norm is not None
                 or attn.spatial_norm is not None)
        restores = []
        if not plain:
            tokens = hidden_states.shape[1]
            call = AttentionCall(self.layer, self.run, self.store.roles, attn.heads, tokens,
                                 self.store.sizes.get(tokens), tokens,
                                 _rows=hidden_states.shape[0] * attn.heads)
            for hook in self.layout_hooks:
                hidden_states, restore = hook.on_tokens(call, hidden_states)
                if restore is not None:
                    restores.append(restore)
                    call.size = None  # rearranged: later hooks no longer know the grid
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                            *args, **kwargs)
        for restore in reversed(restores):
            out = restore(out)
        return out


@dataclass(eq=False)  # hashed by identity: its per-run record is keyed by the recorder
class AttentionRecorder(AttentionHook):
    """Records head-averaged attention maps ``[images, query_tokens, key_tokens]``.

    Chooses layers by ``places`` and kind (``cross``); keeps maps of query-token
    count ``tokens`` only (None: all) and of the given ``roles`` only (None: all).
    With ``keep_grad`` the maps stay on the autograd graph (Attend-and-Excite,
    Pix2Pix-Zero), else they are detached. Maps of the latest pass replace older
    ones; :meth:`maps` reads them from ``run.state``. Where an ``on_kv`` hook appended
    key tokens (FABRIC), the maps cover the layer's own keys only.
    """

    places: tuple[str, ...] = ("down", "mid", "up")
    cross: bool = True
    tokens: int | None = None
    roles: tuple[str, ...] | None = None
    keep_grad: bool = False
    #: choose by what the keys are (``AttentionLayer.text``) rather than by the
    #: layer's place in its block (attn1/attn2)
    by_keys: bool = False

    def selects(self, layer: AttentionLayer) -> bool:
        kind = layer.text if self.by_keys else layer.cross
        return layer.place in self.places and kind == self.cross

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        if self.tokens is not None and call.query_tokens != self.tokens:
            return probs
        record = self._record(call.run)
        maps = probs if self.keep_grad else probs.detach()
        if call.key_tokens and maps.shape[-1] > call.key_tokens:
            maps = maps[..., :call.key_tokens]  # appended tokens are not this layer's
        for role in call.roles:
            if self.roles is not None and role not in self.roles:
                continue
            part = maps[call.rows(role)]
            images = part.shape[0] // call.heads
            head_mean = part.reshape(images, call.heads, *part.shape[1:]).mean(1)
            record[(call.layer.name, role)] = (call.layer, head_mean, call.heads)
        return probs

    def _record(self, run: Any
                ) -> dict[tuple[str, str], tuple[AttentionLayer, torch.Tensor, int]]:
        return run.state.setdefault(self, {})

    def maps(self, run: Any, role: str) -> list[tuple[AttentionLayer, torch.Tensor, int]]:
        """(layer, head-averaged map, number of heads) of ``role``, in layer order."""
        return [entry for (_, r), entry in self._record(run).items() if r == role]

    def clear(self, run: Any) -> None:
        self._record(run).clear()

    def average(self, run: Any, role: str) -> torch.Tensor:
        """The maps of ``role`` averaged over layers and heads, each head weighing the
        same (diffusers' ``aggregate_attention``): ``[images, query, key]``."""
        entries = self.maps(run, role)
        if not entries:
            raise ValueError("no attention was recorded for role " + repr(role))
        total = sum(m * heads for _, m, heads in entries)
        return total / sum(heads for _, _, heads in entries)


def install(unet: Any, hooks: Sequence[AttentionHook], run: Any,
            store: AttentionStore) -> dict[str, Any] | None:
    """Put a hooked processor on each layer some hook selects; returns the processors to
    restore (None when no layer is selected). The caller restores them in a ``finally``."""
    if not hooks:
        return None
    saved = dict(unet.attn_processors)
    chosen: dict[str, Any] = {}
    for name in saved:
        layer = AttentionLayer.parse(name, _receives_text(unet, name))
        mine = [h for h in hooks if h.selects(layer)]
        if mine:
            chosen[name] = HookedAttnProcessor(layer, mine, store, run, saved[name])
    if not chosen:
        return None
    unet.set_attn_processor({**saved, **chosen})
    return saved


def _receives_text(unet: Any, processor_name: str) -> bool | None:
    """Whether the layer's keys are the text (diffusers' ``is_cross_attention``)."""
    try:
        module = unet.get_submodule(processor_name.removesuffix(".processor"))
    except AttributeError:
        return None
    text = getattr(module, "is_cross_attention", None)
    return text if isinstance(text, bool) else None
