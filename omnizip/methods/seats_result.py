"""What SEATS decided for one row: the tokens entering the decoder and each in-decoder step."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..core import TokenDecision

__all__ = ["SEATSDecision"]


@dataclass
class SEATSDecision(TokenDecision):
    """SEATS's decision for one row: ``keep`` is what enters the decoder (Stage I);
    ``steps`` what the layers from each in-decoder step on see.

    Attributes (beyond :class:`~omnizip.TokenDecision`):
        steps: ``((K, keep bool [L]), ...)`` per in-decoder step, in order: layers ``>= K``
            see the tokens of that mask (Stage II drops; the last is Stage III's removal).
        n_layers: the decoder's depth (0 before the decoder ran).
    """

    steps: tuple[tuple[int, torch.Tensor], ...] = ()
    n_layers: int = 0

    def layer_keep(self, layer: int) -> torch.Tensor:
        """bool ``[L]``: the tokens decoder layer ``layer`` (0-based) sees."""
        keep = self.keep
        for k, mask in self.steps:
            if layer >= k:
                keep = mask
        return keep

    @property
    def layer_tokens(self) -> list[int]:
        """Tokens (text included) each decoder layer saw, one entry per layer."""
        counts = [int(self.keep.sum())] + [int(m.sum()) for _, m in self.steps]
        bounds = [0, *(k for k, _ in self.steps), self.n_layers]
        return [c for c, (a, b) in zip(counts, itertools.pairwise(bounds), strict=True) for _ in range(max(0, b - a))]

    @property
    def layer_retention(self) -> float:
        """The multimodal retention averaged over the decoder's layers (SEATS's ``R``)."""
        media = torch.cat([self.audio_positions, self.video_positions])
        if media.numel() == 0 or self.n_layers == 0:
            return self.retention
        counts = [int(self.keep[media].sum())] + [int(m[media].sum()) for _, m in self.steps]
        bounds = [0, *(k for k, _ in self.steps), self.n_layers]
        kept = sum(c * max(0, b - a) for c, (a, b) in zip(counts, itertools.pairwise(bounds), strict=True))
        return kept / (media.numel() * self.n_layers)

    def summary(self) -> str:
        return f"SEATS {super().summary()}, layer-averaged retention {self.layer_retention:.1%}"
