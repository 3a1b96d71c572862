"""Per-call pieces of the Qwen-Omni adapters: what a prefill showed, its positions, frames,
masks, and the inputs of decode steps over a compressed cache (functions of tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .decode import DecodeSession
from .frames import tokens_per_frame_from_grid, tokens_per_frame_from_positions

__all__ = [
    "PrefillCall",
    "decode_inputs",
    "position_rows",
    "prefill_mask",
    "tokens_per_frame",
    "video_grid",
]


@dataclass
class PrefillCall:
    """What one prefill call of ``thinker.model`` has shown so far (cleared after use)."""

    input_ids: torch.Tensor  # [B, L]
    padding: torch.Tensor  # bool [B, L]
    video_grid_thw: torch.Tensor | None = None
    video_sizes: list[int] | None = None  # tokens per video, from pre-computed encoder outputs
    stream_frames: torch.Tensor | None = None  # frames per audio stream after the conv stem
    scores: list[torch.Tensor] = field(default_factory=list)  # pooled token scores per tower call
    score_seconds: float = 0.0  # wall time spent scoring audio (counted in the overhead)



def position_rows(
    given: torch.Tensor | None, bsz: int, length: int, padding: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """``[R, B, L]`` positions and whether row 0 is the plain text row (R == 4)."""
    if given is None:  # the decoder's own default: one arange for all rows
        pos = torch.arange(length, device=padding.device).view(1, 1, -1).expand(3, bsz, -1)
        return pos, False
    if given.dim() == 2:
        return given.unsqueeze(0).expand(3, -1, -1), False
    if given.dim() != 3 or given.shape[0] not in (3, 4) or given.shape[-1] != length:
        raise ValueError(
            f"position_ids must be [B, L], [3, B, L] or [4, B, L] with L={length}, got "
            f"{tuple(given.shape)}"
        )
    return given.expand(-1, bsz, -1), given.shape[0] == 4


def tokens_per_frame(
    call: PrefillCall,
    grids: list[torch.Tensor],
    ids: torch.Tensor,
    padding: torch.Tensor,
    mrope: torch.Tensor,
    video_token_id: int,
    merge_size: int,
) -> list[Any]:
    """Per row, P of every video chunk: from M-RoPE positions, else the vision grid."""
    out: list[Any] = []
    for b in range(ids.shape[0]):
        valid = padding[b]
        per_chunk = tokens_per_frame_from_positions(
            ids[b, valid], mrope[:, b, valid], video_token_id
        )
        if per_chunk is None:
            # e.g. use_audio_in_video=True on a silent video: transformers then gives the
            # whole prompt text positions, so frames must come from the vision grid
            grid = video_grid(call, grids, merge_size)
            if grid is None:
                raise ValueError(
                    "position_ids: cannot tell the video tokens per frame (positions are "
                    "not M-RoPE and no video_grid_thw was seen)"
                )
            return tokens_per_frame_from_grid(
                ids, padding, grid, video_token_id, merge_size
            )
        out.append(per_chunk)
    return out

def video_grid(call: PrefillCall, grids: list[torch.Tensor], merge_size: int) -> torch.Tensor | None:
    """The videos' ``grid_thw``: given to the thinker, or the latest vision-encoder call
    whose grids match the pre-computed video outputs' token counts."""
    if call.video_grid_thw is not None:
        return call.video_grid_thw
    if call.video_sizes is None:
        return None
    for grid in reversed(grids):
        sizes = (grid.prod(-1) // merge_size**2).tolist()
        if sizes == call.video_sizes:
            return grid
    return None


def prefill_mask(given: Any, padding: torch.Tensor) -> torch.Tensor | None:
    """The re-padded batch's 2-D mask, in the caller's form (None stays None if possible).

    A 4-D/dict mask prepared by ``generate`` (static cache) is replaced by the 2-D mask;
    the decoder then prepares its own for the compressed length.
    """
    if isinstance(given, torch.Tensor) and given.dim() == 2:
        return padding.to(given.dtype)
    if bool(padding.all()):
        return None
    return padding.long()


def decode_inputs(kwargs: dict, past: int, session: DecodeSession) -> dict:
    """Decode step over a compressed cache: mask (and text position row) to its layout."""
    ids = kwargs.get("input_ids")
    ref = ids if ids is not None else kwargs.get("inputs_embeds")
    if ref is None:
        return kwargs
    new = dict(kwargs)
    new["attention_mask"] = session.attention_mask(
        kwargs.get("attention_mask"), past, int(ref.shape[1]), int(ref.shape[0])
    )
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[0] == 4:
        # the text row numbers tokens contiguously; the compressed prefill ended earlier
        pos = pos.clone()
        pos[0] = pos[0] - session.n_dropped.to(pos.device, pos.dtype)[:, None]
        new["position_ids"] = pos
    return new
