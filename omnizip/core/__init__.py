"""The OmniZip algorithm on plain tensors (SPEC sections 2-4, 6, 7). Knows nothing of transformers."""

from .compress import CompressionResult, TokenDecision, compress_sequence
from .layout import SequenceLayout, build_layout
from .scores import audio_attention_scores, audio_energy_scores, pool_audio_scores

__all__ = [
    "CompressionResult",
    "SequenceLayout",
    "TokenDecision",
    "audio_attention_scores",
    "audio_energy_scores",
    "build_layout",
    "compress_sequence",
    "pool_audio_scores",
]
