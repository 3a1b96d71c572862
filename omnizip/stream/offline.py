"""The offline causal path: a whole clip as the processor inputs a stream of it would build.

``inputs = offline_inputs(model, processor, frames, audio, question)`` then
``omnizip.patch(model, OmniZipConfig(causal=True)); model.generate(**inputs,
use_audio_in_video=True)`` is the one-shot offline run a :class:`~omnizip.stream.StreamSession`
over the same frames and audio equals (tests/test_stream_session.py): the same fixed-clock
frames at one resolution (:func:`~omnizip.stream.media.video_patches`), the same causal
log-mel features (:func:`omnizip.audio_features.causal_log_mel`, with no 300-s cap), and the
token layout of :mod:`omnizip.stream.layout`, which is the processor's own (the tests compare
the ids with the processor's and the positions with the model's ``get_rope_index``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .family import stream_family
from .media import check_audio, check_frames, video_patches
from .prompt import prompt_pieces

__all__ = ["media_ids", "offline_inputs"]


def media_ids(layout: Any, n_steps: int, n_audio: int, grid: tuple[int, int]) -> torch.Tensor:
    """int64 ``[n]``: the media placeholders of a clip of ``n_steps`` video steps (``grid``
    merged tokens each) and ``n_audio`` audio tokens, window by window (a window's video steps,
    then its audio; what is left of the longer track after the shorter one ends follows)."""
    tokens = layout.window((0, n_steps), (0, n_audio), grid, 0)
    return tokens.input_ids[layout.prompt_order((0, n_steps), (0, n_audio), grid)]


def offline_inputs(model: torch.nn.Module, processor: Any, frames: Any, audio: Any,
                   question: str, *, fps: float = 2.0, system: str | None = None) -> dict:
    """The processor inputs of one prompt ``[video with its audio] + question`` for
    ``model``, built as a stream of the same media sees it.

    Args:
        frames: uint8 ``[T, H, W, 3]`` sampled at ``fps`` (a fixed clock).
        audio: float32 mono samples at the processor's rate (16 kHz).
        question: the user's text after the video.
        system: an optional system message (as :func:`omnizip.stream` takes it).

    Returns a dict of ``[1, ...]`` tensors: ``input_ids``, ``attention_mask``,
    ``pixel_values_videos``, ``video_grid_thw``, ``video_second_per_grid``, ``input_features``
    ``[1, n_mels, M]`` and ``feature_attention_mask``; pass ``use_audio_in_video=True`` to
    ``generate``.

    Raises:
        ValueError/TypeError: bad frames or audio (naming the argument), an unsupported model
            or a frame rate that does not put whole video steps on the position clock.
    """
    from ..audio_features import causal_log_mel

    family = stream_family(model, fps)
    frames = check_frames(frames)
    rate = int(processor.feature_extractor.sampling_rate)
    audio = check_audio(audio, None, rate)
    if frames.shape[0] == 0 or audio.size == 0:
        raise ValueError(f"frames and audio must both be non-empty, got {frames.shape[0]} frames "
                         f"and {audio.size} samples")
    pieces = prompt_pieces(processor, system)
    pixels, grid = video_patches(processor, frames, fps)
    merge = family.spatial_merge
    features = torch.as_tensor(np.asarray(causal_log_mel(audio, processor.feature_extractor,
                                                          end=family.audio_end)),
                               dtype=torch.float32)
    n_mel = int(features.shape[-1])
    media = media_ids(family.layout, grid[0], family.audio_tokens(n_mel),
                      (grid[1] // merge, grid[2] // merge))
    ids = torch.cat([pieces.prefix_ids, media, pieces.closing_ids(question)])[None]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([grid], dtype=torch.int64),
        "video_second_per_grid": torch.tensor([family.temporal_patch / fps], dtype=torch.float32),
        "input_features": features[None],
        "feature_attention_mask": torch.ones(1, n_mel, dtype=torch.int32),
    }
