"""Dropping tokens inside the decoder, at one or more layers, for the methods that do (FastV,
SEATS): the machinery their hooks share.

A :class:`PrunedPrefill` follows one prefill through the decoder. A step at layer ``K``
(FastV's counting: layers ``< K`` ran on the tokens before the step) is decided by the
method's hooks as, per batch row, the slots of the current layout that stay; the pre-hook of
layer ``K`` then hands the layer (and, through :meth:`PrunedPrefill.enter_layer`, every later
layer) the kept tokens only:

- hidden states gathered (layer ``K``), rotary embeddings ``(cos, sin)`` and the plain text
  position row gathered, the 4-D causal mask rebuilt for the new length (transformers builds
  these once per forward, before the layers, and hands every layer the same ones);
- the batch re-padded on the side it was padded on (:func:`~omnizip.models.batch.repad_rows`);
- the family's side features of later layers (Qwen3-Omni DeepStack), held back from the
  decoder, added at the kept tokens (:meth:`PrunedPrefill.add_features`);
- the decode bookkeeping (``rope_deltas``, the compressed mask) moved to the new layout.

At the end of the prefill (:meth:`PrunedPrefill.finish`) the cache of every layer is cut to
the tokens of the last step (each layer group through the composition of the later steps'
maps), so decoding sees one cache length, as after a pre-decoder method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..models.batch import Repadded, gather_tokens, renumber_text_row, repad_rows
from ..models.context import LayerFeatures, ModelContext, Prefill
from ..models.decode import prune_cache_layers

__all__ = ["PrunedPrefill", "check_decoder", "compose_index", "last_real_index"]


def last_real_index(padding: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: the last True slot of each row of a bool ``[B, L]`` mask."""
    length = padding.shape[1]
    return (length - 1) - padding.flip(1).to(torch.int8).argmax(1).to(torch.int64)


def compose_index(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer[b, inner[b, j]]`` (-1 where ``inner`` is -1): the slot map of two steps."""
    out = outer.gather(1, inner.clamp(min=0).to(outer.device))
    return out.masked_fill(inner.to(outer.device) < 0, -1)


def check_decoder(ctx: ModelContext, name: str, layers: list[int]) -> None:
    """Refuse steps the decoder cannot take: a layer outside ``1 .. n - 1``, or a decoder
    with sliding-window layers (their cache keeps other lengths)."""
    decoder = ctx.decoder
    n_layers = len(decoder.layers)
    bad = [k for k in layers if not 1 <= k < n_layers]
    if bad:
        raise ValueError(
            f"config: method {name!r} prunes after decoder layer {bad[0]}, but this model's "
            f"decoder has {n_layers} layers; choose a layer between 1 and {n_layers - 1}"
        )
    kinds = set(getattr(decoder.config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ValueError(
            f"config: method {name!r} supports decoders with full attention only; this one "
            f"has layer types {sorted(kinds)}"
        )


class PrunedPrefill:
    """One prefill in flight through a decoder that drops tokens at some layers.

    Attributes:
        prefill: the adapter's view of the prompt entering the decoder.
        index: int64 ``[B, L_c]`` prefill slot of every current slot (-1 pads).
        padding: bool ``[B, L_c]`` current real slots; ``ids``: ``[B, L_c]`` their ids.
        positions: ``[R, B, L_c]`` current position ids.
        steps: ``[(K, Repadded)]`` each step's layout relative to the one before.
        layout: the current layout relative to the prefill (None before the first step).
        seconds: time spent deciding and pruning (the patch's overhead).
    """

    def __init__(self, ctx: ModelContext, prefill: Prefill, first_layer: int) -> None:
        self.ctx = ctx
        self.prefill = prefill
        self.padding = prefill.padding
        bsz, length = self.padding.shape
        slots = torch.arange(length, device=self.padding.device).expand(bsz, -1)
        self.index = slots.masked_fill(~self.padding, -1)
        self.ids = prefill.input_ids
        self.positions = prefill.positions
        self.steps: list[tuple[int, Repadded]] = []
        #: per step, (K, per row the prefill slots layers >= K see)
        self.history: list[tuple[int, list[torch.Tensor]]] = []
        self.layout: Repadded | None = None
        self.inputs: dict[str, Any] | None = None  # mask, rotary, text positions of later layers
        self.pending: dict[int, list[torch.Tensor]] = {}
        self.features: LayerFeatures | None = None
        self.seconds = time.perf_counter() - prefill.started
        update, self.held = ctx.hold_back_features(prefill.kwargs, first_layer)
        self.update = update

    @property
    def length(self) -> int:
        """Current number of slots."""
        return int(self.padding.shape[1])

    def valid(self, row: int) -> torch.Tensor:
        """int64: the current real slots of ``row``."""
        return self.padding[row].nonzero().squeeze(1)

    def decide(self, layer: int, kept: list[torch.Tensor]) -> None:
        """Per row, the current slots (ascending) that layers ``>= layer`` keep."""
        self.pending[layer] = kept

    def enter_layer(
        self, layer: int, args: tuple, kwargs: dict,
        decide: Callable[[torch.Tensor, dict], list[torch.Tensor] | None] | None = None,
    ) -> tuple | None:
        """A hooked layer's pre-hook: apply a step due here (decided earlier, or now by
        ``decide(hidden, kwargs)``), then hand the layer the current inputs."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        if decide is not None and hidden is not None:
            started = time.perf_counter()
            kept = decide(hidden, kwargs)
            self.seconds += time.perf_counter() - started
            if kept is not None:
                self.pending[layer] = kept
        kept = self.pending.pop(layer, None)
        if kept is not None and all(k.numel() == n for k, n in zip(kept, self.padding.sum(1).tolist(), strict=True)):
            kept = None  # nothing dropped: the layers keep the inputs they have
        if kept is not None:
            if hidden is None or hidden.shape[1] != self.length:
                raise RuntimeError(
                    f"omnizip: expected {self.length} tokens entering decoder layer {layer}, got "
                    f"{None if hidden is None else tuple(hidden.shape)}"
                )
            started = time.perf_counter()
            hidden = self._apply(layer, kept, hidden, kwargs)
            self.seconds += time.perf_counter() - started
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hidden}
        if self.inputs is None:
            return (args, kwargs) if kept is not None else None
        return args, {**kwargs, **self.inputs}

    def _apply(self, layer: int, kept: list[torch.Tensor], hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Step at ``layer``: re-pad, gather, rebuild the later layers' inputs."""
        prefill = self.prefill
        step = repad_rows(kept, self.padding, self.positions, prefill.text_row)
        in_prefill = [self.index[b, k.to(self.index.device)] for b, k in enumerate(kept)]
        index = step.index.to(hidden.device)
        hidden = gather_tokens(hidden, index, fill=0, dim=1)
        current = self.inputs if self.inputs is not None else kwargs
        bsz = hidden.shape[0]
        inputs: dict[str, Any] = {}
        rotary = current.get("position_embeddings")
        if rotary is not None:
            inputs["position_embeddings"] = tuple(
                gather_tokens(t.expand(bsz, *t.shape[1:]), index.to(t.device), fill=0, dim=1)
                for t in rotary
            )
        text = current.get("position_ids")
        if isinstance(text, torch.Tensor):
            text = renumber_text_row(text.expand(bsz, -1), self.padding, step.padding)
            inputs["position_ids"] = text
        inputs["attention_mask"] = self._mask(layer, hidden, step.padding, text, kwargs)
        self.inputs = inputs
        self.index = compose_index(self.index, step.index)
        self.ids = gather_tokens(self.ids, step.index.to(self.ids.device), fill=-1, dim=1)
        self.padding, self.positions = step.padding, step.position_ids
        if self.positions.dim() == 2:
            self.positions = self.positions.unsqueeze(0)
        self.steps.append((layer, step))
        self.history.append((layer, in_prefill))
        self.layout = repad_rows(in_prefill, prefill.padding, prefill.positions, prefill.text_row)
        if self.held is not None:
            self.features = self.held.pruned(self.layout)
        # decode bookkeeping, exactly as for the methods that prune before the decoder
        self.ctx.begin_decode(int(prefill.input_ids.shape[1]), self.layout)
        return hidden

    def _mask(self, layer: int, hidden: torch.Tensor, padding: torch.Tensor, text: Any, kwargs: dict) -> Any:
        from transformers.masking_utils import create_causal_mask

        padding = padding.to(hidden.device)
        return create_causal_mask(
            config=self.ctx.decoder.config,
            inputs_embeds=hidden,
            attention_mask=None if bool(padding.all()) else padding.long(),
            cache=kwargs.get("cache", kwargs.get("past_key_values")),
            position_ids=text if isinstance(text, torch.Tensor) else None,
            layer_idx=layer,
        )

    def add_features(self, layer: int, output: Any) -> Any:
        """A layer's post-hook: the held side features of ``layer`` at the kept tokens (before
        the first step, at the tokens of the prefill)."""
        features = self.features
        if features is None and self.held is not None and self.layout is None:
            features = self.held
        return None if features is None else features.add_after(layer, output)

    @property
    def changed(self) -> bool:
        return self.layout is not None and bool((self.layout.n_dropped > 0).any())

    def finish(self, kwargs: dict, output: Any) -> None:
        """Cut every layer group's cache to the last step's tokens (end of the prefill)."""
        started = time.perf_counter()
        if self.changed:
            cache = getattr(output, "cache", None)
            if cache is None:
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and getattr(cache, "layers", None):
                index = None
                for j in range(len(self.steps) - 1, -1, -1):
                    layer, step = self.steps[j]
                    index = step.index if index is None else compose_index(step.index, index)
                    start = self.steps[j - 1][0] if j else 0
                    prune_cache_layers(cache, range(start, layer), index)
        self.seconds += time.perf_counter() - started

    def kept_in_prefill(self) -> list[torch.Tensor]:
        """Per row, the prefill slots the last layers saw (ascending)."""
        return [self.index[b][self.padding[b]] for b in range(self.padding.shape[0])]
