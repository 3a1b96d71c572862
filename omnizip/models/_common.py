"""Model-independent pieces of the adapters: batch compression, re-padding, decode masks.

An adapter's hooks hand the decoder inputs to :func:`compress_batch`, which runs the pure core
(``method.compress``, e.g. :func:`omnizip.compress_sequence`) on every row by itself and re-pads the batch (SPEC 5, SPEC 6
deviation 1). :class:`DecodeSession` keeps what later decode steps need to translate the
caller's uncompressed attention mask to the compressed cache (SPEC 5). Nothing here imports
transformers; tensors only.

Shapes: ``B`` batch, ``L`` prompt length before compression, ``L'`` after (the longest kept
row), ``D`` hidden size, ``R`` rows of position ids (3 for M-RoPE, 4 when a plain text row
precedes them as transformers 5.x ``generate`` builds them).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import TokenDecision
from ..method import CompressionMethod

__all__ = [
    "BatchCompression",
    "DecodeSession",
    "Repadded",
    "cache_length",
    "compress_batch",
    "gather_tokens",
    "padding_mask_2d",
    "prune_cache_layers",
    "repad_rows",
    "select_flat",
    "split_rows",
    "tokens_per_frame_from_grid",
    "tokens_per_frame_from_positions",
]


def cache_length(cache: Any) -> int:
    """Tokens already in a transformers ``Cache`` (0 for ``None``; StaticCache gives a tensor)."""
    if cache is None:
        return 0
    n = cache.get_seq_length()
    return int(n)


def padding_mask_2d(attention_mask: Any, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """bool ``[B, L]``: which prompt slots hold real tokens, from any mask the decoder may get.

    ``attention_mask`` may be ``None`` (no padding), a 2-D ``[B, L]`` mask (1 = token), a 4-D
    ``[B, 1, L, K]`` mask prepared by ``generate`` for a static cache (bool: True = attend,
    float: 0 = attend) or a dict of those (per layer type). For a prepared mask the padding is
    read from the last query row: with left or right padding the last query attends every real
    key of the prompt and no pad.
    """
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if isinstance(attention_mask, dict):
        value = attention_mask.get("full_attention", next(iter(attention_mask.values()), None))
        return padding_mask_2d(value, batch, length, device)
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            "attention_mask: OmniZip supports None, 2-D or 4-D tensor masks (and dicts of them), "
            f"got {type(attention_mask).__name__} (flex-attention BlockMask is not supported)"
        )
    if attention_mask.dim() == 2:
        if attention_mask.shape != (batch, length):
            raise ValueError(
                f"attention_mask must have shape [B, L] = [{batch}, {length}] at prefill, got "
                f"{tuple(attention_mask.shape)}"
            )
        return attention_mask.to(device=device).bool()
    if attention_mask.dim() == 4:
        if attention_mask.shape[0] != batch or attention_mask.shape[-1] < length:
            raise ValueError(
                f"4-D attention_mask must be [B, 1, L, K>=L] with B={batch}, L={length}, got "
                f"{tuple(attention_mask.shape)}"
            )
        last = attention_mask[:, 0, -1, :length]
        if last.dtype == torch.bool:
            return last.to(device)
        return (last > torch.finfo(last.dtype).min / 2).to(device)
    raise ValueError(f"attention_mask must be 2-D or 4-D, got {attention_mask.dim()}-D")


def _runs(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start index (into ``positions``) and length of each maximal run of consecutive values."""
    n = positions.numel()
    new = torch.ones(n, dtype=torch.bool, device=positions.device)
    if n > 1:
        new[1:] = positions[1:] != positions[:-1] + 1
    starts = new.nonzero().squeeze(1)
    ends = torch.cat([starts[1:], starts.new_tensor([n])])
    return starts, ends - starts


def tokens_per_frame_from_positions(
    input_ids: torch.Tensor, mrope: torch.Tensor, video_token_id: int
) -> torch.Tensor | None:
    """Video tokens per frame ``P`` of every video chunk, read from M-RoPE position ids.

    Args:
        input_ids: ``[L]`` one row's ids (padding removed).
        mrope: ``[3, L]`` its temporal/height/width position ids.
        video_token_id: the video placeholder id.

    Returns:
        int64 ``[m]``, one ``P`` per maximal run of video tokens (SPEC 1 "Frame"), or ``None``
        when the positions are not M-RoPE (all three rows equal over the video tokens), so the
        caller can fall back to the vision grid. A frame is the run of tokens from one
        ``(h, w) = (h0, w0)`` cell to the next (or to a change of the temporal id), so two frames
        sharing a temporal id are still told apart.
    """
    vpos = (input_ids == video_token_id).nonzero().squeeze(1)
    if vpos.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    p = mrope[:, vpos]
    n = vpos.numel()
    starts, lengths = _runs(vpos)
    if n > starts.numel() and bool((p[0] == p[1]).all()) and bool((p[1] == p[2]).all()):
        return None
    chunk = torch.zeros(n, dtype=torch.int64, device=vpos.device)
    chunk[starts[1:]] = 1
    chunk = chunk.cumsum(0)
    first = p[:, starts[chunk]]
    frame_start = (p[1] == first[1]) & (p[2] == first[2])
    frame_start[1:] |= p[0, 1:] != p[0, :-1]
    frame_start[starts] = True
    frame_idx = frame_start.nonzero().squeeze(1)
    nxt = torch.searchsorted(frame_idx, starts, right=True)
    nxt_pos = torch.where(
        nxt < frame_idx.numel(), frame_idx[nxt.clamp(max=frame_idx.numel() - 1)], n
    )
    per_chunk = torch.minimum(nxt_pos - starts, lengths)
    return per_chunk.to("cpu", torch.int64)


def tokens_per_frame_from_grid(
    input_ids: torch.Tensor,
    padding: torch.Tensor,
    video_grid_thw: torch.Tensor,
    video_token_id: int,
    merge_size: int,
) -> list[torch.Tensor]:
    """Per row, ``P`` of every video chunk from the vision encoder's ``grid_thw`` (fallback).

    The videos' tokens follow each other in row-major order over the batch, video ``j``
    holding ``t*h*w / merge**2`` tokens with ``P_j = h*w / merge**2``; a chunk belongs to the
    video holding its first token.
    """
    grid = video_grid_thw.to("cpu", torch.int64)
    per_video = grid.prod(-1) // merge_size**2
    p_video = (grid[:, 1] * grid[:, 2]) // merge_size**2
    bounds = per_video.cumsum(0)
    out: list[torch.Tensor] = []
    offset = 0
    ids_cpu = input_ids.to("cpu")
    pad_cpu = padding.to("cpu")
    for b in range(ids_cpu.shape[0]):
        row_ids = ids_cpu[b][pad_cpu[b]]
        vpos = (row_ids == video_token_id).nonzero().squeeze(1)
        starts, _ = _runs(vpos)
        video = torch.searchsorted(bounds, starts + offset, right=True)
        if video.numel() and int(video.max()) >= p_video.numel():
            raise ValueError(
                "video_grid_thw: the grids hold fewer video tokens than the sequence; "
                "cannot map video chunks to frames"
            )
        out.append(p_video[video])
        offset += vpos.numel()
    return out


def gather_tokens(x: torch.Tensor, index: torch.Tensor, fill: Any = 0, dim: int = 1) -> torch.Tensor:
    """Pick tokens of a per-token tensor by ``index`` ``[B, L']`` (``-1`` = pad, gets ``fill``).

    ``x`` has its batch dim at ``dim - 1`` and its token dim at ``dim`` (e.g. ``[B, L, D]`` with
    ``dim=1``, ``[R, B, L]`` with ``dim=2``). Returns a new tensor, ``x`` untouched.
    """
    safe = index.clamp(min=0)
    shape = [1] * x.dim()
    shape[dim - 1], shape[dim] = index.shape
    idx = safe.reshape(shape).expand(*x.shape[:dim], index.shape[1], *x.shape[dim + 1 :])
    out = x.gather(dim, idx)
    pad = (index < 0).reshape(shape).expand_as(out)
    return out.masked_fill(pad, fill)


def select_flat(
    features: torch.Tensor, token_mask: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Prune a flat per-token side tensor with the keep mask (e.g. Qwen3-Omni deepstack).

    Args:
        features: ``[N, ...]`` one entry per True of ``token_mask``, row-major over the batch.
        token_mask: bool ``[B, L]`` which tokens ``features`` describe (``visual_pos_masks``).
        keep: bool ``[B, L]`` tokens kept (:attr:`BatchCompression.keep`).
    Returns ``features`` of the kept tokens, order preserved (new tensor).
    """
    return features[keep[token_mask].to(features.device)]


@dataclass
class BatchCompression:
    """The decoder inputs after compressing every row and re-padding (SPEC 5).

    Attributes:
        embeds: ``[B, L', D]`` new embeddings (pads are zeros).
        padding: bool ``[B, L']`` real tokens of the re-padded batch.
        position_ids: same layout as the positions given (``[R, B, L']`` or ``[B, L']``): the
            kept tokens' original values; a leading text row (``R == 4``) renumbered
            contiguously per row; pads get 1 (M-RoPE rows) / 0 (text row) as transformers does.
        rope_deltas: ``[B, 1]`` ``max(position) + 1 - kept tokens`` per row (transformers'
            convention), so decoding from the cache length continues at ``max + 1``.
        index: int64 ``[B, L']`` original slot of each new slot, -1 for pads.
        keep: bool ``[B, L]`` original slots kept.
        results: per row, the method's decision over that row's real tokens in order (for
            OmniZip a :class:`~omnizip.CompressionResult`).
        n_dropped: int64 ``[B]`` tokens dropped per row.
        changed: False when nothing was dropped (the inputs can pass unchanged).
        kept_indices: per row, int64 original slots kept, ascending.
        audio_scores: per row, float ``[N_a_row]`` the scores its audio tokens were ranked by.
        video_scores: per row, float ``[N_v_row]`` the vision-encoder scores of its video tokens
            (methods with ``needs_video_scores``), else None.
    """

    embeds: torch.Tensor
    padding: torch.Tensor
    position_ids: torch.Tensor
    rope_deltas: torch.Tensor
    index: torch.Tensor
    keep: torch.Tensor
    results: list[TokenDecision]
    n_dropped: torch.Tensor
    changed: bool
    kept_indices: list[torch.Tensor] = field(default_factory=list)
    audio_scores: list[torch.Tensor | None] = field(default_factory=list)
    video_scores: list[torch.Tensor | None] = field(default_factory=list)


def split_rows(
    name: str, scores: torch.Tensor | None, is_token: torch.Tensor, padding: torch.Tensor
) -> list[torch.Tensor | None]:
    """Per row, the scores of its real ``is_token`` slots, from one score per such slot of the
    whole batch in row-major order (as the encoders' features are scattered into it).

    Returns None for every row when ``scores`` is None, and for rows without such tokens.
    """
    per_row = is_token.sum(1).tolist()
    if scores is None:
        return [None] * len(per_row)
    if scores.numel() != sum(per_row):
        raise ValueError(f"{name}: got {scores.numel()} scores for {sum(per_row)} tokens in the batch")
    out: list[torch.Tensor | None] = []
    start = 0
    for b, n in enumerate(per_row):
        if not n:
            out.append(None)
            continue
        slot_scores = scores[start : start + n]
        start += n
        # a placeholder sitting in a pad slot cannot happen with real inputs; keep the scores of
        # the real slots only so they line up with the row's real tokens
        out.append(slot_scores[padding[b][is_token[b]].to(slot_scores.device)])
    return out


@dataclass
class Repadded:
    """A batch layout after dropping tokens row by row (see :func:`repad_rows`)."""

    index: torch.Tensor  # int64 [B, L'] original slot of each new slot, -1 for pads
    padding: torch.Tensor  # bool [B, L'] real tokens of the re-padded batch
    keep: torch.Tensor  # bool [B, L] original slots kept
    position_ids: torch.Tensor  # as given ([R, B, L'] or [B, L'])
    rope_deltas: torch.Tensor  # [B, 1]
    n_dropped: torch.Tensor  # int64 [B]


def repad_rows(
    kept_rows: list[torch.Tensor],
    padding: torch.Tensor,
    position_ids: torch.Tensor,
    text_row: bool,
) -> Repadded:
    """Re-pad a batch whose row ``b`` keeps the original slots ``kept_rows[b]`` (ascending).

    The batch is re-padded on the side it was padded on (left when no row is right-padded).
    Kept tokens keep their position ids; a leading text row (``text_row``) is renumbered
    contiguously per row from the row's first text position; pads get 1 (M-RoPE rows) / 0
    (text row). ``rope_deltas`` is ``max(M-RoPE position) + 1 - kept`` per row (SPEC 5).
    """
    bsz, length = padding.shape
    device = padding.device
    pos = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
    if pos.shape[1] == 1 and bsz > 1:
        pos = pos.expand(-1, bsz, -1)
    n_valid = padding.sum(1)
    n_kept = torch.tensor([k.numel() for k in kept_rows], dtype=torch.int64, device=device)
    n_dropped = n_valid.to(torch.int64) - n_kept
    new_len = int(n_kept.max()) if bsz else 0
    right_padded = bool((~padding[:, -1]).any()) if length else False
    index = torch.full((bsz, new_len), -1, dtype=torch.int64, device=device)
    keep = torch.zeros(bsz, length, dtype=torch.bool, device=device)
    for b in range(bsz):
        n = kept_rows[b].numel()
        slots = slice(0, n) if right_padded else slice(new_len - n, new_len)
        index[b, slots] = kept_rows[b].to(device)
        keep[b, kept_rows[b].to(device)] = True
    new_padding = index >= 0

    new_pos = gather_tokens(pos.to(device), index, fill=1, dim=2)
    mrope_rows = new_pos[1:] if text_row else new_pos
    if text_row:
        first_valid = padding.float().argmax(1)  # first real slot of each row
        start = pos[0].to(device).gather(1, first_valid[:, None])  # [B, 1] first text position
        text = start + new_padding.to(pos.dtype).cumsum(1) - 1
        new_pos[0] = text.masked_fill(~new_padding, 0)
    masked_max = mrope_rows.masked_fill(~new_padding.unsqueeze(0), torch.iinfo(torch.int64).min
                                        if not mrope_rows.is_floating_point() else float("-inf"))
    max_pos = masked_max.amax(dim=(0, 2))
    rope_deltas = (max_pos + 1 - n_kept.to(max_pos.dtype)).unsqueeze(1)
    if position_ids.dim() == 2:
        new_pos = new_pos[0]
    return Repadded(index, new_padding, keep, new_pos, rope_deltas, n_dropped)


def compress_batch(
    *,
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    padding: torch.Tensor,
    position_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    tokens_per_frame: list[Any],
    method: CompressionMethod,
    audio_token_id: int,
    video_token_id: int,
    text_row: bool,
    video_scores: torch.Tensor | None = None,
) -> BatchCompression:
    """Compress each row of a (padded) batch on its own and re-pad (SPEC 5, SPEC 6.1).

    ``method.compress`` (for OmniZip: :func:`omnizip.compress_sequence` with its config) decides
    each row over the row's real tokens only.

    Args:
        embeds: ``[B, L, D]`` decoder input embeddings (not modified).
        input_ids: ``[B, L]`` ids of the same slots.
        padding: bool ``[B, L]`` real tokens.
        position_ids: ``[R, B, L]`` (or ``[B, L]``) position ids of the slots.
        audio_scores: float ``[N_a]`` one score per audio token of the whole batch in row-major
            order (as the audio features are scattered into the sequence), or None.
        video_scores: float ``[N_v]`` likewise one per video token (VisionZip), or None.
        tokens_per_frame: per row, an int or one int per video chunk.
        text_row: True when ``position_ids[0]`` is the plain text row of a 4-row layout.

    The batch is re-padded on the side it was padded on (left when no row is right-padded).
    """
    bsz = embeds.shape[0]
    audio_rows = split_rows("audio_scores", audio_scores, input_ids == audio_token_id, padding)
    video_rows = split_rows("video_scores", video_scores, input_ids == video_token_id, padding)

    results: list[TokenDecision] = []
    kept_rows: list[torch.Tensor] = []
    kept_embeds: list[torch.Tensor] = []
    for b in range(bsz):
        valid = padding[b].nonzero().squeeze(1)
        ids_b = input_ids[b, valid]
        res = method.compress(
            embeds[b, valid],
            ids_b,
            audio_token_id=audio_token_id,
            video_token_id=video_token_id,
            tokens_per_frame=tokens_per_frame[b],
            audio_scores=audio_rows[b],
            video_scores=video_rows[b],
        )
        results.append(res)
        keep_dev = res.keep.to(valid.device)
        kept_rows.append(valid[keep_dev])
        kept_embeds.append(res.embeds[res.keep])

    layout = repad_rows(kept_rows, padding, position_ids, text_row)
    index = layout.index
    out_embeds = embeds.new_zeros(bsz, index.shape[1], embeds.shape[-1])
    for b in range(bsz):
        out_embeds[b, layout.padding[b]] = kept_embeds[b].to(embeds.dtype)
    n_dropped, new_padding, keep = layout.n_dropped, layout.padding, layout.keep
    new_pos, rope_deltas = layout.position_ids, layout.rope_deltas
    return BatchCompression(
        embeds=out_embeds,
        padding=new_padding,
        position_ids=new_pos,
        rope_deltas=rope_deltas,
        index=index,
        keep=keep,
        results=results,
        n_dropped=n_dropped,
        changed=bool((n_dropped > 0).any()),
        kept_indices=kept_rows,
        audio_scores=audio_rows,
        video_scores=video_rows,
    )


_CROPPED = (
    "The cache no longer matches the compressed prefill: assisted/speculative and prompt-lookup "
    "decoding crop the cache to uncompressed lengths and are not supported under OmniZip."
)


class DecodeSession:
    """What decode steps after a compressed prefill need (SPEC 5).

    The caller (``generate`` or a user loop) keeps an attention mask over the *uncompressed*
    prompt and appends to it; the cache holds the compressed prompt. :meth:`attention_mask`
    maps the former to the latter: the prefill part is replaced by the compressed prefill
    mask, the part after the prompt is kept as given.
    """

    def __init__(self, prompt_length: int, padding: torch.Tensor, n_dropped: torch.Tensor) -> None:
        self.prompt_length = prompt_length  # L
        self.padding = padding  # bool [B, L']
        self.n_dropped = n_dropped  # [B]
        self._cache: Any = None

    @property
    def compressed_length(self) -> int:
        return int(self.padding.shape[1])

    def bind(self, cache: Any) -> None:
        """Remember the cache the compressed prefill was written to (weakly when possible)."""
        if cache is None:
            return
        try:
            self._cache = weakref.ref(cache)
        except TypeError:  # pragma: no cover - caches are plain objects
            self._cache = lambda c=cache: c

    def owns(self, cache: Any) -> bool:
        return cache is not None and self._cache is not None and self._cache() is cache

    def attention_mask(self, incoming: Any, past: int, new_tokens: int, batch: int) -> torch.Tensor | None:
        """The 2-D ``[B, past + new_tokens]`` mask matching the compressed cache.

        Args:
            incoming: the caller's mask: None, 2-D over the uncompressed prompt plus the tokens
                after it (``L + past - L' + new_tokens`` long), 2-D already over the cache
                (``past + new_tokens`` long), or a prepared 4-D/dict mask (static-cache
                ``generate``; the generated part is then all ones, as ``generate`` builds it).
        Returns None when nothing is masked (so attention may use its causal fast path).
        """
        if batch != self.padding.shape[0]:
            raise ValueError(
                f"attention_mask: decoding a batch of {batch} rows on a cache compressed for "
                f"{self.padding.shape[0]} rows"
            )
        tail_len = past + new_tokens - self.compressed_length
        if tail_len < 0:
            raise ValueError(
                f"cache: it holds {past} tokens, fewer than the {self.compressed_length} of the "
                f"compressed prompt. {_CROPPED}"
            )
        device = self.padding.device
        if isinstance(incoming, torch.Tensor) and incoming.dim() == 2:
            width = incoming.shape[1]
            if width == self.prompt_length + tail_len:
                tail = incoming[:, self.prompt_length :].to(device).bool()
            elif width == past + new_tokens:
                tail = incoming[:, self.compressed_length :].to(device).bool()
            else:
                raise ValueError(
                    f"attention_mask has {width} columns; expected {self.prompt_length + tail_len} "
                    f"(uncompressed prompt {self.prompt_length} + {tail_len} later tokens) or "
                    f"{past + new_tokens} (the compressed cache + new tokens). {_CROPPED}"
                )
            dtype = incoming.dtype
        else:
            tail = torch.ones(batch, tail_len, dtype=torch.bool, device=device)
            dtype = torch.long
        mask = torch.cat([self.padding, tail], dim=1)
        if incoming is None and bool(mask.all()):
            return None
        return mask.to(dtype)


def _gather_cache(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, :, index[b, j]]`` for a ``[B, H, L, Dh]`` cache tensor; ``-1`` slots get zeros."""
    bsz, heads, _, dim = x.shape
    idx = index.to(x.device)
    out = x.gather(2, idx.clamp(min=0)[:, None, :, None].expand(bsz, heads, idx.shape[1], dim))
    return out.masked_fill((idx < 0)[:, None, :, None], 0)


def prune_cache_layers(cache: Any, layer_ids: Any, index: torch.Tensor) -> None:
    """Keep, in the cache layers ``layer_ids``, only the prompt slots ``index`` (FastV).

    Args:
        cache: a transformers ``Cache`` whose listed layers hold the whole prompt (``L`` keys).
        layer_ids: the layers to prune (those that ran before the in-decoder pruning).
        index: int64 ``[B, L']`` the original slot of each new slot, -1 for pads (zeros).

    Dynamic layers get new tensors; static layers are rewritten in place (their addresses
    stay) and their length is reduced to ``L'``. Other layer kinds (sliding-window, quantized)
    raise ``ValueError``.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"cache: {type(cache).__name__} has no per-layer storage to prune")
    new_len = int(index.shape[1])
    for i in layer_ids:
        layer = layers[i]
        kind = type(layer).__name__
        if kind not in ("DynamicLayer", "StaticLayer"):
            raise ValueError(
                f"cache: pruning inside the decoder (fastv) supports dynamic and static caches, "
                f"not {kind} (layer {i}); use a DynamicCache or StaticCache"
            )
        if not getattr(layer, "is_initialized", True) or layer.keys is None:
            continue
        length = int(layer.get_seq_length())
        keys = _gather_cache(layer.keys[:, :, :length], index)
        values = _gather_cache(layer.values[:, :, :length], index)
        if kind == "StaticLayer":
            layer.keys[:, :, :new_len].copy_(keys)
            layer.values[:, :, :new_len].copy_(values)
            layer.keys[:, :, new_len:length].zero_()
            layer.values[:, :, new_len:length].zero_()
            layer.cumulative_length.sub_(length - new_len)
        else:
            layer.keys, layer.values = keys, values
