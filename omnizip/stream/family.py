"""What a stream needs to know about a model family: its layout and its encoders' units.

:func:`stream_family` finds the family through the same adapter registry :func:`omnizip.patch`
uses (``omnizip.models.ADAPTERS``) and reads every number from the model's own config:

=========================  =======================  ===========================================
                           Qwen2.5-Omni             Qwen3-Omni
=========================  =======================  ===========================================
window                     2-s chunk (50 positions) one video step (13 positions at 2 fps)
audio encoder attention    one 2-s chunk            ``n_window_infer`` mel frames (8 s real)
LLM audio tokens           frame pairs pooled       one per last-layer frame (13 per second)
markers around the media   two share a position     consecutive positions
position ids               int64                    float32
=========================  =======================  ===========================================

A new family is one more builder in :data:`BUILDERS`, keyed by its adapter's ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ADAPTERS
from .layout import MediaLayout

__all__ = ["BUILDERS", "StreamFamily", "stream_family"]


@dataclass(frozen=True)
class StreamFamily:
    """One model family as a stream sees it.

    Attributes:
        name: how error messages name the family.
        adapter: the :class:`omnizip.models.base.ModelAdapter` subclass serving the model
            (its ``layout`` gives the method's family defaults, ``locate`` the modules).
        layout: the audio-in-video token layout (:class:`MediaLayout`).
        mel_per_encoder_window: mel frames of one audio-encoder attention window (the unit a
            stream encodes at once: its tokens never change once it is complete).
        audio_pool: last-layer encoder frames per LLM audio token.
        audio_tokens: ``mel_frames -> LLM audio tokens`` of a stream of that many mel frames.
        audio_end: how the features pad past the last sample, as the family's processor does
            (:data:`omnizip.audio_features.END_MODES`): Qwen2.5-Omni's pads with silence
            (``padding="max_length"``), Qwen3-Omni's reflects (one unpadded audio).
        temporal_patch: sampled frames per video step.
        spatial_merge: vision patches merged into one LLM token along each side.
        positions_per_second: position ids (and LLM audio tokens) per second of stream.
        position_limit: the decoder's ``max_position_embeddings``.
    """

    name: str
    adapter: Any
    layout: MediaLayout
    mel_per_encoder_window: int
    audio_pool: int
    audio_tokens: Callable[[int], int]
    audio_end: str
    temporal_patch: int
    spatial_merge: int
    positions_per_second: float
    position_limit: int


def _qwen2_5_audio_tokens(mel: int) -> int:
    """Conv stem (stride 2), then frame pairs pooled (the processor's formula)."""
    return ((mel - 1) // 2 + 1 - 2) // 2 + 1 if mel > 0 else 0


def _qwen3_audio_tokens(n_window: int) -> Callable[[int], int]:
    def count(mel: int) -> int:
        """Per ``2 * n_window`` mel-frame chunk, three stride-2 convolutions (13 for 100)."""
        chunk = 2 * n_window
        full, tail = divmod(mel, chunk)

        def stem(n: int) -> int:
            for _ in range(3):
                n = (n - 1) // 2 + 1 if n > 0 else 0
            return n

        return full * stem(chunk) + stem(tail)

    return count


def _step_positions(config: Any, fps: float) -> tuple[int, int]:
    """(temporal positions per video step, sampled frames per step) at ``fps``; ValueError
    unless a step covers a whole number of positions (so windows are exact on the clock)."""
    temporal = int(config.vision_config.temporal_patch_size)
    pps = float(config.position_id_per_seconds)
    exact = temporal / fps * pps
    if abs(exact - round(exact)) > 1e-6 or round(exact) < 1:
        raise ValueError(
            f"fps: {fps:g} frames per second gives {exact:g} position ids per video step "
            f"({temporal} frames at {pps:g} positions per second); a stream needs a whole "
            "number, e.g. fps=2 (the default) or fps=1"
        )
    return round(exact), temporal


def _qwen2_5(config: Any, fps: float) -> dict[str, Any]:
    step, temporal = _step_positions(config, fps)
    window = int(config.position_id_per_seconds * config.seconds_per_chunk)
    if window % step:
        raise ValueError(
            f"fps: at {fps:g} frames per second a {config.seconds_per_chunk:g}-s window holds "
            f"{window / step:g} video steps; a stream needs a whole number (fps 1, 2, 5, ...)"
        )
    n_window = int(config.audio_config.n_window)
    return dict(
        layout=dict(step_positions=step, window_positions=window, shared_markers=True,
                    closing_after_chunk=True, position_dtype=torch.int64),
        mel_per_encoder_window=2 * n_window, audio_pool=2, audio_tokens=_qwen2_5_audio_tokens,
        audio_end="silence", temporal_patch=temporal,
    )


def _qwen3(config: Any, fps: float) -> dict[str, Any]:
    step, temporal = _step_positions(config, fps)
    audio = config.audio_config
    n_window, infer = int(audio.n_window), int(audio.n_window_infer)
    if infer % (2 * n_window):
        raise ValueError(f"model: n_window_infer {infer} is not a multiple of 2 * n_window")
    return dict(
        layout=dict(step_positions=step, window_positions=step, shared_markers=False,
                    closing_after_chunk=False, position_dtype=torch.float32),
        mel_per_encoder_window=infer, audio_pool=1, audio_tokens=_qwen3_audio_tokens(n_window),
        audio_end="reflect", temporal_patch=temporal,
    )


#: adapter name -> builder of the family's numbers from the thinker config and the frame rate
BUILDERS: dict[str, Callable[[Any, float], dict[str, Any]]] = {
    "qwen2_5_omni": _qwen2_5,
    "qwen3_omni": _qwen3,
}


def stream_family(model: torch.nn.Module, fps: float) -> StreamFamily:
    """The :class:`StreamFamily` of ``model`` (a supported Qwen-Omni model or thinker) sampled
    at ``fps`` frames per second.

    Raises:
        ValueError: the model is not supported (the message lists the supported classes), or
            ``fps`` does not put whole video steps on the position clock.
    """
    adapter = next((a for a in ADAPTERS if a.matches(model)), None)
    if adapter is None or adapter.name not in BUILDERS:
        supported = ", ".join(n for a in ADAPTERS if a.name in BUILDERS for n in a.model_classes)
        raise ValueError(f"model: omnizip.stream does not support {type(model).__name__}; "
                         f"supported: {supported}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    config = getattr(model, "thinker", model).config
    numbers = BUILDERS[adapter.name](config, float(fps))
    layout = MediaLayout(video_token_id=int(config.video_token_id),
                         audio_token_id=int(config.audio_token_id), **numbers.pop("layout"))
    limit = int(config.get_text_config().max_position_embeddings)
    return StreamFamily(name=adapter.layout.name, adapter=adapter, layout=layout,
                        spatial_merge=int(config.vision_config.spatial_merge_size),
                        positions_per_second=float(config.position_id_per_seconds),
                        position_limit=limit, **numbers)
