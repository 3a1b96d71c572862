"""OmniZip Qwen2.5-Omni thinker for vLLM (architecture ``OmniZipQwen2_5OmniForConditionalGeneration``).

A subclass of vLLM's own ``Qwen2_5OmniThinkerForConditionalGeneration``: weights, decoder and
encoders are vLLM's; what changes is what the encoders hand to the decoder.

- :meth:`embed_multimodal` encodes each video (with its own audio when the processor made it a
  joint block, see :mod:`omnizip.vllm.qwen2_5_omni_processing`) and each standalone audio in a
  call of its own, scores the audio with the last audio-encoder layer
  (:class:`~omnizip.vllm.audio_scores.AudioScorer`), lays the tokens out as transformers does
  (:mod:`omnizip.vllm.layout`) and runs the core (:func:`omnizip.core.compress_sequence`) on
  that block. It returns the kept tokens in sequence order (anchors merged), each with its
  relative M-RoPE position in extra channels: vLLM's multimodal-pruning convention.
- :meth:`get_mrope_input_positions` gives transformers' positions for the compressed prompt
  (text after a block continues after the uncompressed block), the slots at their block's base;
  :meth:`recompute_mrope_positions` (``SupportsMultiModalPruning``) adds the kept tokens'
  relative positions once the encoder has decided, and strips the channels.

Scope of a decision: one media item (a video with its own audio, a video, a standalone audio).
For a prompt with one such item this is exactly the Hugging Face patch's decision (which runs
over the whole prompt); for a prompt with several items the patch would also pair windows and
score merges across items, while vLLM decides per item: that keeps each item's compressed
tokens independent of the rest of the prompt, which is what lets vLLM cache them (encoder cache,
prefix cache). Images are not compressed (as in the patch).

The decision of an item depends only on that item's media and the server's configuration: each
item is encoded alone (never batched with other requests' items, so even float blocking cannot
differ), the core is deterministic, and nothing reads the batch, the schedule, the prefill chunk
or the tensor-parallel rank. Under tensor parallelism every rank runs the same encoders on the
same inputs (the sharded vision encoder all-gathers / all-reduces to identical outputs on every
rank) and the same deterministic core, so every rank keeps the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModalPruning
from vllm.model_executor.models.qwen2_5_omni_thinker import (
    Qwen2_5OmniThinkerDummyInputsBuilder,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2_5OmniThinkerProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..core import compress_sequence
from .audio_scores import AudioScorer
from .layout import MediaBlock, encode_positions
from .positions import BlockSpec, fill_slot_positions, prompt_positions
from .qwen2_5_omni_processing import (
    JOINT_AUDIO_FEATURES,
    JOINT_AUDIO_LENGTHS,
    OmniZipQwen2_5OmniProcessor,
    Qwen2_5OmniBlocks,
    audio_tokens,
)
from .settings import CONFIG_KEY, server_config

__all__ = ["OmniZipQwen2_5OmniThinker"]


def _data(feature: Any, key: str) -> Any:
    elem = feature.data.get(key) if feature.data is not None else None
    return None if elem is None else elem.data


@MULTIMODAL_REGISTRY.register_processor(
    OmniZipQwen2_5OmniProcessor,
    info=Qwen2_5OmniThinkerProcessingInfo,
    dummy_inputs=Qwen2_5OmniThinkerDummyInputsBuilder,
)
class OmniZipQwen2_5OmniThinker(Qwen2_5OmniThinkerForConditionalGeneration, SupportsMultiModalPruning):
    """vLLM's Qwen2.5-Omni thinker that feeds the decoder OmniZip's kept tokens."""

    supports_multimodal_pruning = True
    # vLLM's own video pruning (EVS) is a different compression: refused, see __init__
    supported_video_pruning_methods = ()
    #: read by omnizip.vllm.runner: the runner must take the multimodal-pruning path
    omnizip_needs_pruning_path = True

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        hf_config = vllm_config.model_config.hf_config
        # validated before anything is built, so a bad setting stops the server at start-up
        self.omnizip = server_config(getattr(hf_config, CONFIG_KEY, None))
        mm_config = vllm_config.model_config.multimodal_config
        if mm_config is not None and mm_config.is_multimodal_pruning_enabled():
            raise ValueError(
                "video_pruning_rate: vLLM's own video pruning cannot be combined with OmniZip "
                "(which already compresses the video); leave video_pruning_rate unset"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.blocks = Qwen2_5OmniBlocks.from_thinker_config(self.config)
        self.hidden_size = int(self.config.text_config.hidden_size)
        self.scorer = AudioScorer(self.audio_tower.layers[-1].self_attn, self.omnizip, pool=2)

    # -- encoders + compression --------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        joint_features = kwargs.pop(JOINT_AUDIO_FEATURES, None)
        joint_lengths = kwargs.pop(JOINT_AUDIO_LENGTHS, None)
        second_per_grid = kwargs.get("second_per_grid_ts")
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        outputs: tuple[torch.Tensor, ...] = ()
        for modality, parsed in inputs.items():  # the order vLLM expects its outputs in
            if modality == "image":
                outputs += tuple(self._process_image_input(parsed))
            elif modality == "video":
                outputs += self._embed_videos(parsed, second_per_grid, joint_features, joint_lengths)
            elif modality == "audio":
                outputs += self._embed_audios(parsed)
        return outputs

    def _embed_videos(self, parsed, second_per_grid, joint_features, joint_lengths) -> tuple:
        grids = parsed["video_grid_thw"].to("cpu", torch.int64)
        n = grids.shape[0]
        spg = [1.0] * n
        if second_per_grid is not None:
            spg = [float(v) for v in torch.as_tensor(second_per_grid).flatten().tolist()]
        audio = [None] * n
        if joint_features is not None:
            audio = self._split_audio(joint_features, joint_lengths)
            if len(audio) != n:
                raise RuntimeError(f"omnizip: {len(audio)} joint audio tracks for {n} videos")
        video_embeds = self._process_video_input(parsed)
        out = []
        for v in range(n):  # one block per video item (not a loop over tokens)
            if audio[v] is None:
                block = self.blocks.video(grids[v], spg[v], None)
                out.append(self._compress(block, video_embeds[v], None, None))
            else:
                features, length = audio[v]
                audio_embeds, scores = self._encode_audio(features, length)
                block = self.blocks.video(grids[v], spg[v], audio_embeds.shape[0])
                out.append(self._compress(block, video_embeds[v], audio_embeds, scores))
        return tuple(out)

    def _embed_audios(self, parsed) -> tuple:
        lengths = parsed["audio_feature_lengths"]
        out = []
        for features, length in self._split_audio(parsed["input_features"], lengths):
            audio_embeds, scores = self._encode_audio(features, length)
            block = self.blocks.audio(audio_embeds.shape[0])
            out.append(self._compress(block, None, audio_embeds, scores))
        return tuple(out)

    @staticmethod
    def _split_audio(features: Any, lengths: Any) -> list[tuple[torch.Tensor, int]]:
        """Per audio stream: (mel features ``[n_mels, T]``, T), from vLLM's flat batch."""
        lens = [int(v) for v in torch.as_tensor(lengths).flatten().tolist()]
        if isinstance(features, (list, tuple)):
            feats = [f if f.dim() == 2 else f.reshape(f.shape[-2], -1) for f in features]
            features = torch.cat(feats, dim=-1)
        if features.dim() == 3:  # padded [S, n_mels, T_max]
            return [(features[i, :, :n], n) for i, n in enumerate(lens)]
        return list(zip(features.split(lens, dim=-1), lens, strict=True))

    def _encode_audio(self, features: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One audio stream through the audio encoder: (embeds ``[N_a, D]``, scores ``[N_a]``)."""
        lens = torch.tensor([length], dtype=torch.long, device=features.device)
        after_cnn, _ = self.audio_tower._get_feat_extract_output_lengths(lens)
        with self.scorer.scoring((lens - 1) // 2 + 1) as captured:
            out = self.audio_tower(
                features.to(self.audio_tower.dtype), feature_lens=lens, aftercnn_lens=after_cnn
            )
        embeds = out.last_hidden_state
        if embeds.shape[0] != audio_tokens(length):
            raise RuntimeError(f"omnizip: audio encoder gave {embeds.shape[0]} tokens for {length} frames")
        return embeds, self.scorer.token_scores(captured, embeds)

    def _compress(
        self,
        block: MediaBlock,
        video_embeds: torch.Tensor | None,
        audio_embeds: torch.Tensor | None,
        audio_scores: torch.Tensor | None,
    ) -> torch.Tensor:
        """The block's kept tokens in order, ``[K, D + POSITION_CHANNELS]`` (docs/algorithm.md)."""
        ref = video_embeds if video_embeds is not None else audio_embeds
        device, dtype = ref.device, ref.dtype
        embeds = torch.empty(block.ids.numel(), ref.shape[-1], dtype=dtype, device=device)
        if video_embeds is not None:
            embeds[block.video_index.to(device)] = video_embeds.to(dtype)
        if audio_embeds is not None:
            embeds[block.audio_index.to(device)] = audio_embeds.to(dtype)
        with torch.no_grad():
            result = compress_sequence(
                embeds,
                block.ids.to(device),
                audio_scores,
                audio_token_id=self.blocks.audio_token_id,
                video_token_id=self.blocks.video_token_id,
                tokens_per_frame=max(block.tokens_per_frame, 1),
                config=self.omnizip,
            )
        keep = result.keep
        kept = result.embeds[keep]
        declared = self.blocks.kept(block, self.omnizip)
        if kept.shape[0] != declared:
            raise RuntimeError(
                f"omnizip: kept {kept.shape[0]} tokens of a block whose {declared} slots were "
                "declared up front (budget='exact' must meet its count)"
            )
        channels = encode_positions(block.rel_positions.to(device)[:, keep], dtype)
        return torch.cat([kept, channels], dim=1)

    # -- positions ---------------------------------------------------------------------------
    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        specs = []
        for feature in mm_features:
            rng = feature.mm_position
            if feature.modality == "image":
                t, h, w = (int(v) for v in torch.as_tensor(_data(feature, "image_grid_thw")).tolist())
                m = self.blocks.merge_size
                grid = torch.stack(torch.meshgrid(
                    torch.arange(t) * self.blocks.positions_per_second, torch.arange(h // m),
                    torch.arange(w // m), indexing="ij",
                )).reshape(3, -1)
                specs.append(BlockSpec(rng.offset, rng.length, int(grid.max()) + 1, exact=grid))
                continue
            block, joint = self._feature_block(feature)
            specs.append(BlockSpec(rng.offset, rng.length, block.extent, joint=joint))
        return prompt_positions(len(input_tokens), specs)

    def _feature_block(self, feature: Any) -> tuple[MediaBlock, bool]:
        if feature.modality == "audio":
            length = int(torch.as_tensor(_data(feature, "audio_feature_lengths")).flatten()[0])
            return self.blocks.audio(audio_tokens(length)), False
        grid = _data(feature, "video_grid_thw")
        spg = _data(feature, "second_per_grid_ts")
        spg = 1.0 if spg is None else float(torch.as_tensor(spg).flatten()[0])
        joint_lengths = _data(feature, JOINT_AUDIO_LENGTHS)
        if joint_lengths is None:
            return self.blocks.video(grid, spg, None), False
        n_audio = audio_tokens(int(torch.as_tensor(joint_lengths).flatten()[0]))
        return self.blocks.video(grid, spg, n_audio), True

    def recompute_mrope_positions(
        self,
        input_ids: list[int] | torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor],
        mrope_positions: torch.Tensor,
        num_computed_tokens: int,
    ) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]:
        ids = torch.as_tensor(input_ids, dtype=torch.int64)
        embeds, positions = fill_slot_positions(
            ids,
            mrope_positions,
            multimodal_embeddings,
            num_computed_tokens,
            (self.blocks.image_token_id, self.blocks.video_token_id, self.blocks.audio_token_id),
            self.hidden_size,
        )
        delta = int(positions.max()) + 1 - ids.numel() if ids.numel() else 0
        return embeds, positions, delta

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if multimodal_embeddings is not None:
            for emb in multimodal_embeddings:
                if emb.shape[-1] != self.hidden_size:
                    raise RuntimeError(
                        "omnizip: compressed media embeddings reached the decoder with their "
                        "position channels: vLLM's multimodal-pruning path is off (is the "
                        "omnizip plugin loaded in this process? VLLM_PLUGINS must allow it)"
                    )
        return super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )
