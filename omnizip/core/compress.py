"""``compress_sequence``: the whole OmniZip decision for one sequence (SPEC sections 2-4, 6, 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import OmniZipConfig
from .audio import (
    MERGE_NORM_EPS,
    assign_to_anchors,
    merge_into_anchors,
    merge_normalise,
    plan_merges,
    split_audio,
)
from .layout import SequenceLayout, build_layout, exclusive_cumsum
from .ratios import base_ratios, frame_discards_exact, normalise_budget, shift_to_budget
from .similarity import max_cosine_to_columns, max_cosine_within_windows, sequence_row_norms
from .validate import check_inputs
from .video import ISTC_NORM_EPS, istc_keep


@dataclass
class TokenDecision:
    """What a token-compression method decided for one sequence (any method, SPEC 4 step 9).

    Attributes:
        keep: bool ``[L]``: tokens the decoder sees (text always kept).
        embeds: ``[L, D]`` input dtype, a new tensor (merged tokens already written in).
        audio_positions, video_positions: int64 ``[N_a]`` / ``[N_v]`` sequence positions.
    """

    keep: torch.Tensor
    embeds: torch.Tensor
    audio_positions: torch.Tensor
    video_positions: torch.Tensor
    _counts: dict = field(default_factory=dict, repr=False, kw_only=True)

    @property
    def n_audio(self) -> int:
        return int(self.audio_positions.numel())

    @property
    def n_video(self) -> int:
        return int(self.video_positions.numel())

    def _count(self, name: str, positions: torch.Tensor | None) -> int:
        if name not in self._counts:  # reading a count synchronises: do it once, lazily
            kept = self.keep if positions is None else self.keep[positions]
            self._counts[name] = int(kept.sum())
        return self._counts[name]

    @property
    def n_audio_kept(self) -> int:
        return self._count("audio", self.audio_positions)

    @property
    def n_video_kept(self) -> int:
        return self._count("video", self.video_positions)

    @property
    def n_kept(self) -> int:
        """Tokens the decoder sees, text included."""
        return self._count("all", None)

    @property
    def retention(self) -> float:
        """Kept fraction of the audio and video tokens (1.0 when there are none)."""
        total = self.n_audio + self.n_video
        return 1.0 if total == 0 else (self.n_audio_kept + self.n_video_kept) / total

    def summary(self) -> str:
        """One line: what was kept."""
        return (
            f"kept {self.n_kept}/{self.keep.numel()} tokens: "
            f"audio {self.n_audio_kept}/{self.n_audio}, video {self.n_video_kept}/{self.n_video}, "
            f"multimodal retention {self.retention:.1%}"
        )


@dataclass
class CompressionResult(TokenDecision):
    """OmniZip's decision for one sequence, with what explains it. Tensors live on the
    input's device.

    Attributes (beyond :class:`TokenDecision`):
        salient: bool ``[N_a]`` salient audio tokens (step 1).
        anchors: int64 ``[n_anchor]`` audio indices of the anchors, ascending (step 2).
        merge_target: int64 ``[N_a]`` audio index of the anchor a token merged into, else -1.
        merge_weight: float32 ``[N_a]`` softmax weight of each merged token, else 0.
        audio_chunks, video_chunks: int64 ``[n, 2]`` / ``[m, 2]`` (start position, length).
        num_guided: G, windows pairing video chunk i with audio chunk i.
        window_audio_retention: float64 ``[G]`` S_i (step 5).
        video_chunk_ratio: float64 ``[m]`` ratio applied to each video chunk (steps 6-7;
            unguided chunks get rho_video).
        rho_audio, rho_video: the ratios used (differ from the config's with a retention or
            token budget target).
    """

    salient: torch.Tensor
    anchors: torch.Tensor
    merge_target: torch.Tensor
    merge_weight: torch.Tensor
    audio_chunks: torch.Tensor
    video_chunks: torch.Tensor
    num_guided: int
    window_audio_retention: torch.Tensor
    video_chunk_ratio: torch.Tensor
    rho_audio: float
    rho_video: float

    def summary(self) -> str:
        return (
            f"OmniZip {super().summary()}, {len(self.anchors)} anchors, "
            f"{self.num_guided} guided windows"
        )


def _video_ratios(
    layout: SequenceLayout,
    retention: torch.Tensor,
    rho_video: float,
    config: OmniZipConfig,
    device: torch.device,
) -> torch.Tensor:
    """Ratio r of every video chunk under the published rules (SPEC 4 steps 6-7)."""
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


def compress_sequence(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame: int | list[int] | tuple[int, ...] | torch.Tensor,
    config: OmniZipConfig | None = None,
) -> CompressionResult:
    """Run OmniZip on one sequence (SPEC 4, with the deviations of SPEC 6).

    Args:
        embeds: ``[L, D]`` float32/float16/bfloat16 decoder input embeddings (not modified).
        input_ids: integer ``[L]`` token ids, same device.
        audio_scores: float ``[N_a]`` importance of each audio token in order (SPEC 3), or
            None when the sequence has no audio tokens.
        audio_token_id, video_token_id: the placeholder ids of audio and video tokens.
        tokens_per_frame: P, video tokens per frame, as an int or one int per video chunk
            (maximal run of video tokens).
        config: :class:`OmniZipConfig` (default: the paper's 45% setting).

    Returns:
        :class:`CompressionResult`. Compute runs in float32; ``embeds`` come back in the
        input dtype. Host synchronisations: one copy of the ids (the layout) and one check
        that the scores are finite.
    """
    config = OmniZipConfig() if config is None else config
    if not isinstance(config, OmniZipConfig):
        raise TypeError(f"config must be an OmniZipConfig, got {type(config).__name__}")
    check_inputs(embeds, input_ids, audio_scores, audio_token_id, video_token_id)
    layout = build_layout(
        input_ids, audio_token_id, video_token_id, tokens_per_frame, config.frame_parity or "chunk"
    )
    device = embeds.device
    n_audio, n_video = layout.n_audio, layout.n_video
    if n_audio and (audio_scores is None or audio_scores.numel() != n_audio):
        got = "None" if audio_scores is None else f"{audio_scores.numel()} scores"
        raise ValueError(
            f"audio_scores must hold one score per audio token: the sequence has {n_audio} "
            f"audio tokens (id {audio_token_id}), got {got}"
        )
    if not n_audio and audio_scores is not None and audio_scores.numel() != 0:
        raise ValueError(
            f"audio_scores has {audio_scores.numel()} scores but the sequence has no audio "
            f"tokens (id {audio_token_id}); pass None or an empty tensor"
        )
    if n_audio and not bool(torch.isfinite(audio_scores).all()):
        raise ValueError("audio_scores must be finite, got NaN or infinite values")
    rho_audio, rho_video = config.resolve_ratios(n_audio, n_video)
    block = config.block_elements

    audio_positions = layout.audio_positions.to(device)
    video_positions = layout.video_positions.to(device)
    out_embeds = embeds.clone()

    # --- Audio: salient tokens, anchors, merge plan and merge (steps 1-4). ---
    if n_audio:
        scores = audio_scores.detach().to(device, torch.float32)
        if config.audio_selection == "random":
            # Ablation: the same counts, chosen uniformly at random (seeded, on the host).
            gen = torch.Generator().manual_seed(config.seed)
            scores = torch.rand(n_audio, generator=gen).to(device)
        split = split_audio(
            scores, rho_audio=rho_audio, contextual_ratio=config.contextual_ratio, g=config.g
        )
    else:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        split = None
    n_anchor = 0 if split is None else split.anchors.numel()
    n_pool = 0 if split is None else split.pool.numel()
    merge_target = torch.full((n_audio,), -1, dtype=torch.int64, device=device)
    merge_weight = torch.zeros(n_audio, dtype=torch.float32, device=device)
    # Row norms once, from views of the embeddings: both normalisations of SPEC 4 (merge and
    # ISTC) fold them into the similarities instead of writing normalised copies.
    norms = sequence_row_norms(embeds, block) if n_video else None
    video_norms = norms[video_positions] if n_video else None

    if n_anchor and n_pool and config.merge_anchors:
        pool_embeds = embeds[audio_positions[split.pool]].float()
        anchor_embeds = embeds[audio_positions[split.anchors]].float()
        pool_hat = merge_normalise(pool_embeds)
        assignment, anchor_cos = assign_to_anchors(pool_hat, merge_normalise(anchor_embeds), block)
        merge_score = _merge_scores(
            pool_hat, anchor_cos, split.pool, embeds, layout, video_positions, norms,
            config.merge_scope, block,
        )
        plan = plan_merges(assignment, merge_score, n_anchor, config.g)
        merged = merge_into_anchors(anchor_embeds, pool_embeds, plan)
        out_embeds[audio_positions[split.anchors]] = merged.to(embeds.dtype)
        members = plan.members.flatten()
        has = members >= 0
        # Padding slots write to one spare entry past the end (no boolean indexing).
        member_audio = torch.where(has, split.pool[members.clamp(min=0)], n_audio)
        owner = split.anchors.repeat_interleave(config.g)
        target = torch.full((n_audio + 1,), -1, dtype=torch.int64, device=device)
        target.scatter_(0, member_audio, owner)
        weight = torch.zeros(n_audio + 1, dtype=torch.float32, device=device)
        weight.scatter_(0, member_audio, plan.weights.flatten())
        merge_target, merge_weight = target[:n_audio], weight[:n_audio]

    if n_audio:
        audio_keep = split.salient.clone()
        audio_keep[split.anchors] = True
        anchors, salient = split.anchors, split.salient
    else:
        audio_keep = torch.zeros(0, dtype=torch.bool, device=device)
        anchors, salient = empty, audio_keep

    # --- Per-window audio retention S_i (step 5). ---
    n_guided = layout.n_guided
    chunk_of_audio = layout.audio_chunk_of_token.to(device)
    kept_per_chunk = torch.zeros(layout.n_audio_chunks, dtype=torch.float64, device=device)
    kept_per_chunk.index_add_(0, chunk_of_audio, audio_keep.to(torch.float64))
    audio_chunk_sizes = layout.audio_chunk_lengths.to(device, torch.float64)
    retention = (kept_per_chunk / audio_chunk_sizes)[:n_guided]

    # --- Video ratios (steps 6-7, or the exact budget of SPEC 7) and ISTC (step 8). ---
    video_keep = torch.ones(n_video, dtype=torch.bool, device=device)
    ratios = _video_ratios(layout, retention, rho_video, config, device)
    if n_video and layout.frame_tables:
        inv_norm = 1.0 / video_norms.clamp(min=ISTC_NORM_EPS)
        if config.budget == "exact":
            ratios, frame_keeps = _exact_frame_keeps(layout, ratios, rho_video, config, device)
        else:
            frame_keeps = [
                torch.floor(t.tokens * (1.0 - ratios[t.chunk.to(device)])).to(torch.int64)
                for t in layout.frame_tables
            ]
        for table, keep_counts in zip(layout.frame_tables, frame_keeps, strict=True):
            index, keep = istc_keep(
                embeds, video_positions, inv_norm, table, keep_counts, config.knn, block
            )
            video_keep[index] = keep

    keep = torch.ones(layout.length, dtype=torch.bool, device=device)
    keep[audio_positions] = audio_keep
    keep[video_positions] = video_keep
    return CompressionResult(
        keep=keep,
        embeds=out_embeds,
        audio_positions=audio_positions,
        video_positions=video_positions,
        salient=salient,
        anchors=anchors,
        merge_target=merge_target,
        merge_weight=merge_weight,
        audio_chunks=torch.stack([layout.audio_chunk_starts, layout.audio_chunk_lengths], 1).to(device),
        video_chunks=torch.stack([layout.video_chunk_starts, layout.video_chunk_lengths], 1).to(device),
        num_guided=n_guided,
        window_audio_retention=retention,
        video_chunk_ratio=ratios,
        rho_audio=rho_audio,
        rho_video=rho_video,
    )


def _merge_scores(
    pool_hat: torch.Tensor,
    anchor_cos: torch.Tensor,
    pool: torch.Tensor,
    embeds: torch.Tensor,
    layout: SequenceLayout,
    video_positions: torch.Tensor,
    norms: torch.Tensor | None,
    scope: str,
    block: int,
) -> torch.Tensor:
    """Merge score of each pool token (SPEC 4 step 3; ``scope="window"`` of SPEC 7).

    Global: the highest cosine to any video token of the sequence. Window: to the video
    of the token's own window. Where there is no such video, the highest cosine to any
    anchor (SPEC's no-video rule).
    """
    if layout.n_video == 0:
        return anchor_cos
    scale = 1.0 / (norms + MERGE_NORM_EPS)  # [L]: v / (||v|| + 1e-6) folded into the sims
    if scope == "global":
        return max_cosine_to_columns(
            pool_hat, embeds, video_positions, scale[video_positions], block
        )
    # Window scope: audio chunk i against video chunk i, for the G guided windows.
    n_guided = layout.n_guided
    audio_offsets = exclusive_cumsum(layout.audio_chunk_lengths)[:n_guided]
    video_offsets = exclusive_cumsum(layout.video_chunk_lengths)[:n_guided]
    # Only pool tokens need scores, but windows are padded by their (host-known) audio
    # chunk sizes; scoring all audio tokens there keeps shapes static and costs O(N_a * V_i).
    all_audio_hat = merge_normalise(embeds[layout.audio_positions.to(embeds.device)].float())
    per_audio = max_cosine_within_windows(
        all_audio_hat, audio_offsets, layout.audio_chunk_lengths[:n_guided],
        embeds, video_positions, scale[video_positions], video_offsets,
        layout.video_chunk_lengths[:n_guided],
        block,
    )[pool]
    return torch.where(torch.isfinite(per_audio), per_audio, anchor_cos)


def _exact_frame_keeps(
    layout: SequenceLayout,
    ratios: torch.Tensor,
    rho_video: float,
    config: OmniZipConfig,
    device: torch.device,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Shift all chunk ratios by one λ and round per frame so that exactly
    ``round((1 - rho_video) * N_v)`` video tokens stay, when reachable (SPEC 7)."""
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
