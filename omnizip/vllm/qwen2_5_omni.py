"""OmniZip Qwen2.5-Omni for vLLM (architecture ``OmniZipQwen2_5OmniForConditionalGeneration``).

vLLM's own Qwen2.5-Omni processor and thinker with the OmniZip mixins in front
(:mod:`omnizip.vllm.processing`, :mod:`omnizip.vllm.thinker`; the family's layout rules are
:class:`~omnizip.vllm.blocks.Qwen2_5OmniBlocks`). The audio encoder is transformers' module, as
in the Hugging Face patch, so the scored layer is the same module.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModalPruning
from vllm.model_executor.models.qwen2_5_omni_thinker import (
    Qwen2_5OmniThinkerDummyInputsBuilder,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2_5OmniThinkerMultiModalProcessor,
    Qwen2_5OmniThinkerProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .blocks import Qwen2_5OmniBlocks
from .processing import OmniZipProcessorMixin
from .thinker import OmniZipThinkerMixin

__all__ = ["OmniZipQwen2_5OmniProcessor", "OmniZipQwen2_5OmniThinker"]


class OmniZipQwen2_5OmniProcessor(OmniZipProcessorMixin, Qwen2_5OmniThinkerMultiModalProcessor):
    """vLLM's Qwen2.5-Omni processor with OmniZip's slot counts."""

    blocks_class = Qwen2_5OmniBlocks


@MULTIMODAL_REGISTRY.register_processor(
    OmniZipQwen2_5OmniProcessor,
    info=Qwen2_5OmniThinkerProcessingInfo,
    dummy_inputs=Qwen2_5OmniThinkerDummyInputsBuilder,
)
class OmniZipQwen2_5OmniThinker(
    OmniZipThinkerMixin, Qwen2_5OmniThinkerForConditionalGeneration, SupportsMultiModalPruning
):
    """vLLM's Qwen2.5-Omni thinker that feeds the decoder OmniZip's kept tokens."""

    blocks_class = Qwen2_5OmniBlocks

    def _run_audio_tower(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        after_cnn, _ = self.audio_tower._get_feat_extract_output_lengths(lens)
        out = self.audio_tower(features, feature_lens=lens, aftercnn_lens=after_cnn)
        return out.last_hidden_state
