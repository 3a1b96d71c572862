"""omnizip: training-free audio-guided token compression (OmniZip) for omnimodal LLMs."""

from . import stream  # callable: omnizip.stream(model, processor, config)
from .config import PRESETS, OmniZipConfig
from .core import (
    CausalHistory,
    CompressionResult,
    TokenDecision,
    audio_attention_scores,
    audio_energy_scores,
    compress_sequence,
    pool_audio_scores,
)
from .patch import OmniZipHandle, patch

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CausalHistory",
    "CompressionResult",
    "OmniZipConfig",
    "OmniZipHandle",
    "TokenDecision",
    "__version__",
    "audio_attention_scores",
    "audio_energy_scores",
    "compress_sequence",
    "patch",
    "pool_audio_scores",
    "stream",
]
