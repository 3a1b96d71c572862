"""Audio token importance (algorithm §3), blockwise: no ``[H, T, T]`` tensor is formed.

The reference scores a frame by the attention it receives in the audio encoder's last layer:
``A_h = softmax(Q_h K_h^T * scale)`` over all frames of its stream, summed over heads and
queries. The encoder then average-pools frame pairs into LLM tokens (Qwen2.5-Omni), so a
token's score is the mean of its two frames' scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import exclusive_cumsum, segment_ids
from .select import DEFAULT_BLOCK_ELEMENTS, block_rows
from .similarity import padded_segments

SCORE_SCOPES = ("global", "windowed", "causal")

# On the CPU a fresh temporary of more than a few MB is mmap-ed and page-faults on every
# block (glibc hands large frees back to the OS); tiles of 4M elements (16 MB) are reused
# from the heap and stay near the caches. Other devices use the caller's cap as it is.
CPU_TILE_ELEMENTS = 1 << 22
# Causal spans are scored in groups of a fixed number of rows (padded when fewer spans of a
# length remain); a small number keeps the padding cheap when spans are short.
CAUSAL_GROUP_ROWS = 8


@dataclass(frozen=True)
class SegmentGroup:
    """Segments scored together as one padded ``[rows, H, width, width]`` problem.

    ``offset``: where the group's ``[rows, width]`` index table starts in the plan's flat
    table; ``shortest``: its shortest segment (``padded`` when shorter than ``width``: only
    then are keys masked and padded queries weighted out); ``head_step``, ``query_step``:
    the tile ``[rows, head_step, query_step, width]``, at most the plan's cap.
    """

    offset: int
    rows: int
    width: int
    shortest: int
    heads: int
    head_step: int
    query_step: int

    @property
    def padded(self) -> bool:
        return self.shortest < self.width

    def tiles(self):
        """``(head slice, query slice)`` of each tile, heads outermost (keys stay warm)."""
        for h0 in range(0, self.heads, self.head_step):
            for q0 in range(0, self.width, self.query_step):
                yield slice(h0, h0 + self.head_step), slice(q0, q0 + self.query_step)


@dataclass(frozen=True)
class ScoreBlockPlan:
    """How ``audio_attention_scores`` cuts its work; ``sink``: int64 flat index tables of all
    groups (frame index, ``n_frames`` for padding) on the scoring device, moved there once;
    ``target``: the same with ``n_frames`` also where a frame's received attention is not
    kept (the look-back frames of a causal span), or ``sink`` itself when every frame is."""

    groups: tuple[SegmentGroup, ...]
    sink: torch.Tensor
    target: torch.Tensor | None = None

    def group_sink(self, group: SegmentGroup) -> torch.Tensor:
        """int64 ``[rows, width]``: the group's frames, ``n_frames`` marking padding."""
        size = group.rows * group.width
        return self.sink[group.offset : group.offset + size].view(group.rows, group.width)

    def group_target(self, group: SegmentGroup) -> torch.Tensor:
        """int64 ``[rows, width]``: where each entry's received attention is added
        (``n_frames``: nowhere)."""
        if self.target is None:
            return self.group_sink(group)
        size = group.rows * group.width
        return self.target[group.offset : group.offset + size].view(group.rows, group.width)


def _even_step(total: int, most: int) -> int:
    """The smallest step that covers ``total`` in as few pieces as ``most`` allows."""
    pieces = -(-total // max(1, min(most, total)))
    return -(-total // pieces)


def plan_score_blocks(
    lengths: torch.Tensor,
    heads: int,
    block_elements: int,
    device: torch.device,
    starts: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> ScoreBlockPlan:
    """Cut the scoring of segments of the given lengths into bounded tiles (host-side only).

    Segments are sorted longest first, so a group pads its members to nearly their own
    length, and only a group that holds a shorter segment is masked. A group holds several
    segments when they fit the cap whole (encoder windows), else one segment cut into tiles
    of a few heads and queries against all its keys (a softmax row is never split).

    Args:
        lengths: int64 ``[n]`` on the CPU, frames per segment, laid end to end.
        heads: attention heads; block_elements: cap on a tile's elements.
        starts: int64 ``[n]`` CPU, where each segment starts when they are not laid end to
            end (causal spans overlap); then the frames are ``max(starts + lengths)``.
        targets: int64 ``[n]`` CPU, the trailing frames of each segment whose received
            attention is kept (a causal span keeps only its last window's); default all.
    """
    if starts is None:
        n_frames = int(lengths.sum())
        starts = exclusive_cumsum(lengths)
    else:
        n_frames = int((starts + lengths).max()) if lengths.numel() else 0
    keep = lengths > 0
    lengths, starts = lengths[keep], starts[keep]
    targets = None if targets is None else targets[keep]
    order = torch.argsort(lengths, descending=True, stable=True)
    lengths, starts = lengths[order], starts[order]
    targets = None if targets is None else targets[order]
    cap = min(block_elements, CPU_TILE_ELEMENTS) if device.type == "cpu" else block_elements
    sizes = lengths.tolist()
    groups, tables, target_tables, first, offset = [], [], [], 0, 0
    while first < len(sizes):
        width = sizes[first]
        if targets is None:
            rows = taken = block_rows(len(sizes) - first, heads * width * width, cap)
        else:
            # Causal spans: a group holds spans of one length only, and its shape (rows,
            # tiles) depends on that length alone, so a span's scores are computed the same
            # way whatever else the call holds (a stream's equal the offline call's bit for
            # bit). Missing rows are padding.
            rows = max(1, min(CAUSAL_GROUP_ROWS, cap // (heads * width * width)))
            taken = min(rows, sizes[first:].count(width))
        query_step = _even_step(width, cap // (rows * width))
        head_step = _even_step(heads, cap // (rows * query_step * width))
        index, valid = padded_segments(starts[first : first + taken], lengths[first : first + taken], width)
        if taken < rows:
            index = torch.cat([index, index.new_zeros(rows - taken, width)])
            valid = torch.cat([valid, valid.new_zeros(rows - taken, width)])
        tables.append(torch.where(valid, index, n_frames).flatten())
        if targets is None:
            shortest = sizes[first + rows - 1]
        else:  # the span's look-back frames give attention but keep none
            tail = (lengths - targets)[first : first + taken]
            tail = torch.cat([tail, tail.new_full((rows - taken,), width)])
            kept = torch.arange(width)[None, :] >= tail[:, None]
            target_tables.append(torch.where(valid & kept, index, n_frames).flatten())
            shortest = 0  # always the masked path: the same arithmetic with or without padding
        groups.append(SegmentGroup(offset, rows, width, shortest, heads, head_step, query_step))
        first, offset = first + taken, offset + rows * width
    sink = torch.cat(tables) if tables else torch.zeros(0, dtype=torch.int64)
    if targets is None:
        return ScoreBlockPlan(tuple(groups), sink.to(device))
    target = torch.cat(target_tables) if target_tables else sink
    return ScoreBlockPlan(tuple(groups), sink.to(device), target.to(device))


def gather_segments(
    query: torch.Tensor, key: torch.Tensor, sink: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[rows, H, width, Dh]`` queries (times ``scale``, folded in once here rather
    than into every logit) and keys of a group; padding repeats a real frame (masked later)."""
    index = sink.clamp(max=query.shape[0] - 1)
    queries = query[index].permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    keys = key[index].permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    return queries * scale, keys


def _lengths(name: str, values, total: int) -> torch.Tensor:
    if values is None:
        return torch.tensor([total], dtype=torch.int64)
    if isinstance(values, torch.Tensor):
        if values.is_floating_point():
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        lengths = values.detach().to("cpu", torch.int64).flatten()
    else:
        lengths = torch.as_tensor(list(values), dtype=torch.int64)
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got {lengths.tolist()}")
    if int(lengths.sum()) != total:
        raise ValueError(f"{name} must sum to the {total} frames, got {lengths.tolist()}")
    return lengths


def audio_attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scope: str = "global",
    stream_lengths=None,
    cu_seqlens=None,
    scale: float | None = None,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    lookback: int | None = None,
) -> torch.Tensor:
    """Attention received by each audio frame in one encoder layer (algorithm §3).

    Args:
        query, key: ``[T, H, Dh]`` the layer's recomputed query and key projections (after
            its pre-attention LayerNorm), all streams concatenated.
        scope: ``"global"`` (reference): each softmax runs over all frames of the query's
            stream; ``"windowed"``: over the encoder's own attention window (``cu_seqlens``);
            ``"causal"`` (algorithm §9): a frame of encoder window ``e`` is scored by the
            attention it receives from all queries of windows ``max(s, e-K+1)..e`` (``s``:
            its stream's first window, ``K`` = ``lookback``), each softmax over the keys of
            that span. A function of windows ``<= e`` only: a stream may pass its previous
            ``K - 1`` windows' q/k with the new windows and keep the new frames' scores.
        stream_lengths: frames per audio stream (default: one stream of ``T`` frames); with
            ``"causal"``, spans stop at stream starts (which must be window boundaries).
        cu_seqlens: int ``[n_windows + 1]`` window boundaries, required for ``"windowed"``
            and ``"causal"``.
        scale: softmax scale, default ``Dh ** -0.5``.
        block_elements: cap on the elements of one ``[segments, heads, queries, keys]`` block.
        lookback: ``K``, encoder windows per causal span (int >= 1; ``"causal"`` only).

    Returns:
        float32 ``[T]``, the sum over heads and queries of the attention each frame gets.
    """
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [T, H, Dh], got {got}")
    if query.shape != key.shape:
        raise ValueError(
            f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if scope not in SCORE_SCOPES:
        raise ValueError(f"scope must be one of {SCORE_SCOPES}, got {scope!r}")
    n_frames, heads, head_dim = query.shape
    if scope != "causal" and lookback is not None:
        raise ValueError(f'lookback is for scope="causal" only, got scope={scope!r}')
    starts = targets = None
    if scope == "global":
        lengths = _lengths("stream_lengths", stream_lengths, n_frames)
    else:
        if cu_seqlens is None:
            raise ValueError(f"scope={scope!r} needs cu_seqlens, the encoder's window boundaries")
        bounds = torch.as_tensor(cu_seqlens).detach().to("cpu", torch.int64).flatten()
        if bounds.numel() < 2 or int(bounds[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0 and hold >= 2 entries, got {bounds.tolist()}")
        lengths = _lengths("cu_seqlens differences", torch.diff(bounds), n_frames)
        if scope == "causal":
            starts, lengths, targets = causal_spans(bounds, lengths, stream_lengths, lookback, n_frames)
    scale = head_dim**-0.5 if scale is None else float(scale)
    scores = torch.zeros(n_frames + 1, dtype=torch.float32, device=query.device)  # +1: padding sink
    plan = plan_score_blocks(lengths, heads, block_elements, query.device, starts, targets)
    for group in plan.groups:
        sink = plan.group_sink(group)
        queries, keys = gather_segments(query, key, sink, scale)
        valid = sink < n_frames if group.padded else None
        received = torch.zeros(sink.shape, dtype=torch.float32, device=query.device)
        for head_rows, query_rows in group.tiles():
            received += _tile_received(queries, keys, valid, group, head_rows, query_rows)
        scores.scatter_add_(0, plan.group_target(group).flatten(), received.flatten())
    return scores[:n_frames]


def causal_spans(
    bounds: torch.Tensor, lengths: torch.Tensor, stream_lengths, lookback, n_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The causal spans of encoder windows (``scope="causal"``): window ``e``'s span starts at
    window ``max(s, e - K + 1)`` (``s`` its stream's first window) and ends with ``e``.

    Args:
        bounds: host int64 ``[n + 1]`` cu_seqlens; lengths: host int64 ``[n]`` window sizes.
    Returns:
        (span starts, span lengths, frames of window ``e`` = the kept tail), host int64 ``[n]``.
    """
    if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1:
        raise ValueError(f'scope="causal" needs lookback, an int >= 1 (encoder windows), got {lookback!r}')
    streams = _lengths("stream_lengths", stream_lengths, n_frames)
    stream_ends = torch.cumsum(streams, 0)
    missing = [int(e) for e in stream_ends[:-1] if not bool((bounds == e).any())]
    if missing:
        raise ValueError(
            f"stream_lengths must end streams at window boundaries (cu_seqlens) for "
            f'scope="causal", but frames {missing} are inside a window'
        )
    window = torch.arange(lengths.numel())
    # Each window's stream (stream ends at or before its start), and that stream's first window.
    stream_of_window = torch.searchsorted(stream_ends, bounds[:-1], right=True).clamp(max=streams.numel() - 1)
    stream_starts = stream_ends - streams
    first = torch.searchsorted(bounds, stream_starts[stream_of_window])
    span_first = torch.maximum(first, window - lookback + 1)
    starts = bounds[span_first]
    return starts, bounds[1:] - starts, lengths


def _tile_received(
    queries: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor | None,
    group: SegmentGroup,
    head_rows: slice,
    query_rows: slice,
) -> torch.Tensor:
    """Attention one tile of queries gives each key of its segment, summed over heads and
    queries: float32 ``[s, width]``. Two tile-sized temporaries (logits, softmax), both
    freed on return; the scale is already folded into ``queries``."""
    logits = torch.matmul(queries[:, head_rows, query_rows], keys[:, head_rows].transpose(-1, -2))
    if valid is not None:  # only groups holding a segment shorter than the width
        logits.masked_fill_(~valid[:, None, None, :], float("-inf"))
    attn = torch.softmax(logits, dim=-1)  # [s, h, q, width]
    if valid is None or query_rows.stop <= group.shortest:
        return attn.sum(dim=(1, 2))
    # Padded query rows must give nothing: a weighted sum over (heads, queries) as one bmm.
    s, h, q, width = attn.shape
    weights = valid[:, None, query_rows].to(attn.dtype).expand(s, h, q).reshape(s, 1, h * q)
    return torch.bmm(weights, attn.reshape(s, h * q, width)).squeeze(1)


def pool_audio_scores(
    frame_scores: torch.Tensor, stream_lengths=None, pool: int = 2
) -> torch.Tensor:
    """Map frame scores to LLM audio tokens: the mean of each ``pool`` consecutive frames
    within each stream, a stream's incomplete last group dropped (as the encoder's pooling
    drops it). ``pool=1`` (Qwen3-Omni) returns the scores unchanged.

    Args:
        frame_scores: float ``[T]``; stream_lengths: frames per stream (default one stream).
    Returns:
        float32 ``[sum_s T_s // pool]``.
    """
    if not isinstance(frame_scores, torch.Tensor) or frame_scores.dim() != 1:
        raise ValueError("frame_scores must be a 1-D tensor [T]")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive int, got {pool!r}")
    lengths = _lengths("stream_lengths", stream_lengths, frame_scores.numel())
    tokens = lengths // pool
    stream, local = segment_ids(tokens)
    first = exclusive_cumsum(lengths)[stream] + local * pool
    index = (first[:, None] + torch.arange(pool)[None, :]).to(frame_scores.device)
    return frame_scores.float()[index].mean(dim=1)


def audio_energy_scores(audio_embeds: torch.Tensor) -> torch.Tensor:
    """algorithm §3 ``energy`` variant: the L2 norm of each audio token's embedding.

    Args:
        audio_embeds: ``[N_a, D]``. Returns float32 ``[N_a]``.
    """
    if not isinstance(audio_embeds, torch.Tensor) or audio_embeds.dim() != 2:
        raise ValueError("audio_embeds must be a tensor [N_a, D]")
    return torch.linalg.vector_norm(audio_embeds.float(), dim=-1)
