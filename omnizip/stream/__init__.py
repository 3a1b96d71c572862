"""OmniZip on live streams: ``session = omnizip.stream(model, processor, config)``.

This module is callable: ``omnizip.stream(model, processor, config, **options)`` is
:func:`stream`, which builds a :class:`StreamSession` (docs/streaming.md). Its other names:
:func:`offline_inputs` (the offline causal path over a whole clip), :class:`StreamWindow`,
:class:`Answer`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .offline import offline_inputs
from .retained import StreamWindow
from .session import Answer, StreamSession

__all__ = ["Answer", "StreamSession", "StreamWindow", "offline_inputs", "stream"]


def stream(model: Any, processor: Any, config: Any, **options: Any) -> StreamSession:
    """A :class:`StreamSession` of ``model`` (a Qwen2.5-Omni or Qwen3-Omni model or thinker,
    not patched) with its ``processor`` and a causal ``config``
    (``OmniZipConfig(causal=True)``; ``OmniZipConfig.preset("45", causal=True)``).

    Options: ``fps`` (2.0), ``max_cache_tokens`` (None), ``position_limit`` (the model's),
    ``question_positions`` (1024), ``system`` (None); see :class:`StreamSession`.

    Raises:
        ValueError: a configuration that is not causal (naming ``causal``), an unsupported
            model, a bad option.
        TypeError: ``config`` is not an OmniZipConfig.
    """
    return StreamSession(model, processor, config, **options)


class _CallableModule(types.ModuleType):
    """``omnizip.stream`` is this module and :func:`stream` at once."""

    def __call__(self, model: Any, processor: Any, config: Any, **options: Any) -> StreamSession:
        return stream(model, processor, config, **options)


sys.modules[__name__].__class__ = _CallableModule
