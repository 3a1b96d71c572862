"""``omnizip.OmniZipConfig``: OmniZip's configuration as a compression method.

The configuration itself (fields, validation, presets, ``compress``) is defined with the
algorithm in :mod:`omnizip.core.config`, which imports nothing from the rest of the package.
This subclass adds the method protocol (:class:`omnizip.method.CompressionMethod`: what the
model adapters ask of any method), so that patching a model takes it like any baseline.
"""

from .core.config import (
    AUDIO_SCORE_MODES,
    AUDIO_SELECTIONS,
    BUDGET_MODES,
    FRAME_PARITIES,
    MAX_SEED,
    MERGE_SCOPES,
    PRESETS,
)
from .core.config import OmniZipConfig as CoreOmniZipConfig
from .method import CompressionMethod

__all__ = [
    "AUDIO_SCORE_MODES",
    "AUDIO_SELECTIONS",
    "BUDGET_MODES",
    "FRAME_PARITIES",
    "MAX_SEED",
    "MERGE_SCOPES",
    "PRESETS",
    "CoreOmniZipConfig",
    "OmniZipConfig",
]


class OmniZipConfig(CoreOmniZipConfig, CompressionMethod):
    """:class:`omnizip.core.config.OmniZipConfig` (see there for every field) that is also a
    :class:`~omnizip.method.CompressionMethod`. Fields, validation, equality and ``replace``
    are the core's; the core's fields and ``compress`` take precedence over the protocol's
    defaults."""
