"""A stream's KV cache: kept tokens prefilled at their offline positions, crop, rebuild.

The decoder (``thinker.model.language_model``) is called directly with the kept tokens'
embeddings and their M-RoPE position ids (``[3, 1, n]``), appending to one transformers
``DynamicCache``; no mask is needed (one row, no padding: causal attention over the cache).
Qwen3-Omni's DeepStack features of the kept video tokens ride along (``visual_pos_masks``,
``deepstack_visual_embeds``), as the patched model prunes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CachePiece", "StreamCache"]


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
        from transformers import DynamicCache

        self.decoder = decoder
        self._factory = lambda: DynamicCache(config=decoder.config)
        self.cache = self._factory()

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
        self.cache = self._factory()
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
