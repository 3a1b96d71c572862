"""One media item's token block, as transformers lays it out, and what OmniZip keeps of it.

A *block* is the run of audio/video placeholder tokens one media item becomes in the
uncompressed prompt of the Hugging Face model (transformers' ``get_rope_index``):

- a video with its own audio (``use_audio_in_video``): per 2-second chunk the chunk's video
  tokens, then up to 50 audio tokens (25 position ids per second); audio left over after the
  last video chunk follows in 50-token chunks, video chunks without audio follow each other;
- a video without audio: its ``t * h * w`` tokens; a standalone audio: its tokens.

Positions are relative to the block's *base* (the position of the first token after the
``<|vision_bos|>``/``<|audio_bos|>`` marker(s)); video tokens carry ``(t, h, w)``, audio tokens
``(i, i, i)``. OmniZip decides per block (docs/algorithm.md): with ``budget="exact"`` the
number of kept tokens follows from the block alone (:func:`kept_counts`), which is what lets
vLLM's processor declare the slots before any encoder runs.

Pure torch, host tensors; nothing here imports vllm or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import OmniZipConfig
from ..core import SequenceLayout, build_layout

__all__ = [
    "POSITION_CHANNELS",
    "MediaBlock",
    "audio_block",
    "decode_positions",
    "encode_positions",
    "joint_block",
    "kept_counts",
    "timeline_block",
    "video_block",
    "video_rel_positions",
]

# Kept tokens travel through vLLM's encoder cache with their relative M-RoPE positions appended
# as extra embedding channels (vLLM's multimodal-pruning convention). Each of the 3 rows is
# written as 3 base-64 digits: every digit is an integer < 64, exact in float16 and bfloat16
# (a plain position above 256 would not be exact in bfloat16).
_DIGITS = 3
_BASE = 64
POSITION_CHANNELS = 3 * _DIGITS
_MAX_POSITION = _BASE**_DIGITS


@dataclass(frozen=True)
class MediaBlock:
    """One media item's placeholder tokens in transformers' order.

    Attributes:
        ids: int64 ``[L]`` the audio / video placeholder id of every token.
        rel_positions: int64 ``[3, L]`` M-RoPE position minus the block's base.
        video_index: int64 ``[N_v]`` block index of each vision-encoder output row, in order.
        audio_index: int64 ``[N_a]`` block index of each audio-encoder output row, in order.
        tokens_per_frame: P, video tokens per temporal grid step (0 without video).
    """

    ids: torch.Tensor
    rel_positions: torch.Tensor
    video_index: torch.Tensor
    audio_index: torch.Tensor
    tokens_per_frame: int

    @property
    def extent(self) -> int:
        """Where the text after the block continues: ``base + extent``.

        transformers continues after the *last piece* of the block (its trailing run of one
        modality: the last audio or video chunk), not after the block's overall maximum; the
        two differ e.g. when a video outlasts its audio inside the last chunk.
        """
        n = self.ids.numel()
        if n == 0:
            return 0
        differs = torch.nonzero(self.ids != self.ids[-1]).flatten()
        tail = int(differs[-1]) + 1 if differs.numel() else 0
        return int(self.rel_positions[:, tail:].max()) + 1


def video_rel_positions(
    grid_t: int, llm_h: int, llm_w: int, second_per_grid: float, positions_per_second: int
) -> torch.Tensor:
    """int64 ``[3, t*h*w]`` ``(t, h, w)`` of a video's tokens, as transformers computes them
    (``arange(t) * second_per_grid * positions_per_second`` in float32, truncated)."""
    per_grid = torch.tensor(float(second_per_grid), dtype=torch.float32)
    t_index = (torch.arange(grid_t) * per_grid * positions_per_second).long()
    t = t_index.view(-1, 1, 1).expand(grid_t, llm_h, llm_w)
    h = torch.arange(llm_h).view(1, -1, 1).expand(grid_t, llm_h, llm_w)
    w = torch.arange(llm_w).view(1, 1, -1).expand(grid_t, llm_h, llm_w)
    return torch.stack([t.flatten(), h.flatten(), w.flatten()])


def video_block(video_pos: torch.Tensor, tokens_per_frame: int, video_token_id: int) -> MediaBlock:
    """A video without audio: its tokens in encoder order."""
    n = video_pos.shape[1]
    return MediaBlock(
        ids=torch.full((n,), video_token_id, dtype=torch.int64),
        rel_positions=video_pos,
        video_index=torch.arange(n),
        audio_index=torch.zeros(0, dtype=torch.int64),
        tokens_per_frame=tokens_per_frame,
    )


def audio_block(n_audio: int, audio_token_id: int) -> MediaBlock:
    """A standalone audio: ``n_audio`` tokens at positions ``0..n_audio-1``."""
    pos = torch.arange(n_audio).view(1, -1).expand(3, -1).contiguous()
    return MediaBlock(
        ids=torch.full((n_audio,), audio_token_id, dtype=torch.int64),
        rel_positions=pos,
        video_index=torch.zeros(0, dtype=torch.int64),
        audio_index=torch.arange(n_audio),
        tokens_per_frame=0,
    )


def joint_block(
    video_pos: torch.Tensor,
    tokens_per_frame: int,
    n_audio: int,
    chunk_positions: int,
    *,
    audio_token_id: int,
    video_token_id: int,
) -> MediaBlock:
    """A video with its own audio, interleaved per time chunk as transformers does it.

    Video token ``j`` belongs to chunk ``t_j // chunk_positions``, audio token ``i`` to chunk
    ``i // chunk_positions``; tokens are ordered by chunk, video before audio inside a chunk.
    (transformers splits the video where its temporal id crosses the next chunk boundary; the
    two groupings agree whenever a grid step spans at most one chunk, i.e. frames are sampled
    at least every ``seconds_per_chunk``, which the processor's defaults guarantee.)
    """
    n_video = video_pos.shape[1]
    audio_pos = torch.arange(n_audio).view(1, -1).expand(3, -1)
    positions = torch.cat([video_pos, audio_pos], dim=1)
    chunk = torch.cat([video_pos[0] // chunk_positions, torch.arange(n_audio) // chunk_positions])
    is_audio = torch.cat([torch.zeros(n_video, dtype=torch.int64), torch.ones(n_audio, dtype=torch.int64)])
    order = torch.sort(chunk * 2 + is_audio, stable=True).indices  # block slot -> source row
    slot_of = torch.empty_like(order)
    slot_of[order] = torch.arange(order.numel())  # source row -> block slot
    ids = torch.where(is_audio.bool(), audio_token_id, video_token_id)[order]
    return MediaBlock(
        ids=ids,
        rel_positions=positions[:, order].contiguous(),
        video_index=slot_of[:n_video],
        audio_index=slot_of[n_video:],
        tokens_per_frame=tokens_per_frame,
    )


def timeline_block(
    video_pos: torch.Tensor,
    tokens_per_frame: int,
    n_audio: int,
    *,
    audio_token_id: int,
    video_token_id: int,
) -> MediaBlock:
    """A video with its own audio, merged by time as Qwen3-Omni's processor does it.

    Every video token goes at its temporal position id, every audio token at its index (one
    position id per audio token); the two streams are merged in time order, a video token
    before an audio token of the same time. So each temporal grid step is followed by the
    audio up to the next one; video left after the audio ends (or audio after the video)
    follows as one run. Positions as in :func:`joint_block`.
    """
    n_video = video_pos.shape[1]
    positions = torch.cat([video_pos, torch.arange(n_audio).view(1, -1).expand(3, -1)], dim=1)
    time = torch.cat([video_pos[0], torch.arange(n_audio)])
    is_audio = torch.cat([torch.zeros(n_video, dtype=torch.int64), torch.ones(n_audio, dtype=torch.int64)])
    order = torch.sort(time * 2 + is_audio, stable=True).indices
    slot_of = torch.empty_like(order)
    slot_of[order] = torch.arange(order.numel())
    return MediaBlock(
        ids=torch.where(is_audio.bool(), audio_token_id, video_token_id)[order],
        rel_positions=positions[:, order].contiguous(),
        video_index=slot_of[:n_video],
        audio_index=slot_of[n_video:],
        tokens_per_frame=tokens_per_frame,
    )


def _sequence_layout(block: MediaBlock, audio_token_id: int, video_token_id: int) -> SequenceLayout:
    per_frame = max(block.tokens_per_frame, 1)
    return build_layout(block.ids, audio_token_id, video_token_id, per_frame, "chunk")


def kept_counts(
    block: MediaBlock, config: OmniZipConfig, *, audio_token_id: int, video_token_id: int
) -> tuple[int, int]:
    """(kept audio, kept video) tokens of a block under ``budget="exact"``, from its layout.

    Audio: the salient tokens plus the anchors (docs/algorithm.md steps 1-2); video:
    ``round((1 - rho_v) N_v)``, never fewer than the tokens of partial frames (always kept),
    all of them when the block has no whole frame. The ratios are the config's, resolved per
    block (``retention`` / ``token_budget``).
    """
    if config.budget != "exact":
        raise ValueError(f"config.budget must be 'exact' to size slots up front, got {config.budget!r}")
    layout = _sequence_layout(block, audio_token_id, video_token_id)
    n_audio, n_video = layout.n_audio, layout.n_video
    rho_audio, rho_video = config.resolve_ratios(n_audio, n_video)
    kept_audio = 0
    if n_audio:
        n_salient = min(max(round((1.0 - rho_audio) * n_audio), 0), n_audio)
        n_rest = n_audio - n_salient
        n_anchor = round(config.contextual_ratio * n_audio)
        anchors = min(n_anchor, n_rest) if (n_rest > 0 and n_anchor > 0 and config.g > 0) else 0
        kept_audio = n_salient + anchors
    kept_video = n_video
    if n_video and block.tokens_per_frame > 0:
        prunable = int((layout.frames_per_chunk * layout.tokens_per_frame).sum())
        if prunable > 0:
            kept_video = max(round((1.0 - rho_video) * n_video), n_video - prunable)
    return kept_audio, kept_video


def encode_positions(rel_positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[K, POSITION_CHANNELS]`` channels carrying int64 ``[3, K]`` non-negative positions."""
    if rel_positions.numel() and int(rel_positions.max()) >= _MAX_POSITION:
        raise ValueError(
            f"media block spans {int(rel_positions.max()) + 1} position ids; at most "
            f"{_MAX_POSITION} are supported"
        )
    digits = [(rel_positions // _BASE**d) % _BASE for d in range(_DIGITS)]  # each [3, K]
    return torch.stack(digits, dim=1).reshape(3 * _DIGITS, -1).T.to(dtype)  # [3, D, K] -> [K, 3D]


def decode_positions(channels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_positions`: int64 ``[3, K]`` from ``[K, POSITION_CHANNELS]``."""
    digits = channels.T.round().to(torch.int64).reshape(3, _DIGITS, -1)
    scale = torch.tensor([_BASE**d for d in range(_DIGITS)], device=channels.device)
    return (digits * scale.view(1, -1, 1)).sum(dim=1)
