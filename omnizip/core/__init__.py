"""The OmniZip algorithm and its configuration on plain tensors (algorithm §2-4, 6, 7).

Knows nothing of transformers and imports nothing from the rest of the package.
"""

from .compress import CompressionResult, TokenDecision, compress_sequence
from .config import PRESETS, OmniZipConfig
from .history import CausalHistory
from .layout import SequenceLayout, build_layout
from .scores import audio_attention_scores, audio_energy_scores, pool_audio_scores
from .select import DEFAULT_BLOCK_ELEMENTS

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "PRESETS",
    "CausalHistory",
    "CompressionResult",
    "OmniZipConfig",
    "SequenceLayout",
    "TokenDecision",
    "audio_attention_scores",
    "audio_energy_scores",
    "build_layout",
    "compress_sequence",
    "pool_audio_scores",
]
