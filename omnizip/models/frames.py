"""Reading a prefill's token layout from what the decoder is given: padding, frames.

:func:`padding_mask_2d` reads the real slots of a batch from any attention mask the decoder
may get; :func:`tokens_per_frame_from_positions` reads the video tokens per frame ``P`` from
M-RoPE position ids, :func:`tokens_per_frame_from_grid` from the vision grid (fallback).
Tensors only; nothing here imports transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.layout import exclusive_cumsum, find_runs

__all__ = ["padding_mask_2d", "tokens_per_frame_from_grid", "tokens_per_frame_from_positions"]


def padding_mask_2d(attention_mask: Any, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """bool ``[B, L]``: which prompt slots hold real tokens, from any mask the decoder may get.

    ``attention_mask`` may be ``None`` (no padding), a 2-D ``[B, L]`` mask (1 = token), a 4-D
    ``[B, 1, L, K]`` mask prepared by ``generate`` for a static cache (bool: True = attend,
    float: 0 = attend) or a dict of those (per layer type). For a prepared mask the padding is
    read from the last query row: with left or right padding the last query attends every real
    key of the prompt and no pad.
    """
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if isinstance(attention_mask, dict):
        value = attention_mask.get("full_attention", next(iter(attention_mask.values()), None))
        return padding_mask_2d(value, batch, length, device)
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            "attention_mask: OmniZip supports None, 2-D or 4-D tensor masks (and dicts of them), "
            f"got {type(attention_mask).__name__} (flex-attention BlockMask is not supported)"
        )
    if attention_mask.dim() == 2:
        if attention_mask.shape != (batch, length):
            raise ValueError(
                f"attention_mask must have shape [B, L] = [{batch}, {length}] at prefill, got "
                f"{tuple(attention_mask.shape)}"
            )
        return attention_mask.to(device=device).bool()
    if attention_mask.dim() == 4:
        if attention_mask.shape[0] != batch or attention_mask.shape[-1] < length:
            raise ValueError(
                f"4-D attention_mask must be [B, 1, L, K>=L] with B={batch}, L={length}, got "
                f"{tuple(attention_mask.shape)}"
            )
        last = attention_mask[:, 0, -1, :length]
        if last.dtype == torch.bool:
            return last.to(device)
        return (last > torch.finfo(last.dtype).min / 2).to(device)
    raise ValueError(f"attention_mask must be 2-D or 4-D, got {attention_mask.dim()}-D")


def tokens_per_frame_from_positions(
    input_ids: torch.Tensor, mrope: torch.Tensor, video_token_id: int
) -> torch.Tensor | None:
    """Video tokens per frame ``P`` of every video chunk, read from M-RoPE position ids.

    Args:
        input_ids: ``[L]`` one row's ids (padding removed).
        mrope: ``[3, L]`` its temporal/height/width position ids.
        video_token_id: the video placeholder id.

    Returns:
        int64 ``[m]``, one ``P`` per maximal run of video tokens (algorithm §1 "Frame"), or ``None``
        when the positions are not M-RoPE (all three rows equal over the video tokens), so the
        caller can fall back to the vision grid. A frame is the run of tokens from one
        ``(h, w) = (h0, w0)`` cell to the next (or to a change of the temporal id), so two frames
        sharing a temporal id are still told apart.
    """
    is_video = input_ids == video_token_id
    vpos = is_video.nonzero().squeeze(1)
    if vpos.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    p = mrope[:, vpos]
    n = vpos.numel()
    _, lengths = find_runs(is_video)
    starts = exclusive_cumsum(lengths)  # run starts as indices into the video tokens
    if n > starts.numel() and bool((p[0] == p[1]).all()) and bool((p[1] == p[2]).all()):
        return None
    chunk = torch.zeros(n, dtype=torch.int64, device=vpos.device)
    chunk[starts[1:]] = 1
    chunk = chunk.cumsum(0)
    first = p[:, starts[chunk]]
    frame_start = (p[1] == first[1]) & (p[2] == first[2])
    frame_start[1:] |= p[0, 1:] != p[0, :-1]
    frame_start[starts] = True
    frame_idx = frame_start.nonzero().squeeze(1)
    nxt = torch.searchsorted(frame_idx, starts, right=True)
    nxt_pos = torch.where(
        nxt < frame_idx.numel(), frame_idx[nxt.clamp(max=frame_idx.numel() - 1)], n
    )
    per_chunk = torch.minimum(nxt_pos - starts, lengths)
    return per_chunk.to("cpu", torch.int64)


def tokens_per_frame_from_grid(
    input_ids: torch.Tensor,
    padding: torch.Tensor,
    video_grid_thw: torch.Tensor,
    video_token_id: int,
    merge_size: int,
) -> list[torch.Tensor]:
    """Per row, ``P`` of every video chunk from the vision encoder's ``grid_thw`` (fallback).

    The videos' tokens follow each other in row-major order over the batch, video ``j``
    holding ``t*h*w / merge**2`` tokens with ``P_j = h*w / merge**2``; a chunk belongs to the
    video holding its first token.
    """
    grid = video_grid_thw.to("cpu", torch.int64)
    per_video = grid.prod(-1) // merge_size**2
    p_video = (grid[:, 1] * grid[:, 2]) // merge_size**2
    bounds = per_video.cumsum(0)
    out: list[torch.Tensor] = []
    offset = 0
    ids_cpu = input_ids.to("cpu")
    pad_cpu = padding.to("cpu")
    for b in range(ids_cpu.shape[0]):
        row_ids = ids_cpu[b][pad_cpu[b]]
        is_video = row_ids == video_token_id
        _, lengths = find_runs(is_video)
        starts = exclusive_cumsum(lengths)  # run starts as indices into the video tokens
        video = torch.searchsorted(bounds, starts + offset, right=True)
        if video.numel() and int(video.max()) >= p_video.numel():
            raise ValueError(
                "video_grid_thw: the grids hold fewer video tokens than the sequence; "
                "cannot map video chunks to frames"
            )
        out.append(p_video[video])
        offset += int(lengths.sum())
    return out
