"""``compress_sequence``: the whole OmniZip decision for one sequence (algorithm §2-4, 6, 7)."""

from __future__ import annotations

import torch

from .causal import decide
from .config import OmniZipConfig
from .history import CausalHistory
from .results import CompressionResult, TokenDecision

__all__ = ["CausalHistory", "CompressionResult", "TokenDecision", "compress_sequence"]


def compress_sequence(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame: int | list[int] | tuple[int, ...] | torch.Tensor,
    config: OmniZipConfig | None = None,
    history: CausalHistory | None = None,
) -> CompressionResult:
    """Run OmniZip on one sequence (algorithm §4, with the deviations of algorithm §6).

    Args:
        embeds: ``[L, D]`` float32/float16/bfloat16/float64 decoder input embeddings (not
            modified; may require grad).
        input_ids: integer ``[L]`` token ids, same device.
        audio_scores: float ``[N_a]`` importance of each audio token in order (algorithm §3), or
            None when the sequence has no audio tokens.
        audio_token_id, video_token_id: the placeholder ids of audio and video tokens.
        tokens_per_frame: P, video tokens per frame, as an int or one int per video chunk
            (maximal run of video tokens).
        config: :class:`OmniZipConfig` (default: the paper's 45% setting).
        history: with a causal config (``causal=True``), the ``result.history`` of the call
            that decided the stream's earlier windows; this call's windows continue it
            (algorithm §9). None starts a stream. Refused for other configurations.

    Returns:
        :class:`CompressionResult`. Decisions are computed in float32 (on rows rescaled by a
        power of two when they are too large for float32); anchors are merged in the input's
        precision (float32 for half types) and ``embeds`` come back in the input dtype.
        With autograd on, ``embeds`` is differentiable with the decisions held fixed: kept
        tokens pass gradients through unchanged, a merged anchor to itself and its members
        with the merge weights as constants. Host synchronisations: one copy of the ids (the
        layout), one check that the scores are finite and one that the rows fit float32
        (causal: one more, the per-window salient counts). With ``causal=True``,
        ``result.history`` carries the stream on and ``result.window_counts()`` gives the
        per-window token counts.
    """
    config = OmniZipConfig() if config is None else config
    if not isinstance(config, OmniZipConfig):
        raise TypeError(f"config must be an OmniZipConfig, got {type(config).__name__}")
    return decide(
        embeds, input_ids, audio_scores, audio_token_id=audio_token_id,
        video_token_id=video_token_id, tokens_per_frame=tokens_per_frame, config=config,
        history=history,
    )
