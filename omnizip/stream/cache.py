"""A stream's KV cache: kept tokens prefilled at their offline positions, crop, rebuild.

The decoder (``thinker.model.language_model``) is called directly with the kept tokens'
embeddings and their M-RoPE position ids (``[3, 1, n]``), appending to one transformers
``DynamicCache``; no mask is needed (one row, no padding: causal attention over the cache).
Qwen3-Omni's DeepStack features of the kept video tokens ride along (``visual_pos_masks``,
``deepstack_visual_embeds``), as the patched model prunes them.

The cache's full-attention layers are growing layers (:func:`_growing_layer_class`): a plain ``DynamicLayer``
concatenates its whole history with every new token (each window, each generated token of
every answer: quadratic in a long stream), a growing layer writes the new tokens into a buffer
of doubling capacity and hands out views of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CachePiece", "StreamCache"]


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in buffers grown by doubling, so an
        update copies only the new tokens; ``keys``/``values`` are views ``[B, H, n, Dh]`` of
        the buffers (``crop`` shortens the views, the next update writes over the rest)."""

        _layer_type = None  # not registered as the default layer of any attention type

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._buffers = None
            n = self.get_seq_length()
            need = n + int(key_states.shape[-2])
            buffers = self._buffers
            if (buffers is None or need > buffers[0].shape[-2] or (n and (
                    self.keys.data_ptr() != buffers[0].data_ptr()
                    or self.keys.shape[:-2] != key_states.shape[:-2]))):
                capacity = max(need, 2 * n, 64)
                buffers = tuple(
                    new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
                    for new in (key_states, value_states))
                if n:  # the history, once per doubling (or after a reorder replaced it)
                    buffers[0][..., :n, :] = self.keys
                    buffers[1][..., :n, :] = self.values
                self._buffers = buffers
            buffers[0][..., n:need, :] = key_states
            buffers[1][..., n:need, :] = value_states
            self.keys, self.values = buffers[0][..., :need, :], buffers[1][..., :need, :]
            return self.keys, self.values

    return GrowingLayer


_LAYER_CLASS: list[type] = []


def _layer_class() -> type:
    """The growing layer class, defined on first use (importing this module imports no
    transformers)."""
    if not _LAYER_CLASS:
        _LAYER_CLASS.append(_growing_layer_class())
    return _LAYER_CLASS[0]


@dataclass
class CachePiece:
    """Tokens to prefill: ``embeds`` ``[n, D]``, ``positions`` ``[3, n]``, and for DeepStack
    families ``visual`` bool ``[n]`` (the video tokens) with ``deepstack`` per layer
    ``[n_video, D]`` (None elsewhere)."""

    embeds: torch.Tensor
    positions: torch.Tensor
    visual: torch.Tensor | None = None
    deepstack: list[torch.Tensor] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])


class StreamCache:
    """One growing ``DynamicCache`` over the decoder of a thinker."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.cache = self._new_cache()

    def _new_cache(self) -> Any:
        """A ``DynamicCache`` for the decoder, its full-attention layers growing in place."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.decoder.config)
        growing = _layer_class()
        cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]
        return cache

    @property
    def tokens(self) -> int:
        """Tokens in the cache."""
        return int(self.cache.get_seq_length())

    def prefill(self, piece: CachePiece) -> Any:
        """Run the decoder on ``piece`` on top of the cache (appending to it); returns the
        decoder output (``last_hidden_state`` ``[1, n, D]``)."""
        if piece.n_tokens == 0:
            return None
        kwargs: dict[str, Any] = {}
        if piece.deepstack is not None and piece.visual is not None and bool(piece.visual.any()):
            kwargs["visual_pos_masks"] = piece.visual[None].to(piece.embeds.device)
            kwargs["deepstack_visual_embeds"] = piece.deepstack
        with torch.no_grad():
            return self.decoder(
                inputs_embeds=piece.embeds[None],
                position_ids=piece.positions[:, None, :].to(piece.embeds.device),
                cache=self.cache,
                use_cache=True,
                **kwargs,
            )

    def crop(self, tokens: int) -> None:
        """Keep the first ``tokens`` tokens (drop what a question and its answer added)."""
        extra = self.tokens - tokens
        if extra < 0:
            raise ValueError(f"cache: cannot crop {self.tokens} tokens to {tokens}")
        if extra:
            self.cache.crop(-extra)

    def rebuild(self, pieces: list[CachePiece]) -> None:
        """A new cache holding ``pieces`` (prefilled in one decoder call, as a fresh offline
        prefill of the same tokens would be)."""
        self.cache = self._new_cache()
        if not pieces:
            return
        visual = None
        deepstack = None
        if any(p.deepstack is not None for p in pieces):
            visual = torch.cat([p.visual if p.visual is not None else
                                torch.zeros(p.n_tokens, dtype=torch.bool) for p in pieces])
            layers = max(len(p.deepstack) for p in pieces if p.deepstack is not None)
            deepstack = [torch.cat([p.deepstack[i] for p in pieces if p.deepstack is not None])
                         for i in range(layers)]
        self.prefill(CachePiece(
            embeds=torch.cat([p.embeds for p in pieces]),
            positions=torch.cat([p.positions for p in pieces], dim=1),
            visual=visual,
            deepstack=deepstack,
        ))
