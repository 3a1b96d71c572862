"""The model side of the OmniZip vLLM plugin, shared by the Qwen-Omni families.

:class:`OmniZipThinkerMixin` goes before vLLM's own thinker class (weights, decoder and encoders
stay vLLM's); what changes is what the encoders hand to the decoder:

- :meth:`~OmniZipThinkerMixin.embed_multimodal` encodes each video (with its own audio when the
  processor made it a joint block, :mod:`omnizip.vllm.processing`) and each standalone audio in
  a call of its own, scores the audio with the last audio-encoder layer
  (:class:`~omnizip.vllm.audio_scores.AudioScorer`), lays the tokens out as transformers does
  (:mod:`omnizip.vllm.blocks`) and runs the core (:func:`omnizip.core.compress_sequence`) on
  that block. It returns the kept tokens in sequence order (anchors merged), each with its
  relative M-RoPE position in extra channels: vLLM's multimodal-pruning convention.
- :meth:`~OmniZipThinkerMixin.get_mrope_input_positions` gives transformers' positions for the
  compressed prompt (text after a block continues as after the uncompressed block), the slots at
  their block's base; :meth:`~OmniZipThinkerMixin.recompute_mrope_positions`
  (``SupportsMultiModalPruning``) adds the kept tokens' relative positions once the encoder has
  decided, and strips the channels. vLLM's runners call it only on their pruning path, which
  :mod:`omnizip.vllm.runner` turns on (V1 and standalone CPU runners) and
  :meth:`~OmniZipThinkerMixin.get_model_state_cls` asks for (V2 runner).

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
rank) and the same deterministic core, so every rank keeps the same tokens (tested with 2 ranks
on CPU in tests/test_vllm_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core import compress_sequence
from .audio_scores import AudioScorer
from .blocks import JOINT_AUDIO_FEATURES, JOINT_AUDIO_LENGTHS, OmniBlocks, item_value
from .layout import MediaBlock, encode_positions
from .positions import BlockSpec, fill_slot_positions, prompt_positions
from .settings import CONFIG_KEY, server_config

__all__ = ["OmniZipThinkerMixin"]


def _model_state_cls() -> type:
    from .model_state import OmniZipModelState  # vLLM's V2 runner code: only when it asks

    return OmniZipModelState


class _ModelStateHook:
    """``get_model_state_cls``, the V2 runner's hook for a model's own model state.

    vLLM looks it up with ``hasattr(model, "get_model_state_cls")``. The standalone CPU runner
    (vLLM 0.34, CPUs without Triton other than x86) refuses every model that has it, so there
    the attribute does not exist (AttributeError) and :mod:`omnizip.vllm.runner` adds the
    pruner to that runner's own model state instead.
    """

    def __get__(self, instance: Any, owner: type) -> Any:
        from .runner import standalone_cpu_runner

        if standalone_cpu_runner():
            raise AttributeError("get_model_state_cls")
        return _model_state_cls


class OmniZipThinkerMixin:
    """Put before a vLLM Qwen-Omni thinker class (with ``SupportsMultiModalPruning``).
    Subclasses set :attr:`blocks_class` and implement :meth:`_run_audio_tower`."""

    supports_multimodal_pruning = True
    # vLLM's own video pruning (EVS) is a different compression: refused, see __init__
    supported_video_pruning_methods = ()
    #: read by omnizip.vllm.runner: the runner must take the multimodal-pruning path
    omnizip_needs_pruning_path = True
    #: ``model.get_model_state_cls()``: the V2 runner's model state with the pruner built
    get_model_state_cls = _ModelStateHook()
    blocks_class: type[OmniBlocks]

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
        self.blocks = self.blocks_class.from_thinker_config(self.config)
        self.hidden_size = int(self.config.text_config.hidden_size)
        deepstack = getattr(self.config.vision_config, "deepstack_visual_indexes", None) or ()
        #: widths of media embeddings the decoder takes (video: + DeepStack features)
        self.media_widths = (self.hidden_size, self.hidden_size * (1 + len(deepstack)))
        self.scorer = AudioScorer(self.audio_tower.layers[-1].self_attn, self.omnizip, self.blocks.audio_pool)

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
        with self.scorer.scoring(self.blocks.stream_frames(lens.cpu())) as captured:
            embeds = self._run_audio_tower(features.to(self.audio_tower.dtype), lens)
        if embeds.shape[0] != self.blocks.audio_tokens(length):
            raise RuntimeError(f"omnizip: audio encoder gave {embeds.shape[0]} tokens for {length} frames")
        return embeds, self.scorer.token_scores(captured, embeds)

    def _compress(
        self,
        block: MediaBlock,
        video_embeds: torch.Tensor | None,
        audio_embeds: torch.Tensor | None,
        audio_scores: torch.Tensor | None,
    ) -> torch.Tensor:
        """The block's kept tokens in order, ``[K, W + POSITION_CHANNELS]`` (docs/algorithm.md).

        ``W`` is the decoder width, or for video on Qwen3-Omni the decoder width plus the
        DeepStack features the vision encoder appends; those ride along with their token (zeros
        for audio tokens, where the decoder adds nothing) and are pruned with the same mask.
        OmniZip itself sees the decoder-width embeddings only, as in the Hugging Face patch.
        """
        ref = video_embeds if video_embeds is not None else audio_embeds
        device, dtype = ref.device, ref.dtype
        width = ref.shape[-1]
        embeds = torch.zeros(block.ids.numel(), width, dtype=dtype, device=device)
        if video_embeds is not None:
            embeds[block.video_index.to(device)] = video_embeds.to(dtype)
        if audio_embeds is not None:
            embeds[block.audio_index.to(device), : audio_embeds.shape[-1]] = audio_embeds.to(dtype)
        hidden = self.hidden_size
        with torch.no_grad():
            result = compress_sequence(
                embeds[:, :hidden],
                block.ids.to(device),
                audio_scores,
                audio_token_id=self.blocks.audio_token_id,
                video_token_id=self.blocks.video_token_id,
                tokens_per_frame=max(block.tokens_per_frame, 1),
                config=self.blocks.method(self.omnizip),
            )
        keep = result.keep
        kept = torch.cat([result.embeds[keep], embeds[keep, hidden:]], dim=1)
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
                t, h, w = (int(v) for v in torch.as_tensor(item_value(feature.data, "image_grid_thw")).tolist())
                m = self.blocks.merge_size
                grid = torch.stack(torch.meshgrid(
                    torch.arange(t) * self.blocks.positions_per_second, torch.arange(h // m),
                    torch.arange(w // m), indexing="ij",
                )).reshape(3, -1)
                specs.append(BlockSpec(rng.offset, rng.length, int(grid.max()) + 1, exact=grid))
                continue
            block, joint = self._feature_block(feature)
            joint = joint and self.blocks.joint_markers_shared
            specs.append(BlockSpec(rng.offset, rng.length, block.extent, joint=joint))
        return prompt_positions(len(input_tokens), specs)

    def _feature_block(self, feature: Any) -> tuple[MediaBlock, bool]:
        if feature.modality == "audio":
            length = int(torch.as_tensor(item_value(feature.data, "audio_feature_lengths")).flatten()[0])
            return self.blocks.audio(self.blocks.audio_tokens(length)), False
        joint_lengths = item_value(feature.data, JOINT_AUDIO_LENGTHS)
        if joint_lengths is None:
            return self.blocks.item_block(feature.data, None), False
        length = int(torch.as_tensor(joint_lengths).flatten()[0])
        return self.blocks.item_block(feature.data, length), True

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
            self.media_widths,
        )
        delta = int(positions.max()) + 1 - ids.numel() if ids.numel() else 0
        return embeds, positions, delta

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if multimodal_embeddings is not None:
            for emb in multimodal_embeddings:
                if emb.shape[-1] not in self.media_widths:
                    raise RuntimeError(
                        "omnizip: compressed media embeddings reached the decoder with their "
                        "position channels: vLLM's multimodal-pruning path is off (is the "
                        "omnizip plugin loaded in this process? VLLM_PLUGINS must allow it)"
                    )
        return super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )

    def _run_audio_tower(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """One stream through the family's audio encoder: ``[N_a, D]``."""
        raise NotImplementedError
