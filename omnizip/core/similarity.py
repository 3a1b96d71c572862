"""Blockwise cross-modal similarities: no ``[pool, N_v]`` matrix is ever formed whole
(algorithm §6.6). Results do not depend on the block size."""

from __future__ import annotations

import math

import torch

from .select import block_rows

# OmniZip's similarities are float32 dot products of rows, some normalised only afterwards
# (the norms are folded into a scale). Rows with norms below 2**60 keep every such product
# below 2**120, far inside float32's range (about 2**128).
SAFE_ROW_NORM = 2.0**60


class RowGatherer:
    """Gathers rows of ``source`` as float32 (OmniZip's compute dtype) into one reused buffer.

    Blocked loops gather a block, use it and move on; reusing one buffer avoids paying for
    a fresh (page-faulting) allocation per block, which on CPU costs more than the copy.
    Each call's result is overwritten by the next call.

    Args:
        source: ``[L, D]`` any float dtype.
        max_rows: the most rows one call will gather.
    """

    def __init__(self, source: torch.Tensor, max_rows: int) -> None:
        self.source = source
        self.buffer = torch.empty(max_rows, source.shape[1], dtype=torch.float32, device=source.device)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """``source[index]`` as float32 ``[*index.shape, D]`` (a view of the buffer)."""
        flat = index.reshape(-1)
        out = self.buffer[: flat.numel()]
        if self.source.dtype == torch.float32:
            torch.index_select(self.source, 0, flat, out=out)
        else:
            out.copy_(self.source.index_select(0, flat))
        return out.view(*index.shape, self.source.shape[1])


def sequence_row_norms(source: torch.Tensor, block_elements: int) -> torch.Tensor:
    """L2 norm of every row of ``source`` ``[L, D]`` -> float32 ``[L]``.

    Reads contiguous row slices (views), so no copy of the embeddings is made.
    """
    n, dim = source.shape
    out = torch.empty(n, dtype=torch.float32, device=source.device)
    rows = block_rows(n, dim, block_elements)
    for start in range(0, n, rows):
        out[start : start + rows] = torch.linalg.vector_norm(
            source[start : start + rows].float(), dim=-1
        )
    return out


def float32_safe(
    source: torch.Tensor, positions: torch.Tensor, row_norms: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """The rows decisions read, made safe for float32 similarities.

    Cosines do not depend on scale, so when a decision row is too large for float32 (a norm
    at or over :data:`SAFE_ROW_NORM`, or infinite: float64 beyond float32's range, or
    float32 near its maximum) the whole ``source`` is scaled by a power of two (exact) so
    that its largest value among ``positions`` is below 1. Ordinary inputs are returned as
    they are, so their decisions do not change.

    Args:
        source: ``[L, D]`` any float dtype (detached); positions: int64 ``[n]`` decision rows.
        row_norms: float32 ``[n]`` their norms. Reading the check synchronises once.
    Returns:
        (``source`` or a scaled copy, whether it was scaled).
    """
    if positions.numel() == 0 or bool((row_norms <= SAFE_ROW_NORM).all()):
        return source, False
    largest = float(source[positions].abs().amax())
    if not math.isfinite(largest) or largest == 0.0:  # not finite input: nothing to promise
        return source, False
    exponent = math.frexp(largest)[1]  # largest < 2**exponent
    # Two factors, each a normal number even for float64's range (2**-1024 would not be).
    half = exponent // 2
    return source * 2.0**-half * 2.0 ** (half - exponent), True


def max_cosine_to_columns(
    rows_hat: torch.Tensor,
    source: torch.Tensor,
    column_positions: torch.Tensor,
    column_scale: torch.Tensor,
    block_elements: int,
) -> torch.Tensor:
    """``max_j (rows_hat[i] . source[column_positions[j]]) * column_scale[j]`` for every row.

    Columns are gathered block by block into one reused float32 buffer (no normalised copy
    of the columns, no page-faulting fresh allocation per block), and normalisation is folded
    into the per-column scale. No ``[p, n]`` matrix is formed whole (algorithm §6.6).

    Args:
        rows_hat: float32 ``[p, D]`` (already normalised).
        source: ``[L, D]`` any float dtype; column_positions: int64 ``[n]`` rows of ``source``.
        column_scale: float32 ``[n]`` (e.g. ``1 / (||c|| + eps)``).
    Returns:
        float32 ``[p]`` (``-inf`` when there are no columns).
    """
    p, dim = rows_hat.shape
    n = column_positions.numel()
    best = torch.full((p,), float("-inf"), dtype=torch.float32, device=rows_hat.device)
    if p == 0 or n == 0:
        return best
    best_column = torch.zeros(p, dtype=torch.int64, device=rows_hat.device)
    width = block_rows(n, max(p, dim), block_elements)
    gather = RowGatherer(source, width)
    sims = torch.empty(p, width, dtype=torch.float32, device=rows_hat.device)
    for start in range(0, n, width):
        index = column_positions[start : start + width]
        cols, out = gather(index), sims[:, : index.numel()]
        if out.is_contiguous():
            torch.mm(rows_hat, cols.T, out=out)
        else:  # the last, narrower block
            out = rows_hat @ cols.T
        out.mul_(column_scale[start : start + width])
        values, column = out.max(dim=1)  # first maximum: ties keep the earlier column
        better = values > best
        best = torch.where(better, values, best)
        best_column = torch.where(better, column + start, best_column)
    return rowwise_products(rows_hat, source, column_positions[best_column]) * column_scale[best_column]


def rowwise_products(rows: torch.Tensor, source: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``rows[i] . source[positions[i]]`` in float32, ``[p]``, by one elementwise product and
    row sum whose shape does not depend on any blocking.

    A matrix product rounds an entry differently depending on the matrix's shape, so the
    winners of a blocked search are recomputed here: the values that feed the merge weights
    are then the same for every ``block_elements``.
    """
    return (rows * source.index_select(0, positions).float()).sum(dim=1)


def padded_segments(
    starts: torch.Tensor, lengths: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and validity of segments laid out as rows of a ``[n, width]`` table.

    Args:
        starts, lengths: int64 ``[n]``.
    Returns:
        (index int64 ``[n, width]`` clamped into range, valid bool ``[n, width]``).
    """
    offsets = torch.arange(width, device=starts.device)
    valid = offsets[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + offsets[None, :], starts[:, None].clamp(min=0))
    return index, valid


def max_cosine_within_windows(
    audio_hat: torch.Tensor,
    audio_starts: torch.Tensor,
    audio_lengths: torch.Tensor,
    source: torch.Tensor,
    video_positions: torch.Tensor,
    video_scale: torch.Tensor,
    video_starts: torch.Tensor,
    video_lengths: torch.Tensor,
    block_elements: int,
) -> torch.Tensor:
    """For every audio token of the guided windows, its max cosine to its own window's video.

    Window ``i`` pairs audio chunk ``i`` with video chunk ``i`` (algorithm §1). Work is linear in
    the clip length: windows are processed as padded ``[windows, A_max, V_max]`` blocks.

    Args:
        audio_hat: float32 ``[N_a, D]`` merge-normalised audio tokens.
        audio_starts, audio_lengths: int64 ``[G]`` (indices into the audio tokens; host).
        source: ``[L, D]`` the sequence embeddings; video_positions: int64 ``[N_v]`` (device).
        video_scale: float32 ``[N_v]``, ``1 / (||v|| + eps)``.
        video_starts, video_lengths: int64 ``[G]`` (indices into the video tokens; host).
    Returns:
        float32 ``[N_a]``; ``-inf`` for audio tokens outside the guided windows.
    """
    return segment_max_cosine(
        audio_hat, audio_starts, audio_lengths, source, video_positions, video_scale,
        video_starts, video_lengths, block_elements,
    )[0]


def segment_max_cosine(
    rows_hat: torch.Tensor,
    row_starts: torch.Tensor,
    row_lengths: torch.Tensor,
    source: torch.Tensor,
    column_positions: torch.Tensor,
    column_scale: torch.Tensor,
    column_starts: torch.Tensor,
    column_lengths: torch.Tensor,
    block_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ``s`` pairs rows ``row_starts[s] + [0, row_lengths[s])`` with columns
    ``column_starts[s] + [0, column_lengths[s])``: every row's highest
    ``rows_hat[i] . source[column_positions[j]] * column_scale[j]`` over its segment's columns,
    and which column gave it (the first on ties).

    Row ranges must not overlap (:func:`segment_cosine_table` gives each segment's values when
    they do). Segments are processed as padded ``[segments, R_max, C_max]`` blocks, so work is
    linear in the segments' sizes.

    Args:
        rows_hat: float32 ``[n, D]`` normalised rows.
        row_starts, row_lengths, column_starts, column_lengths: int64 ``[S]`` on the host
            (row ranges index ``rows_hat``, column ranges index ``column_positions``).
        source: ``[L, D]``; column_positions: int64 ``[N_c]`` rows of ``source`` (device);
        column_scale: float32 ``[N_c]``.
    Returns:
        (float32 ``[n]``, ``-inf`` for rows outside every segment or with no columns;
        int64 ``[n]`` the winning column index into ``column_positions``, meaningless where
        the value is ``-inf``).
    """
    device = rows_hat.device
    n_rows = rows_hat.shape[0]
    # One spare slot at the end takes the padding entries, so scatters need no boolean
    # indexing (which would synchronise with the device).
    out = torch.full((n_rows + 1,), float("-inf"), device=device)
    winner = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)  # column index
    table = segment_cosine_table(
        rows_hat, row_starts, row_lengths, source, column_positions, column_scale,
        column_starts, column_lengths, block_elements,
    )
    if table is None:
        return out[:n_rows], winner[:n_rows]
    best, column, row_index, row_valid = table
    target = torch.where(row_valid, row_index, n_rows).flatten()
    out.scatter_(0, target, best.flatten())
    winner.scatter_(0, target, column.flatten())
    # The winners' cosines once more, independent of the window blocking (rowwise_products).
    winner = winner[:n_rows]
    exact = rowwise_products(rows_hat, source, column_positions[winner])
    found = torch.isfinite(out[:n_rows])
    return torch.where(found, exact * column_scale[winner], out[:n_rows]), winner


def segment_cosine_table(
    rows_hat: torch.Tensor,
    row_starts: torch.Tensor,
    row_lengths: torch.Tensor,
    source: torch.Tensor,
    column_positions: torch.Tensor,
    column_scale: torch.Tensor,
    column_starts: torch.Tensor,
    column_lengths: torch.Tensor,
    block_elements: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`segment_max_cosine` per segment, before rows are gathered: row ranges may
    overlap (a row then has one entry per segment it is in).

    Returns:
        None when there is nothing to compare, else device tensors ``[S, R_max]``: the best
        value of each (segment, row slot) (``-inf`` on padding or without columns), its column
        index into ``column_positions`` (the first on ties), the row index and whether the
        slot is a row.
    """
    device = rows_hat.device
    n_rows = rows_hat.shape[0]
    n_segments = int(row_starts.numel())
    if n_segments == 0 or int(column_lengths.max()) == 0 or int(row_lengths.max()) == 0:
        return None
    a_width = int(row_lengths.max())
    v_width = int(column_lengths.max())
    a_index, a_valid = padded_segments(row_starts, row_lengths, a_width)
    v_index, v_valid = padded_segments(column_starts, column_lengths, v_width)
    # An empty segment at the very end pads with its start, one past the last row/column.
    a_index = a_index.clamp(max=n_rows - 1).to(device)
    a_valid = a_valid.to(device)
    v_index = v_index.clamp(max=column_positions.numel() - 1).to(device)
    v_valid = v_valid.to(device)
    best = torch.empty(n_segments, a_width, device=device)
    column = torch.empty(n_segments, a_width, dtype=torch.int64, device=device)
    per_window = a_width * v_width + (a_width + v_width) * rows_hat.shape[1]
    windows = block_rows(n_segments, per_window, block_elements)
    gather = RowGatherer(source, windows * v_width)
    for start in range(0, n_segments, windows):
        sl = slice(start, start + windows)
        video = gather(column_positions[v_index[sl]])  # [w, V_max, D]
        sims = torch.bmm(rows_hat[a_index[sl]], video.transpose(1, 2))
        sims.mul_(column_scale[v_index[sl]].unsqueeze(1))
        sims.masked_fill_(~v_valid[sl].unsqueeze(1), float("-inf"))
        values, at = sims.max(dim=2)  # [w, A_max]; first maximum on ties
        best[sl], column[sl] = values, torch.gather(v_index[sl], 1, at)
    return best, column, a_index, a_valid
