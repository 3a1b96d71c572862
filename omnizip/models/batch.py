"""Batch compression before the decoder: each row decided on its own, then re-padded.

An adapter's decoder pre-hook hands the decoder inputs to :func:`compress_batch`, which runs
the method (``method.compress``, e.g. :func:`omnizip.compress_sequence`) on every row's real
tokens and re-pads the batch (docs/algorithm.md, "batches"). :func:`repad_rows` is the layout
step alone (also used by in-decoder pruning). Nothing here imports transformers.

Shapes: ``B`` batch, ``L`` prompt length before compression, ``L'`` after (the longest kept
row), ``D`` hidden size, ``R`` rows of position ids (3 for M-RoPE, 4 when a plain text row
precedes them as transformers 5.x ``generate`` builds them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import TokenDecision
from ..method import CompressionMethod

__all__ = [
    "BatchCompression",
    "Repadded",
    "compress_batch",
    "gather_tokens",
    "renumber_text_row",
    "repad_rows",
    "select_flat",
    "split_rows",
]


def gather_tokens(x: torch.Tensor, index: torch.Tensor, fill: Any = 0, dim: int = 1) -> torch.Tensor:
    """Pick tokens of a per-token tensor by ``index`` ``[B, L']`` (``-1`` = pad, gets ``fill``).

    ``x`` has its batch dim at ``dim - 1`` and its token dim at ``dim`` (e.g. ``[B, L, D]`` with
    ``dim=1``, ``[R, B, L]`` with ``dim=2``). Returns a new tensor, ``x`` untouched.
    """
    safe = index.clamp(min=0)
    shape = [1] * x.dim()
    shape[dim - 1], shape[dim] = index.shape
    idx = safe.reshape(shape).expand(*x.shape[:dim], index.shape[1], *x.shape[dim + 1 :])
    out = x.gather(dim, idx)
    pad = (index < 0).reshape(shape).expand_as(out)
    return out.masked_fill(pad, fill)


def select_flat(
    features: torch.Tensor, token_mask: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Prune a flat per-token side tensor with the keep mask (e.g. Qwen3-Omni deepstack).

    Args:
        features: ``[N, ...]`` one entry per True of ``token_mask``, row-major over the batch.
        token_mask: bool ``[B, L]`` which tokens ``features`` describe (``visual_pos_masks``).
        keep: bool ``[B, L]`` tokens kept (:attr:`BatchCompression.keep`).
    Returns ``features`` of the kept tokens, order preserved (new tensor).
    """
    return features[keep[token_mask].to(features.device)]


@dataclass
class BatchCompression:
    """The decoder inputs after compressing every row and re-padding (algorithm §5).

    Attributes:
        embeds: ``[B, L', D]`` new embeddings (pads are zeros).
        padding: bool ``[B, L']`` real tokens of the re-padded batch.
        position_ids: same layout as the positions given (``[R, B, L']`` or ``[B, L']``): the
            kept tokens' original values; a leading text row (``R == 4``) renumbered
            contiguously per row; pads get 1 (M-RoPE rows) / 0 (text row) as transformers does.
        rope_deltas: ``[B, 1]`` ``max(position) + 1 - kept tokens`` per row (transformers'
            convention), so decoding from the cache length continues at ``max + 1``.
        index: int64 ``[B, L']`` original slot of each new slot, -1 for pads.
        keep: bool ``[B, L]`` original slots kept.
        results: per row, the method's decision over that row's real tokens in order (for
            OmniZip a :class:`~omnizip.CompressionResult`).
        n_dropped: int64 ``[B]`` tokens dropped per row.
        changed: False when nothing was dropped (the inputs can pass unchanged).
        kept_indices: per row, int64 original slots kept, ascending.
        audio_scores: per row, float ``[N_a_row]`` the scores its audio tokens were ranked by.
        video_scores: per row, float ``[N_v_row]`` the vision-encoder scores of its video tokens
            (methods with ``needs_video_scores``), else None.
    """

    embeds: torch.Tensor
    padding: torch.Tensor
    position_ids: torch.Tensor
    rope_deltas: torch.Tensor
    index: torch.Tensor
    keep: torch.Tensor
    results: list[TokenDecision]
    n_dropped: torch.Tensor
    changed: bool
    kept_indices: list[torch.Tensor] = field(default_factory=list)
    audio_scores: list[torch.Tensor | None] = field(default_factory=list)
    video_scores: list[torch.Tensor | None] = field(default_factory=list)


def split_rows(
    name: str, scores: torch.Tensor | None, is_token: torch.Tensor, padding: torch.Tensor
) -> list[torch.Tensor | None]:
    """Per row, the scores of its real ``is_token`` slots, from one score per such slot of the
    whole batch in row-major order (as the encoders' features are scattered into it).

    Returns None for every row when ``scores`` is None, and for rows without such tokens.
    """
    per_row = is_token.sum(1).tolist()
    if scores is None:
        return [None] * len(per_row)
    if scores.numel() != sum(per_row):
        raise ValueError(f"{name}: got {scores.numel()} scores for {sum(per_row)} tokens in the batch")
    out: list[torch.Tensor | None] = []
    start = 0
    for b, n in enumerate(per_row):
        if not n:
            out.append(None)
            continue
        slot_scores = scores[start : start + n]
        start += n
        # a placeholder sitting in a pad slot cannot happen with real inputs; keep the scores of
        # the real slots only so they line up with the row's real tokens
        out.append(slot_scores[padding[b][is_token[b]].to(slot_scores.device)])
    return out


def renumber_text_row(text: torch.Tensor, padding: torch.Tensor, new_padding: torch.Tensor) -> torch.Tensor:
    """The plain text position row of a re-padded batch: contiguous per row (gaps would read
    as packed sequences), from the row's first real position; pads get 0.

    Args:
        text: ``[B, L]`` the original text row.
        padding: bool ``[B, L]`` real slots of the original batch.
        new_padding: bool ``[B, L']`` real slots of the re-padded batch.
    Returns ``[B, L']`` (new tensor) on ``text``'s device.
    """
    first = padding.to(text.device).float().argmax(1)  # first real slot of each row
    start = text.gather(1, first[:, None])  # [B, 1] first text position
    new_padding = new_padding.to(text.device)
    return (start + new_padding.to(text.dtype).cumsum(1) - 1).masked_fill(~new_padding, 0)


@dataclass
class Repadded:
    """A batch layout after dropping tokens row by row (see :func:`repad_rows`)."""

    index: torch.Tensor  # int64 [B, L'] original slot of each new slot, -1 for pads
    padding: torch.Tensor  # bool [B, L'] real tokens of the re-padded batch
    keep: torch.Tensor  # bool [B, L] original slots kept
    position_ids: torch.Tensor  # as given ([R, B, L'] or [B, L'])
    rope_deltas: torch.Tensor  # [B, 1]
    n_dropped: torch.Tensor  # int64 [B]


def repad_rows(
    kept_rows: list[torch.Tensor],
    padding: torch.Tensor,
    position_ids: torch.Tensor,
    text_row: bool,
) -> Repadded:
    """Re-pad a batch whose row ``b`` keeps the original slots ``kept_rows[b]`` (ascending).

    The batch is re-padded on the side it was padded on (left when no row is right-padded).
    Kept tokens keep their position ids; a leading text row (``text_row``) is renumbered
    contiguously per row from the row's first text position; pads get 1 (M-RoPE rows) / 0
    (text row). ``rope_deltas`` is ``max(M-RoPE position) + 1 - kept`` per row (algorithm §5).
    """
    bsz, length = padding.shape
    device = padding.device
    pos = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
    if pos.shape[1] == 1 and bsz > 1:
        pos = pos.expand(-1, bsz, -1)
    n_valid = padding.sum(1)
    n_kept = torch.tensor([k.numel() for k in kept_rows], dtype=torch.int64, device=device)
    n_dropped = n_valid.to(torch.int64) - n_kept
    new_len = int(n_kept.max()) if bsz else 0
    right_padded = bool((~padding[:, -1]).any()) if length else False
    index = torch.full((bsz, new_len), -1, dtype=torch.int64, device=device)
    keep = torch.zeros(bsz, length, dtype=torch.bool, device=device)
    for b in range(bsz):
        n = kept_rows[b].numel()
        slots = slice(0, n) if right_padded else slice(new_len - n, new_len)
        index[b, slots] = kept_rows[b].to(device)
        keep[b, kept_rows[b].to(device)] = True
    new_padding = index >= 0

    new_pos = gather_tokens(pos.to(device), index, fill=1, dim=2)
    mrope_rows = new_pos[1:] if text_row else new_pos
    if text_row:
        new_pos[0] = renumber_text_row(pos[0].to(device), padding, new_padding)
    masked_max = mrope_rows.masked_fill(~new_padding.unsqueeze(0), torch.iinfo(torch.int64).min
                                        if not mrope_rows.is_floating_point() else float("-inf"))
    max_pos = masked_max.amax(dim=(0, 2))
    rope_deltas = (max_pos + 1 - n_kept.to(max_pos.dtype)).unsqueeze(1)
    if position_ids.dim() == 2:
        new_pos = new_pos[0]
    return Repadded(index, new_padding, keep, new_pos, rope_deltas, n_dropped)


def compress_batch(
    *,
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    padding: torch.Tensor,
    position_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    tokens_per_frame: list[Any],
    method: CompressionMethod,
    audio_token_id: int,
    video_token_id: int,
    text_row: bool,
    video_scores: torch.Tensor | None = None,
) -> BatchCompression:
    """Compress each row of a (padded) batch on its own and re-pad (algorithm §5, algorithm §6.1).

    ``method.compress`` (for OmniZip: :func:`omnizip.compress_sequence` with its config) decides
    each row over the row's real tokens only.

    Args:
        embeds: ``[B, L, D]`` decoder input embeddings (not modified).
        input_ids: ``[B, L]`` ids of the same slots.
        padding: bool ``[B, L]`` real tokens.
        position_ids: ``[R, B, L]`` (or ``[B, L]``) position ids of the slots.
        audio_scores: float ``[N_a]`` one score per audio token of the whole batch in row-major
            order (as the audio features are scattered into the sequence), or None.
        video_scores: float ``[N_v]`` likewise one per video token (VisionZip), or None.
        tokens_per_frame: per row, an int or one int per video chunk.
        text_row: True when ``position_ids[0]`` is the plain text row of a 4-row layout.

    The batch is re-padded on the side it was padded on (left when no row is right-padded).
    """
    bsz = embeds.shape[0]
    audio_rows = split_rows("audio_scores", audio_scores, input_ids == audio_token_id, padding)
    video_rows = split_rows("video_scores", video_scores, input_ids == video_token_id, padding)

    results: list[TokenDecision] = []
    kept_rows: list[torch.Tensor] = []
    kept_embeds: list[torch.Tensor] = []
    for b in range(bsz):
        valid = padding[b].nonzero().squeeze(1)
        ids_b = input_ids[b, valid]
        res = method.compress(
            embeds[b, valid],
            ids_b,
            audio_token_id=audio_token_id,
            video_token_id=video_token_id,
            tokens_per_frame=tokens_per_frame[b],
            audio_scores=audio_rows[b],
            video_scores=video_rows[b],
        )
        results.append(res)
        keep_dev = res.keep.to(valid.device)
        kept_rows.append(valid[keep_dev])
        kept_embeds.append(res.embeds[res.keep])

    layout = repad_rows(kept_rows, padding, position_ids, text_row)
    index = layout.index
    out_embeds = embeds.new_zeros(bsz, index.shape[1], embeds.shape[-1])
    for b in range(bsz):
        out_embeds[b, layout.padding[b]] = kept_embeds[b].to(embeds.dtype)
    n_dropped, new_padding, keep = layout.n_dropped, layout.padding, layout.keep
    new_pos, rope_deltas = layout.position_ids, layout.rope_deltas
    return BatchCompression(
        embeds=out_embeds,
        padding=new_padding,
        position_ids=new_pos,
        rope_deltas=rope_deltas,
        index=index,
        keep=keep,
        results=results,
        n_dropped=n_dropped,
        changed=bool((n_dropped > 0).any()),
        kept_indices=kept_rows,
        audio_scores=audio_rows,
        video_scores=video_rows,
    )
