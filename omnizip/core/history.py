"""What a causal OmniZip decision carries from one call to the next (algorithm §9).

A causal configuration decides window ``w`` from windows ``w-K+1..w`` (``K`` =
``causal_lookback``). A stream decided call by call therefore needs, from the calls before,
only what those K-1 windows contributed, plus a few running counts. :class:`CausalHistory`
holds exactly that; its size does not grow with the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

__all__ = ["CausalHistory", "StreamTail", "config_key"]

# Fields that change no decision: a history made with another value of these stays valid.
_NOT_DECIDING = ("block_elements",)


def config_key(config: Any) -> tuple:
    """The configuration fields a history depends on, as a comparable tuple."""
    return tuple(
        (f.name, getattr(config, f.name)) for f in fields(config) if f.name not in _NOT_DECIDING
    )


@dataclass(frozen=True)
class StreamTail:
    """The end of the last interleaved video stream (``frame_parity="stream"``, algorithm §4.8).

    Attributes:
        open: only audio tokens followed the stream's last video chunk, so the next call's
            first video chunk continues it (if nothing but audio precedes that chunk and it
            has the same ``tokens``).
        tokens: P of the stream.
        frames: whole frames the stream holds so far (its next frame's parity is
            ``frames % 2``).
        frame: ``[P, D]`` the stream's last whole frame (rows as the decisions read them), or
            None when it has none yet; ``frame_inv_norm``: float32 ``[P]`` ``1 / max(||x||, 1e-12)``.
    """

    open: bool
    tokens: int
    frames: int
    frame: torch.Tensor | None
    frame_inv_norm: torch.Tensor | None


@dataclass(frozen=True)
class CausalHistory:
    """The state a causal stream carries between calls of :func:`omnizip.compress_sequence`.

    Returned as ``result.history`` by a call with a causal configuration; pass it to the next
    call (``history=``) to continue the stream: the next call's windows are numbered on from
    :attr:`n_windows` and decided exactly as one call over the whole stream would decide them.
    Bounded: it keeps the last ``causal_lookback - 1`` windows' audio scores, base ratios and
    video rows, and a few counts. Its tensors are its own (never views of the caller's) and
    live on the device of the call that made it; :meth:`to` moves them.

    Attributes:
        config: the deciding fields of the configuration that made it (checked on reuse).
        n_video_chunks, n_audio_chunks: video / audio chunks decided so far.
        audio_count: audio tokens decided so far (the stream index of the next one).
        rho_audio, rho_video: the ratios in use (resolved at the first window; None before).
        scores: float32 ``[h]`` the audio scores of the last audio chunks,
            ``score_lengths`` (host ints) tokens per chunk.
        base_ratio: float64 ``[k]`` ``b_i`` of the last windows (0 where not guided);
            ``video_sizes``: their ``|V_i|`` (0 where not guided), host ints.
        video_rows: ``[hv, D]`` the last video chunks' rows (for causal merge scores; empty
            when the configuration never merges against the span), ``video_scale`` float32
            ``[hv]`` their ``1 / (||v|| + 1e-6)``, ``video_lengths`` host ints per chunk.
        stream: the open video stream for ``frame_parity="stream"``, else None.
    """

    config: tuple
    n_video_chunks: int
    n_audio_chunks: int
    audio_count: int
    rho_audio: float | None
    rho_video: float | None
    scores: torch.Tensor
    score_lengths: tuple[int, ...]
    base_ratio: torch.Tensor
    video_sizes: tuple[int, ...]
    video_rows: torch.Tensor
    video_scale: torch.Tensor
    video_lengths: tuple[int, ...]
    stream: StreamTail | None

    @property
    def n_windows(self) -> int:
        """Windows decided so far: the index the next call's first window gets."""
        return max(self.n_video_chunks, self.n_audio_chunks)

    @property
    def device(self) -> torch.device:
        return self.scores.device

    def to(self, device: torch.device | str) -> CausalHistory:
        """A copy with every tensor on ``device``."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        stream = self.stream
        if stream is not None:
            stream = replace(stream, frame=move(stream.frame), frame_inv_norm=move(stream.frame_inv_norm))
        return replace(
            self, scores=move(self.scores), base_ratio=move(self.base_ratio),
            video_rows=move(self.video_rows), video_scale=move(self.video_scale), stream=stream,
        )

    def __repr__(self) -> str:
        return (
            f"CausalHistory(windows={self.n_windows}, audio_tokens={self.audio_count}, "
            f"kept_windows={len(self.video_sizes)}, device={self.device})"
        )


def start_history(config: Any, dim: int, dtype: torch.dtype, device: torch.device) -> CausalHistory:
    """The history before a stream's first window (ratios resolved later, at that window)."""
    empty = torch.empty(0, device=device)
    return CausalHistory(
        config=config_key(config), n_video_chunks=0, n_audio_chunks=0, audio_count=0,
        rho_audio=None, rho_video=None,
        scores=empty.float(), score_lengths=(), base_ratio=empty.double(), video_sizes=(),
        video_rows=torch.empty(0, dim, dtype=dtype, device=device), video_scale=empty.float(),
        video_lengths=(), stream=None,
    )


def check_history(history: Any, config: Any, embeds: torch.Tensor) -> None:
    """A history given to a call must come from a causal call with this configuration."""
    if history is None:
        return
    if not isinstance(history, CausalHistory):
        raise TypeError(
            f"history must be a CausalHistory (result.history of a causal call) or None, "
            f"got {type(history).__name__}"
        )
    if not config.causal:
        raise ValueError(
            "history is only valid with a causal configuration (causal=True), got causal=False"
        )
    if history.config != config_key(config):
        made, now = dict(history.config), dict(config_key(config))
        differ = sorted(k for k in set(made) | set(now) if made.get(k) != now.get(k))
        raise ValueError(
            f"history was made with another configuration: {', '.join(differ)} differ "
            f"(history {[made.get(k) for k in differ]}, config {[now.get(k) for k in differ]})"
        )
    rows = history.video_rows
    if rows.numel() and rows.shape[1] != embeds.shape[1]:
        raise ValueError(
            f"embeds must have the history's width D={rows.shape[1]}, got shape {tuple(embeds.shape)}"
        )
    if history.device != embeds.device:
        raise ValueError(
            f"history lives on {history.device} but embeds on {embeds.device}; "
            "move it with history.to(device)"
        )
