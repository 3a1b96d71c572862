"""Audio token scores from the model's own last audio-encoder layer, inside vLLM.

The same scoring as the Hugging Face patch (docs/algorithm.md, audio scores): a forward
pre-hook on the last encoder layer's attention recomputes q/k from its (LayerNorm-ed) input
and scores every frame (:func:`omnizip.core.audio_attention_scores`), pooled to LLM tokens
(:func:`omnizip.core.pool_audio_scores`). The hook only acts inside :meth:`AudioScorer.scoring`,
i.e. while the OmniZip model encodes one audio stream. vLLM runs transformers' own audio encoder
module for Qwen2.5-Omni, so the hooked module and its inputs are the ones the patch sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..config import OmniZipConfig
from ..core import audio_attention_scores, audio_energy_scores, pool_audio_scores

__all__ = ["AudioScorer"]


class AudioScorer:
    """Scores the audio of one encoder call at a time.

    Args:
        attention: the last audio-encoder layer's attention: transformers' (``q_proj``,
            ``k_proj``, ``num_heads``, ``scaling``; Qwen2.5-Omni) or vLLM's (``qkv_proj``,
            ``num_local_heads``, ``head_dim``, ``scaling``; Qwen3-Omni); a forward pre-hook is
            registered on it.
        config: the server's OmniZip configuration (``audio_score``, ``block_elements``).
        pool: encoder frames per LLM audio token (2 for Qwen2.5-Omni, 1 for Qwen3-Omni).
    """

    def __init__(self, attention: torch.nn.Module, config: OmniZipConfig, pool: int) -> None:
        needed = ("qkv_proj", "num_local_heads", "num_heads", "scaling") if hasattr(
            attention, "qkv_proj"
        ) else ("q_proj", "k_proj", "num_heads", "scaling")
        for attr in needed:
            if not hasattr(attention, attr):
                raise ValueError(f"omnizip: the last audio attention layer has no `{attr}`")
        self.attention = attention
        self.config = config
        self.pool = pool
        self._streams: torch.Tensor | None = None
        self._scores: list[torch.Tensor] = []
        attention.register_forward_pre_hook(self._on_attention, with_kwargs=True)

    @property
    def from_encoder(self) -> bool:
        """Whether the encoder's attention is scored (else ``energy`` or no scores needed)."""
        return self.config.needs_audio_scores and self.config.audio_score != "energy"

    @contextmanager
    def scoring(self, stream_frames: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """Score the encoder call made inside; yields the list the pooled scores land in.

        Args:
            stream_frames: int64 ``[S]`` frames per audio stream in the encoder layers.
        """
        self._streams = stream_frames.detach().to("cpu", torch.int64)
        self._scores = []
        try:
            yield self._scores
        finally:
            self._streams = None

    def token_scores(self, captured: list[torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
        """float ``[N_a]`` scores of the audio tokens ``embeds`` ``[N_a, D]`` of one call."""
        if self.from_encoder:
            scores = torch.cat(captured) if captured else None
            if scores is None or scores.numel() != embeds.shape[0]:
                got = 0 if scores is None else scores.numel()
                raise RuntimeError(
                    f"omnizip: the audio encoder gave {got} scores for {embeds.shape[0]} tokens"
                )
            return scores.to(embeds.device)
        return audio_energy_scores(embeds)

    def _on_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        streams = self._streams
        if streams is None or not self.from_encoder:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        if hidden is None or hidden.dim() != 2:
            return None
        frames = hidden.shape[0]
        if int(streams.sum()) != frames:
            raise RuntimeError(
                f"omnizip: the last audio layer sees {frames} frames, the streams hold "
                f"{int(streams.sum())}"
            )
        with torch.no_grad():
            query, key, sharded = self._query_key(module, hidden)
            frame_scores = audio_attention_scores(
                query,
                key,
                scope=self.config.audio_score,
                stream_lengths=streams,
                cu_seqlens=cu_seqlens if self.config.audio_score == "windowed" else None,
                scale=float(module.scaling),
                block_elements=self.config.block_elements,
            )
            if sharded:
                # tensor parallelism split the heads: the attention received sums over all heads,
                # so add the ranks' partial sums (an all-reduce gives every rank the same result)
                from vllm.distributed import tensor_model_parallel_all_reduce

                frame_scores = tensor_model_parallel_all_reduce(frame_scores)
            self._scores.append(pool_audio_scores(frame_scores, streams, pool=self.pool))
        return None

    @staticmethod
    def _query_key(module: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(query, key) ``[T, H_local, Dh]`` of the layer's input, and whether the heads are
        split over tensor-parallel ranks."""
        frames = hidden.shape[0]
        if hasattr(module, "qkv_proj"):  # vLLM's packed projection (possibly head-sharded)
            qkv = module.qkv_proj(hidden)
            qkv = qkv[0] if isinstance(qkv, tuple) else qkv
            query, key, _ = qkv.chunk(3, dim=-1)
            heads = int(module.num_local_heads)
            sharded = heads != int(module.num_heads)
            return query.reshape(frames, heads, -1), key.reshape(frames, heads, -1), sharded
        heads = int(module.num_heads)
        query = module.q_proj(hidden).reshape(frames, heads, -1)
        key = module.k_proj(hidden).reshape(frames, heads, -1)
        return query, key, False
