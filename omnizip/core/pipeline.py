"""The OmniZip steps in order for one sequence (algorithm §2-4, 6, 7).

:func:`run_pipeline` is :func:`omnizip.compress_sequence` once the configuration is known
to be valid. Every decision (which tokens stay, which merge, with what weights) is computed
on a detached view of the embeddings, so the blocked similarity code may reuse its buffers
whether or not autograd is on; only the output (the copied embeddings and the merged anchors)
is built from the caller's tensor, so gradients reach every kept and merged token.
"""

from __future__ import annotations

from typing import Any

import torch

from .audio import (
    MERGE_NORM_EPS,
    AudioSplit,
    assign_to_anchors,
    merge_into_anchors,
    merge_normalise,
    plan_merges,
    split_audio,
)
from .layout import SequenceLayout, build_layout, exclusive_cumsum
from .ratios import base_ratios, frame_discards_exact, normalise_budget, shift_to_budget
from .results import CompressionResult
from .similarity import (
    float32_safe,
    max_cosine_to_columns,
    max_cosine_within_windows,
    sequence_row_norms,
)
from .validate import check_audio_scores, check_inputs
from .video import ISTC_NORM_EPS, istc_keep


def run_pipeline(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame,
    config,
) -> CompressionResult:
    """OmniZip on one sequence with a validated ``OmniZipConfig`` (arguments as
    :func:`omnizip.compress_sequence`; ``config`` is not checked here)."""
    check_inputs(embeds, input_ids, audio_scores, audio_token_id, video_token_id)
    layout = build_layout(
        input_ids, audio_token_id, video_token_id, tokens_per_frame, config.frame_parity or "chunk"
    )
    device = embeds.device
    n_audio, n_video = layout.n_audio, layout.n_video
    check_audio_scores(audio_scores, n_audio, audio_token_id)
    rho_audio, rho_video = config.resolve_ratios(n_audio, n_video)
    block = config.block_elements

    audio_positions = layout.audio_positions.to(device)
    video_positions = layout.video_positions.to(device)
    out_embeds = embeds.clone()  # differentiable copy: gradients reach every kept token
    source = embeds.detach()  # what decisions read: no autograd graph, buffers may be reused

    # --- Audio: salient tokens and anchors (steps 1-2). ---
    if n_audio:
        scores = audio_scores.detach().to(device, torch.float32)
        if config.audio_selection == "random":
            # Ablation: the same counts, chosen uniformly at random (seeded, on the host).
            gen = torch.Generator().manual_seed(config.seed)
            scores = torch.rand(n_audio, generator=gen).to(device)
        split = split_audio(
            scores, rho_audio=rho_audio, contextual_ratio=config.contextual_ratio, g=config.g
        )
        audio_keep = split.salient.clone()
        audio_keep[split.anchors] = True
    else:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        split = AudioSplit(salient=torch.zeros(0, dtype=torch.bool, device=device),
                           anchors=empty, pool=empty)
        audio_keep = split.salient
    merging = bool(split.anchors.numel() and split.pool.numel() and config.merge_anchors)

    source, norms = decision_source(source, audio_positions, video_positions, merging, block)

    # --- Audio: merge plan and merge (steps 3-4). ---
    merge_target = torch.full((n_audio,), -1, dtype=torch.int64, device=device)
    merge_weight = torch.zeros(n_audio, dtype=torch.float32, device=device)
    if merging:
        anchor_positions = audio_positions[split.anchors]
        pool_hat = merge_normalise(source[audio_positions[split.pool]].float())
        anchor_hat = merge_normalise(source[anchor_positions].float())
        assignment, anchor_cos = assign_to_anchors(pool_hat, anchor_hat, block)
        merge_score = merge_scores(
            pool_hat, anchor_cos, split.pool, source, layout, video_positions, norms,
            config.merge_scope, block,
        )
        merge_target, merge_weight = apply_merges(
            embeds, out_embeds, audio_positions, split.anchors, split.pool, assignment,
            merge_score, config.g,
        )

    # --- Per-window audio retention S_i (step 5). ---
    retention = window_audio_retention(layout, audio_keep)

    # --- Video ratios (steps 6-7, or the exact budget of algorithm §7) and ISTC (step 8). ---
    video_keep = torch.ones(n_video, dtype=torch.bool, device=device)
    ratios = _video_ratios(layout, retention, rho_video, config, device)
    if n_video and layout.frame_tables:
        inv_norm = 1.0 / norms[video_positions].clamp(min=ISTC_NORM_EPS)
        if config.budget == "exact":
            ratios, frame_keeps = _exact_frame_keeps(layout, ratios, rho_video, config, device)
        else:
            frame_keeps = [
                torch.floor(t.tokens * (1.0 - ratios[t.chunk.to(device)])).to(torch.int64)
                for t in layout.frame_tables
            ]
        for table, keep_counts in zip(layout.frame_tables, frame_keeps, strict=True):
            index, keep = istc_keep(
                source, video_positions, inv_norm, table, keep_counts, config.knn, block
            )
            video_keep[index] = keep

    return assemble_result(
        layout, out_embeds, audio_positions, video_positions, audio_keep, video_keep, split,
        merge_target, merge_weight, retention, ratios, rho_audio, rho_video,
    )


def assemble_result(
    layout: SequenceLayout,
    embeds: torch.Tensor,
    audio_positions: torch.Tensor,
    video_positions: torch.Tensor,
    audio_keep: torch.Tensor,
    video_keep: torch.Tensor,
    split: Any,
    merge_target: torch.Tensor,
    merge_weight: torch.Tensor,
    retention: torch.Tensor,
    ratios: torch.Tensor,
    rho_audio: float,
    rho_video: float,
    **extra: Any,
) -> CompressionResult:
    """The :class:`CompressionResult` of a decision, offline or causal (``extra``: the causal
    fields ``first_window`` and ``history``): the keep mask ``[L]`` from the audio ``[N_a]``
    and video ``[N_v]`` keep masks (text always kept), the windows' chunks from the layout.
    ``split`` carries ``salient`` and ``anchors``."""
    device = embeds.device
    keep = torch.ones(layout.length, dtype=torch.bool, device=device)
    keep[audio_positions] = audio_keep
    keep[video_positions] = video_keep
    return CompressionResult(
        keep=keep,
        embeds=embeds,
        audio_positions=audio_positions,
        video_positions=video_positions,
        salient=split.salient,
        anchors=split.anchors,
        merge_target=merge_target,
        merge_weight=merge_weight,
        audio_chunks=torch.stack([layout.audio_chunk_starts, layout.audio_chunk_lengths], 1).to(device),
        video_chunks=torch.stack([layout.video_chunk_starts, layout.video_chunk_lengths], 1).to(device),
        num_guided=layout.n_guided,
        window_audio_retention=retention,
        video_chunk_ratio=ratios,
        rho_audio=rho_audio,
        rho_video=rho_video,
        **extra,
    )


def decision_source(
    source: torch.Tensor,
    audio_positions: torch.Tensor,
    video_positions: torch.Tensor,
    merging: bool,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows decisions read (:func:`float32_safe`) and their norms ``[L]`` (None
    without video tokens).

    Row norms once, from views of the embeddings: both normalisations of algorithm §4 (merge
    and ISTC) fold them into the similarities instead of writing normalised copies.
    """
    n_video = video_positions.numel()
    norms = sequence_row_norms(source, block) if n_video else None
    if n_video or merging:
        decision_rows = torch.cat([audio_positions, video_positions])
        row_norms = (
            norms[decision_rows] if norms is not None
            else torch.linalg.vector_norm(source[decision_rows].float(), dim=-1)
        )
        source, rescaled = float32_safe(source, decision_rows, row_norms)
        if rescaled and norms is not None:
            norms = sequence_row_norms(source, block)
    return source, norms


def apply_merges(
    embeds: torch.Tensor,
    out_embeds: torch.Tensor,
    audio_positions: torch.Tensor,
    anchors: torch.Tensor,
    pool: torch.Tensor,
    assignment: torch.Tensor,
    merge_score: torch.Tensor,
    g: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3-4 once each pool token has its anchor and merge score: writes the merged
    anchors into ``out_embeds`` (the call's own copy) and returns ``(merge_target,
    merge_weight)`` per audio token (int64 / float32 ``[N_a]``)."""
    n_audio = audio_positions.numel()
    device = out_embeds.device
    plan = plan_merges(assignment, merge_score, anchors.numel(), g)
    anchor_positions = audio_positions[anchors]
    # Merge in the input's precision (float32 at least) from the caller's rows.
    merge_dtype = torch.promote_types(embeds.dtype, torch.float32)
    merged = merge_into_anchors(
        embeds[anchor_positions].to(merge_dtype),
        embeds[audio_positions[pool[plan.order]]].to(merge_dtype),
        plan,
        embeds.dtype,
    )
    out_embeds[anchor_positions] = merged.to(embeds.dtype)
    # Per audio token: unchosen entries write to one spare slot past the end (no
    # boolean indexing, which would synchronise).
    member_audio = torch.where(plan.chosen, pool[plan.order], n_audio)
    target = torch.full((n_audio + 1,), -1, dtype=torch.int64, device=device)
    target.scatter_(0, member_audio, anchors[plan.group])
    weight = torch.zeros(n_audio + 1, dtype=torch.float32, device=device)
    weight.scatter_(0, member_audio, plan.weights)
    return target[:n_audio], weight[:n_audio]


def window_audio_retention(layout: SequenceLayout, audio_keep: torch.Tensor) -> torch.Tensor:
    """``S_i`` (step 5): kept audio of each guided window's chunk over its size, float64 ``[G]``."""
    device = audio_keep.device
    chunk_of_audio = layout.audio_chunk_of_token.to(device)
    kept_per_chunk = torch.zeros(layout.n_audio_chunks, dtype=torch.float64, device=device)
    kept_per_chunk.index_add_(0, chunk_of_audio, audio_keep.to(torch.float64))
    audio_chunk_sizes = layout.audio_chunk_lengths.to(device, torch.float64)
    return (kept_per_chunk / audio_chunk_sizes)[: layout.n_guided]


def _video_ratios(
    layout: SequenceLayout,
    retention: torch.Tensor,
    rho_video: float,
    config,
    device: torch.device,
) -> torch.Tensor:
    """Ratio r of every video chunk under the published rules (algorithm §4 steps 6-7)."""
    n_guided, n_chunks = layout.n_guided, layout.n_video_chunks
    ratios = torch.full((n_chunks,), rho_video, dtype=torch.float64, device=device)
    if n_guided == 0 or not config.dynamic_ratios:
        return ratios
    base = base_ratios(retention, config.min_ratio, config.max_ratio)
    if n_guided > 2:
        sizes = layout.video_chunk_lengths[:n_guided].to(device, torch.float64)
        unguided = int(layout.video_chunk_lengths[n_guided:].sum())
        target = rho_video * layout.n_video - rho_video * unguided
        base = normalise_budget(base, sizes, target, config.min_ratio, config.max_ratio)
    ratios[:n_guided] = base
    return ratios


def merge_scores(
    pool_hat: torch.Tensor,
    anchor_cos: torch.Tensor,
    pool: torch.Tensor,
    source: torch.Tensor,
    layout: SequenceLayout,
    video_positions: torch.Tensor,
    norms: torch.Tensor | None,
    scope: str,
    block: int,
) -> torch.Tensor:
    """Merge score of each pool token (algorithm §4 step 3; ``scope="window"`` of algorithm §7).

    Global: the highest cosine to any video token of the sequence. Window: to the video
    of the token's own window. Where there is no such video, the highest cosine to any
    anchor (the algorithm's no-video rule).
    """
    if layout.n_video == 0:
        return anchor_cos
    scale = 1.0 / (norms + MERGE_NORM_EPS)  # [L]: v / (||v|| + 1e-6) folded into the sims
    if scope == "global":
        return max_cosine_to_columns(
            pool_hat, source, video_positions, scale[video_positions], block
        )
    # Window scope: audio chunk i against video chunk i, for the G guided windows.
    n_guided = layout.n_guided
    audio_offsets = exclusive_cumsum(layout.audio_chunk_lengths)[:n_guided]
    video_offsets = exclusive_cumsum(layout.video_chunk_lengths)[:n_guided]
    # Only pool tokens need scores, but windows are padded by their (host-known) audio
    # chunk sizes; scoring all audio tokens there keeps shapes static and costs O(N_a * V_i).
    all_audio_hat = merge_normalise(source[layout.audio_positions.to(source.device)].float())
    per_audio = max_cosine_within_windows(
        all_audio_hat, audio_offsets, layout.audio_chunk_lengths[:n_guided],
        source, video_positions, scale[video_positions], video_offsets,
        layout.video_chunk_lengths[:n_guided],
        block,
    )[pool]
    return torch.where(torch.isfinite(per_audio), per_audio, anchor_cos)


def _exact_frame_keeps(
    layout: SequenceLayout,
    ratios: torch.Tensor,
    rho_video: float,
    config,
    device: torch.device,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Shift all chunk ratios by one λ and round per frame so that exactly
    ``round((1 - rho_video) * N_v)`` video tokens stay, when reachable (algorithm §7)."""
    kept_target = round((1.0 - rho_video) * layout.n_video)
    prunable = (layout.frames_per_chunk * layout.tokens_per_frame).to(device, torch.float64)
    always_kept = layout.n_video - int(prunable.sum())
    target_discard = float(max(layout.n_video - kept_target, 0))
    target_discard = min(target_discard, float(layout.n_video - always_kept))
    shifted = shift_to_budget(ratios, prunable, target_discard, config.min_ratio, config.max_ratio)
    # Round per frame across all resolutions together, so the total is exact.
    chunks = torch.cat([t.chunk for t in layout.frame_tables]).to(device)
    tokens = torch.cat(
        [torch.full((t.chunk.numel(),), t.tokens, dtype=torch.float64) for t in layout.frame_tables]
    ).to(device)
    discards = frame_discards_exact(shifted[chunks], tokens, target_discard)
    keeps = (tokens - discards).to(torch.int64)
    sizes = [t.chunk.numel() for t in layout.frame_tables]
    return shifted, list(torch.split(keeps, sizes))
