"""ISTC, interleaved spatio-temporal compression of video frames (algorithm §4 step 8).

All frames of a resolution are handled as one batch: even frames are pruned spatially by
DPC-kNN, odd frames temporally against the unpruned previous frame. Parity is the frame's
index in its chunk (``frame_parity="chunk"``, the reference) or in its interleaved
audio-video stream (``"stream"``); :class:`~omnizip.core.layout.FrameTable` carries it.
Frames are gathered from the sequence embeddings in bounded blocks.
"""

from __future__ import annotations

import torch

from .layout import FrameTable
from .select import block_rows, keep_best
from .similarity import RowGatherer

# algorithm §4 step 8 normalises as x / max(||x||, 1e-12) (F.normalize's rule).
ISTC_NORM_EPS = 1e-12


def dpc_knn_scores(frames: torch.Tensor, inv_norm: torch.Tensor, knn: int) -> torch.Tensor:
    """DPC-kNN importance ``rho_i * delta_i`` of every token of every frame.

    With ``d_ij = 1 - x̂_i . x̂_j`` and ``d_ii = inf``: density ``rho_i = exp(-mean of the
    k' = min(k, P-1) smallest d_ij)``; ``delta_i = min d_ij`` over strictly denser ``j``,
    or ``max_j d_ij`` (with ``d_ii = 0``) for a token with no denser token.

    Args:
        frames: float32 ``[F, P, D]``; inv_norm: float32 ``[F, P]`` = ``1 / max(||x||, eps)``.
    Returns:
        float32 ``[F, P]``.
    """
    n_tokens = frames.shape[1]
    unit = frames * inv_norm.unsqueeze(2)
    cos = torch.bmm(unit, unit.transpose(1, 2))
    # d must be exactly symmetric: with k = 1 two mutual nearest neighbours have equal
    # density, and a rounding asymmetry would make one "strictly denser" than the other.
    dist = torch.maximum(cos, cos.transpose(1, 2)).neg_().add_(1.0)  # 1 - cos, one new tensor
    diagonal = dist.diagonal(dim1=1, dim2=2)
    # The farthest other token, with d_ii taken as 0 (for the densest token's delta).
    diagonal.fill_(float("-inf"))
    farthest = dist.amax(dim=2).clamp_(min=0.0)
    diagonal.fill_(float("inf"))  # d_ii = inf from here on
    k = min(knn, n_tokens - 1)
    if k > 0:
        nearest = torch.topk(dist, k, dim=2, largest=False).values
        density = torch.exp(-nearest.mean(dim=2))
    else:  # a one-token frame: no neighbours, density exp(-0)
        density = torch.ones_like(farthest)
    denser = density.unsqueeze(1) > density.unsqueeze(2)  # [F, i, j]: rho_j > rho_i
    to_denser = dist.masked_fill_(~denser, float("inf")).amin(dim=2)
    delta = torch.where(denser.any(dim=2), to_denser, farthest)
    return density * delta


def temporal_similarity(
    frames: torch.Tensor, previous: torch.Tensor, inv_norm: torch.Tensor, prev_inv_norm: torch.Tensor
) -> torch.Tensor:
    """Cosine of each token to the token at the same position in the previous frame.

    Args:
        frames, previous: float32 ``[F, P, D]``; inv_norm, prev_inv_norm: float32 ``[F, P]``.
    Returns:
        float32 ``[F, P]``.
    """
    return torch.linalg.vecdot(frames, previous, dim=2) * inv_norm * prev_inv_norm


def frame_blocks(parity: torch.Tensor, rows: int) -> list[tuple[int, int]]:
    """Split frame rows into blocks of about ``rows`` that never start on an odd frame, so
    every odd frame finds its previous frame in its own block. ``parity``: host ``[F]``."""
    n = parity.numel()
    bounds = torch.arange(0, n, max(rows, 2))
    # A block may not start on an odd frame: move such a boundary back by one (the frame
    # before an odd frame is even, so this never cascades).
    bounds = torch.unique(bounds - (parity[bounds] == 1).to(torch.int64)).tolist()
    return list(zip(bounds, [*bounds[1:], n], strict=True))


def istc_keep(
    source: torch.Tensor,
    video_positions: torch.Tensor,
    video_inv_norm: torch.Tensor,
    table: FrameTable,
    frame_keep: torch.Tensor,
    knn: int,
    block_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens of the frames of one resolution ISTC keeps.

    Even frames keep their ``frame_keep`` tokens of highest DPC-kNN score, odd frames the
    ``frame_keep`` tokens least similar to the previous (unpruned) frame. Each frame is
    gathered once, in blocks of frames.

    Args:
        source: ``[L, D]`` sequence embeddings; video_positions: int64 ``[N_v]`` (device).
        video_inv_norm: float32 ``[N_v]`` ``1 / max(||v||, 1e-12)``.
        table: the frames (host tensors).
        frame_keep: int64 ``[F]`` tokens to keep in each frame (device).
    Returns:
        (video token indices int64 ``[F * P]``, keep bool ``[F * P]``), device tensors.
    """
    device = source.device
    tokens, dim = table.tokens, source.shape[1]
    video_index = table.video_index.to(device)  # [F, P]
    keep = torch.empty_like(video_index, dtype=torch.bool)
    rows = block_rows(table.parity.numel(), tokens * (dim + 6 * tokens), block_elements)
    blocks = frame_blocks(table.parity, rows)
    gather = RowGatherer(source, max(stop - start for start, stop in blocks) * tokens)
    for start, stop in blocks:
        index = video_index[start:stop]
        frames = gather(video_positions[index])  # [b, P, D]
        inv_norm = video_inv_norm[index]
        parity = table.parity[start:stop]
        even = torch.nonzero(parity == 0).flatten()  # host tensors: no device sync
        odd = torch.nonzero(parity == 1).flatten()
        counts = frame_keep[start:stop]
        if even.numel():
            e = _select_rows(even, device)
            scores = dpc_knn_scores(frames[e], inv_norm[e], knn)
            keep[start:stop][e] = keep_best(scores, counts[e], descending=True)
        if odd.numel():
            # An odd frame's previous frame is the row before it, in this block (frame_blocks).
            o, p = _select_rows(odd, device), _select_rows(odd - 1, device)
            sims = temporal_similarity(frames[o], frames[p], inv_norm[o], inv_norm[p])
            # Keep the least similar: the n lowest similarities, ties to the lower index.
            keep[start:stop][o] = keep_best(sims, counts[o], descending=False)
    return video_index.flatten(), keep.flatten()


def _select_rows(rows: torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    """Host row indices as a strided slice when they are evenly spaced (the usual
    alternating even/odd layout: a view, no copy), else as a device index tensor."""
    n = rows.numel()
    first = int(rows[0])
    step = int(rows[1] - rows[0]) if n > 1 else 1
    if step > 0 and torch.equal(rows, torch.arange(first, first + step * n, step)):
        return slice(first, first + step * (n - 1) + 1, step)
    return rows.to(device)
