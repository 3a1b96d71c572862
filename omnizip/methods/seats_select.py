"""SEATS's token selections as functions of tensors (docs/seats.md has the rules in words).

- :func:`window_counts`: how many tokens a Stage I window keeps;
- :func:`divprune_windows`: Stage I, attention-weighted greedy max-min diversity selection
  inside every window, all windows advanced together;
- :func:`inner_keep`: one Stage II step on one row: budgets per temporal window (softmax
  of the mean score), split between video and audio, top-k per window.

Ties go to the lower index everywhere (the release leaves them to ``argmax``/``topk``).
"""

from __future__ import annotations

import torch

from ..core.layout import exclusive_cumsum, find_runs
from ..core.select import block_rows, keep_best
from ..core.similarity import padded_segments
from ..method import DEFAULT_BLOCK_ELEMENTS

__all__ = ["divprune_windows", "fill_budget", "inner_keep", "shave_budget", "window_counts"]

#: the release's epsilon in ``x / (||x|| + eps)`` before its cosine distances
COSINE_EPS = 1e-8


def window_counts(lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """Tokens kept per window: ``max(1, min(n, round(ratio * n)))`` (half to even, as
    Python's ``round``). int64 ``[W]`` on ``lengths``' device."""
    kept = torch.round(lengths.to(torch.float64) * float(ratio)).to(torch.int64)
    return torch.minimum(kept, lengths).clamp(min=1)


def divprune_windows(
    features: torch.Tensor,
    weights: torch.Tensor,
    lengths: torch.Tensor,
    counts: torch.Tensor,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Stage I inside every window: greedy max-min diversity, distances weighted by attention.

    In a window, ``dist(i, j) = (1 - cos(x_i, x_j)) * w_j``. The first pick is the token with
    the largest distance to its nearest other token; every next pick the token whose
    distance to the nearest picked token is largest; a window stops at its count.

    Args:
        features: ``[N, D]`` the modality's tokens in order (windows laid end to end).
        weights: float ``[N]`` attention received by each token (any positive scale).
        lengths: int64 ``[W]`` (host) tokens per window; counts: int64 ``[W]`` (host) kept.
        block_elements: soft cap on a ``[windows, n, n]`` distance block.
    Returns:
        bool ``[N]`` on ``features``' device. A window whose count reaches its length keeps
        everything. The loop runs over pick steps (at most the largest count of a block of
        windows), never over windows or tokens.
    """
    device = features.device
    n = features.shape[0]
    keep = torch.zeros(n + 1, dtype=torch.bool, device=device)  # +1: the pads' sink
    partial = counts < lengths
    keep_all = torch.repeat_interleave(~partial, lengths)
    keep[:n] = keep_all.to(device)
    starts = exclusive_cumsum(lengths)[partial]
    lengths, counts = lengths[partial], counts[partial]
    if lengths.numel() == 0:
        return keep[:n]
    width = int(lengths.max())
    index, valid = padded_segments(starts, lengths, width)
    rows = block_rows(int(lengths.numel()), width * (width + features.shape[1]), block_elements)
    for lo in range(0, int(lengths.numel()), rows):
        idx = index[lo : lo + rows].to(device)
        ok = valid[lo : lo + rows].to(device)
        with torch.no_grad():  # a selection: no gradient flows through it
            chosen = _divprune_block(features[idx], weights[idx], ok, counts[lo : lo + rows].to(device))
        keep.scatter_(0, torch.where(ok, idx, n).flatten(), chosen.flatten())
    return keep[:n]


def _divprune_block(x: torch.Tensor, w: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """:func:`divprune_windows` on padded windows ``x [b, n, D]``, ``w``/``valid [b, n]``."""
    b, n, _ = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)  # float32 (float64 inputs stay float64)
    x = x.to(dtype)
    unit = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + COSINE_EPS)
    dist = (1.0 - unit @ unit.transpose(1, 2)) * w.to(dtype)[:, None, :]  # [b, i, j]: column-weighted
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    others = valid[:, :, None] & ~eye  # rows i != j that exist
    nearest = dist.masked_fill(~others, float("inf")).amin(dim=1)  # [b, j]
    nearest = nearest.masked_fill(~valid, float("-inf"))
    rows = torch.arange(b, device=x.device)
    pick = nearest.argmax(dim=1)  # the first maximum: ties to the lower index
    chosen = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    chosen[rows, pick] = True
    closest = dist[rows, pick]  # [b, n]: distance of each token to the nearest pick
    for step in range(1, int(counts.max())):
        active = counts > step
        score = closest.masked_fill(chosen | ~valid, float("-inf"))
        pick = score.argmax(dim=1)
        chosen[rows, pick] |= active
        closest = torch.minimum(closest, dist[rows, pick])
    return chosen & valid


# ------------------------------------------------------------------------------- Stage II
def shave_budget(budget: torch.Tensor, excess: int, floor: int = 1) -> torch.Tensor:
    """Take ``excess`` units away one at a time from the largest entry (the first of equal
    ones), never taking an entry below ``floor``; stops when none is above it.

    Equivalent closed form: the largest level ``l`` such that at least ``excess`` units lie
    at or above ``l`` caps every entry at ``l``, and the units still owed come off the entries
    at ``l`` in index order. int64 host tensors; the loop bisects over levels only.
    """
    units = int((budget - floor).clamp(min=0).sum())
    excess = min(int(excess), units)
    if excess <= 0:
        return budget.clone()
    lo, hi = floor + 1, int(budget.max())
    while lo < hi:  # largest level l with units(at >= l) >= excess
        mid = (lo + hi + 1) // 2
        if int((budget - mid + 1).clamp(min=0).sum()) >= excess:
            lo = mid
        else:
            hi = mid - 1
    out = torch.minimum(budget, torch.tensor(lo))
    owed = excess - int((budget - lo).clamp(min=0).sum())
    at_level = budget >= lo
    return out - (at_level & (torch.cumsum(at_level.to(torch.int64), 0) <= owed)).to(torch.int64)


def fill_budget(budget: torch.Tensor, deficit: int, cap: torch.Tensor) -> torch.Tensor:
    """Add ``deficit`` units one at a time to the smallest entry below its ``cap`` (the first of
    equal ones); stops when every entry is at its cap. int64 host tensors (closed form as
    :func:`shave_budget`, from below)."""
    room = int((cap - budget).clamp(min=0).sum())
    deficit = min(int(deficit), room)
    if deficit <= 0:
        return budget.clone()
    lo, hi = int(budget.min()) + 1, int(cap.max())
    while lo < hi:  # smallest level l with units(at <= l) >= deficit
        mid = (lo + hi) // 2
        if int((torch.minimum(cap, torch.tensor(mid)) - budget).clamp(min=0).sum()) >= deficit:
            hi = mid
        else:
            lo = mid + 1
    below = torch.minimum(cap, torch.tensor(lo - 1))
    out = torch.maximum(budget, below)
    owed = deficit - int((out - budget).sum())
    eligible = (out == lo - 1) & (cap >= lo)
    return out + (eligible & (torch.cumsum(eligible.to(torch.int64), 0) <= owed)).to(torch.int64)


def _window_ids(is_mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of a modality, its run index along the row; and the run lengths (host)."""
    _, lengths = find_runs(is_mod.to("cpu"))
    ids = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    return ids, lengths


def _top_per_window(scores: torch.Tensor, window: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """bool: per window, its ``budget`` highest scores (ties: lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(window[order], stable=True).indices]  # by window, then score
    sizes = torch.bincount(window, minlength=budget.numel())
    rank = torch.arange(order.numel()) - exclusive_cumsum(sizes)[window[order]]
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order] = rank < budget[window[order]]
    return keep


def _split_budgets(
    v_mean: torch.Tensor, a_mean: torch.Tensor, v_size: torch.Tensor, a_size: torch.Tensor,
    total_v: int, total_a: int, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window, (video budget, audio budget): the release's inter-window budget (softmax of
    the mean scores, averaged over the two modalities, rounded, then fixed up to the total)
    and its intra-window split (by each modality's demand), with its repair rules."""
    t = max(float(temperature), 1e-4)
    wv, wa = torch.softmax(v_mean / t, 0), torch.softmax(a_mean / t, 0)
    total = total_v + total_a
    cap = v_size + a_size
    budget = torch.minimum(torch.round((wv + wa) / 2.0 * total).to(torch.int64).clamp(min=1), cap)
    diff = int(budget.sum()) - total
    if diff > 0:
        budget = shave_budget(budget, diff)
    elif diff < 0:
        budget = fill_budget(budget, -diff, cap)
    v_share, a_share = wv * total_v, wa * total_a
    v_frac = v_share / (v_share + a_share + 1e-12)
    vb = torch.minimum(torch.round(budget * v_frac).to(torch.int64).clamp(min=0), v_size)
    ab = torch.minimum((budget - vb).clamp(min=0), a_size)
    rest = budget - vb - ab
    extra = torch.minimum(rest.clamp(min=0), (v_size - vb).clamp(min=0))
    vb, rest = vb + extra, rest - extra
    ab = ab + torch.minimum(rest.clamp(min=0), (a_size - ab).clamp(min=0))
    fix_v = (v_size > 0) & (vb < 1)
    vb = torch.where(fix_v, 1, vb)
    ab = torch.where(fix_v & (ab > 1), torch.minimum(a_size, (budget - vb).clamp(min=0)).clamp(min=1), ab)
    fix_a = (a_size > 0) & (ab < 1)
    ab = torch.where(fix_a, 1, ab)
    vb = torch.where(fix_a & (vb > 1), torch.minimum(v_size, (budget - ab).clamp(min=0)).clamp(min=1), vb)
    return vb, ab


def inner_keep(
    scores: torch.Tensor,
    is_video: torch.Tensor,
    is_audio: torch.Tensor,
    video_keep: float,
    audio_keep: float,
    temperature: float,
) -> torch.Tensor:
    """One Stage II step on one row (its real tokens in order).

    Args:
        scores: float ``[n]`` the last text token's attention over the row (head mean).
        is_video, is_audio: bool ``[n]``.
        video_keep, audio_keep: this step's keep ratios; each modality keeps
            ``max(1, round(ratio * count))`` tokens (0 without tokens of it).
        temperature: of the softmax over the windows' mean scores.
    Returns:
        bool ``[n]`` (host): every other token True. Temporal windows pair the i-th run of
        video tokens with the i-th run of audio tokens; with one window or one modality only,
        each modality keeps its top-k over the whole row.
    """
    scores = scores.detach().to("cpu", torch.float64)
    is_video, is_audio = is_video.to("cpu"), is_audio.to("cpu")
    keep = ~(is_video | is_audio)
    n_v, n_a = int(is_video.sum()), int(is_audio.sum())
    total_v = max(1, round(video_keep * n_v)) if n_v else 0
    total_a = max(1, round(audio_keep * n_a)) if n_a else 0
    v_win, v_size = _window_ids(is_video)
    a_win, a_size = _window_ids(is_audio)
    n_win = max(v_size.numel(), a_size.numel())
    sv, sa = scores[is_video], scores[is_audio]
    if n_win <= 1 or not n_v or not n_a:
        keep[is_video] = keep_best(sv, total_v, descending=True)
        keep[is_audio] = keep_best(sa, total_a, descending=True)
        return keep
    v_size = torch.nn.functional.pad(v_size, (0, n_win - v_size.numel()))
    a_size = torch.nn.functional.pad(a_size, (0, n_win - a_size.numel()))
    v_mean = torch.zeros(n_win, dtype=torch.float64).index_add_(0, v_win, sv) / v_size.clamp(min=1)
    a_mean = torch.zeros(n_win, dtype=torch.float64).index_add_(0, a_win, sa) / a_size.clamp(min=1)
    vb, ab = _split_budgets(v_mean, a_mean, v_size, a_size, total_v, total_a, temperature)
    keep[is_video] = _top_per_window(sv, v_win, vb)
    keep[is_audio] = _top_per_window(sa, a_win, ab)
    return keep
