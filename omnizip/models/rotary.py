"""The rotary position embedding as the Qwen families apply it (for recomputing q/k in hooks)."""

from __future__ import annotations

import torch

__all__ = ["apply_rotary"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (``cos``/``sin`` broadcast against ``x``)."""
    return x * cos + _rotate_half(x) * sin
