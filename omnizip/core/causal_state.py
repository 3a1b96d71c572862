"""How a causal call reads and extends its :class:`~.history.CausalHistory` (algorithm §9).

Everything here is bookkeeping on host-known counts plus copies of the few rows the next
call needs; nothing is a decision.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .history import CausalHistory, StreamTail
from .layout import SequenceLayout, video_streams

__all__ = ["next_history", "stream_continuation"]


def _audio_between(layout: SequenceLayout, start: int, stop: int) -> int:
    """Audio tokens at positions ``[start, stop)`` (host)."""
    positions = layout.audio_positions
    return int(torch.searchsorted(positions, stop) - torch.searchsorted(positions, start))


def stream_continuation(tail: StreamTail | None, layout: SequenceLayout) -> int | None:
    """With ``frame_parity="stream"``: the whole frames the history's open stream already has
    when this call's first video chunk continues it (only audio before that chunk, the same
    P), else None (the chunk starts a stream of its own)."""
    if tail is None or not tail.open or layout.n_video_chunks == 0:
        return None
    first = int(layout.video_chunk_starts[0])
    if _audio_between(layout, 0, first) != first or int(layout.tokens_per_frame[0]) != tail.tokens:
        return None
    return tail.frames


def _stream_tail(
    hist: CausalHistory,
    layout: SequenceLayout,
    source: torch.Tensor,
    video_positions: torch.Tensor,
    inv_norm: torch.Tensor | None,
    continued: int | None,
) -> StreamTail | None:
    """The open video stream after this call (``frame_parity="stream"``)."""
    if layout.n_video_chunks == 0:
        if hist.stream is None:
            return None
        still_open = hist.stream.open and layout.n_audio == layout.length
        return replace(hist.stream, open=still_open)
    starts, lengths = layout.video_chunk_starts, layout.video_chunk_lengths
    is_audio = torch.zeros(layout.length, dtype=torch.bool)
    is_audio[layout.audio_positions] = True
    stream = video_streams(is_audio, starts, lengths, layout.tokens_per_frame)
    last = int(stream[-1])
    end = int(starts[-1] + lengths[-1])
    tokens = int(layout.tokens_per_frame[-1])
    mine = stream == last
    frames = int(layout.frames_per_chunk[mine].sum())
    carried = continued if (last == 0 and continued is not None) else None
    frame = frame_inv_norm = None
    for table in layout.frame_tables:
        if table.tokens != tokens:
            continue
        rows = torch.nonzero(mine[table.chunk]).flatten()
        if rows.numel():
            index = table.video_index[int(rows[-1])].to(source.device)
            frame, frame_inv_norm = source[video_positions[index]], inv_norm[index]
    if frame is None and carried is not None and hist.stream is not None:
        frame, frame_inv_norm = hist.stream.frame, hist.stream.frame_inv_norm
    return StreamTail(
        open=_audio_between(layout, end, layout.length) == layout.length - end,
        tokens=tokens,
        frames=frames + (carried or 0),
        frame=frame,
        frame_inv_norm=frame_inv_norm,
    )


def _last_segments(lengths: list[int], keep: int) -> tuple[list[int], int]:
    """The last ``keep`` segment lengths and how many elements they hold."""
    tail = lengths[-keep:] if keep else []
    return tail, sum(tail)


def next_history(
    hist: CausalHistory,
    config,
    layout: SequenceLayout,
    span_scores: torch.Tensor,
    span_lengths: torch.Tensor,
    base: torch.Tensor,
    source: torch.Tensor,
    video_positions: torch.Tensor,
    norms: torch.Tensor | None,
    inv_norm: torch.Tensor | None,
    continued: int | None,
    rho_audio: float | None,
    rho_video: float | None,
) -> CausalHistory:
    """The history after this call's last window: its last ``K - 1`` windows' contributions
    (copied: never views of the caller's tensors) and the running counts."""
    keep = config.causal_lookback - 1
    m, n, n_guided = layout.n_video_chunks, layout.n_audio_chunks, layout.n_guided

    score_lengths, score_tokens = _last_segments(span_lengths.tolist(), keep)
    scores = span_scores[span_scores.numel() - score_tokens :].clone()

    n_windows = max(m, n)
    sizes = [*layout.video_chunk_lengths[:n_guided].tolist(), *[0] * (n_windows - n_guided)]
    video_sizes = [*hist.video_sizes, *sizes][-keep:]
    window_base = torch.cat([hist.base_ratio, base, base.new_zeros(n_windows - n_guided)])
    base_ratio = window_base[window_base.numel() - len(video_sizes) :].clone()

    video_rows, video_scale, video_lengths = hist.video_rows, hist.video_scale, hist.video_lengths
    if config.merge_scope == "global" and config.g > 0 and config.merge_anchors and m:
        all_lengths = [*hist.video_lengths, *layout.video_chunk_lengths.tolist()]
        video_lengths, tokens = _last_segments(all_lengths, keep)
        from_history = max(tokens - layout.n_video, 0)
        first_new = layout.n_video - (tokens - from_history)
        new_positions = video_positions[first_new:]
        video_rows = torch.cat([hist.video_rows[hist.video_rows.shape[0] - from_history :],
                                source[new_positions].to(hist.video_rows.dtype)])
        new_scale = 1.0 / (norms[new_positions] + 1e-6)
        video_scale = torch.cat([hist.video_scale[hist.video_scale.numel() - from_history :], new_scale])
    stream = None
    if (config.frame_parity or "chunk") == "stream":
        stream = _stream_tail(hist, layout, source, video_positions, inv_norm, continued)

    return replace(
        hist,
        n_video_chunks=hist.n_video_chunks + m,
        n_audio_chunks=hist.n_audio_chunks + n,
        audio_count=hist.audio_count + layout.n_audio,
        rho_audio=rho_audio,
        rho_video=rho_video,
        scores=scores,
        score_lengths=tuple(score_lengths),
        base_ratio=base_ratio,
        video_sizes=tuple(video_sizes),
        video_rows=video_rows,
        video_scale=video_scale,
        video_lengths=tuple(video_lengths),
        stream=stream,
    )

