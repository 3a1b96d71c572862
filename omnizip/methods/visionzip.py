"""``visionzip``: VisionZip's dominant + contextual video tokens, with OmniZip's audio side.

VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
Models", CVPR 2025) compresses an image's visual tokens into two sets, as its paper
describes: **dominant tokens**, those that receive the most attention in the vision encoder
(attention from the [CLS] token, or averaged over all queries for encoders without one), and
**contextual tokens**: the remaining tokens are split into evenly spaced *target* tokens and
the rest, each of which is merged into its most similar target (by similarity of the
encoder's keys); a target and the tokens merged into it are averaged into one contextual
token. Its default split is 54 dominant + 10 contextual tokens out of 64 kept
(``dominant_fraction = 54/64``). The OmniZip paper's ablation pairs VisionZip's video side
with OmniZip's audio side; so does this method.

Here:

- **Video** (per frame: one temporal grid step of ``tokens_per_frame`` tokens, as VisionZip
  treats each image): the video share of the budget is spread over the frames as evenly as
  possible (a chunk's trailing partial frame is a smaller frame); frame ``f`` keeping ``k_f``
  tokens takes ``round(k_f * dominant_fraction)`` dominant tokens (highest ``video_scores``),
  and ``k_f - that`` contextual tokens: among the frame's other tokens in order, every
  ``step = max(1, r // n_ctx)``-th (``r`` of them) is a target, every other one merges into
  the target of highest cosine similarity (ties: the earlier target), and the target's
  embedding becomes the mean of itself and its merged tokens. A target keeps its own position
  id. Similarity uses the LLM-space video embeddings (what the decoder sees) instead of the
  encoder's keys, so no second hook is needed.
- **Video scores** (``needs_video_scores``): per video token, the attention it receives in the
  vision encoder's last layer (summed over heads and queries inside the layer's attention
  span), averaged over the ``spatial_merge_size**2`` patches merged into the LLM token. The
  method's own hooks (:mod:`omnizip.methods.visionzip_hooks`, :meth:`VisionZipConfig.model_hooks`)
  compute them with :func:`vision_token_scores` (see its docstring for the exact
  tensors). ``video_score="energy"`` uses the L2 norm of each video embedding instead (no
  encoder hook; not VisionZip).
- **Audio**: OmniZip's audio side (algorithm §4 steps 1-4: salient tokens by ``audio_scores``,
  evenly spaced anchors, cross-modal merge into anchors), with the salient/anchor counts set
  so the audio keeps exactly its share of the budget: ``n_ctx = round(contextual_ratio * N_a)``
  anchors and ``k_a - n_ctx`` salient tokens (fewer anchors when ``k_a < n_ctx``).
- The budget is exact and split between audio and video in proportion to their sizes
  (:mod:`omnizip.methods._common`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import AUDIO_SCORE_MODES, MERGE_SCOPES, OmniZipConfig
from ..core import TokenDecision
from ..core.similarity import padded_segments
from ..method import DEFAULT_BLOCK_ELEMENTS
from ..models.context import ModelContext
from ._common import (
    BudgetedMethod,
    check_choice,
    check_int,
    check_scores,
    decision,
    distribute,
    frame_blocks,
    keep_highest,
    prepare,
    row_inv_norms,
    split_counts,
    video_frame_runs,
)
from .visionzip_hooks import VisionZipHooks, vision_token_scores

__all__ = ["VIDEO_SCORE_MODES", "VisionZipConfig", "vision_token_scores", "visionzip_frames"]

VIDEO_SCORE_MODES = ("attention", "energy")


def visionzip_frames(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    scores: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    counts: torch.Tensor,
    dominant_fraction: float,
    out_embeds: torch.Tensor,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """VisionZip inside every frame: dominant tokens plus merged contextual tokens.

    Args:
        embeds: ``[L, D]`` sequence embeddings (read only).
        positions: int64 ``[N]`` sequence positions of the video tokens (device).
        scores: float ``[N]`` per-token importance (device).
        starts, lengths: int64 ``[S]`` the frames as runs of indices 0..N-1 (host).
        counts: int64 ``[S]`` tokens to keep in each frame (host, <= its length).
        dominant_fraction: share of each frame's kept tokens that are dominant.
        out_embeds: ``[L, D]`` written in place with the contextual tokens' new embeddings.
    Returns:
        bool ``[N]`` kept video tokens (device).
    """
    device = embeds.device
    n = positions.numel()
    keep = torch.zeros(n + 1, dtype=torch.bool, device=device)  # +1: padding sink
    n_seg = int(lengths.numel())
    width = int(lengths.max()) if n_seg else 0
    seg_index, seg_valid = padded_segments(starts, lengths, width)
    if n_seg == 0:
        return keep[:n]
    dim = embeds.shape[1]
    counts = counts.to(torch.int64)
    n_dom = torch.round(counts.double() * dominant_fraction).to(torch.int64).clamp(max=counts)
    n_ctx = counts - n_dom
    rest = lengths - n_dom
    step = torch.where(n_ctx > 0, (rest // n_ctx.clamp(min=1)).clamp(min=1), 1)
    for start, stop in frame_blocks(n_seg, width * (2 * dim + 2 * width), block_elements):
        index = seg_index[start:stop].to(device)
        valid = seg_valid[start:stop].to(device)
        b = index.shape[0]
        s = scores[index].float().masked_fill(~valid, float("-inf"))
        dominant = keep_highest(s, n_dom[start:stop].to(device)) & valid
        remaining = valid & ~dominant
        rank = torch.cumsum(remaining.to(torch.int64), dim=1) - 1  # order among the remaining
        blk_step = step[start:stop].to(device)[:, None]
        target = (
            remaining
            & (rank % blk_step == 0)
            & (rank // blk_step < n_ctx[start:stop].to(device)[:, None])
        )
        merging = remaining & ~target
        x = embeds[positions[index]].float()  # [b, W, D]
        unit = x * row_inv_norms(x).unsqueeze(-1)
        sims = torch.bmm(unit, unit.transpose(1, 2)).masked_fill(~target[:, None, :], float("-inf"))
        assign = sims.argmax(dim=2)  # the first maximum: ties go to the earlier target
        weight = merging.to(torch.float32)
        flat = (torch.arange(b, device=device)[:, None] * width + assign).flatten()
        sums = torch.zeros(b * width, dim, dtype=torch.float32, device=device)
        sums.index_add_(0, flat, (x * weight.unsqueeze(-1)).reshape(-1, dim))
        count = torch.zeros(b * width, dtype=torch.float32, device=device)
        count.index_add_(0, flat, weight.flatten())
        merged = (x.reshape(-1, dim) + sums) / (1.0 + count).unsqueeze(-1)
        tgt = target.flatten()
        rows = positions[index.flatten()[tgt]]
        out_embeds[rows] = merged[tgt].to(out_embeds.dtype)
        sink = torch.where(valid, index, n).flatten()
        keep.scatter_(0, sink, (dominant | target).flatten())
    return keep[:n]


@dataclass(frozen=True)
class VisionZipConfig(BudgetedMethod):
    """VisionZip on video + OmniZip on audio, at a matched budget.

    Attributes:
        retention, token_budget: the budget (audio + video tokens kept).
        dominant_fraction: share of each frame's kept tokens chosen as dominant (VisionZip:
            54 of 64); the rest are contextual.
        video_score: ``"attention"`` (VisionZip: vision-encoder attention, supplied by the
            method's hooks as ``video_scores``) or ``"energy"`` (L2 norm of the embeddings).
        contextual_ratio, g, merge_scope, audio_score: OmniZip's audio side (see
            :class:`~omnizip.OmniZipConfig`); ``audio_score`` tells the adapter how to score
            audio tokens.
        block_elements: soft cap on temporary block sizes (memory bound).
    """

    name: ClassVar[str] = "visionzip"

    dominant_fraction: float = 54 / 64
    video_score: str = "attention"
    contextual_ratio: float = 0.05
    g: int = 3
    merge_scope: str = "global"
    audio_score: str = "global"
    block_elements: int = DEFAULT_BLOCK_ELEMENTS

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dominant_fraction", "contextual_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
        if not (math.isfinite(self.dominant_fraction) and 0.0 <= self.dominant_fraction <= 1.0):
            raise ValueError(f"dominant_fraction must lie in [0, 1], got {self.dominant_fraction!r}")
        if not (math.isfinite(self.contextual_ratio) and 0.0 <= self.contextual_ratio < 1.0):
            raise ValueError(f"contextual_ratio must lie in [0, 1), got {self.contextual_ratio!r}")
        check_int("g", self.g, 0)
        check_int("block_elements", self.block_elements, 1024)
        check_choice("video_score", self.video_score, VIDEO_SCORE_MODES)
        check_choice("merge_scope", self.merge_scope, MERGE_SCOPES)
        check_choice("audio_score", self.audio_score, AUDIO_SCORE_MODES)

    @property
    def needs_video_scores(self) -> bool:
        """True unless ``video_score="energy"``."""
        return self.video_score == "attention"

    @property
    def needs_audio_scores(self) -> bool:
        """OmniZip's audio side needs encoder scores unless ``audio_score="energy"``."""
        return self.audio_score != "energy"

    def model_hooks(self, ctx: ModelContext) -> VisionZipHooks | None:
        """The vision-encoder scoring hooks (:mod:`omnizip.methods.visionzip_hooks`), unless
        ``video_score="energy"`` (then the adapter's hooks suffice)."""
        return VisionZipHooks(ctx, self) if self.needs_video_scores else None

    def audio_config(self, n_audio: int, k_audio: int) -> OmniZipConfig:
        """The OmniZip configuration whose audio side keeps exactly ``k_audio`` tokens."""
        n_anchor = round(self.contextual_ratio * n_audio) if self.g > 0 else 0
        contextual = self.contextual_ratio
        if k_audio >= n_anchor:
            n_salient = k_audio - n_anchor
        else:  # fewer anchors than OmniZip would take: all kept audio tokens are anchors
            n_salient, contextual = 0, k_audio / n_audio
        # round((1 - rho) * N_a) == n_salient; rho < 1 even for n_salient == 0
        rho = 1.0 - n_salient / n_audio if n_salient else 1.0 - 0.25 / n_audio
        return OmniZipConfig(
            rho_audio=rho, rho_video=0.0, contextual_ratio=contextual, g=self.g,
            merge_scope=self.merge_scope, audio_score=self.audio_score, dynamic_ratios=False,
            block_elements=self.block_elements,
        )

    def compress(self, embeds, input_ids, *, audio_token_id, video_token_id, tokens_per_frame,
                 audio_scores=None, video_scores=None) -> TokenDecision:
        """OmniZip audio side + VisionZip per frame, exactly the budgeted count kept."""
        layout = prepare(embeds, input_ids, audio_token_id, video_token_id, tokens_per_frame)
        n_a, n_v = layout.n_audio, layout.n_video
        k_a, k_v = split_counts(n_a, n_v, self.kept_total(n_a + n_v))
        device = embeds.device
        keep_a = None
        if n_a:
            # OmniZip with no whole frame (P > any chunk): its audio side only, merge scores
            # against all video tokens as usual.
            audio = self.audio_config(n_a, k_a).compress(
                embeds, input_ids, audio_token_id=audio_token_id, video_token_id=video_token_id,
                tokens_per_frame=n_v + 1, audio_scores=audio_scores,
            )
            out = audio.embeds
            keep_a = audio.keep[audio.audio_positions]
        else:
            out = embeds.clone()
        keep_v = None
        if n_v:
            if self.video_score == "energy" and video_scores is None:
                scores = torch.linalg.vector_norm(
                    embeds[layout.video_positions.to(device)].float(), dim=-1
                )
            else:
                if video_scores is None:
                    raise ValueError(
                        f"video_scores: visionzip needs one vision-encoder attention score per "
                        f"video token ({n_v} here); its model hooks compute them "
                        "(omnizip.methods.visionzip.vision_token_scores), or use "
                        "video_score='energy'"
                    )
                scores = check_scores("video_scores", video_scores, n_v, "video token").to(device)
            starts, lengths, _ = video_frame_runs(layout)
            counts = distribute(k_v, lengths)
            keep_v = visionzip_frames(
                embeds, layout.video_positions.to(device), scores, starts, lengths, counts,
                self.dominant_fraction, out, self.block_elements,
            )
        return decision(keep_a, keep_v, out, layout)
