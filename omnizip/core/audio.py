"""Audio side of OmniZip: salient tokens, anchors and anchor merging (algorithm §4 steps 1-4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import exclusive_cumsum
from .select import block_rows, keep_best
from .similarity import rowwise_products

# algorithm §4 step 3 normalises the rows used for merging as x / (||x|| + 1e-6).
MERGE_NORM_EPS = 1e-6


def merge_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / (||x|| + 1e-6)`` row-wise (algorithm §4 step 3), ``[n, D]`` float32."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + MERGE_NORM_EPS)


@dataclass(frozen=True)
class AudioSplit:
    """Steps 1-2 for one sequence. Device tensors; counts are host ints.

    salient: bool ``[N_a]``; anchors: int64 ``[n_anchor]`` audio indices, ascending;
    pool: int64 ``[n_pool]`` audio indices of non-salient, non-anchor tokens, ascending.
    """

    salient: torch.Tensor
    anchors: torch.Tensor
    pool: torch.Tensor


def split_audio(
    scores: torch.Tensor, *, rho_audio: float, contextual_ratio: float, g: int
) -> AudioSplit:
    """Salient tokens (step 1) and evenly spaced anchors among the rest (step 2).

    Args:
        scores: float ``[N_a]`` audio importance (algorithm §3), on the compute device.
    """
    n_audio = int(scores.numel())
    device = scores.device
    n_salient = min(max(round((1.0 - rho_audio) * n_audio), 0), n_audio)
    salient = keep_best(scores, n_salient, descending=True)
    n_rest = n_audio - n_salient
    # The non-salient indices in ascending order, without a data-dependent shape: a stable
    # sort puts the False entries first, in their original order, and we know how many.
    rest = torch.sort(salient.to(torch.int8), stable=True).indices[:n_rest]

    n_anchor = round(contextual_ratio * n_audio)
    if n_rest > 0 and n_anchor > 0 and g > 0:
        n_anchor = min(n_anchor, n_rest)
        step = max(1, n_rest // n_anchor)
        anchor_slots = torch.arange(n_anchor) * step  # positions inside `rest`, host-known
    else:
        anchor_slots = torch.empty(0, dtype=torch.int64)
    in_pool = torch.ones(n_rest, dtype=torch.bool)
    in_pool[anchor_slots] = False
    pool_slots = torch.nonzero(in_pool).flatten()  # host tensor: no device sync
    return AudioSplit(
        salient=salient,
        anchors=rest[anchor_slots.to(device)],
        pool=rest[pool_slots.to(device)],
    )


def assign_to_anchors(
    pool_hat: torch.Tensor, anchor_hat: torch.Tensor, block_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pool token's most similar anchor (ties: the earlier anchor) and that cosine.

    Args:
        pool_hat: ``[p, D]``, anchor_hat: ``[n_anchor, D]``, both merge-normalised.
    Returns:
        (anchor slot int64 ``[p]``, cosine float ``[p]``).
    """
    p = pool_hat.shape[0]
    best = torch.empty(p, dtype=torch.int64, device=pool_hat.device)
    best_cos = torch.empty(p, dtype=pool_hat.dtype, device=pool_hat.device)
    rows = block_rows(p, anchor_hat.shape[0], block_elements)
    for start in range(0, p, rows):
        sims = pool_hat[start : start + rows] @ anchor_hat.T
        # torch.max returns the first maximal index: ties go to the earlier anchor.
        best_cos[start : start + rows], best[start : start + rows] = sims.max(dim=1)
    # The winners' cosines once more, independent of the row blocking (see rowwise_products).
    return best, rowwise_products(pool_hat, anchor_hat, best)


@dataclass(frozen=True)
class MergePlan:
    """Steps 3-4 decisions, one entry per pool token: linear in the pool, whatever ``g`` is.

    Entries are in merge order: grouped by anchor (ascending), inside a group by merge
    score (descending, ties to the lower pool slot).

    Attributes:
        order: int64 ``[p]`` pool slot of each entry.
        group: int64 ``[p]`` anchor slot of each entry (ascending).
        counts: int64 ``[n_anchor]`` entries per anchor (pool tokens assigned to it).
        chosen: bool ``[p]`` the entry is among the ``g`` best of its anchor (it merges).
        weights: float32 ``[p]`` softmax weight of a chosen entry among its anchor's chosen
            entries, 0 for the others.
    """

    order: torch.Tensor
    group: torch.Tensor
    counts: torch.Tensor
    chosen: torch.Tensor
    weights: torch.Tensor


def segment_sums(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` ``[n, ...]`` with ``counts`` ``[s]`` rows
    each (summing to n) -> ``[s, ...]`` (0 for empty segments).

    Deterministic on every device (no atomics, unlike index_add_ on CUDA) and linear.
    """
    return torch.segment_reduce(values, "sum", lengths=counts, axis=0, unsafe=True)


def plan_merges(
    assignment: torch.Tensor, merge_score: torch.Tensor, n_anchor: int, g: int
) -> MergePlan:
    """Each anchor takes the (at most) ``g`` assigned pool tokens of highest merge score.

    Ties go to the lower pool slot, i.e. the lower audio index. Fully batched: pool tokens
    are sorted by (anchor, score descending) and ranked inside their anchor's group; nothing
    is sized by ``g``, so memory stays linear in the pool for any ``g``.

    Args:
        assignment: int64 ``[p]`` anchor slot of each pool token.
        merge_score: float ``[p]`` (finite).
        n_anchor: anchors (>= 1 when ``p > 0``); g: merges per anchor (>= 1).
    """
    device = merge_score.device
    p = merge_score.numel()
    by_score = torch.sort(merge_score, descending=True, stable=True).indices
    order = by_score[torch.sort(assignment[by_score], stable=True).indices]
    group = assignment[order]
    # (bincount would synchronise on CUDA to size its output; index_add_ does not.)
    counts = torch.zeros(n_anchor, dtype=torch.int64, device=device).index_add_(
        0, assignment, torch.ones_like(assignment)
    )
    group_start = exclusive_cumsum(counts)
    rank = torch.arange(p, device=device) - group_start[group]
    chosen = rank < g
    # Softmax among each anchor's chosen entries: a group's first entry holds its highest
    # score (sorted), so exp(s - max) needs no segment max; unchosen entries weigh 0.
    scores = merge_score[order].float()
    exps = torch.where(chosen, torch.exp(scores - scores[group_start[group]]), 0.0)
    weights = exps / segment_sums(exps, counts)[group]
    return MergePlan(order=order, group=group, counts=counts, chosen=chosen, weights=weights)


def merge_into_anchors(
    anchor_rows: torch.Tensor, member_rows: torch.Tensor, plan: MergePlan, out_dtype: torch.dtype
) -> torch.Tensor:
    """``(a_anchor + sum_m w_m a_m) / (1 + sum_m w_m)`` from the original embeddings (step 4).

    Computed as the convex combination it is (coefficients ``1 / (1 + W)`` and
    ``w_m / (1 + W)``, ``W = sum_m w_m``), so no partial sum leaves the range of the rows:
    a finite input gives a finite output even next to the dtype's largest value. Exact
    rounding can still step past it by an ulp, hence the final clamp to ``out_dtype``'s range.
    Differentiable in both row sets (the weights are constants, part of the decision).

    Args:
        anchor_rows: ``[n_anchor, D]``; member_rows: ``[p, D]`` pool rows in ``plan.order``;
            both in the merge dtype (float32, or float64 for float64 input).
        out_dtype: the dtype the result is written back in.
    Returns:
        ``[n_anchor, D]`` merge dtype; anchors with no members come back unchanged.
    """
    weights = plan.weights.to(anchor_rows.dtype)
    total = 1.0 + segment_sums(weights, plan.counts)  # [n_anchor], >= 1
    shares = weights / total[plan.group]
    merged = anchor_rows / total[:, None] + segment_sums(shares[:, None] * member_rows, plan.counts)
    limit = torch.finfo(out_dtype).max
    return merged.clamp(-limit, limit)
