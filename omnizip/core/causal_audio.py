"""The audio side of causal OmniZip (algorithm §9 rules 1-3): salient tokens ranked inside a
window's look-back span, anchors from a running count, merges inside the window.

Windows are processed as padded ``[windows, tokens, span]`` blocks (no Python loop over
windows or tokens); everything sized by the data is host-known from the layout, except the
per-window salient counts, read once (:func:`salient_in_span`'s caller).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import exclusive_cumsum, segment_ids
from .select import block_rows
from .similarity import padded_segments, segment_max_cosine

__all__ = [
    "CausalSplit",
    "counter_uniform",
    "own_window_anchor",
    "salient_in_span",
    "span_bounds",
    "split_windows",
]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


# splitmix64 (Steele, Lea, Flood 2014): constants of its increment and its two mixing steps.
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (``>>`` on int64 is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def counter_uniform(seed: int, index: torch.Tensor) -> torch.Tensor:
    """A uniform number in ``[0, 1)`` for every stream index, a function of (seed, index)
    alone: ``audio_selection="random"`` under ``causal=True`` draws token ``j``'s score
    without knowing how many tokens the stream will have (a generator's sequence would).

    splitmix64 of ``seed + (index + 1) * golden``, on int64 bit patterns (products and sums
    wrap modulo 2**64), top 53 bits as a float64.

    Args:
        seed: int in ``[0, 2**63 - 1]``; index: int64 ``[n]``.
    Returns:
        float64 ``[n]``.
    """
    z = (index + 1) * _GOLDEN + seed
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 11).to(torch.float64) * 2.0**-53


def span_bounds(lengths: torch.Tensor, first: int, lookback: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments ``first..n-1`` of segments laid end to end, where the span of the
    ``lookback`` segments ending at each one starts and how long it is (host int64 ``[n-first]``).
    """
    offsets = exclusive_cumsum(lengths)
    ends = offsets + lengths
    index = torch.arange(first, lengths.numel())
    starts = offsets[(index - lookback + 1).clamp(min=0)]
    return starts, ends[index] - starts


def salient_in_span(
    scores: torch.Tensor,
    chunk_lengths: torch.Tensor,
    first_chunk: int,
    rho_audio: float,
    lookback: int,
    block_elements: int,
) -> torch.Tensor:
    """Rule 1: a token of chunk ``c`` is salient when its rank among the scores of the span
    ``max(0, c-K+1)..c`` is below ``round((1 - rho_a) * N_span)`` (ties: the lower index).

    Args:
        scores: float32 ``[h + N_a]`` the span history's scores, then this call's.
        chunk_lengths: host int64 ``[k + n]`` tokens per audio chunk (history chunks first).
        first_chunk: ``k``, the first chunk decided now.
    Returns:
        bool ``[N_a]`` for the chunks ``first_chunk..``.
    """
    device = scores.device
    history_tokens = int(chunk_lengths[:first_chunk].sum())
    n_audio = int(scores.numel()) - history_tokens
    out = torch.zeros(n_audio + 1, dtype=torch.bool, device=device)  # +1: padding sink
    lengths = chunk_lengths[first_chunk:]
    if n_audio == 0:
        return out[:n_audio]
    token_starts = exclusive_cumsum(chunk_lengths)[first_chunk:]
    span_starts, span_lengths = span_bounds(chunk_lengths, first_chunk, lookback)
    want = torch.round((1.0 - rho_audio) * span_lengths.to(torch.float64))
    n_salient = torch.minimum(want.clamp(min=0).to(torch.int64), span_lengths)
    a_width, s_width = int(lengths.max()), int(span_lengths.max())
    tok, tok_valid = padded_segments(token_starts, lengths, a_width)
    span, span_valid = padded_segments(span_starts, span_lengths, s_width)
    target = torch.where(tok_valid, tok - history_tokens, n_audio).to(device)
    tok, span, span_valid = tok.to(device), span.to(device), span_valid.to(device)
    n_salient = n_salient.to(device)
    rows = block_rows(int(lengths.numel()), a_width * s_width, block_elements)
    for start in range(0, int(lengths.numel()), rows):
        sl = slice(start, start + rows)
        mine, theirs = scores[tok[sl]].unsqueeze(2), scores[span[sl]].unsqueeze(1)
        earlier = span[sl].unsqueeze(1) < tok[sl].unsqueeze(2)
        ahead = (theirs > mine) | ((theirs == mine) & earlier)
        rank = (ahead & span_valid[sl].unsqueeze(1)).sum(dim=2)  # [w, A_max]
        out.scatter_(0, target[sl].flatten(), (rank < n_salient[sl, None]).flatten())
    return out[:n_audio]


@dataclass(frozen=True)
class CausalSplit:
    """Rules 1-2 for one call. ``salient`` bool ``[N_a]``, ``anchors`` / ``pool`` int64
    audio indices (ascending) on the device; per chunk (host int64 ``[n]``):
    ``anchor_counts``, ``pool_counts`` (pool tokens of chunks that have anchors: the others
    are dropped, never merged)."""

    salient: torch.Tensor
    anchors: torch.Tensor
    pool: torch.Tensor
    anchor_counts: torch.Tensor
    pool_counts: torch.Tensor


def split_windows(
    salient: torch.Tensor,
    chunk_lengths: torch.Tensor,
    audio_before: int,
    contextual_ratio: float,
    g: int,
) -> CausalSplit:
    """Rule 2: chunk ``w`` gets ``round(c * N(<=w)) - round(c * N(<w))`` anchors (N: audio
    tokens of the stream so far), at most its non-salient count, placed by the stride rule of
    algorithm §4.2 among its non-salient tokens. Reads the salient counts once (a sync).

    Args:
        salient: bool ``[N_a]``; chunk_lengths: host int64 ``[n]``;
        audio_before: audio tokens of the stream before this call.
    """
    device = salient.device
    chunk_of_token, _ = segment_ids(chunk_lengths.to(device))
    per_chunk = torch.zeros(chunk_lengths.numel(), dtype=torch.int64, device=device)
    per_chunk.index_add_(0, chunk_of_token, salient.to(torch.int64))
    rest = chunk_lengths - per_chunk.cpu()  # the one read of device data
    seen = audio_before + torch.cumsum(chunk_lengths, 0).to(torch.float64)
    before = seen - chunk_lengths.to(torch.float64)
    want = (torch.round(contextual_ratio * seen) - torch.round(contextual_ratio * before)).to(torch.int64)
    n_anchor = torch.where((rest > 0) & (want > 0), torch.minimum(want, rest), 0) if g > 0 else rest * 0
    step = torch.clamp(rest // n_anchor.clamp(min=1), min=1)
    # Slots inside each chunk's non-salient tokens (host): anchors k * step, k < n_anchor;
    # the pool is the other non-salient slots of chunks that have anchors.
    offsets = exclusive_cumsum(chunk_lengths)
    anchor_chunk, k = segment_ids(n_anchor)
    anchor_slots = offsets[anchor_chunk] + k * step[anchor_chunk]
    mergeable = torch.where(n_anchor > 0, rest, 0)
    pool_chunk, q = segment_ids(mergeable)
    is_anchor = (q % step[pool_chunk] == 0) & (q // step[pool_chunk] < n_anchor[pool_chunk])
    pool_slots = (offsets[pool_chunk] + q)[~is_anchor]
    # Device: a stable sort puts each chunk's non-salient tokens first, in order.
    order = torch.sort(chunk_of_token * 2 + salient.to(torch.int64), stable=True).indices
    return CausalSplit(
        salient=salient,
        anchors=order[anchor_slots.to(device)],
        pool=order[pool_slots.to(device)],
        anchor_counts=n_anchor,
        pool_counts=mergeable - n_anchor,
    )


def own_window_anchor(
    pool_hat: torch.Tensor, anchor_hat: torch.Tensor, split: CausalSplit, block_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule 3: each pool token's most similar anchor of its own window (ties: the earlier).

    Returns:
        (anchor slot int64 ``[p]``, that cosine float32 ``[p]``).
    """
    anchor_slots = torch.arange(anchor_hat.shape[0], device=anchor_hat.device)
    ones = torch.ones(anchor_hat.shape[0], device=anchor_hat.device)
    cos, slot = segment_max_cosine(
        pool_hat, exclusive_cumsum(split.pool_counts), split.pool_counts,
        anchor_hat, anchor_slots, ones,
        exclusive_cumsum(split.anchor_counts), split.anchor_counts, block_elements,
    )
    return slot, cos
