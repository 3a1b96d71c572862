"""Per-family rules for the media blocks of a Qwen-Omni thinker (processor and model share them).

A :class:`OmniBlocks` turns what vLLM knows of a media item (vision grid, seconds per grid step,
audio feature length) into its :class:`~omnizip.vllm.layout.MediaBlock` as transformers lays it
out, and says how many slots OmniZip keeps of it. Two families:

- Qwen2.5-Omni: 25 position ids per second, a video and its audio interleaved per 2-second
  chunk (:func:`~omnizip.vllm.layout.joint_block`), ``<|vision_bos|><|audio_bos|>`` sharing one
  position (and the two end markers another), 2 encoder frames pooled per audio token;
- Qwen3-Omni: 13 position ids per second, video and audio merged by time
  (:func:`~omnizip.vllm.layout.timeline_block`), markers at consecutive positions, one audio
  token per encoder frame, ISTC frame parity along the stream (as the Hugging Face adapter).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import OmniZipConfig
from .layout import (
    MediaBlock,
    audio_block,
    joint_block,
    kept_counts,
    timeline_block,
    video_block,
    video_rel_positions,
)

__all__ = ["JOINT_AUDIO_FEATURES", "JOINT_AUDIO_LENGTHS", "OmniBlocks", "Qwen2_5OmniBlocks", "Qwen3OmniBlocks"]

# Keys under which a video item carries its own audio (not the audio modality's keys, so vLLM's
# parsing never mistakes them for a standalone audio item).
JOINT_AUDIO_FEATURES = "omnizip_audio_features"
JOINT_AUDIO_LENGTHS = "omnizip_audio_feature_lengths"


def item_value(item: Any, key: str, default: Any = None) -> Any:
    """The data of field ``key`` of a vLLM ``MultiModalKwargsItem`` (or ``default``)."""
    elem = item.get(key) if item is not None else None
    return default if elem is None or elem.data is None else elem.data


def first_float(value: Any, default: float) -> float:
    return default if value is None else float(torch.as_tensor(value).flatten()[0])


@dataclass(frozen=True)
class OmniBlocks:
    """Token ids and layout constants of one thinker config."""

    audio_token_id: int
    video_token_id: int
    image_token_id: int
    audio_bos_id: int
    audio_eos_id: int
    merge_size: int
    positions_per_second: int

    #: encoder frames pooled into one LLM audio token
    audio_pool: ClassVar[int] = 2
    #: the two markers before (and after) a joint block share one position (Qwen2.5-Omni)
    joint_markers_shared: ClassVar[bool] = True
    #: seconds per grid step when the processor gave none
    default_second_per_grid: ClassVar[float] = 1.0

    def audio_tokens(self, feature_length: int) -> int:  # pragma: no cover - per family
        raise NotImplementedError

    def stream_frames(self, feature_lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Frames per audio stream in the encoder's last layer."""
        raise NotImplementedError

    def _joint(self, pos: torch.Tensor, per_frame: int, n_audio: int) -> MediaBlock:  # pragma: no cover
        raise NotImplementedError

    def method(self, config: OmniZipConfig) -> OmniZipConfig:
        """The configuration as run on this family's layout."""
        return config

    def video(self, grid_thw: Any, second_per_grid: float, n_audio: int | None) -> MediaBlock:
        """A video's block; ``n_audio`` tokens of its own audio laid in when not None."""
        t, h, w = (int(v) for v in torch.as_tensor(grid_thw).flatten().tolist())
        llm_h, llm_w = h // self.merge_size, w // self.merge_size
        pos = video_rel_positions(t, llm_h, llm_w, second_per_grid, self.positions_per_second)
        if n_audio is None:
            return video_block(pos, llm_h * llm_w, self.video_token_id)
        return self._joint(pos, llm_h * llm_w, n_audio)

    def audio(self, n_audio: int) -> MediaBlock:
        return audio_block(n_audio, self.audio_token_id)

    def kept(self, block: MediaBlock, config: OmniZipConfig) -> int:
        """Slots the block's compressed form fills (kept audio + kept video)."""
        audio, video = kept_counts(
            block, config, audio_token_id=self.audio_token_id, video_token_id=self.video_token_id
        )
        return audio + video

    # -- what a processed item says about its block -------------------------------------------
    def second_per_grid(self, video_item: Any) -> float:
        return first_float(item_value(video_item, "second_per_grid_ts"), self.default_second_per_grid)

    @staticmethod
    def uses_audio_in_video(video_item: Any) -> bool:
        value = item_value(video_item, "use_audio_in_video")
        return value is not None and torch.as_tensor(value).numel() > 0 and bool(
            torch.as_tensor(value).flatten()[0]
        )

    def item_block(self, video_item: Any, joint_feature_length: int | None) -> MediaBlock:
        """A video item's block (with its own audio of that many mel frames, if given)."""
        n_audio = None if joint_feature_length is None else self.audio_tokens(joint_feature_length)
        return self.video(item_value(video_item, "video_grid_thw"), self.second_per_grid(video_item), n_audio)


@dataclass(frozen=True)
class Qwen2_5OmniBlocks(OmniBlocks):
    chunk_positions: int = 50

    @classmethod
    def from_thinker_config(cls, cfg: Any) -> Qwen2_5OmniBlocks:
        per_second = int(getattr(cfg, "position_id_per_seconds", 25))
        return cls(
            audio_token_id=int(cfg.audio_token_index),
            video_token_id=int(cfg.video_token_index),
            image_token_id=int(cfg.image_token_index),
            audio_bos_id=int(cfg.audio_start_token_id),
            audio_eos_id=int(cfg.audio_end_token_id),
            merge_size=int(cfg.vision_config.spatial_merge_size),
            positions_per_second=per_second,
            chunk_positions=int(per_second * cfg.seconds_per_chunk),
        )

    def audio_tokens(self, feature_length: int) -> int:
        """Conv stem stride 2, then average pooling 2."""
        return ((feature_length - 1) // 2 + 1 - 2) // 2 + 1

    def stream_frames(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        return (feature_lengths - 1) // 2 + 1

    def _joint(self, pos: torch.Tensor, per_frame: int, n_audio: int) -> MediaBlock:
        return joint_block(pos, per_frame, n_audio, self.chunk_positions,
                           audio_token_id=self.audio_token_id, video_token_id=self.video_token_id)


def _conv_stem(frames: torch.Tensor) -> torch.Tensor:
    """Length after three stride-2 convolutions (kernel 3, padding 1); 0 stays 0."""
    for _ in range(3):
        frames = torch.where(frames > 0, (frames - 1) // 2 + 1, frames)
    return frames


@dataclass(frozen=True)
class Qwen3OmniBlocks(OmniBlocks):
    n_window: int = 50

    audio_pool: ClassVar[int] = 1
    joint_markers_shared: ClassVar[bool] = False
    default_second_per_grid: ClassVar[float] = 2.0

    @classmethod
    def from_thinker_config(cls, cfg: Any) -> Qwen3OmniBlocks:
        return cls(
            audio_token_id=int(cfg.audio_token_id),
            video_token_id=int(cfg.video_token_id),
            image_token_id=int(cfg.image_token_id),
            audio_bos_id=int(cfg.audio_start_token_id),
            audio_eos_id=int(cfg.audio_end_token_id),
            merge_size=int(cfg.vision_config.spatial_merge_size),
            positions_per_second=int(getattr(cfg, "position_id_per_seconds", 13)),
            n_window=int(getattr(cfg.audio_config, "n_window", 50)),
        )

    def stream_frames(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Per ``2 * n_window`` mel-frame chunk the conv stem's output, summed per stream."""
        chunk = 2 * self.n_window
        per_full = _conv_stem(torch.tensor(chunk, dtype=torch.int64))
        return (feature_lengths // chunk) * per_full + _conv_stem(feature_lengths % chunk)

    def audio_tokens(self, feature_length: int) -> int:
        return int(self.stream_frames(torch.tensor([feature_length]))[0])

    def _joint(self, pos: torch.Tensor, per_frame: int, n_audio: int) -> MediaBlock:
        return timeline_block(pos, per_frame, n_audio,
                              audio_token_id=self.audio_token_id, video_token_id=self.video_token_id)

    def method(self, config: OmniZipConfig) -> OmniZipConfig:
        """One frame per video run on this layout: ISTC parity runs along the stream unless the
        configuration sets it (as the Hugging Face Qwen3-Omni adapter)."""
        if config.frame_parity is None:
            return dataclasses.replace(config, frame_parity="stream")
        return config
