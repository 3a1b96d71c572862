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

vLLM's processed items are cached in this (front-end) process by vLLM's processor-only cache,
a video and its own audio as a pair (:meth:`OmniZipProcessorMixin._cached_apply_hf_processor`),
so a repeated clip or an earlier chunk of a live stream is not preprocessed again
(docs/serving_streams.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch
from vllm.multimodal.inputs import MultiModalKwargsItem, MultiModalKwargsItems, PlaceholderRange

from ..config import OmniZipConfig
from .blocks import JOINT_AUDIO_FEATURES, JOINT_AUDIO_LENGTHS, OmniBlocks, item_value
from .layout import MediaBlock
from .settings import CONFIG_KEY, server_config

__all__ = ["OmniZipProcessorMixin"]


def _joint_hash(video_hash: str, audio_hash: str) -> str:
    return hashlib.sha256(f"omnizip-joint|{video_hash}|{audio_hash}".encode()).hexdigest()


class _PairedCache:
    """A view of a processor cache whose ``is_cached`` answers for (video i, audio i) pairs
    when a prompt has as many audio items as videos (each video's own audio).

    vLLM asks ``is_cached`` once per modality with that modality's list of hashes (the very
    list object it was given), which is how the two lists are recognised."""

    def __init__(self, cache, hashes: dict[str, list[str]]) -> None:
        self.cache = cache
        self.videos, self.audios = hashes.get("video"), hashes.get("audio")
        self.both: list[bool] | None = None
        if self.videos and self.audios is not None and len(self.videos) == len(self.audios):
            self.both = [all(cache.is_cached([v, a])) for v, a in zip(self.videos, self.audios, strict=True)]

    def is_cached(self, hashes: list[str]) -> list[bool]:
        if self.both is not None and (hashes is self.videos or hashes is self.audios):
            return list(self.both)
        return self.cache.is_cached(hashes)


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
        # vLLM's processor cache, with whole items kept in this (front-end) process. The rewrite
        # in `apply` reads every item's grid and audio length and moves a video's audio into
        # the video item, so it needs every item's data, while vLLM's IPC caches hand a cached
        # item back as None (its data waits in the engine under the item's identity, which the
        # rewrite changes). vLLM's processor-only cache hands back the whole item: a repeated
        # clip (or an earlier chunk of a stream) is not preprocessed again; its items still
        # travel to the engine, which stores them under the rewritten identities.
        if inputs.cache is None:  # the server disabled the cache (mm_processor_cache_gb=0)
            return self._apply_hf_processor(inputs, timing_ctx)
        return super()._cached_apply_hf_processor(replace(inputs, cache=self._item_cache()), timing_ctx)

    def _get_cache_missing_items(self, cache, mm_data_items, mm_hashes):
        # A video and its own audio are processed (and rewritten) together, so they are cached
        # as a pair: if either one is missing, both are processed again (vLLM's Qwen-Omni
        # processor refuses videos without their audio, e.g. when a silent chunk's audio is
        # cached from another chunk while its video is not).
        return super()._get_cache_missing_items(_PairedCache(cache, mm_hashes), mm_data_items, mm_hashes)

    def _item_cache(self):
        cache = getattr(self, "_omnizip_item_cache", None)
        if cache is None:
            from vllm.multimodal.cache import MultiModalProcessorOnlyCache

            cache = MultiModalProcessorOnlyCache(self.info.ctx.model_config)
            self._omnizip_item_cache = cache
        return cache

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
