"""Input checks for the core: clear errors that name the argument, never an IndexError."""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_token_id(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int token id, got {type(value).__name__} {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64 (as token ids do), got {value}")


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


def check_audio_scores(audio_scores: torch.Tensor | None, n_audio: int, audio_token_id: int) -> None:
    """One finite score per audio token, once the layout is known (the finiteness check
    synchronises once)."""
    if n_audio and (audio_scores is None or audio_scores.numel() != n_audio):
        got = "None" if audio_scores is None else f"{audio_scores.numel()} scores"
        raise ValueError(
            f"audio_scores must hold one score per audio token: the sequence has {n_audio} "
            f"audio tokens (id {audio_token_id}), got {got}"
        )
    if not n_audio and audio_scores is not None and audio_scores.numel() != 0:
        raise ValueError(
            f"audio_scores has {audio_scores.numel()} scores but the sequence has no audio "
            f"tokens (id {audio_token_id}); pass None or an empty tensor"
        )
    if n_audio and not bool(torch.isfinite(audio_scores).all()):
        raise ValueError("audio_scores must be finite, got NaN or infinite values")
