"""VisionZip's model side: the attention each video token receives in the vision encoder.

:class:`VisionZipHooks` (built by :meth:`VisionZipConfig.model_hooks
<omnizip.methods.visionzip.VisionZipConfig.model_hooks>`) hooks the vision encoder:

====================================  =======================================================
``visual`` (pre)                      remember the call's ``grid_thw`` and window order
``visual.blocks[-1].attn`` (pre)      recompute the last block's post-rotary q/k
                                      (:func:`vision_query_key`), attention received per
                                      patch inside the block's ``cu_seqlens`` spans, pooled
                                      per LLM token, back in LLM order (``window_index``)
``visual`` (post, always)             file the call's scores with a fingerprint of its
                                      output rows (:class:`VisionScoreBook`)
====================================  =======================================================

and hands the adapter, for each prefill, the score of every video token
(:meth:`VisionZipHooks.video_scores`): the encoder row that was scattered into the token is
recognised by its fingerprint, whichever encoder call produced it (transformers 5.x
``generate`` runs the encoder before the thinker; images and videos are separate calls;
beam search repeats the outputs).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..core import audio_attention_scores
from ..method import DEFAULT_BLOCK_ELEMENTS, CompressionMethod, MethodHooks
from ..models.context import ModelContext
from ..models.rotary import apply_rotary

__all__ = ["VisionRun", "VisionScoreBook", "VisionZipHooks", "frame_window_spans", "vision_query_key",
           "vision_token_scores"]

logger = logging.getLogger("omnizip")


def vision_token_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    merge_unit: int = 4,
    window_index: torch.Tensor | None = None,
    scale: float | None = None,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Per LLM visual token, the attention its patches receive in one vision-encoder layer.

    For Qwen2.5-Omni / Qwen2.5-VL's vision encoder (``thinker.visual``), hook the last block's
    attention ``visual.blocks[-1].attn`` (a full-attention block: its ``cu_seqlens`` span one
    temporal grid step of one image/video each) with a forward pre-hook, and from its
    ``hidden_states`` (after the block's ``norm1``) recompute
    ``q = attn.q(h).view(T, H, -1)``, ``k = attn.k(h).view(T, H, -1)`` and apply the block's
    rotary embedding (``apply_rotary_pos_emb_vision(q, k, cos, sin)`` with the
    ``position_embeddings`` passed to the attention). Pass those and the ``cu_seqlens`` given to
    that call here.

    Args:
        query, key: ``[T, H, Dh]`` post-rotary query/key of the layer (patch order of the
            encoder, i.e. Qwen2.5-VL's window order).
        cu_seqlens: ``[n + 1]`` the layer's attention spans.
        merge_unit: patches merged into one LLM token (``spatial_merge_size ** 2`` = 4); they
            are consecutive in the encoder's order.
        window_index: the encoder's ``window_index`` (merged-token permutation into window
            order, from ``get_vision_window_index``); when given, the result is put back into
            the LLM's token order (``argsort(window_index)``, the encoder's ``reverse_indices``).
        scale: softmax scale (default ``Dh ** -0.5``, the encoder's).
    Returns:
        float32 ``[T // merge_unit]``: per merged token, the mean over its patches of the
        attention received (summed over heads and queries of its span). The videos' tokens
        follow each other in ``grid_thw`` order; the adapter concatenates the video ones in the
        order the sequence holds them to get ``video_scores [N_v]``.
    """
    patch = audio_attention_scores(
        query, key, scope="windowed", cu_seqlens=cu_seqlens, scale=scale,
        block_elements=block_elements,
    )
    if patch.numel() % merge_unit:
        raise ValueError(
            f"query holds {patch.numel()} patches, not a multiple of merge_unit={merge_unit}"
        )
    merged = patch.view(-1, merge_unit).mean(dim=1)
    if window_index is not None:
        order = torch.argsort(window_index.to(merged.device))
        if order.numel() != merged.numel():
            raise ValueError(
                f"window_index has {order.numel()} entries for {merged.numel()} merged tokens"
            )
        merged = merged[order]
    return merged


def frame_window_spans(grid_thw: torch.Tensor, frames: int) -> torch.Tensor:
    """int64 ``[n + 1]`` bounds of windows of ``frames`` temporal grid steps of each grid entry
    (an entry's last window may hold fewer), in patches, laid end to end as the encoder does."""
    grid = grid_thw.to("cpu", torch.int64)
    t, area = grid[:, 0], grid[:, 1] * grid[:, 2]
    full, tail = t // frames, t % frames
    per_entry = full + (tail > 0).to(torch.int64)
    sizes = torch.repeat_interleave(area * frames, per_entry)
    last = torch.cumsum(per_entry, 0) - 1
    sizes[last[tail > 0]] = (area * tail)[tail > 0]
    return torch.nn.functional.pad(torch.cumsum(sizes, 0), (1, 0))


def vision_query_key(
    attn: Any, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-rotary ``q``, ``k`` ``[T, H, Dh]`` of a vision attention block from its input.

    ``hidden`` is the block attention's input ``[T, C]`` (after the block's ``norm1``) and
    ``position_embeddings`` its ``(cos, sin)`` ``[T, Dh]``. As transformers'
    ``apply_rotary_pos_emb_vision``: the rotation runs in float32, the result is cast back.
    """
    length = hidden.shape[0]
    heads = int(attn.num_heads)
    if hasattr(attn, "qkv"):  # Qwen3-VL / Qwen3-Omni: one fused projection
        q, k, _ = attn.qkv(hidden).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    else:  # Qwen2.5-VL / Qwen2.5-Omni
        q = attn.q(hidden).reshape(length, heads, -1)
        k = attn.k(hidden).reshape(length, heads, -1)
    cos, sin = position_embeddings
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q_rot = apply_rotary(q.float(), cos, sin).to(q.dtype)
    k_rot = apply_rotary(k.float(), cos, sin).to(k.dtype)
    return q_rot, k_rot


@dataclass
class VisionRun:
    """One scored vision-encoder call.

    Attributes:
        fingerprints: float32 ``[N, F]`` (host) a random projection of each output row
            (``pooler_output``, cast to the decoder's dtype), to recognise the rows in a prompt.
        scores: float32 ``[N]`` per output row (LLM token), :func:`vision_token_scores`.
        sizes: output rows per ``grid_thw`` entry (image or video), in order.
    """

    fingerprints: torch.Tensor
    scores: torch.Tensor
    sizes: list[int]


class VisionScoreBook:
    """The latest scored vision-encoder calls, matched to a prompt's video tokens by content.

    A prompt's video tokens hold, in row-major order, the output rows of whole ``grid_thw``
    entries (one video each), possibly repeated (beam search) and possibly produced by an
    earlier call (``generate`` with ``use_cache=False`` re-runs the thinker on the encoder
    outputs it computed once). :meth:`match` walks the video tokens and finds, entry by entry,
    a recorded entry whose rows have the same fingerprints. Image calls are recorded too (the
    encoder cannot tell them apart), but an image's rows never sit at video tokens.
    """

    #: projection width of the fingerprints
    width = 4

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self.runs: list[VisionRun] = []
        self._projection: dict[tuple[int, str], torch.Tensor] = {}

    def clear(self) -> None:
        self.runs = []

    def fingerprint(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """float32 ``[N, F]`` on the host: ``rows`` cast to ``dtype``, projected."""
        key = (int(rows.shape[-1]), str(rows.device))
        proj = self._projection.get(key)
        if proj is None:
            gen = torch.Generator().manual_seed(0x0A1B2C)
            proj = torch.randn(key[0], self.width, generator=gen).to(rows.device)
            self._projection[key] = proj
        return (rows.detach().to(dtype).float() @ proj).to("cpu")

    def add(self, run: VisionRun) -> None:
        self.runs = [*self.runs[-(self.capacity - 1) :], run]

    def match(self, video_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """float32 ``[N_v]`` scores of the video tokens (rows ``[N_v, D]`` in sequence order),
        or None when some video token matches no recorded encoder output."""
        n = video_rows.shape[0]
        if n == 0:
            return torch.zeros(0, dtype=torch.float32, device=video_rows.device)
        target = self.fingerprint(video_rows, dtype)
        atol = 1e-4 * float(target.abs().mean()) + 1e-12
        entries: list[tuple[torch.Tensor, torch.Tensor]] = []
        for run in reversed(self.runs):  # newest first
            start = 0
            for size in run.sizes:
                entries.append(
                    (run.fingerprints[start : start + size], run.scores[start : start + size])
                )
                start += size
        pieces: list[torch.Tensor] = []
        pos = 0
        while pos < n:
            for fps, scores in entries:
                size = fps.shape[0]
                if (
                    size
                    and pos + size <= n
                    and torch.allclose(fps, target[pos : pos + size], rtol=1e-4, atol=atol)
                ):
                    pieces.append(scores.to(video_rows.device))
                    pos += size
                    break
            else:
                return None
        return torch.cat(pieces)


class VisionZipHooks(MethodHooks):
    """VisionZip's vision-encoder scoring on one patched model (see the module docstring)."""

    def __init__(self, ctx: ModelContext, method: CompressionMethod, frames_per_span: int = 1) -> None:
        self.ctx = ctx
        self.method = method
        #: 1: the block's own attention spans (one frame each); more: windows of that many
        #: frames of each video (SEATS scores inside its Stage I windows)
        self.frames_per_span = frames_per_span
        self.book = VisionScoreBook()
        self._call: dict[str, Any] | None = None  # the encoder call in flight
        self._seconds = 0.0

    def attach(self) -> None:
        visual: Any = self.ctx.vision_encoder  # None when the model has no vision encoder
        try:
            last_attn = visual.blocks[-1].attn
        except (AttributeError, IndexError, TypeError) as exc:
            raise ValueError(
                f"config: method {self.method.name!r} needs vision-encoder scores, but "
                f"the model has no vision encoder with blocks[-1].attn ({exc})"
            ) from exc
        self.ctx.pre_hook(visual, self._on_visual)
        self.ctx.post_hook(visual, self._after_visual, True)
        self.ctx.pre_hook(last_attn, self._on_last_attention)

    def detach(self) -> None:
        self.book.clear()
        self._call = None

    def end_call(self) -> None:
        self._call = None

    def take_seconds(self) -> float:
        seconds, self._seconds = self._seconds, 0.0
        return seconds

    def _on_visual(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Prepare the scoring of this encoder call (its grid and window order)."""
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if isinstance(grid, torch.Tensor):
            started = time.perf_counter()
            self._call = {
                "grid": grid,
                "window_index": _window_index(module, grid, kwargs),
                "scores": None,
            }
            self._seconds += time.perf_counter() - started
        return None

    def _on_last_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Attention received in the encoder's last block, per LLM token."""
        pending = self._call
        if pending is None:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        rotary = kwargs.get("position_embeddings")
        if hidden is None or cu_seqlens is None or rotary is None:
            return None
        started = time.perf_counter()
        if self.frames_per_span > 1:
            cu_seqlens = frame_window_spans(pending["grid"], self.frames_per_span)
        with torch.no_grad():
            query, key = vision_query_key(module, hidden, rotary)
            pending["scores"] = vision_token_scores(
                query,
                key,
                cu_seqlens,
                merge_unit=self.ctx.merge_size**2,
                window_index=pending["window_index"],
                scale=float(module.scaling),
                block_elements=self.method.block_elements,
            )
        self._seconds += time.perf_counter() - started
        return None

    def _after_visual(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """File the call's scores with a fingerprint of its output rows."""
        pending, self._call = self._call, None
        if pending is None or pending["scores"] is None or output is None:
            return None
        pooled = getattr(output, "pooler_output", None)
        if pooled is None and isinstance(output, (tuple, list)) and len(output) > 1:
            pooled = output[1]
        scores = pending["scores"]
        if not isinstance(pooled, torch.Tensor) or pooled.shape[0] != scores.numel():
            return None
        started = time.perf_counter()
        grid = pending["grid"].to("cpu", torch.int64)
        sizes = (grid.prod(-1) // self.ctx.merge_size**2).tolist()
        with torch.no_grad():
            fingerprints = self.book.fingerprint(pooled, self.ctx.embedding_dtype())
        self.book.add(VisionRun(fingerprints, scores, sizes))
        self._seconds += time.perf_counter() - started
        return None

    def video_scores(self, embeds: torch.Tensor, is_video: torch.Tensor) -> torch.Tensor | None:
        """One vision-encoder score per video token of the batch, row-major, read from the
        scored encoder calls whose output rows sit at those tokens."""
        n_video = int(is_video.sum())
        if n_video == 0:
            return None
        started = time.perf_counter()
        with torch.no_grad():
            scores = self.book.match(embeds[is_video], embeds.dtype)
        if scores is None:
            raise ValueError(
                f"video_scores: method {self.method.name!r} ranks video tokens by the "
                f"vision encoder's attention, but the {n_video} video tokens of this prompt do "
                "not match any vision-encoder call seen by the patch (pre-computed video "
                "embeddings?); run the model on pixel values, or use video_score='energy'"
            )
        logger.debug("omnizip: vision scores matched in %.1f ms", (time.perf_counter() - started) * 1e3)
        return scores


def _window_index(visual: Any, grid: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
    """The encoder's merged-token window permutation (Qwen2.5-VL window attention), or
    None when its blocks keep the patch order (no ``window_size``, e.g. Qwen3-Omni).

    Computed by the encoder's own module function ``get_vision_window_index`` (or taken
    from a precomputed ``window_index`` kwarg, as the encoder itself does)."""
    if getattr(visual, "window_size", None) is None:
        return None
    given = kwargs.get("window_index")
    if isinstance(given, torch.Tensor) and kwargs.get("cu_window_seqlens") is not None:
        return given
    fn = getattr(sys.modules.get(type(visual).__module__), "get_vision_window_index", None)
    if fn is None:
        raise RuntimeError(
            f"omnizip: cannot find the window order of {type(visual).__name__} "
            "(get_vision_window_index); VisionZip scores need it"
        )
    window_index, _ = fn(
        grid,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    return window_index
