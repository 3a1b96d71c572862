"""OmniZip Qwen3-Omni for vLLM (architecture ``OmniZipQwen3OmniMoeForConditionalGeneration``).

vLLM's own Qwen3-Omni processor and thinker with the OmniZip mixins in front
(:mod:`omnizip.vllm.processing`, :mod:`omnizip.vllm.thinker`; layout rules:
:class:`~omnizip.vllm.blocks.Qwen3OmniBlocks`: time-merged audio and video, 13 position ids per
second, one audio token per encoder frame, ISTC frame parity along the stream). vLLM's audio
encoder is its own module here (packed ``qkv_proj``, heads split under tensor parallelism); the
scorer reads q/k from that projection. Video embeddings carry the DeepStack features; they stay
with their token and are pruned with it.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModalPruning
from vllm.model_executor.models.qwen2_5_omni_thinker import Qwen2_5OmniThinkerDummyInputsBuilder
from vllm.model_executor.models.qwen3_omni_moe_thinker import (
    Qwen3OmniMoeThinkerForConditionalGeneration,
    Qwen3OmniMoeThinkerMultiModalProcessor,
    Qwen3OmniMoeThinkerProcessingInfo,
    _get_feat_extract_output_lengths,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .blocks import Qwen3OmniBlocks
from .processing import OmniZipProcessorMixin
from .thinker import OmniZipThinkerMixin

__all__ = ["OmniZipQwen3OmniProcessor", "OmniZipQwen3OmniThinker"]


class OmniZipQwen3OmniProcessor(OmniZipProcessorMixin, Qwen3OmniMoeThinkerMultiModalProcessor):
    """vLLM's Qwen3-Omni processor with OmniZip's slot counts."""

    blocks_class = Qwen3OmniBlocks


@MULTIMODAL_REGISTRY.register_processor(
    OmniZipQwen3OmniProcessor,
    info=Qwen3OmniMoeThinkerProcessingInfo,
    dummy_inputs=Qwen2_5OmniThinkerDummyInputsBuilder,  # vLLM's own Qwen3-Omni uses it too
)
class OmniZipQwen3OmniThinker(
    OmniZipThinkerMixin, Qwen3OmniMoeThinkerForConditionalGeneration, SupportsMultiModalPruning
):
    """vLLM's Qwen3-Omni thinker that feeds the decoder OmniZip's kept tokens."""

    blocks_class = Qwen3OmniBlocks

    def _run_audio_tower(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        out_lens = _get_feat_extract_output_lengths(lens)
        return self.audio_tower(features, feature_lens=lens, aftercnn_lens=out_lens)
