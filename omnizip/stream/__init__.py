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

from .answer import Answer
from .items import ChunkStreamSession, StreamChunk
from .offline import offline_inputs
from .retained import StreamWindow
from .session import StreamSession

__all__ = ["Answer", "ChunkStreamSession", "StreamChunk", "StreamSession", "StreamWindow",
           "offline_inputs", "stream"]


def stream(model: Any, processor: Any, config: Any, *, chunk_seconds: float | None = None,
           **options: Any) -> StreamSession | ChunkStreamSession:
    """A live stream on ``model`` (a Qwen2.5-Omni or Qwen3-Omni model or thinker, not
    patched) with its ``processor``.

    Without ``chunk_seconds``: a :class:`StreamSession`, window by window, with a causal
    ``config`` (``OmniZipConfig(causal=True)``; ``OmniZipConfig.preset("45", causal=True)``).
    Options: ``fps`` (2.0), ``max_cache_tokens`` (None), ``position_limit`` (the model's),
    ``question_positions`` (1024), ``system`` (None).

    With ``chunk_seconds``: a :class:`ChunkStreamSession`, the stream as chunk items of that
    many seconds, each decided alone as a vLLM server decides it, with the server's
    ``config`` (``causal=False``). Options: ``fps`` (2.0), ``system`` (None).

    Raises:
        ValueError: a configuration of the wrong kind (naming ``causal``), an unsupported
            model, a bad option.
        TypeError: ``config`` is not an OmniZipConfig, an unknown option.
    """
    if chunk_seconds is not None:
        return ChunkStreamSession(model, processor, config, chunk_seconds=chunk_seconds, **options)
    return StreamSession(model, processor, config, **options)


class _CallableModule(types.ModuleType):
    """``omnizip.stream`` is this module and :func:`stream` at once."""

    def __call__(self, model: Any, processor: Any, config: Any,
                 **options: Any) -> StreamSession | ChunkStreamSession:
        return stream(model, processor, config, **options)


sys.modules[__name__].__class__ = _CallableModule
