"""OmniZip's configuration, defined with the algorithm in :mod:`omnizip.core.config`.

Re-exported here for ``from omnizip.config import OmniZipConfig``. The core cannot import
the method protocol (it imports nothing from the rest of the package), so the configuration
implements it by shape and is registered as a :class:`~omnizip.method.CompressionMethod`
here, where both are visible.
"""

from .core.config import (
    AUDIO_SCORE_MODES,
    AUDIO_SELECTIONS,
    BUDGET_MODES,
    FRAME_PARITIES,
    MAX_SEED,
    MERGE_SCOPES,
    PRESETS,
    OmniZipConfig,
)
from .method import CompressionMethod

CompressionMethod.register(OmniZipConfig)

__all__ = [
    "AUDIO_SCORE_MODES",
    "AUDIO_SELECTIONS",
    "BUDGET_MODES",
    "FRAME_PARITIES",
    "MAX_SEED",
    "MERGE_SCOPES",
    "PRESETS",
    "OmniZipConfig",
]
