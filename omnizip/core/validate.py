"""Input checks for the core: clear errors that name the argument, never an IndexError."""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_token_id(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int token id, got {type(value).__name__} {value!r}")


def check_inputs(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    audio_token_id: int,
    video_token_id: int,
) -> None:
    """Shapes, dtypes and devices of :func:`omnizip.compress_sequence`'s arguments."""
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"embeds must be a torch.Tensor [L, D], got {type(embeds).__name__}")
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor [L], got {type(input_ids).__name__}")
    if embeds.dim() != 2:
        raise ValueError(f"embeds must have shape [L, D], got shape {tuple(embeds.shape)}")
    if embeds.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"embeds must be float32, float16, bfloat16 or float64, got dtype {embeds.dtype}"
        )
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must have shape [L], got shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integers, got dtype {input_ids.dtype}")
    if input_ids.shape[0] != embeds.shape[0]:
        raise ValueError(
            f"embeds and input_ids must have the same length L, got embeds {tuple(embeds.shape)} "
            f"and input_ids {tuple(input_ids.shape)}"
        )
    check_token_id("audio_token_id", audio_token_id)
    check_token_id("video_token_id", video_token_id)
    if audio_token_id == video_token_id:
        raise ValueError(
            f"audio_token_id and video_token_id must differ, both are {audio_token_id}"
        )
    if audio_scores is not None:
        if not isinstance(audio_scores, torch.Tensor):
            raise TypeError(
                f"audio_scores must be a torch.Tensor [N_a] or None, got {type(audio_scores).__name__}"
            )
        if audio_scores.dim() != 1:
            raise ValueError(
                f"audio_scores must have shape [N_a], got shape {tuple(audio_scores.shape)}"
            )
        if not audio_scores.is_floating_point():
            raise TypeError(f"audio_scores must be floating point, got dtype {audio_scores.dtype}")
