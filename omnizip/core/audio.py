"""Audio side of OmniZip: salient tokens, anchors and anchor merging (SPEC 4 steps 1-4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .select import block_rows, keep_best

# SPEC 4 step 3 normalises the rows used for merging as x / (||x|| + 1e-6).
MERGE_NORM_EPS = 1e-6


def merge_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / (||x|| + 1e-6)`` row-wise (SPEC 4 step 3), ``[n, D]`` float32."""
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
        scores: float ``[N_a]`` audio importance (SPEC 3), on the compute device.
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
    return best, best_cos


@dataclass(frozen=True)
class MergePlan:
    """Step 3-4 decisions. ``members`` int64 ``[n_anchor, g]`` pool slots merged into each
    anchor (-1 padding), ``weights`` float32 ``[n_anchor, g]`` their softmax weights (0 pad)."""

    members: torch.Tensor
    weights: torch.Tensor


def plan_merges(
    assignment: torch.Tensor, merge_score: torch.Tensor, n_anchor: int, g: int
) -> MergePlan:
    """Each anchor takes the (at most) ``g`` assigned pool tokens of highest merge score.

    Ties go to the lower pool slot, i.e. the lower audio index. Fully batched: pool tokens
    are sorted by (anchor, score descending) and ranked inside their anchor's group.

    Args:
        assignment: int64 ``[p]`` anchor slot of each pool token.
        merge_score: float ``[p]``.
    """
    device = merge_score.device
    p = merge_score.numel()
    members = torch.full((n_anchor, g), -1, dtype=torch.int64, device=device)
    scores = torch.full((n_anchor, g), float("-inf"), dtype=torch.float32, device=device)
    if p and n_anchor and g:
        by_score = torch.sort(merge_score, descending=True, stable=True).indices
        order = by_score[torch.sort(assignment[by_score], stable=True).indices]
        group = assignment[order]
        # (bincount would synchronise on CUDA to size its output; index_add_ does not.)
        counts = torch.zeros(n_anchor, dtype=torch.int64, device=device).index_add_(
            0, assignment, torch.ones_like(assignment)
        )
        group_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(p, device=device) - group_start[group]
        chosen = rank < g
        # Scatter by a flat index so no boolean indexing (a host sync) is needed: rows with
        # rank >= g go to one dummy slot past the end, which is dropped.
        flat = torch.where(chosen, group * g + rank, n_anchor * g)
        members = torch.full((n_anchor * g + 1,), -1, dtype=torch.int64, device=device)
        members.scatter_(0, flat, order)
        members = members[:-1].view(n_anchor, g)
        flat_scores = torch.full((n_anchor * g + 1,), float("-inf"), device=device)
        flat_scores.scatter_(0, flat, merge_score[order].float())
        scores = flat_scores[:-1].view(n_anchor, g)
    has_member = members >= 0
    weights = torch.softmax(scores, dim=1)
    weights = torch.where(has_member, weights, torch.zeros_like(weights))  # all -inf rows -> nan
    return MergePlan(members=members, weights=weights)


def merge_into_anchors(
    anchor_embeds: torch.Tensor, pool_embeds: torch.Tensor, plan: MergePlan
) -> torch.Tensor:
    """``(a_anchor + sum_m w_m a_m) / (1 + sum_m w_m)`` from the original embeddings (step 4).

    Args:
        anchor_embeds: float32 ``[n_anchor, D]``; pool_embeds: float32 ``[p, D]``.
    Returns:
        float32 ``[n_anchor, D]``; anchors with no members come back unchanged.
    """
    if plan.members.shape[1] == 0 or pool_embeds.shape[0] == 0:
        return anchor_embeds.clone()
    gathered = pool_embeds[plan.members.clamp(min=0)]  # [n_anchor, g, D]
    weighted = (plan.weights.unsqueeze(-1) * gathered).sum(dim=1)
    return (anchor_embeds + weighted) / (1.0 + plan.weights.sum(dim=1, keepdim=True))
