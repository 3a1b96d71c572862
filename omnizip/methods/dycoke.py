"""``dycoke``: DyCoke's temporal token merging (TTM), on video and on audio ("V&A").

DyCoke (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
Models", CVPR 2025) has two stages; the OmniZip paper compares against its first, TTM, applied
to both modalities. TTM, as the DyCoke paper describes it: frames are taken in groups of
``window`` consecutive frames (4 in the paper); within a group, tokens of the later frames
that are highly similar (cosine) to the token at the same spatial position of an earlier
reference frame are redundant and pruned. The references are the paper's two passes: every
odd frame of a group is compared with the frame just before it (1 vs 0, 3 vs 2), then the
even frames with the group's first frame, the pivot (2 vs 0). So in a group ``g, g+1, ...``
frame ``g + o`` is compared with frame ``g + o - 1`` when ``o`` is odd and with frame ``g``
when ``o`` is even; the pivot ``g`` itself is never pruned. Similarities are between the
original (unpruned) tokens, and every compared frame keeps the same number of tokens, its
least similar ones (DyCoke's fixed per-frame pruning rate).

Here (details the paper leaves open, or that a matched budget needs):

- **Budget.** The kept total is exact (:mod:`omnizip.methods._common`), split between audio
  and video in proportion to their sizes. In each modality, pivot frames and partial frames
  are kept whole, and the remaining budget is shared among the compared frames as evenly as
  possible (:func:`~omnizip.methods._common.distribute`: equal shares, the leftover tokens one
  each to the earliest frames). When the budget is below the pivots' size (under about 1/4
  retention with ``window=4``), the compared frames are dropped whole and the budget goes to
  the pivot tokens least similar to their own frame's mean token (beyond DyCoke).
- **Video frames** are the vision encoder's temporal grid steps: ``tokens_per_frame``
  consecutive video tokens (Qwen2.5-Omni: one grid step = 2 sampled frames), numbered in
  order across all video chunks of the sequence (interleaved audio does not break the
  sequence of frames). Frames of different sizes (several videos) are handled per size.
- **Audio "frames"** are ``audio_frame_tokens`` consecutive audio tokens (default 25: one
  second of Qwen2.5-Omni audio, the span of one video grid step at the default 2 fps), taken
  in order over all audio tokens; a trailing partial audio frame is kept whole. Token ``t`` of
  an audio frame is compared with token ``t`` of its reference frame, the same rule as video.
- Embeddings are not changed (DyCoke prunes). DyCoke's second stage (dynamic pruning of the
  KV cache during decoding) is not part of this baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core import TokenDecision
from ..core.layout import FrameTable
from ..method import DEFAULT_BLOCK_ELEMENTS
from ._common import (
    NORM_EPS,
    BudgetedMethod,
    check_int,
    decision,
    distribute,
    frame_blocks,
    keep_lowest,
    prepare,
    split_counts,
)

#: one second of Qwen2.5-Omni audio (25 tokens/s): the audio "frame" when nothing else is set
DEFAULT_AUDIO_FRAME_TOKENS = 25

__all__ = ["DyCokeConfig", "ttm_keep", "ttm_references"]


def ttm_references(n_frames: int, window: int) -> torch.Tensor:
    """Reference frame of every frame under TTM grouping (-1 for a group's pivot).

    ``f = g + o`` with ``g`` the group start (a multiple of ``window``): ``o == 0`` pivot,
    odd ``o`` -> ``f - 1``, even ``o > 0`` -> ``g``. int64 ``[n_frames]`` (host).
    """
    f = torch.arange(n_frames, dtype=torch.int64)
    o = f % window
    ref = torch.where(o % 2 == 1, f - 1, f - o)
    return torch.where(o == 0, torch.full_like(f, -1), ref)


def _mean_similarity(
    embeds: torch.Tensor, positions: torch.Tensor, segment: torch.Tensor, n_segments: int
) -> torch.Tensor:
    """Cosine of each token to the mean token of its segment (float32 ``[N]``)."""
    x = embeds[positions].float()
    dim = x.shape[1]
    sums = torch.zeros(n_segments, dim, dtype=torch.float32, device=x.device)
    sums.index_add_(0, segment, x)
    mean = sums[segment]
    denom = torch.linalg.vector_norm(x, dim=-1).clamp(min=NORM_EPS) * torch.linalg.vector_norm(
        mean, dim=-1
    ).clamp(min=NORM_EPS)
    return (x * mean).sum(-1) / denom


def ttm_keep(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    tables: list[FrameTable] | tuple[FrameTable, ...],
    n_keep: int,
    window: int,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """TTM over one modality: which of its ``N`` tokens stay (exactly ``min(n_keep, N)``).

    Args:
        embeds: ``[L, D]`` sequence embeddings (not modified).
        positions: int64 ``[N]`` sequence positions of the modality's tokens, in order.
        tables: the whole frames, one table per frame size (``video_index`` ``[F, P]`` are
            indices 0..N-1 into ``positions``, frames in temporal order). Tokens in no frame
            (partial frames) are pivots: kept first.
        n_keep: tokens to keep.
        window: frames per TTM group.
    Returns:
        bool ``[N]`` on ``embeds``' device.
    """
    device = embeds.device
    n = positions.numel()
    n_keep = max(0, min(int(n_keep), n))
    in_frame = torch.zeros(n, dtype=torch.bool)
    refs_per_table = []
    compared_caps = []
    for table in tables:
        in_frame[table.video_index.flatten()] = True
        refs = ttm_references(table.video_index.shape[0], window)
        refs_per_table.append(refs)
        compared_caps.append(torch.full((int((refs >= 0).sum()),), table.tokens, dtype=torch.int64))
    caps = torch.cat(compared_caps) if compared_caps else torch.zeros(0, dtype=torch.int64)
    n_compared = int(caps.sum())
    n_pivot = n - n_compared
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    if n_keep >= n_pivot:
        # pivots (pivot frames, partial frames) whole; the rest shared by the compared frames
        counts = distribute(n_keep - n_pivot, caps).to(device)
        keep[(~in_frame).to(device)] = True
        offset = 0
        for table, refs in zip(tables, refs_per_table, strict=True):
            compared = refs >= 0
            keep[table.video_index[~compared].flatten().to(device)] = True
            n_cmp = int(compared.sum())
            if n_cmp == 0:
                continue
            index, sims = _compared_similarities(embeds, positions, table, refs, block_elements)
            keep[index.flatten()] = keep_lowest(sims, counts[offset : offset + n_cmp]).flatten()
            offset += n_cmp
        return keep
    # Budget below the pivots: compared frames go whole; pivots keep their most distinctive
    # tokens (least similar to their own frame's mean), chosen over all pivots together.
    pivot_mask = ~in_frame
    segment = torch.full((n,), -1, dtype=torch.int64)
    n_seg = 0
    for table, refs in zip(tables, refs_per_table, strict=True):
        pivot_rows = table.video_index[refs < 0]
        pivot_mask[pivot_rows.flatten()] = True
        segment[pivot_rows.flatten()] = (
            torch.arange(pivot_rows.shape[0]).repeat_interleave(table.tokens) + n_seg
        )
        n_seg += pivot_rows.shape[0]
    rest = torch.nonzero(segment < 0).flatten()
    segment[rest] = n_seg  # partial frames: one segment (they are the few leftovers)
    pivot_idx = torch.nonzero(pivot_mask).flatten()
    sims = _mean_similarity(
        embeds, positions[pivot_idx.to(device)], segment[pivot_idx].to(device), n_seg + 1
    )
    chosen = keep_lowest(sims.unsqueeze(0), n_keep).squeeze(0)
    keep[pivot_idx.to(device)] = chosen
    return keep


def _compared_similarities(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    table: FrameTable,
    refs: torch.Tensor,
    block_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each compared frame's tokens to the same tokens of its reference frame.

    Returns ``(index, sims)``: int64 ``[F_compared, P]`` token indices (into ``positions``)
    and float32 ``[F_compared, P]``, both on ``embeds``' device. Frames are gathered in
    blocks (bounded memory); similarities use the original, unpruned tokens.
    """
    device = embeds.device
    compared = refs >= 0
    frames = table.video_index.to(device)
    index = frames[compared.to(device)]
    # similarities against the reference rows of the same table
    n_cmp, p = index.shape
    out = torch.empty(n_cmp, p, dtype=torch.float32, device=device)
    ref_index = frames[refs[compared].to(device)]
    dim = embeds.shape[1]
    for start, stop in frame_blocks(n_cmp, 2 * p * dim, block_elements):
        x = embeds[positions[index[start:stop]]].float()
        r = embeds[positions[ref_index[start:stop]]].float()
        norms = torch.linalg.vector_norm(x, dim=-1).clamp(min=NORM_EPS) * torch.linalg.vector_norm(
            r, dim=-1
        ).clamp(min=NORM_EPS)
        out[start:stop] = (x * r).sum(-1) / norms
    return index, out


def audio_frame_table(n_audio: int, tokens: int) -> tuple[FrameTable, ...]:
    """Whole audio "frames" of ``tokens`` consecutive audio tokens (a partial tail is left out)."""
    n_frames = n_audio // tokens
    if n_frames == 0:
        return ()
    index = torch.arange(n_frames * tokens, dtype=torch.int64).view(n_frames, tokens)
    chunk = torch.zeros(n_frames, dtype=torch.int64)
    return (FrameTable(chunk=chunk, parity=torch.arange(n_frames) % 2, tokens=tokens, video_index=index),)


@dataclass(frozen=True)
class DyCokeConfig(BudgetedMethod):
    """DyCoke TTM on video and audio at a matched budget.

    Attributes:
        retention, token_budget: the budget (audio + video tokens kept).
        window: frames per TTM group (DyCoke: 4).
        audio_frame_tokens: audio tokens per audio "frame"; None (default): one second of the
            model's audio, as its family's layout sets it (Qwen3-Omni: 13), else 25 (one second of
            Qwen2.5-Omni audio, one video grid step at 2 fps).
        audio: apply TTM to audio too ("V&A", the OmniZip paper's setting; the budget is
            split in proportion). False: video-only DyCoke; audio is kept whole and counts
            against the budget (video keeps ``total - N_a``; audio is pruned by TTM only when
            the budget is smaller than ``N_a``).
        block_elements: soft cap on the elements of temporary blocks (memory bound).
    """

    name: ClassVar[str] = "dycoke"

    window: int = 4
    audio_frame_tokens: int | None = None
    audio: bool = True
    block_elements: int = DEFAULT_BLOCK_ELEMENTS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("window", self.window, 2)
        if self.audio_frame_tokens is not None:
            check_int("audio_frame_tokens", self.audio_frame_tokens, 1)
        check_int("block_elements", self.block_elements, 1024)
        if not isinstance(self.audio, bool):
            raise TypeError(f"audio must be a bool, got {self.audio!r}")

    def compress(self, embeds, input_ids, *, audio_token_id, video_token_id, tokens_per_frame,
                 audio_scores=None, video_scores=None) -> TokenDecision:
        """TTM per modality with exactly the budgeted number of tokens kept."""
        layout = prepare(embeds, input_ids, audio_token_id, video_token_id, tokens_per_frame)
        n_a, n_v = layout.n_audio, layout.n_video
        total = self.kept_total(n_a + n_v)
        if self.audio:
            k_a, k_v = split_counts(n_a, n_v, total)
        else:
            k_a = min(n_a, total)
            k_v = total - k_a
        device = embeds.device
        keep_a = keep_v = None
        if n_a:
            keep_a = ttm_keep(
                embeds, layout.audio_positions.to(device),
                audio_frame_table(n_a, self.audio_frame_tokens or DEFAULT_AUDIO_FRAME_TOKENS), k_a, self.window,
                self.block_elements,
            )
        if n_v:
            # Frames in order over the whole video (layout.frame_tables: one table per frame
            # size); a chunk's trailing partial frame is in no table, so it is a pivot.
            keep_v = ttm_keep(
                embeds, layout.video_positions.to(device), layout.frame_tables, k_v,
                self.window, self.block_elements,
            )
        return decision(keep_a, keep_v, embeds.clone(), layout)
