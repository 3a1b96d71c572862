"""``omnizip.patch(model, config)``: OmniZip on a Hugging Face model instance, removable.

One line turns it on::

    handle = omnizip.patch(model, OmniZipConfig.preset("45"))
    model.generate(**inputs)          # prefill compressed per algorithm §5
    handle.results                    # the core's decision for every row of the last prefill
    handle.remove()                   # the model is exactly as before

or scoped: ``with omnizip.patch(model): ...``.

The patch is a set of forward (pre-)hooks registered on this one model instance by a
model-specific *adapter* (``omnizip.models``); no class is edited, no module-level state is
kept, and :meth:`OmniZipHandle.remove` deletes every hook (patching a patched model first
removes the old patch). Which adapter serves a model is decided from its class name, so
importing omnizip does not import transformers.

Adapter interface (see :class:`omnizip.models.base.ModelAdapter`): a class with ``name``,
``model_classes`` (class names it serves), ``matches(model)`` and ``attach()`` (registers its
hooks through ``_pre_hook``/``_post_hook``) and ``detach()`` (drops its state). A new model
family is one more file in ``omnizip/models`` listed in ``omnizip.models.ADAPTERS`` (the
registry this module reads; ``models`` never imports ``patch``); the batch work (per-row
compression, re-padding, decode masks, ``rope_deltas``) is shared in
``omnizip.models.batch`` / ``omnizip.models.decode``. Methods that need hooks of their own
provide them through :meth:`omnizip.method.CompressionMethod.model_hooks`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from .config import OmniZipConfig
from .core import TokenDecision
from .method import CompressionMethod
from .models import ADAPTERS
from .models.base import ModelAdapter

__all__ = ["ModelAdapter", "OmniZipHandle", "patch", "supported_models"]

logger = logging.getLogger("omnizip")


class OmniZipHandle:
    """A live OmniZip patch on one model. Context manager; :meth:`remove` undoes it.

    Attributes:
        model: the patched model.
        config: the :class:`OmniZipConfig` (or other compression method) in use.
        adapter: the model adapter serving it.
        results: after a compressed prefill, one :class:`~omnizip.CompressionResult` per row
            (a :class:`~omnizip.TokenDecision` for other methods)
            (over that row's real, non-padding tokens in order); ``[]`` after a prefill with no
            audio or video tokens; ``None`` before any prefill.
        kept_indices: per row, int64 indices (into the uncompressed, padded prompt) of the
            tokens the decoder saw.
        audio_scores: per row, float32 ``[N_a_row]`` the importance each audio token was
            ranked by (algorithm §3; None for a row without audio, and for methods that do not rank
            audio by encoder scores, e.g. ``fastv``).
        video_scores: per row, float32 ``[N_v_row]`` the vision-encoder score each video token
            was ranked by (methods with ``needs_video_scores``: ``visionzip``, ``seats``; else None).
        layer_tokens: for methods that prune inside the decoder (``fastv``, ``seats``), per
            row the tokens each decoder layer saw (text included); None otherwise (every
            layer saw the row's kept tokens).
        last_summary: the one-line summary logged at INFO after the last prefill.
        last_overhead_ms: wall time OmniZip added to the last prefill (audio scoring +
            compression), milliseconds.
    """

    def __init__(
        self, model: torch.nn.Module, config: CompressionMethod, adapter_cls: type[ModelAdapter]
    ):
        self.model = model
        self.config = config
        self.results: list[TokenDecision] | None = None
        self.kept_indices: list[torch.Tensor] | None = None
        self.audio_scores: list[torch.Tensor | None] | None = None
        self.video_scores: list[torch.Tensor | None] | None = None
        self.layer_tokens: list[list[int]] | None = None
        self.last_summary: str | None = None
        self.last_overhead_ms: float | None = None
        self.adapter = adapter_cls(model, self)
        try:
            self.adapter.attach()
        except BaseException:
            # attach() may fail half-way (e.g. a module is missing): leave nothing behind
            for hook in self.adapter._registered:
                hook.remove()
            raise
        self._hooks: list[Any] = list(self.adapter._registered)

    @property
    def active(self) -> bool:
        """True until :meth:`remove` is called."""
        return bool(self._hooks)

    def remove(self) -> None:
        """Remove every hook of this patch and its state. Idempotent."""
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook.remove()
        self.adapter.detach()

    def __enter__(self) -> OmniZipHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"OmniZipHandle({self.adapter.name}, {state}, {self.config!r})"

    # called by adapters --------------------------------------------------------------------
    def _record(
        self,
        results: list[TokenDecision],
        kept_indices: list[torch.Tensor],
        audio_scores: list[torch.Tensor | None],
        started: float,
        batch_tokens: tuple[int, int],
        video_scores: list[torch.Tensor | None] | None = None,
        layer_tokens: list[list[int]] | None = None,
    ) -> None:
        """Store the last prefill's per-row results and log the one-line INFO summary."""
        self.results = results
        self.kept_indices = kept_indices
        self.audio_scores = audio_scores
        self.video_scores = video_scores if video_scores is not None else [None] * len(results)
        self.layer_tokens = layer_tokens
        self.last_overhead_ms = (time.perf_counter() - started) * 1e3
        if not results:
            self.last_summary = "omnizip: no audio/video tokens in the prompt, nothing compressed"
            logger.debug(self.last_summary)
            return
        n_a = sum(r.n_audio for r in results)
        n_v = sum(r.n_video for r in results)
        k_a = sum(r.n_audio_kept for r in results)
        k_v = sum(r.n_video_kept for r in results)
        before, after = batch_tokens
        share = (k_a + k_v) / (n_a + n_v) if n_a + n_v else 1.0
        self.last_summary = (
            f"omnizip[{self.adapter.name}]: {len(results)} row(s), prefill {before} -> {after} "
            f"tokens; audio {k_a}/{n_a}, video {k_v}/{n_v} kept ({share:.1%} of multimodal); "
            f"{self.last_overhead_ms:.1f} ms"
        )
        logger.info(self.last_summary)


def supported_models() -> tuple[str, ...]:
    """Class names :func:`patch` accepts."""
    return tuple(name for adapter in ADAPTERS for name in adapter.model_classes)


def _existing_handles(model: torch.nn.Module) -> list[OmniZipHandle]:
    """Handles whose hooks sit on ``model`` (found through the hooks, no registry needed)."""
    found: list[OmniZipHandle] = []
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for fn in hooks.values():
                owner = getattr(fn, "__self__", None)
                handle = getattr(owner, "handle", None)
                if isinstance(owner, ModelAdapter) and handle is not None and handle not in found:
                    found.append(handle)
    return found


def patch(model: torch.nn.Module, config: CompressionMethod | None = None) -> OmniZipHandle:
    """Enable OmniZip on ``model`` (one instance) and return the removable handle.

    Args:
        model: a supported model instance, e.g. transformers'
            ``Qwen2_5OmniForConditionalGeneration`` or ``Qwen2_5OmniThinkerForConditionalGeneration``,
            ``Qwen3OmniMoeForConditionalGeneration`` or ``Qwen3OmniMoeThinkerForConditionalGeneration``.
        config: :class:`OmniZipConfig`; default the paper's 45%-retention setting (algorithm §2).
            Any method of :mod:`omnizip.methods` works: the pre-decoder ones (the OmniZip
            ablations, ``random``, ``dycoke``, ``visionzip`` with its vision-encoder scores)
            the same way, ``fastv`` inside the decoder (after layer K).

    Returns:
        :class:`OmniZipHandle` (also a context manager). Patching an already patched model
        removes the old patch first.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` or ``config`` not an OmniZipConfig
            (or :class:`omnizip.method.CompressionMethod`).
        ValueError: ``model``'s class is not supported (the message lists the supported ones),
            or ``config`` cannot run on this model (``fastv`` with a ``layer`` outside
            ``1 .. n_layers - 1``, or on a decoder with sliding-window layers; ``visionzip``
            on a model without a vision encoder).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is None:
        config = OmniZipConfig()
    if not isinstance(config, CompressionMethod):
        raise TypeError(
            f"config must be an OmniZipConfig (or a CompressionMethod) or None, got "
            f"{type(config).__name__}"
        )
    adapter_cls = next((a for a in ADAPTERS if a.matches(model)), None)
    if adapter_cls is None:
        raise ValueError(
            f"model: omnizip.patch does not support {type(model).__name__}; supported model "
            f"classes: {', '.join(supported_models())}"
        )
    for old in _existing_handles(model):
        old.remove()
    return OmniZipHandle(model, config, adapter_cls)
