"""vLLM processor side of OmniZip: declare the compressed slot counts up front.

vLLM's processor (``_get_prompt_updates``) fixes every media item's placeholder tokens before
any encoder runs, and the model must then fill exactly those slots. With ``budget="exact"`` the
kept counts follow from the layout (:func:`omnizip.vllm.layout.kept_counts`), so
:class:`OmniZipProcessorMixin` runs vLLM's own Qwen-Omni processing and then rewrites its
result:

- every video / standalone audio placeholder becomes as many slots as OmniZip keeps of it
  (images are not compressed and stay as they are);
- a video with its own audio (``use_audio_in_video=True``) becomes ONE joint block: the audio
  item's features move into the video item, so a single encoder call sees the video and its
  audio (vLLM encodes modalities in separate calls), decides which tokens of the interleaved
  block are kept, and returns them in sequence order; its slots sit between the audio start
  and end markers, the markers themselves stay;
- the joint item's cache identity combines the video's and the audio's hashes (the encoder
  output depends on both; the same clip still maps to the same identity, so a prefix cache
  reuses the compressed prefix across questions).
"""

from __future__ import annotations

import hashlib

import torch
from vllm.multimodal.inputs import MultiModalKwargsItem, MultiModalKwargsItems, PlaceholderRange

from ..config import OmniZipConfig
from .blocks import JOINT_AUDIO_FEATURES, JOINT_AUDIO_LENGTHS, OmniBlocks, item_value
from .layout import MediaBlock
from .settings import CONFIG_KEY, server_config

__all__ = ["OmniZipProcessorMixin"]


def _joint_hash(video_hash: str, audio_hash: str) -> str:
    return hashlib.sha256(f"omnizip-joint|{video_hash}|{audio_hash}".encode()).hexdigest()


class OmniZipProcessorMixin:
    """Put before a vLLM Qwen-Omni processor class: OmniZip's slot counts (module docstring).
    Subclasses set :attr:`blocks_class`."""

    blocks_class: type[OmniBlocks]

    def _omnizip(self) -> tuple[OmniZipConfig, OmniBlocks]:
        cached = getattr(self, "_omnizip_cached", None)
        if cached is None:
            hf_config = self.info.ctx.model_config.hf_config
            config = server_config(getattr(hf_config, CONFIG_KEY, None))
            cached = (config, self.blocks_class.from_thinker_config(self.info.get_hf_config()))
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
            start, end = rng.offset, rng.offset + rng.length
            video_hash = hashes["video"][i]
            if joint:
                audio_item = audios[i]
                length = int(torch.as_tensor(item_value(audio_item, "audio_feature_lengths")).flatten()[0])
                block = blocks.item_block(item, length)
                if ids[start] != blocks.audio_bos_id or ids[end - 1] != blocks.audio_eos_id:
                    raise ValueError(
                        "use_audio_in_video: expected the video placeholder to run from the "
                        "audio start marker to the audio end marker; is the prompt's video "
                        "written as the chat template writes it?"
                    )
                start, end = start + 1, end - 1  # the markers stay, the tokens between are slots
                item = MultiModalKwargsItem(dict(item))
                item[JOINT_AUDIO_FEATURES] = audio_item["input_audio_features"]
                item[JOINT_AUDIO_LENGTHS] = audio_item["audio_feature_lengths"]
                video_hash = _joint_hash(video_hash, hashes["audio"][i])
            else:
                block = blocks.item_block(item, None)
            slots = self._slots(block, config, "video")
            edits.append((start, end, slots, blocks.video_token_id, "video", len(new_items.setdefault("video", []))))
            new_items["video"].append(item)
            new_hashes.setdefault("video", []).append(video_hash)
        if not joint:
            for i, (item, rng) in enumerate(zip(audios, ranges.get("audio", []), strict=True)):
                length = int(torch.as_tensor(item_value(item, "audio_feature_lengths")).flatten()[0])
                n_audio = blocks.audio_tokens(length)
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
        """Slots of a block (an error for an item too short to keep anything)."""
        slots = self._omnizip()[1].kept(block, config)
        if slots <= 0:
            raise ValueError(
                f"{what}: the item is too short for OmniZip to keep any of its "
                f"{block.ids.numel()} tokens"
            )
        return slots
