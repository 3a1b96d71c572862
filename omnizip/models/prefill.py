"""Per-call pieces of the Qwen-Omni adapters: what a prefill showed, its positions, frames,
masks, and the inputs of decode steps over a compressed cache (functions of tensors).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from .decode import DecodeSession
from .frames import padding_mask_2d, tokens_per_frame_from_grid, tokens_per_frame_from_positions

__all__ = [
    "TEXT_ID",
    "PrefillCall",
    "decode_inputs",
    "filled_placeholders",
    "fills_media",
    "keyword_arguments",
    "position_rows",
    "prefill_mask",
    "start_call",
    "tokens_per_frame",
    "video_grid",
]

#: the id placeholders get when no encoder fills them in the call (the core keeps it as text)
TEXT_ID = -1


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


def keyword_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """A forward's positional arguments moved to keywords (its ``**kwargs`` flattened in)."""
    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    extra = bound.pop("kwargs", None)
    if extra:
        bound.update(extra)
    return bound


def _fills(kwargs: dict) -> dict[str, bool]:
    """Which placeholder kinds a ``thinker.model`` call fills with encoder features. The
    model fills every placeholder of a kind or none (it checks that the counts match), so
    placeholder ids of a kind whose encoder does not run are ordinary tokens."""
    encoded = kwargs.get("mm_encoder_outputs") or {}
    return {
        "audio": kwargs.get("input_features") is not None,
        "video": kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None,
        "image": kwargs.get("pixel_values") is not None or encoded.get("image") is not None,
    }


def fills_media(kwargs: dict) -> bool:
    """True when the call fills audio or video placeholders (what OmniZip compresses)."""
    fills = _fills(kwargs)
    return fills["audio"] or fills["video"]


def filled_placeholders(ids: torch.Tensor, kwargs: dict, token_ids: dict[str, int]) -> torch.Tensor:
    """``ids`` ``[B, L]`` with every placeholder that no encoder fills in this call turned
    into :data:`TEXT_ID` (a new tensor): a placeholder id without media behind it is text.

    Args:
        ids: the call's token ids.
        kwargs: the call's keyword arguments (which encoder inputs it carries).
        token_ids: ``{"audio": id, "video": id, "image": id}`` placeholder ids.
    """
    fills = _fills(kwargs)
    unfilled = torch.zeros_like(ids, dtype=torch.bool)
    for kind, token in token_ids.items():
        if not fills[kind]:
            unfilled |= ids == token
    return ids.masked_fill(unfilled, TEXT_ID)


def ids_from_embeds(embeds: torch.Tensor, table: torch.Tensor, token_ids: dict[str, int]) -> torch.Tensor:
    """Placeholder ids from embeddings (``table``: the input embedding matrix), as the model
    itself finds them without ids; every other slot gets -1."""
    ids = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
    for token in token_ids.values():
        row = table[token].to(embeds.device, embeds.dtype)
        ids = ids.masked_fill((embeds == row).all(-1), token)
    return ids


def start_call(kwargs: dict, token_ids: dict[str, int], table: torch.Tensor) -> PrefillCall | None:
    """What a prefill call of ``thinker.model`` shows at its start (None: no ids to read)."""
    ids = kwargs.get("input_ids")
    if ids is None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        ids = ids_from_embeds(embeds, table, token_ids)
    if ids.dim() != 2:
        return None
    bsz, length = ids.shape
    padding = padding_mask_2d(kwargs.get("attention_mask"), bsz, length, ids.device)
    # only the placeholders the encoders fill in this call are media (stray ids are text)
    ids = filled_placeholders(ids, kwargs, token_ids)
    sizes = None
    video_out = (kwargs.get("mm_encoder_outputs") or {}).get("video")
    pooled = getattr(video_out, "pooler_output", None)
    if isinstance(pooled, (tuple, list)):
        sizes = [int(p.shape[0]) for p in pooled]
    return PrefillCall(input_ids=ids, padding=padding, video_grid_thw=kwargs.get("video_grid_thw"),
                       video_sizes=sizes)


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
    """A decode step, or another text turn, over a compressed cache: drop the leading tokens
    the cache already holds (:meth:`DecodeSession.resent_tokens`), bring the mask and the
    text-numbered position rows to the cache's layout."""
    ids = kwargs.get("input_ids")
    ref = ids if ids is not None else kwargs.get("inputs_embeds")
    if ref is None:
        return kwargs
    new = dict(kwargs)
    mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
    resent = session.resent_tokens(mask, pos, past, int(ref.shape[1]))
    if resent:
        for key in ("input_ids", "inputs_embeds"):
            if isinstance(new.get(key), torch.Tensor):
                new[key] = new[key][:, resent:]
        if isinstance(pos, torch.Tensor):
            pos = pos[..., resent:]
    new["attention_mask"] = session.attention_mask(
        mask, past, int(ref.shape[1]) - resent, int(ref.shape[0])
    )
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[0] in (1, 4):
        # text-numbered rows (generate's plain text row in front of M-RoPE, or the text
        # positions + rope_deltas it builds to continue a cache) count the dropped prompt
        # tokens; the compressed prefill ended earlier
        pos = pos.clone()
        pos[0] = pos[0] - session.n_dropped.to(pos.device, pos.dtype)[:, None]
    if pos is not None:
        new["position_ids"] = pos
    return new
