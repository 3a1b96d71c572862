"""ISTC, interleaved spatio-temporal compression of video frames (SPEC 4 step 8).

All frames of a resolution are handled as one batch: even frames (parity restarts in each
chunk) are pruned spatially by DPC-kNN, odd frames temporally against the unpruned previous
frame. Frames are gathered from the sequence embeddings in bounded blocks.
"""

from __future__ import annotations

import torch

from .layout import FrameTable
from .select import block_rows, keep_best
from .similarity import gather_rows

# SPEC 4 step 8 normalises as x / max(||x||, 1e-12) (F.normalize's rule).
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
    cos = torch.bmm(frames, frames.transpose(1, 2)) * inv_norm.unsqueeze(2) * inv_norm.unsqueeze(1)
    dist = 1.0 - cos
    eye = torch.eye(n_tokens, dtype=torch.bool, device=frames.device)
    dist_no_self = dist.masked_fill(eye, float("inf"))
    k = min(knn, n_tokens - 1)
    if k > 0:
        nearest = torch.topk(dist_no_self, k, dim=2, largest=False).values
        density = torch.exp(-nearest.mean(dim=2))
    else:  # a one-token frame: no neighbours, density exp(-0)
        density = torch.ones_like(dist[:, :, 0])
    denser = density.unsqueeze(1) > density.unsqueeze(2)  # [F, i, j]: rho_j > rho_i
    to_denser = dist_no_self.masked_fill(~denser, float("inf")).amin(dim=2)
    farthest = dist.masked_fill(eye, 0.0).amax(dim=2)
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
    return (frames * previous).sum(dim=2) * inv_norm * prev_inv_norm


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

    Args:
        source: ``[L, D]`` sequence embeddings; video_positions: int64 ``[N_v]`` (device).
        video_inv_norm: float32 ``[N_v]`` ``1 / max(||v||, 1e-12)``.
        table: the frames (host tensors).
        frame_keep: int64 ``[F]`` tokens to keep in each frame (device).
    Returns:
        (video token indices int64 ``[F * P]``, keep bool ``[F * P]``), device tensors.
    """
    device = source.device
    tokens = table.tokens
    video_index = table.video_index.to(device)  # [F, P]
    keep = torch.ones_like(video_index, dtype=torch.bool)
    even = torch.nonzero(table.parity == 0).flatten()  # host: no sync
    odd = torch.nonzero(table.parity == 1).flatten()
    dim = source.shape[1]

    rows = block_rows(even.numel(), tokens * (dim + 6 * tokens), block_elements)
    for start in range(0, even.numel(), rows):
        which = even[start : start + rows].to(device)
        index = video_index[which]
        scores = dpc_knn_scores(
            gather_rows(source, video_positions[index]), video_inv_norm[index], knn
        )
        keep[which] = keep_best(scores, frame_keep[which], descending=True)

    # An odd frame's previous frame is the table row before it (same chunk: rows are in
    # chunk order and an odd frame is never the first of its chunk).
    rows = block_rows(odd.numel(), 2 * tokens * dim, block_elements)
    for start in range(0, odd.numel(), rows):
        which = odd[start : start + rows].to(device)
        index, prev_index = video_index[which], video_index[which - 1]
        sims = temporal_similarity(
            gather_rows(source, video_positions[index]),
            gather_rows(source, video_positions[prev_index]),
            video_inv_norm[index],
            video_inv_norm[prev_index],
        )
        # Keep the least similar tokens: the n lowest similarities, ties to the lower index.
        keep[which] = keep_best(sims, frame_keep[which], descending=False)
    return video_index.flatten(), keep.flatten()
