"""What the baseline methods share: the budget, its split, per-segment shares, frame tables.

Budgets (every baseline): ``retention`` is the fraction of the sequence's audio + video tokens
kept, ``token_budget`` an absolute number of them (at most one of the two; neither means
:data:`DEFAULT_RETENTION`). The kept total is ``min(round(retention * (N_a + N_v)), N_a + N_v)``
(Python's round-half-to-even) or ``min(token_budget, N_a + N_v)``, and every method keeps
exactly that many. Methods that treat the two modalities separately split the total in
proportion to their sizes (:func:`split_counts`), so each modality keeps the same fraction up
to one token. Text (every other token) is always kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from ..core import TokenDecision
from ..core.layout import SequenceLayout, build_layout, exclusive_cumsum
from ..core.select import block_rows, keep_best
from ..core.validate import check_inputs
from ..method import CompressionMethod

#: Retention used when neither ``retention`` nor ``token_budget`` is given: the paper's
#: 45%-retention operating point, so that baselines match OmniZip's default budget.
DEFAULT_RETENTION = 0.45

#: ``x / max(||x||, eps)`` for the cosine similarities of the baselines.
NORM_EPS = 1e-12


def check_ratio_open_closed(name: str, value: Any) -> None:
    """``value`` must be a float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class BudgetedMethod(CompressionMethod):
    """Base of the baselines: a frozen, validated configuration with a token budget.

    Attributes:
        retention: fraction of the audio + video tokens kept, in (0, 1].
        token_budget: absolute number of audio + video tokens kept (>= 0).
    """

    retention: float | None = None
    token_budget: int | None = None

    def __post_init__(self) -> None:
        if self.retention is not None and self.token_budget is not None:
            raise ValueError(
                f"give at most one of retention and token_budget, got retention="
                f"{self.retention!r} and token_budget={self.token_budget!r}"
            )
        if self.retention is not None:
            check_ratio_open_closed("retention", self.retention)
        if self.token_budget is not None:
            check_int("token_budget", self.token_budget, 0)

    # -- budget ------------------------------------------------------------------------------
    def kept_total(self, n_multimodal: int) -> int:
        """Audio + video tokens this configuration keeps out of ``n_multimodal``."""
        return resolve_total(n_multimodal, self.retention, self.token_budget)

    # -- dataclass conveniences (as OmniZipConfig) ----------------------------------------------
    def replace(self, **changes: Any) -> BudgetedMethod:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetedMethod:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def resolve_total(n_total: int, retention: float | None, token_budget: int | None) -> int:
    """Kept audio + video tokens: ``min(token_budget, N)`` or ``min(round(r * N), N)``."""
    if token_budget is not None:
        return min(int(token_budget), n_total)
    r = DEFAULT_RETENTION if retention is None else float(retention)
    return min(n_total, round(r * n_total))


def split_counts(n_audio: int, n_video: int, total: int) -> tuple[int, int]:
    """Split ``total`` kept tokens into (audio, video) in proportion to the modality sizes.

    ``k_a = round(total * N_a / (N_a + N_v))`` clamped so that both parts fit; the video part
    takes the rest, so ``k_a + k_v == total`` exactly.
    """
    n = n_audio + n_video
    if n == 0 or total <= 0:
        return 0, 0
    total = min(total, n)
    k_a = round(total * n_audio / n)
    k_a = min(max(k_a, total - n_video, 0), n_audio, total)
    return k_a, total - k_a


def distribute(total: int, capacity: torch.Tensor) -> torch.Tensor:
    """Share ``total`` kept tokens among segments in proportion to their ``capacity``.

    Each segment gets ``floor(total * c_i / sum(c))``; the few tokens left go one each to the
    first segments (in order) that still have room. Exact: the result sums to
    ``min(total, sum(capacity))`` and never exceeds a capacity.

    Args:
        capacity: int64 ``[S]`` (any device).
    Returns:
        int64 ``[S]`` on ``capacity``'s device.
    """
    cap = capacity.to(torch.int64)
    cap_sum = int(cap.sum()) if cap.numel() else 0
    total = max(0, min(int(total), cap_sum))
    if cap_sum == 0:
        return torch.zeros_like(cap)
    base = (cap * total) // cap_sum
    left = total - int(base.sum())
    room = base < cap
    order = torch.cumsum(room.to(torch.int64), 0)
    return base + (room & (order <= left)).to(torch.int64)


def keep_lowest(scores: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Per row, the ``counts`` lowest scores (ties: lower index first)."""
    return keep_best(scores, counts, descending=False)


def keep_highest(scores: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Per row, the ``counts`` highest scores (ties: lower index first)."""
    return keep_best(scores, counts, descending=True)


def prepare(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame: Any,
) -> SequenceLayout:
    """Validate a method's inputs (as the core does) and read the sequence layout."""
    check_inputs(embeds, input_ids, None, audio_token_id, video_token_id)
    if embeds.device != input_ids.device:
        raise ValueError(
            f"embeds and input_ids must be on the same device, got {embeds.device} and "
            f"{input_ids.device}"
        )
    return build_layout(input_ids, audio_token_id, video_token_id, tokens_per_frame)


def check_scores(name: str, scores: Any, n: int, what: str) -> torch.Tensor:
    """``scores`` must be a finite float tensor ``[n]``; returns it detached."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [{n}] ({what}), got {type(scores).__name__}")
    if scores.dim() != 1 or scores.numel() != n:
        raise ValueError(
            f"{name} must hold one score per {what}: expected shape [{n}], got "
            f"{tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {scores.dtype}")
    if n and not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} must be finite, got NaN or infinite values")
    return scores.detach()


def decision(
    keep_audio: torch.Tensor | None,
    keep_video: torch.Tensor | None,
    embeds_out: torch.Tensor,
    layout: SequenceLayout,
) -> TokenDecision:
    """A :class:`TokenDecision` from per-modality keep masks (None: keep all of it)."""
    device = embeds_out.device
    audio_positions = layout.audio_positions.to(device)
    video_positions = layout.video_positions.to(device)
    keep = torch.ones(layout.length, dtype=torch.bool, device=device)
    if keep_audio is not None:
        keep[audio_positions] = keep_audio.to(device)
    if keep_video is not None:
        keep[video_positions] = keep_video.to(device)
    return TokenDecision(
        keep=keep,
        embeds=embeds_out,
        audio_positions=audio_positions,
        video_positions=video_positions,
    )


def video_frame_runs(layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every frame of every video chunk as a run of video-token indices, in order.

    Returns ``(starts, lengths, whole)`` int64/int64/bool ``[S]``: whole frames have ``P``
    tokens; a chunk's trailing partial frame (when its length is not a multiple of ``P``) is a
    shorter run with ``whole = False``.
    """
    lengths = layout.video_chunk_lengths
    p = layout.tokens_per_frame
    n_frames = lengths // p
    tails = lengths - n_frames * p
    offsets = exclusive_cumsum(lengths)
    runs = n_frames + (tails > 0).to(torch.int64)
    chunk = torch.repeat_interleave(torch.arange(lengths.numel()), runs)
    local = torch.arange(chunk.numel()) - exclusive_cumsum(runs)[chunk]
    starts = offsets[chunk] + local * p[chunk]
    whole = local < n_frames[chunk]
    run_len = torch.where(whole, p[chunk], tails[chunk])
    return starts, run_len, whole


def frame_blocks(n_rows: int, row_elements: int, block_elements: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row blocks so a ``[rows, row_elements]`` temporary stays near the cap."""
    rows = block_rows(n_rows, row_elements, block_elements)
    return [(s, min(s + rows, n_rows)) for s in range(0, n_rows, rows)]


def row_inv_norms(x: torch.Tensor) -> torch.Tensor:
    """``1 / max(||x||, 1e-12)`` over the last dim (float32)."""
    return 1.0 / torch.linalg.vector_norm(x.float(), dim=-1).clamp(min=NORM_EPS)
