"""Timing hooks: when the decoder starts, when OmniZip's compression is done, when the decoder
and the LM head finish, and how long the audio scoring took."""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = ["CLOCKS", "StageTimer", "sync", "thinker_of"]

#: the clocks ``run_benchmark`` can time with
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def thinker_of(model: Any) -> Any:
    return getattr(model, "thinker", model)


class StageTimer:
    """Forward hooks that time the decoder's first call and the audio-scoring hook.

    ``dec_start`` (a pre-hook put *first* on ``language_model``, so before OmniZip's
    compression hook), ``dec_ready`` (a pre-hook added after the patch's: compression done),
    ``dec_end`` (after the decoder), and the time spent between a pre-hook put first on the
    last audio attention layer and one added after the patch's scoring hook (``score_s``).
    """

    def __init__(self, model: Any, device: torch.device, clock: Any = time.perf_counter) -> None:
        thinker = thinker_of(model)
        self.device = device
        self.clock = clock
        self.decoder = thinker.model.language_model
        tower = getattr(thinker.model, "audio_tower", None)
        layers = getattr(tower, "layers", None)
        self.score_attn = layers[-1].self_attn if layers is not None and len(layers) else None
        self.lm_head = getattr(thinker, "lm_head", None)
        self._hooks: list[Any] = []
        self._late: list[Any] = []
        self.reset()
        self.attach()

    def attach(self) -> None:
        """Register the hooks that run before the patch's (idempotent)."""
        if self._hooks:
            return
        self._hooks.append(self.decoder.register_forward_pre_hook(self._dec_start, prepend=True))
        self._hooks.append(self.decoder.register_forward_hook(self._dec_end, always_call=True))
        if self.lm_head is not None:
            self._hooks.append(self.lm_head.register_forward_hook(self._head_end))
        if self.score_attn is not None:
            self._hooks.append(
                self.score_attn.register_forward_pre_hook(self._score_start, prepend=True)
            )

    def after_patch(self) -> None:
        """Add the hooks that must run after the patch's own (call after ``omnizip.patch``)."""
        self.drop_late()
        self._late.append(self.decoder.register_forward_pre_hook(self._dec_ready))
        if self.score_attn is not None:
            self._late.append(self.score_attn.register_forward_pre_hook(self._score_end))

    def drop_late(self) -> None:
        for h in self._late:
            h.remove()
        self._late = []

    def remove(self) -> None:
        self.drop_late()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def reset(self) -> None:
        self.head_end: float | None = None
        self.dec_start: float | None = None
        self.dec_ready: float | None = None
        self.dec_end: float | None = None
        self.score_s = 0.0
        self._score_t0: float | None = None

    def _now(self) -> float:
        sync(self.device)
        return self.clock()

    def _dec_start(self, module: Any, args: Any) -> None:
        if self.dec_start is None:
            self.dec_start = self._now()

    def _dec_ready(self, module: Any, args: Any) -> None:
        if self.dec_ready is None:
            self.dec_ready = self._now()

    def _dec_end(self, module: Any, args: Any, output: Any) -> None:
        if self.dec_end is None:
            self.dec_end = self._now()

    def _head_end(self, module: Any, args: Any, output: Any) -> None:
        if self.head_end is None:
            self.head_end = self._now()

    def _score_start(self, module: Any, args: Any) -> None:
        self._score_t0 = self._now()

    def _score_end(self, module: Any, args: Any) -> None:
        if self._score_t0 is not None:
            self.score_s += self._now() - self._score_t0
            self._score_t0 = None

    # derived ---------------------------------------------------------------------------------
    @property
    def decoder_s(self) -> float:
        """The whole decoder call (with a patch: its compression hook included)."""
        if self.dec_start is None or self.dec_end is None:
            return float("nan")
        return self.dec_end - self.dec_start

    @property
    def compression_s(self) -> float:
        if self.dec_ready is None or self.dec_start is None:
            return 0.0
        return self.dec_ready - self.dec_start


