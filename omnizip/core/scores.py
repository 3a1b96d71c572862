"""Audio token importance (SPEC section 3), blockwise: no ``[H, T, T]`` tensor is formed.

The reference scores a frame by the attention it receives in the audio encoder's last layer:
``A_h = softmax(Q_h K_h^T * scale)`` over all frames of its stream, summed over heads and
queries. The encoder then average-pools frame pairs into LLM tokens (Qwen2.5-Omni), so a
token's score is the mean of its two frames' scores.
"""

from __future__ import annotations

import torch

from .layout import exclusive_cumsum, segment_ids
from .select import block_rows
from .similarity import padded_segments

SCORE_SCOPES = ("global", "windowed")


def _lengths(name: str, values, total: int) -> torch.Tensor:
    if values is None:
        return torch.tensor([total], dtype=torch.int64)
    if isinstance(values, torch.Tensor):
        if values.is_floating_point():
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        lengths = values.detach().to("cpu", torch.int64).flatten()
    else:
        lengths = torch.as_tensor(list(values), dtype=torch.int64)
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got {lengths.tolist()}")
    if int(lengths.sum()) != total:
        raise ValueError(f"{name} must sum to the {total} frames, got {lengths.tolist()}")
    return lengths


def audio_attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scope: str = "global",
    stream_lengths=None,
    cu_seqlens=None,
    scale: float | None = None,
    block_elements: int = 1 << 24,
) -> torch.Tensor:
    """Attention received by each audio frame in one encoder layer (SPEC 3).

    Args:
        query, key: ``[T, H, Dh]`` the layer's recomputed query and key projections (after
            its pre-attention LayerNorm), all streams concatenated.
        scope: ``"global"`` (reference): each softmax runs over all frames of the query's
            stream; ``"windowed"``: over the encoder's own attention window (``cu_seqlens``).
        stream_lengths: frames per audio stream (default: one stream of ``T`` frames).
        cu_seqlens: int ``[n_windows + 1]`` window boundaries, required for ``"windowed"``.
        scale: softmax scale, default ``Dh ** -0.5``.
        block_elements: cap on the elements of one ``[segments, H, queries, keys]`` block.

    Returns:
        float32 ``[T]``, the sum over heads and queries of the attention each frame gets.
    """
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [T, H, Dh], got {got}")
    if query.shape != key.shape:
        raise ValueError(
            f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if scope not in SCORE_SCOPES:
        raise ValueError(f"scope must be one of {SCORE_SCOPES}, got {scope!r}")
    n_frames, heads, head_dim = query.shape
    if scope == "global":
        lengths = _lengths("stream_lengths", stream_lengths, n_frames)
    else:
        if cu_seqlens is None:
            raise ValueError('scope="windowed" needs cu_seqlens, the encoder\'s window boundaries')
        bounds = torch.as_tensor(cu_seqlens).detach().to("cpu", torch.int64).flatten()
        if bounds.numel() < 2 or int(bounds[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0 and hold >= 2 entries, got {bounds.tolist()}")
        lengths = _lengths("cu_seqlens differences", torch.diff(bounds), n_frames)
    scale = head_dim**-0.5 if scale is None else float(scale)
    device = query.device
    scores = torch.zeros(n_frames + 1, dtype=torch.float32, device=device)  # +1: padding sink
    lengths = lengths[lengths > 0]
    if lengths.numel() == 0:
        return scores[:n_frames]
    starts = exclusive_cumsum(lengths)
    width = int(lengths.max())
    index, valid = padded_segments(starts, lengths, width)
    sink = torch.where(valid, index, n_frames).to(device)
    index, valid = index.to(device), valid.to(device)
    n_segments = index.shape[0]
    # Blocks of segments x blocks of queries, each [s, H, q, width] at most block_elements.
    segs = block_rows(n_segments, heads * width * width, block_elements)
    queries = block_rows(width, segs * heads * width, block_elements)
    for s0 in range(0, n_segments, segs):
        seg_index, seg_valid = index[s0 : s0 + segs], valid[s0 : s0 + segs]
        keys = key[seg_index].float().permute(0, 2, 3, 1)  # [s, H, Dh, width]
        received = torch.zeros(seg_index.shape, dtype=torch.float32, device=device)
        key_mask = ~seg_valid[:, None, None, :]
        for q0 in range(0, width, queries):
            q = query[seg_index[:, q0 : q0 + queries]].float().permute(0, 2, 1, 3)  # [s,H,q,Dh]
            logits = torch.matmul(q, keys) * scale
            attn = torch.softmax(logits.masked_fill(key_mask, float("-inf")), dim=-1)
            attn = attn * seg_valid[:, None, q0 : q0 + queries, None]  # padded queries give 0
            received += attn.sum(dim=(1, 2))
        scores.scatter_add_(0, sink[s0 : s0 + segs].flatten(), received.flatten())
    return scores[:n_frames]


def pool_audio_scores(
    frame_scores: torch.Tensor, stream_lengths=None, pool: int = 2
) -> torch.Tensor:
    """Map frame scores to LLM audio tokens: the mean of each ``pool`` consecutive frames
    within each stream, a stream's incomplete last group dropped (as the encoder's pooling
    drops it). ``pool=1`` (Qwen3-Omni) returns the scores unchanged.

    Args:
        frame_scores: float ``[T]``; stream_lengths: frames per stream (default one stream).
    Returns:
        float32 ``[sum_s T_s // pool]``.
    """
    if not isinstance(frame_scores, torch.Tensor) or frame_scores.dim() != 1:
        raise ValueError("frame_scores must be a 1-D tensor [T]")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive int, got {pool!r}")
    lengths = _lengths("stream_lengths", stream_lengths, frame_scores.numel())
    tokens = lengths // pool
    stream, local = segment_ids(tokens)
    first = exclusive_cumsum(lengths)[stream] + local * pool
    index = (first[:, None] + torch.arange(pool)[None, :]).to(frame_scores.device)
    return frame_scores.float()[index].mean(dim=1)


def audio_energy_scores(audio_embeds: torch.Tensor) -> torch.Tensor:
    """SPEC 3 ``energy`` variant: the L2 norm of each audio token's embedding.

    Args:
        audio_embeds: ``[N_a, D]``. Returns float32 ``[N_a]``.
    """
    if not isinstance(audio_embeds, torch.Tensor) or audio_embeds.dim() != 2:
        raise ValueError("audio_embeds must be a tensor [N_a, D]")
    return torch.linalg.vector_norm(audio_embeds.float(), dim=-1)
