"""Model-side pieces of the baselines that need more than the decoder inputs (tensors only).

- **VisionZip** ranks video tokens by the attention they receive in the vision encoder's last
  block. :func:`vision_query_key` recomputes that block's post-rotary q/k exactly as the block
  does (Qwen2.5-VL style separate ``q``/``k`` projections, or Qwen3-VL style fused ``qkv``);
  :func:`omnizip.methods.visionzip.vision_token_scores` turns them into one score per LLM
  token. :class:`VisionScoreBook` keeps the scores of the latest encoder calls with a
  fingerprint of their output rows, so the adapter can hand each video token of a prompt the
  score of the encoder row that was scattered into it, whichever call produced it
  (transformers 5.x ``generate`` runs the encoder before the thinker; images and videos are
  separate calls; beam search repeats the outputs).
- **FastV** needs the last real token's post-rotary query and all keys of one decoder layer:
  :func:`decoder_query_keys` recomputes them from the layer's (normalised) input, as the
  attention does (``q_norm``/``k_norm`` when the layer has them, then the rotary embedding).

Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import Repadded

__all__ = [
    "FastVPrefill",
    "VisionRun",
    "VisionScoreBook",
    "apply_rotary",
    "decoder_query_keys",
    "last_real_index",
    "vision_query_key",
]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (the rotary embedding of the Qwen families)."""
    return x * cos + _rotate_half(x) * sin


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


def last_real_index(padding: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: the last real (non-pad) slot of each row of a bool ``[B, L]`` mask."""
    length = padding.shape[1]
    return (length - 1) - padding.flip(1).to(torch.int8).argmax(1).to(torch.int64)


def decoder_query_keys(
    attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-rotary query of each row's token ``last`` and all keys of one decoder attention.

    Args:
        attn: the decoder layer's ``self_attn`` (``q_proj``, ``k_proj``, ``head_dim``, and
            ``q_norm``/``k_norm`` on Qwen3).
        hidden: ``[B, L, D]`` its input (after the layer's ``input_layernorm``).
        cos, sin: ``[B or 1, L, Dh]`` the rotary ``position_embeddings`` handed to it (M-RoPE
            sections already folded in by the model's rotary module).
        last: int64 ``[B]`` the query slot per row.
    Returns:
        ``q`` ``[B, H, Dh]`` and ``k`` ``[B, L, H_kv, Dh]``, in the model's dtype.
    """
    bsz, length, _ = hidden.shape
    head_dim = int(attn.head_dim)
    rows = torch.arange(bsz, device=hidden.device)
    last = last.to(hidden.device)
    q = attn.q_proj(hidden[rows, last]).view(bsz, -1, head_dim)
    k = attn.k_proj(hidden).view(bsz, length, -1, head_dim)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if q_norm is not None and k_norm is not None:
        q, k = q_norm(q), k_norm(k)
    cos = cos.to(hidden.device).expand(bsz, -1, -1)
    sin = sin.to(hidden.device).expand(bsz, -1, -1)
    q = apply_rotary(q, cos[rows, last][:, None, :], sin[rows, last][:, None, :])
    k = apply_rotary(k, cos[:, :, None, :], sin[:, :, None, :])
    return q, k


@dataclass
class FastVPrefill:
    """One FastV prefill in flight (from the decoder's start to its end).

    Attributes:
        input_ids, padding: ``[B, L]`` the prompt and its real slots.
        positions: ``[R, B, L]`` position ids, ``text_row`` when row 0 is the plain text row.
        results: per row, the :class:`~omnizip.TokenDecision` of layer K.
        kept_rows: per row, the original slots kept.
        layout: the re-padded layout (None until layer K-1 has been scored).
        inputs: the pruned per-layer inputs (mask, rotary embeddings, text positions) for the
            layers from K on, built at layer K.
        deepstack: Qwen3-Omni: per decoder layer index >= K, the DeepStack features still to
            add (pruned), and ``deepstack_mask`` their pruned ``visual_pos_masks``.
        seconds: time spent in FastV's hooks (the patch's overhead).
    """

    input_ids: torch.Tensor
    padding: torch.Tensor
    positions: torch.Tensor
    text_row: bool
    results: list[Any] = field(default_factory=list)
    kept_rows: list[torch.Tensor] = field(default_factory=list)
    layout: Repadded | None = None
    inputs: dict[str, Any] | None = None
    deepstack_tail: dict[int, torch.Tensor] = field(default_factory=dict)
    deepstack_full_mask: torch.Tensor | None = None
    deepstack: dict[int, torch.Tensor] = field(default_factory=dict)
    deepstack_mask: torch.Tensor | None = None
    seconds: float = 0.0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def changed(self) -> bool:
        return self.layout is not None and bool((self.layout.n_dropped > 0).any())
