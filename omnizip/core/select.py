"""Selection helpers shared by the audio and video steps, batched and sync-free."""

from __future__ import annotations

import torch

# Default soft cap on the elements of any temporary block (similarities, gathered frames):
# 16 Mi elements, 64 MiB in float32. Every blocked step takes its cap from here.
DEFAULT_BLOCK_ELEMENTS = 1 << 24


def rank_along_last(scores: torch.Tensor, *, descending: bool) -> torch.Tensor:
    """Rank of every element within its row: 0 for the best.

    Ties are broken by the lower index first (a stable sort), which makes every
    "keep the n highest / lowest" of OmniZip deterministic where docs/algorithm.md leaves it to topk.

    Args:
        scores: ``[..., n]`` real tensor.
    Returns:
        int64 ``[..., n]``.
    """
    order = torch.sort(scores, dim=-1, descending=descending, stable=True).indices
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def keep_best(scores: torch.Tensor, n_keep: torch.Tensor | int, *, descending: bool) -> torch.Tensor:
    """Bool mask of the ``n_keep`` best elements of each row (ties: lower index first).

    Args:
        scores: ``[..., n]``.
        n_keep: int, or int64 tensor broadcastable to ``[..., 1]`` (per-row counts; the
            counts may live on the device, so no host synchronisation is needed).
    """
    rank = rank_along_last(scores, descending=descending)
    if isinstance(n_keep, torch.Tensor):
        n_keep = n_keep.unsqueeze(-1)
    return rank < n_keep


def block_rows(n_rows: int, row_elements: int, block_elements: int) -> int:
    """Rows per block so that a ``[rows, row_elements]`` temporary stays near the cap."""
    return max(1, min(n_rows, block_elements // max(1, row_elements)))
