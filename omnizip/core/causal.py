"""Causal OmniZip (algorithm §9): every decision for window ``w`` is a function of windows
``w-K+1..w`` (``K = causal_lookback``), so a stream can be decided window by window.

:func:`decide` is what :func:`omnizip.compress_sequence` and ``OmniZipConfig.compress`` run:
the offline pipeline (:mod:`.pipeline`) for other configurations, :func:`run_causal` for
``causal=True``. A call holds whole windows in order; with a :class:`CausalHistory` its windows
continue the stream the history ends. The result equals one call over the whole stream.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .audio import MERGE_NORM_EPS, merge_normalise
from .causal_audio import (
    CausalSplit,
    counter_uniform,
    own_window_anchor,
    salient_in_span,
    split_windows,
)
from .causal_state import next_history, stream_continuation
from .history import CausalHistory, check_history, start_history
from .layout import FrameTable, SequenceLayout, build_layout, exclusive_cumsum, segment_ids
from .pipeline import (
    apply_merges,
    assemble_result,
    decision_source,
    merge_scores,
    run_pipeline,
    window_audio_retention,
)
from .ratios import base_ratios, shift_rows_to_budget
from .results import CompressionResult
from .select import keep_best
from .similarity import rowwise_products, segment_cosine_table
from .validate import check_audio_scores, check_inputs
from .video import ISTC_NORM_EPS, istc_keep, temporal_similarity

__all__ = ["decide", "run_causal"]


def decide(embeds, input_ids, audio_scores, *, audio_token_id, video_token_id, tokens_per_frame,
           config, history=None) -> CompressionResult:
    """The OmniZip decision for one sequence with a validated configuration (arguments as
    :func:`omnizip.compress_sequence`)."""
    if history is not None and not config.causal:
        check_history(history, config, embeds)  # raises: history needs causal=True
    run = run_causal if config.causal else run_pipeline
    extra = {"history": history} if config.causal else {}
    return run(
        embeds, input_ids, audio_scores, audio_token_id=audio_token_id,
        video_token_id=video_token_id, tokens_per_frame=tokens_per_frame, config=config, **extra,
    )


def run_causal(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame,
    config,
    history: CausalHistory | None = None,
) -> CompressionResult:
    """Causal OmniZip on the whole windows of one call (algorithm §9).

    Host synchronisations: those of the offline pipeline, plus one read of the per-window
    salient counts (the anchors' places depend on them).
    """
    check_inputs(embeds, input_ids, audio_scores, audio_token_id, video_token_id)
    check_history(history, config, embeds)
    device = embeds.device
    hist = history if history is not None else start_history(config, embeds.shape[1], embeds.dtype, device)
    parity = config.frame_parity or "chunk"
    layout = build_layout(input_ids, audio_token_id, video_token_id, tokens_per_frame, parity)
    continued = stream_continuation(hist.stream, layout) if parity == "stream" else None
    odd_start = continued is not None and continued % 2 == 1
    if odd_start:  # the first stream goes on from the history's frames: its parity shifts
        layout = build_layout(input_ids, audio_token_id, video_token_id, tokens_per_frame, parity, 1)
    n_audio, n_video = layout.n_audio, layout.n_video
    check_audio_scores(audio_scores, n_audio, audio_token_id)
    _check_whole_windows(hist, layout)
    rho_audio, rho_video = _stream_ratios(hist, layout, config)
    block, lookback = config.block_elements, config.causal_lookback

    audio_positions = layout.audio_positions.to(device)
    video_positions = layout.video_positions.to(device)
    out_embeds = embeds.clone()  # differentiable copy: gradients reach every kept token
    source = embeds.detach()  # what decisions read

    # --- Rules 1-2: salient audio in the span, anchors from the running count. ---
    scores = torch.empty(0, dtype=torch.float32, device=device)
    if n_audio:
        scores = audio_scores.detach().to(device, torch.float32)
        if config.audio_selection == "random":
            index = torch.arange(hist.audio_count, hist.audio_count + n_audio)
            scores = counter_uniform(config.seed, index).to(device, torch.float32)
    span_scores = torch.cat([hist.scores, scores])
    span_lengths = torch.tensor([*hist.score_lengths, *layout.audio_chunk_lengths.tolist()], dtype=torch.int64)
    salient = salient_in_span(
        span_scores, span_lengths, len(hist.score_lengths), rho_audio, lookback, block
    )
    split = split_windows(
        salient, layout.audio_chunk_lengths, hist.audio_count, config.contextual_ratio, config.g
    )
    audio_keep = split.salient.clone()
    audio_keep[split.anchors] = True
    merging = bool(split.pool.numel() and config.merge_anchors)

    source, norms = decision_source(source, audio_positions, video_positions, merging, block)

    # --- Rules 3-4: merges inside the window, scored against the span's video. ---
    merge_target = torch.full((n_audio,), -1, dtype=torch.int64, device=device)
    merge_weight = torch.zeros(n_audio, dtype=torch.float32, device=device)
    if merging:
        pool_hat = merge_normalise(source[audio_positions[split.pool]].float())
        anchor_hat = merge_normalise(source[audio_positions[split.anchors]].float())
        assignment, anchor_cos = own_window_anchor(pool_hat, anchor_hat, split, block)
        if config.merge_scope == "window":
            merge_score = merge_scores(
                pool_hat, anchor_cos, split.pool, source, layout, video_positions, norms,
                "window", block,
            )
        else:
            merge_score = _span_merge_scores(
                pool_hat, anchor_cos, split, hist, layout, source, video_positions, norms,
                lookback, block,
            )
        merge_target, merge_weight = apply_merges(
            embeds, out_embeds, audio_positions, split.anchors, split.pool, assignment,
            merge_score, config.g,
        )

    # --- Rules 5-7: S_w, b_w, and the budget shift over the span. ---
    retention = window_audio_retention(layout, audio_keep)
    base = base_ratios(retention, config.min_ratio, config.max_ratio)
    ratios = torch.full((layout.n_video_chunks,), rho_video, dtype=torch.float64, device=device)
    if config.dynamic_ratios and layout.n_guided:
        ratios[: layout.n_guided] = _span_ratios(base, hist, layout, rho_video, config)

    # --- Rule 8: ISTC, the first frame possibly continuing the history's stream. ---
    video_keep = torch.ones(n_video, dtype=torch.bool, device=device)
    inv_norm = None
    if n_video and layout.frame_tables:
        inv_norm = 1.0 / norms[video_positions].clamp(min=ISTC_NORM_EPS)
        for table in layout.frame_tables:
            keep_counts = torch.floor(table.tokens * (1.0 - ratios[table.chunk.to(device)])).to(torch.int64)
            if odd_start and table.tokens == hist.stream.tokens and int(table.parity[0]) == 1:
                # Only the call's first frame can be odd with no previous frame in the call.
                first = table.video_index[0].to(device)
                sims = temporal_similarity(
                    source[video_positions[first]].float()[None], hist.stream.frame.float()[None],
                    inv_norm[first][None], hist.stream.frame_inv_norm[None],
                )
                video_keep[first] = keep_best(sims, keep_counts[:1], descending=False)[0]
                table, keep_counts = _drop_first_frame(table), keep_counts[1:]
                if not table.chunk.numel():
                    continue
            index, keep = istc_keep(source, video_positions, inv_norm, table, keep_counts, config.knn, block)
            video_keep[index] = keep

    # A call without windows (text only) resolves nothing: the first window still decides.
    has_windows = bool(layout.n_audio_chunks or layout.n_video_chunks)
    resolved = (rho_audio, rho_video) if has_windows else (hist.rho_audio, hist.rho_video)
    new_history = next_history(
        hist, config, layout, span_scores, span_lengths, base, source, video_positions, norms,
        inv_norm, continued, *resolved,
    )
    return assemble_result(
        layout, out_embeds, audio_positions, video_positions, audio_keep, video_keep, split,
        merge_target, merge_weight, retention, ratios, rho_audio, rho_video,
        first_window=hist.n_windows, history=new_history,
    )


def _check_whole_windows(hist: CausalHistory, layout: SequenceLayout) -> None:
    """A decided window never gets a chunk later: after a window with video only (or audio
    only), the stream may go on with video only (audio only)."""
    hv, ha = hist.n_video_chunks, hist.n_audio_chunks
    for new, mine, other, what, missing in (
        (layout.n_video_chunks, hv, ha, "video", "audio"),
        (layout.n_audio_chunks, ha, hv, "audio", "video"),
    ):
        if new and mine < other:
            raise ValueError(
                f"input_ids: a causal call must hold whole windows, but the history decided "
                f"window {mine} with {missing} only, so this call's first {what} chunk would "
                f"join a decided window; give every window its video and audio in one call"
            )


def _stream_ratios(hist: CausalHistory, layout: SequenceLayout, config) -> tuple[float, float]:
    """The stream's (rho_audio, rho_video): resolved once, from the first window's token mix
    (``retention``), then carried by the history."""
    if hist.rho_audio is not None:
        return hist.rho_audio, hist.rho_video
    n_audio = int(layout.audio_chunk_lengths[0]) if layout.n_audio_chunks else 0
    n_video = int(layout.video_chunk_lengths[0]) if layout.n_video_chunks else 0
    return config.resolve_ratios(n_audio, n_video)


def _span_merge_scores(
    pool_hat: torch.Tensor,
    anchor_cos: torch.Tensor,
    split: CausalSplit,
    hist: CausalHistory,
    layout: SequenceLayout,
    source: torch.Tensor,
    video_positions: torch.Tensor,
    norms: torch.Tensor | None,
    lookback: int,
    block: int,
) -> torch.Tensor:
    """Rule 3's merge score: a pool token's highest cosine to the video of its window's span
    (windows ``w-K+1..w``); with no video there, its cosine to its anchor.

    Video is read once per chunk: chunk ``c`` is compared with the pool tokens of the windows
    whose span holds it (``c..c+K-1``, a contiguous run of the pool), in padded per-chunk
    blocks, for this call's chunks and the history's; each token then takes the best of its
    span's chunks (the earlier on ties) and its winner's cosine is recomputed row by row.
    """
    device = pool_hat.device
    n_pool = pool_hat.shape[0]
    pool_start = exclusive_cumsum(split.pool_counts)
    pool_end = pool_start + split.pool_counts
    first_window = hist.n_audio_chunks  # an audio chunk's index is its window's
    row_window = first_window + segment_ids(split.pool_counts)[0]  # host [p]
    offsets = torch.arange(lookback)
    values = torch.full((n_pool, lookback), float("-inf"), device=device)
    winners = torch.zeros(n_pool, lookback, dtype=torch.int64, device=device)
    from_history = torch.zeros(n_pool, lookback, dtype=torch.bool)
    hv = hist.n_video_chunks
    sources = (
        (layout.video_chunk_lengths, hv, source, video_positions,
         None if norms is None else 1.0 / (norms[video_positions] + MERGE_NORM_EPS), False),
        (torch.tensor(hist.video_lengths, dtype=torch.int64), hv - len(hist.video_lengths),
         hist.video_rows, torch.arange(hist.video_rows.shape[0], device=device), hist.video_scale, True),
    )
    exact_parts = []
    for lengths, first_chunk, columns, positions, scale, is_history in sources:
        n_chunks = lengths.numel()
        if n_chunks == 0 or n_pool == 0:
            exact_parts.append(None)
            continue
        chunk = first_chunk + torch.arange(n_chunks)
        lo = (torch.maximum(chunk, torch.tensor(first_window)) - first_window).clamp(max=layout.n_audio_chunks)
        hi = (chunk + lookback - 1 - first_window).clamp(max=layout.n_audio_chunks - 1)  # inclusive
        has_rows = (hi >= lo) & (lo < layout.n_audio_chunks)
        row_start = torch.where(has_rows, pool_start[lo.clamp(max=layout.n_audio_chunks - 1)], 0)
        row_stop = torch.where(has_rows, pool_end[hi.clamp(min=0)], 0)
        table = segment_cosine_table(
            pool_hat, row_start, (row_stop - row_start).clamp(min=0), columns, positions, scale,
            exclusive_cumsum(lengths), lengths, block,
        )
        if table is None:
            exact_parts.append(None)
            continue
        best, column = table[0], table[1]
        # Row r of window w reads chunk w - K + 1 + o (o = 0..K-1) at its slot in that chunk.
        local = row_window[:, None] - lookback + 1 + offsets[None, :] - first_chunk  # [p, K]
        usable = (local >= 0) & (local < n_chunks)
        local = local.clamp(0, n_chunks - 1)
        slot = (torch.arange(n_pool)[:, None] - row_start[local]).clamp(0, best.shape[1] - 1)
        if is_history:
            from_history |= usable
        local, slot, usable = local.to(device), slot.to(device), usable.to(device)
        values = torch.where(usable, best[local, slot], values)
        winners = torch.where(usable, column[local, slot], winners)
        exact_parts.append((columns, positions, scale))
    pick = values.argmax(dim=1, keepdim=True)  # the first maximum: the earlier chunk on ties
    best_value = values.gather(1, pick).squeeze(1)
    winner = winners.gather(1, pick).squeeze(1)
    exact = torch.full_like(best_value, float("-inf"))
    chose_history = from_history.to(device).gather(1, pick).squeeze(1)
    for part, is_history in zip(exact_parts, (False, True), strict=True):
        if part is None:
            continue
        columns, positions, scale = part
        index = winner.clamp(max=positions.numel() - 1)
        value = rowwise_products(pool_hat, columns, positions[index]) * scale[index]
        exact = torch.where(chose_history == is_history, value, exact)
    found = torch.isfinite(best_value)
    return torch.where(found, exact, anchor_cos)


def _span_ratios(
    base: torch.Tensor, hist: CausalHistory, layout: SequenceLayout, rho_video: float, config
) -> torch.Tensor:
    """Rule 7: ``r_w = clamp(b_w + λ_w)`` with ``λ_w`` the shift that brings the span's guided
    windows to ``rho_v`` of their video (one batched bisection for all windows), when the
    span holds more than two guided windows; else ``r_w = b_w``. float64 ``[G]``."""
    device = base.device
    lookback, n_guided = config.causal_lookback, layout.n_guided
    n_windows = max(layout.n_video_chunks, layout.n_audio_chunks)
    sizes = torch.zeros(n_windows, dtype=torch.float64)
    sizes[:n_guided] = layout.video_chunk_lengths[:n_guided].to(torch.float64)
    all_sizes = torch.cat([torch.tensor(hist.video_sizes, dtype=torch.float64), sizes])
    all_base = torch.cat([hist.base_ratio, base, base.new_zeros(n_windows - n_guided)])
    first = len(hist.video_sizes)
    index = first + torch.arange(n_guided)[:, None] - (lookback - 1) + torch.arange(lookback)[None, :]
    valid = index >= 0
    index = index.clamp(min=0)
    span_sizes = torch.where(valid, all_sizes[index], 0.0)  # host: the layout's counts
    apply = (span_sizes > 0).sum(dim=1) > 2
    span_sizes = span_sizes.to(device)
    # r is snapped to a multiple of 2**-40: the bisection pins λ down to its last bits only,
    # and that noise must not move a frame's int(P * (1 - r)) across an integer where the
    # exact solution sits on one (e.g. r = 0.5 with P = 2).
    shifted = shift_rows_to_budget(
        all_base[index.to(device)], span_sizes, rho_video * span_sizes.sum(dim=1),
        config.min_ratio, config.max_ratio, grid=2.0**40,
    )[:, -1]
    return torch.where(apply.to(device), shifted, base)


def _drop_first_frame(table: FrameTable) -> FrameTable:
    """The frame table without its first frame (handled on its own)."""
    return replace(table, chunk=table.chunk[1:], parity=table.parity[1:], video_index=table.video_index[1:])
