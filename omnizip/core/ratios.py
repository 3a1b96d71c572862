"""Per-window video compression ratios (algorithm §4 steps 5-7 and the exact budget of algorithm §7).

Everything here is float64 on the compute device, so that ``int(P * (1 - r))`` downstream
matches the reference's Python-float arithmetic, and branch-free (``torch.where``) so that
no decision forces a host synchronisation.
"""

from __future__ import annotations

import math

import torch

from .select import rank_along_last

# Tolerances of algorithm §4 step 7.
BUDGET_TOLERANCE = 1e-3
BISECTION_STEPS = 64
# The widened ratio range of algorithm §7 is [0, 1): its largest float.
BELOW_ONE = math.nextafter(1.0, 0.0)


def base_ratios(retention: torch.Tensor, min_ratio: float, max_ratio: float) -> torch.Tensor:
    """``b_i = clamp(r_max - (r_max - r_min) * S_i, r_min, r_max)`` (step 6), float64 ``[G]``."""
    return (max_ratio - (max_ratio - min_ratio) * retention).clamp(min_ratio, max_ratio)


def _first_occurrence_mask(index: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=index.device) == index


def normalise_budget(
    base: torch.Tensor,
    window_sizes: torch.Tensor,
    target_discard: float,
    min_ratio: float,
    max_ratio: float,
) -> torch.Tensor:
    """The published budget normalisation of the guided windows (algorithm §4 step 7).

    Only call with ``G > 2`` windows (the caller checks; it is a host-known count).

    Args:
        base: float64 ``[G]`` base ratios ``b_i``.
        window_sizes: float64 ``[G]`` video tokens per guided window ``n_i``.
        target_discard: ``T_g``, the video tokens the guided windows should drop.
    Returns:
        float64 ``[G]`` ratios ``r_i``.
    """
    n_windows = base.numel()
    weighted = base * window_sizes
    total = weighted.sum()
    needs_fix = ((total - target_discard).abs() > BUDGET_TOLERANCE) & (total > 0)
    # Freeze the smallest and the largest base ratio (first occurrence of each; counted
    # once when both are the same window, algorithm §6.4).
    frozen = _first_occurrence_mask(torch.argmin(base), n_windows) | _first_occurrence_mask(
        torch.argmax(base), n_windows
    )
    others = ~frozen
    others_weighted = torch.where(others, weighted, 0.0).sum()
    frozen_weighted = torch.where(frozen, weighted, 0.0).sum()
    can_fix = needs_fix & others.any() & (others_weighted > 0)
    scaled = (base * (target_discard - frozen_weighted) / others_weighted).clamp(
        min_ratio, max_ratio
    )
    ratios = torch.where(others, scaled, base)
    residual = target_discard - (ratios * window_sizes).sum()
    others_size = torch.where(others, window_sizes, 0.0).sum()
    shifted = (ratios + residual / others_size).clamp(min_ratio, max_ratio)
    ratios = torch.where(others & (residual.abs() > BUDGET_TOLERANCE), shifted, ratios)
    return torch.where(can_fix, ratios, base)


def shift_to_budget(
    base: torch.Tensor,
    prunable: torch.Tensor,
    target_discard: torch.Tensor | float,
    min_ratio: float,
    max_ratio: float,
) -> torch.Tensor:
    """One common shift ``λ`` with ``sum_i clamp(b_i + λ, lo, hi) * n_i = target`` (algorithm §7).

    ``[lo, hi]`` is ``[r_min, r_max]`` when the target is reachable inside it, else widened
    to ``[0, 1)``. Solved by a fixed number of bisection steps, all on the device.

    Args:
        base: float64 ``[m]`` base ratio of every video chunk.
        prunable: float64 ``[m]`` tokens in each chunk's whole frames.
    Returns:
        float64 ``[m]`` shifted ratios.
    """
    total = prunable.sum()
    inside = (min_ratio * total <= target_discard) & (target_discard <= max_ratio * total)
    # Bounds as float64 tensors: torch.where on Python floats would build float32 ones,
    # rounding BELOW_ONE up to exactly 1.0 and r_min / r_max off their values.
    def bound(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=base.device)

    lo = torch.where(inside, bound(min_ratio), bound(0.0))
    hi = torch.where(inside, bound(max_ratio), bound(BELOW_ONE))
    shift_lo = torch.full((), -2.0, dtype=torch.float64, device=base.device)
    shift_hi = torch.full((), 2.0, dtype=torch.float64, device=base.device)
    for _ in range(BISECTION_STEPS):  # fixed trip count, independent of the input size
        mid = 0.5 * (shift_lo + shift_hi)
        dropped = (torch.minimum(torch.maximum(base + mid, lo), hi) * prunable).sum()
        too_few = dropped < target_discard
        shift_lo = torch.where(too_few, mid, shift_lo)
        shift_hi = torch.where(too_few, shift_hi, mid)
    return torch.minimum(torch.maximum(base + shift_hi, lo), hi)


def shift_rows_to_budget(
    base: torch.Tensor,
    sizes: torch.Tensor,
    target_discard: torch.Tensor,
    min_ratio: float,
    max_ratio: float,
    grid: float | None = None,
) -> torch.Tensor:
    """:func:`shift_to_budget` for many independent problems at once, one per row.

    Row ``w`` solves ``sum_i clamp(b_wi + λ_w, lo_w, hi_w) * n_wi = target_w`` for its own
    shift ``λ_w``, with ``[lo_w, hi_w]`` = ``[r_min, r_max]`` when the row's target is
    reachable inside it, else ``[0, 1)``. Entries with ``n_wi = 0`` take no part (padding).
    Used by the causal budget rule (algorithm §9), where each row is one window's span.

    Args:
        base, sizes: float64 ``[R, K]``; target_discard: float64 ``[R]``.
        grid: when given, the shifted ratios are rounded to multiples of ``1 / grid`` (then
            clamped to the row's bounds again), which removes the bisection's last-bit noise.
    Returns:
        float64 ``[R, K]`` shifted ratios.
    """
    total = sizes.sum(dim=-1)
    inside = (min_ratio * total <= target_discard) & (target_discard <= max_ratio * total)
    zero = torch.zeros_like(total)
    lo = torch.where(inside, zero + min_ratio, zero)[:, None]
    hi = torch.where(inside, zero + max_ratio, zero + BELOW_ONE)[:, None]
    shift_lo = torch.full_like(total, -2.0)
    shift_hi = torch.full_like(total, 2.0)
    for _ in range(BISECTION_STEPS):  # fixed trip count, independent of the input size
        mid = 0.5 * (shift_lo + shift_hi)
        dropped = (torch.minimum(torch.maximum(base + mid[:, None], lo), hi) * sizes).sum(dim=-1)
        too_few = dropped < target_discard
        shift_lo = torch.where(too_few, mid, shift_lo)
        shift_hi = torch.where(too_few, shift_hi, mid)
    shifted = base + shift_hi[:, None]
    if grid is not None:
        shifted = torch.round(shifted * grid) / grid
    return torch.minimum(torch.maximum(shifted, lo), hi)


def frame_discards_exact(
    frame_ratio: torch.Tensor, frame_tokens: torch.Tensor, target_discard: torch.Tensor | float
) -> torch.Tensor:
    """Per-frame token discards whose total is exactly ``target_discard`` when reachable.

    Each frame wants ``P * r`` discards; all are floored, then the missing units go to the
    frames with the largest fractional parts (ties: the earlier frame), or surplus units are
    taken back from the smallest, as in largest-remainder rounding (algorithm §7).

    Args:
        frame_ratio: float64 ``[F]``; frame_tokens: float64 ``[F]`` (P of each frame).
    Returns:
        float64 ``[F]`` integral discards in ``[0, P]``.
    """
    want = frame_ratio * frame_tokens
    floor = torch.floor(want)
    fraction = want - floor
    missing = target_discard - floor.sum()
    n = want.numel()
    if n == 0:
        return floor
    # Frames that cannot take another discard (or give one back) rank last.
    up_rank = rank_along_last(torch.where(floor < frame_tokens, fraction, -1.0), descending=True)
    down_rank = rank_along_last(torch.where(floor > 0, fraction, 2.0), descending=False)
    add = (up_rank < missing) & (floor < frame_tokens)
    remove = (down_rank < -missing) & (floor > 0)
    return floor + add.to(floor.dtype) - remove.to(floor.dtype)
