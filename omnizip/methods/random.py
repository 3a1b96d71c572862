"""``random``: uniform random pruning of audio and video tokens at a matched budget.

The floor every learned-free compressor must beat (the OmniZip paper's "Random" row). The
kept audio + video total is the configured budget (:mod:`omnizip.methods._common`); by
default it is split between the modalities in proportion to their sizes
(``per_modality=True``) and each modality keeps a uniformly random subset of that size. With
``per_modality=False`` one uniformly random subset of all audio + video tokens is kept.
Draws come from a CPU generator seeded by ``seed``, so results are reproducible on any
device. Kept tokens keep their embeddings and their position ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core import TokenDecision
from ._common import BudgetedMethod, check_int, decision, prepare, split_counts

__all__ = ["RandomConfig"]


def _random_subset(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Bool ``[n]`` with exactly ``k`` uniformly chosen True entries (host tensor)."""
    keep = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        keep[torch.randperm(n, generator=generator)[:k]] = True
    return keep


@dataclass(frozen=True)
class RandomConfig(BudgetedMethod):
    """Uniform random pruning.

    Attributes:
        retention, token_budget: the budget (see :class:`~omnizip.methods._common.BudgetedMethod`).
        per_modality: split the budget between audio and video in proportion to their sizes
            (each keeps the same fraction), else draw from the two together.
        seed: seed of the CPU generator (the same seed gives the same choice for the same
            sequence layout).
    """

    name: ClassVar[str] = "random"

    per_modality: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.per_modality, bool):
            raise TypeError(f"per_modality must be a bool, got {self.per_modality!r}")
        check_int("seed", self.seed, 0)

    def compress(self, embeds, input_ids, *, audio_token_id, video_token_id, tokens_per_frame,
                 audio_scores=None, video_scores=None) -> TokenDecision:
        """Keep a random subset of exactly the budgeted size (scores are ignored)."""
        layout = prepare(embeds, input_ids, audio_token_id, video_token_id, tokens_per_frame)
        n_a, n_v = layout.n_audio, layout.n_video
        total = self.kept_total(n_a + n_v)
        gen = torch.Generator().manual_seed(self.seed)
        if self.per_modality:
            k_a, k_v = split_counts(n_a, n_v, total)
            keep_a = _random_subset(n_a, k_a, gen)
            keep_v = _random_subset(n_v, k_v, gen)
        else:
            both = _random_subset(n_a + n_v, total, gen)
            # audio and video tokens interleave in the sequence; draw over them in sequence order
            order = torch.argsort(torch.cat([layout.audio_positions, layout.video_positions]))
            in_order = torch.empty_like(both)
            in_order[order] = both
            keep_a, keep_v = in_order[:n_a], in_order[n_a:]
        return decision(keep_a, keep_v, embeds.clone(), layout)
