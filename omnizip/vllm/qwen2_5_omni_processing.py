"""vLLM processor for OmniZip Qwen2.5-Omni: declares the compressed slot counts up front.

vLLM's processor (``_get_prompt_updates``) fixes every media item's placeholder tokens before
any encoder runs, and the model must then fill exactly those slots. With ``budget="exact"`` the
kept counts follow from the layout (:func:`omnizip.vllm.layout.kept_counts`), so this processor
runs vLLM's own Qwen2.5-Omni processing and then rewrites its result:

- every video / standalone audio placeholder becomes as many slots as OmniZip keeps of it
  (images are not compressed and stay as they are);
- a video with its own audio (``use_audio_in_video=True``) becomes ONE joint block: the audio
  item's features move into the video item, so a single encoder call sees the video and its
  audio (vLLM encodes modalities in separate calls), decides which tokens of the interleaved
  block are kept, and returns them in sequence order; its slots sit between
  ``<|audio_bos|>`` and ``<|audio_eos|>``, the markers themselves stay;
- the joint item's cache identity combines the video's and the audio's hashes (the encoder
  output depends on both; the same clip still maps to the same identity, so a prefix cache
  reuses the compressed prefix across questions).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from vllm.model_executor.models.qwen2_5_omni_thinker import Qwen2_5OmniThinkerMultiModalProcessor
from vllm.multimodal.inputs import MultiModalKwargsItem, MultiModalKwargsItems, PlaceholderRange

from ..config import OmniZipConfig
from .layout import (
    MediaBlock,
    audio_block,
    joint_block,
    kept_counts,
    video_block,
    video_rel_positions,
)
from .settings import CONFIG_KEY, server_config

__all__ = [
    "JOINT_AUDIO_FEATURES",
    "JOINT_AUDIO_LENGTHS",
    "OmniZipQwen2_5OmniProcessor",
    "Qwen2_5OmniBlocks",
]

# Keys under which a video item carries its own audio (not the audio modality's keys, so vLLM's
# parsing never mistakes them for a standalone audio item).
JOINT_AUDIO_FEATURES = "omnizip_audio_features"
JOINT_AUDIO_LENGTHS = "omnizip_audio_feature_lengths"


def audio_tokens(feature_length: int) -> int:
    """LLM audio tokens of ``feature_length`` mel frames (conv stem stride 2, then pooling 2)."""
    return ((feature_length - 1) // 2 + 1 - 2) // 2 + 1


def _value(item: Any, key: str, default: Any = None) -> Any:
    elem = item.get(key) if item is not None else None
    return default if elem is None or elem.data is None else elem.data


@dataclass(frozen=True)
class Qwen2_5OmniBlocks:
    """The block layouts of one Qwen2.5-Omni thinker config (processor and model share it)."""

    audio_token_id: int
    video_token_id: int
    image_token_id: int
    audio_bos_id: int
    audio_eos_id: int
    merge_size: int
    positions_per_second: int
    chunk_positions: int

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

    def video(self, grid_thw: Any, second_per_grid: float, n_audio: int | None) -> MediaBlock:
        """A video's block; ``n_audio`` tokens of its own audio interleaved when not None."""
        t, h, w = (int(v) for v in torch.as_tensor(grid_thw).flatten().tolist())
        llm_h, llm_w = h // self.merge_size, w // self.merge_size
        pos = video_rel_positions(t, llm_h, llm_w, second_per_grid, self.positions_per_second)
        if n_audio is None:
            return video_block(pos, llm_h * llm_w, self.video_token_id)
        return joint_block(
            pos, llm_h * llm_w, n_audio, self.chunk_positions,
            audio_token_id=self.audio_token_id, video_token_id=self.video_token_id,
        )

    def audio(self, n_audio: int) -> MediaBlock:
        return audio_block(n_audio, self.audio_token_id)

    def kept(self, block: MediaBlock, config: OmniZipConfig) -> int:
        """Slots the block's compressed form fills (kept audio + kept video)."""
        audio, video = kept_counts(
            block, config, audio_token_id=self.audio_token_id, video_token_id=self.video_token_id
        )
        return audio + video

    # -- what a processed item says about its block ---------------------------------------
    @staticmethod
    def second_per_grid(video_item: Any) -> float:
        value = _value(video_item, "second_per_grid_ts")
        return 1.0 if value is None else float(torch.as_tensor(value).flatten()[0])

    @staticmethod
    def uses_audio_in_video(video_item: Any) -> bool:
        value = _value(video_item, "use_audio_in_video")
        return value is not None and torch.as_tensor(value).numel() > 0 and bool(
            torch.as_tensor(value).flatten()[0]
        )


def _joint_hash(video_hash: str, audio_hash: str) -> str:
    return hashlib.sha256(f"omnizip-joint|{video_hash}|{audio_hash}".encode()).hexdigest()


class OmniZipQwen2_5OmniProcessor(Qwen2_5OmniThinkerMultiModalProcessor):
    """vLLM's Qwen2.5-Omni processor with OmniZip's slot counts (see the module docstring)."""

    def _omnizip(self) -> tuple[OmniZipConfig, Qwen2_5OmniBlocks]:
        cached = getattr(self, "_omnizip_cached", None)
        if cached is None:
            hf_config = self.info.ctx.model_config.hf_config
            config = server_config(getattr(hf_config, CONFIG_KEY, None))
            cached = (config, Qwen2_5OmniBlocks.from_thinker_config(self.info.get_hf_config()))
            self._omnizip_cached = cached
        return cached

    def _cached_apply_hf_processor(self, inputs, timing_ctx):
        # The rewrite in `apply` reads every item's grid and audio length and moves a video's
        # audio into the video item; vLLM's processor cache hands back cached items as None, so
        # it is bypassed (the HF processor runs for every request; the engine-side caches of
        # encoder outputs and of the prefix still work on the rewritten items' identities).
        return self._apply_hf_processor(inputs, timing_ctx)

    def apply(self, inputs, timing_ctx):
        return self._compress_layout(super().apply(inputs, timing_ctx))

    def _compress_layout(self, result: dict) -> dict:
        config, blocks = self._omnizip()
        ids = list(result["prompt_token_ids"])
        kwargs = result["mm_kwargs"]
        hashes = result["mm_hashes"]
        ranges = result["mm_placeholders"]
        videos = list(kwargs.get("video", []))
        audios = list(kwargs.get("audio", []))
        joint = bool(videos) and any(blocks.uses_audio_in_video(v) for v in videos)
        if joint and len(audios) != len(videos):
            raise ValueError(
                f"use_audio_in_video needs one audio track per video, got {len(audios)} audio "
                f"item(s) for {len(videos)} video(s)"
            )
        # (start, end, slot count, slot token id, modality, new item index) per placeholder
        edits: list[tuple[int, int, int, int, str, int]] = []
        new_items: dict[str, list] = {}
        new_hashes: dict[str, list[str]] = {}
        for i, (item, rng) in enumerate(zip(videos, ranges.get("video", []), strict=True)):
            grid = _value(item, "video_grid_thw")
            spg = blocks.second_per_grid(item)
            start, end = rng.offset, rng.offset + rng.length
            video_hash = hashes["video"][i]
            if joint:
                audio_item = audios[i]
                n_audio = audio_tokens(int(torch.as_tensor(_value(audio_item, "audio_feature_lengths")).flatten()[0]))
                block = blocks.video(grid, spg, n_audio)
                if ids[start] != blocks.audio_bos_id or ids[end - 1] != blocks.audio_eos_id:
                    raise ValueError(
                        "use_audio_in_video: expected the video placeholder to run from "
                        "<|audio_bos|> to <|audio_eos|>; is the prompt's video written as "
                        "<|vision_bos|><|VIDEO|><|vision_eos|>?"
                    )
                start, end = start + 1, end - 1  # the markers stay, the tokens between are slots
                item = MultiModalKwargsItem(dict(item))
                item[JOINT_AUDIO_FEATURES] = audio_item["input_audio_features"]
                item[JOINT_AUDIO_LENGTHS] = audio_item["audio_feature_lengths"]
                video_hash = _joint_hash(video_hash, hashes["audio"][i])
            else:
                block = blocks.video(grid, spg, None)
            slots = self._slots(block, config, "video")
            edits.append((start, end, slots, blocks.video_token_id, "video", len(new_items.setdefault("video", []))))
            new_items["video"].append(item)
            new_hashes.setdefault("video", []).append(video_hash)
        if not joint:
            for i, (item, rng) in enumerate(zip(audios, ranges.get("audio", []), strict=True)):
                n_audio = audio_tokens(int(torch.as_tensor(_value(item, "audio_feature_lengths")).flatten()[0]))
                slots = self._slots(blocks.audio(n_audio), config, "audio")
                edits.append((rng.offset, rng.offset + rng.length, slots, blocks.audio_token_id, "audio",
                              len(new_items.setdefault("audio", []))))
                new_items["audio"].append(item)
                new_hashes.setdefault("audio", []).append(hashes["audio"][i])
        images = kwargs.get("image", [])
        for i, (item, rng) in enumerate(zip(images, ranges.get("image", []), strict=True)):
            edits.append((rng.offset, rng.offset + rng.length, -1, -1, "image", i))
            new_items.setdefault("image", []).append(item)
            new_hashes.setdefault("image", []).append(hashes["image"][i])

        new_ids: list[int] = []
        new_ranges: dict[str, list[PlaceholderRange]] = {m: [None] * len(v) for m, v in new_items.items()}
        cursor = 0
        for start, end, slots, token, modality, index in sorted(edits):
            new_ids.extend(ids[cursor:start])
            if slots < 0:  # uncompressed (image): copied as it is
                old = ranges["image"][index]
                new_ranges[modality][index] = PlaceholderRange(len(new_ids), old.length, old.is_embed)
                new_ids.extend(ids[start:end])
            else:
                new_ranges[modality][index] = PlaceholderRange(len(new_ids), slots)
                new_ids.extend([token] * slots)
            cursor = end
        new_ids.extend(ids[cursor:])
        out = dict(result)
        out["prompt_token_ids"] = new_ids
        out["mm_kwargs"] = MultiModalKwargsItems(new_items)
        out["mm_hashes"] = new_hashes
        out["mm_placeholders"] = new_ranges
        return out

    def _slots(self, block: MediaBlock, config: OmniZipConfig, what: str) -> int:
        slots = self._omnizip()[1].kept(block, config)
        if slots <= 0:
            raise ValueError(
                f"{what}: the item is too short for OmniZip to keep any of its "
                f"{block.ids.numel()} tokens"
            )
        return slots
