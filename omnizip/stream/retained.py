"""Committed windows: what the session reports, what its cache holds, what it may drop.

Every committed window keeps its kept tokens' decoder inputs (embeddings, the keep mask over
its own tokens, DeepStack rows), so the cache can be rebuilt from them. :class:`Retained` is the
bounded-memory policy of docs/streaming.md ("Bounded memory"):

    When committing a window would make the cache hold more than ``max_cache_tokens`` tokens,
    or put the window's last position past ``position_limit - question_positions``, the oldest
    windows are dropped until the retained windows and the new one fill at most 3/4 of each
    bound (a low-water mark, so the rebuild below is not repeated at every window). The prefix
    and the retained windows are then re-prefilled in one decoder call, at the positions a fresh
    offline run over the retained windows gives them (the clip "starts" at the first retained
    window: its video steps and audio tokens are counted from there), and the new window follows.

Decisions are never revisited: dropped windows leave the cache, not the decision history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import CachePiece
from .pending import Group, Media

__all__ = ["Bounds", "CommittedSpan", "Retained", "StreamWindow", "split_decision"]

LOW_WATER = 0.75


@dataclass
class CommittedSpan:
    """What a stream reports of a committed piece of media (a window of the window session, a
    chunk item of the chunk stream).

    Attributes:
        index: the piece's number along the stream (a window: the core's window index).
        t, end: its start and end on the stream clock, seconds.
        audio, kept_audio, video, kept_video: its tokens before and after compression.
    """

    index: int
    t: float
    end: float
    audio: int
    kept_audio: int
    video: int
    kept_video: int

    def as_dict(self) -> dict:
        """The reported fields (``index``, ``t``, ``end``, the four counts)."""
        return {"index": self.index, "t": round(self.t, 3), "end": round(self.end, 3),
                "audio": self.audio, "kept_audio": self.kept_audio, "video": self.video,
                "kept_video": self.kept_video}


@dataclass
class StreamWindow(CommittedSpan):
    """One committed window (``session.windows``): the :class:`CommittedSpan` fields and

    Attributes:
        in_cache: False once the bounded-memory policy dropped it from the cache.
        ms: processing time attributed to it (see :attr:`StreamSession.windows`).
        cache_tokens: tokens in the cache right after its kept tokens were prefilled.
    """

    in_cache: bool = True
    ms: float = 0.0
    cache_tokens: int = 0
    # what a rebuild needs: absolute steps/audio ranges, the keep mask over the window's own
    # tokens, and the kept tokens' embeddings (+ DeepStack rows of the kept video tokens)
    steps: tuple[int, int] = (0, 0)
    audio_range: tuple[int, int] = (0, 0)
    keep: torch.Tensor | None = field(default=None, repr=False)
    embeds: torch.Tensor | None = field(default=None, repr=False)
    deepstack: list[torch.Tensor] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Bounds:
    """``max_tokens``: cache bound (None: unbounded); ``max_position``: the last position a
    window may reach (``position_limit - question_positions``)."""

    max_tokens: int | None
    max_position: int


class Retained:
    """The windows in the cache, oldest first, and the drop rule (module docstring)."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.windows: list[StreamWindow] = []
        self.dropped = 0  # windows dropped so far
        self.rebuilds = 0

    def base(self, default: tuple[int, int]) -> tuple[int, int]:
        """(step, audio token) positions count from: the first retained window's start."""
        if not self.windows:
            return default
        first = self.windows[0]
        return first.steps[0], first.audio_range[0]

    def over(self, cache_tokens: int, new_tokens: int, last_position: float) -> bool:
        """Would prefilling ``new_tokens`` more (reaching ``last_position``) break a bound?"""
        b = self.bounds
        too_many = b.max_tokens is not None and cache_tokens + new_tokens > b.max_tokens
        return too_many or last_position > b.max_position

    def drop_for(self, prefix_tokens: int, new_tokens: int, span_of: callable) -> int:
        """Drop the oldest windows until the prefix, the retained windows and the new one fill
        at most :data:`LOW_WATER` of each bound; ``span_of(first)`` is the new window's last
        position if the retained windows started at ``first`` (an index into the retained
        list, ``len`` = none retained). Returns how many windows were dropped."""
        b = self.bounds
        token_cap = None if b.max_tokens is None else LOW_WATER * b.max_tokens
        position_cap = LOW_WATER * b.max_position
        sizes = [int(w.keep.sum()) for w in self.windows]
        total = prefix_tokens + sum(sizes) + new_tokens
        first = 0
        while first < len(self.windows) and (
            (token_cap is not None and total > token_cap) or span_of(first) > position_cap
        ):
            total -= sizes[first]
            first += 1
        for window in self.windows[:first]:
            window.in_cache = False
            window.keep = window.embeds = window.deepstack = None  # free their rows
        self.windows = self.windows[first:]
        self.dropped += first
        return first

    def pieces(self, positions_of: callable) -> list[CachePiece]:
        """The retained windows as cache pieces; ``positions_of(window)``: their kept tokens'
        positions ``[3, n_kept]`` at the current base."""
        out = []
        for w in self.windows:
            out.append(CachePiece(embeds=w.embeds, positions=positions_of(w),
                                  visual=None if w.deepstack is None else self._visual(w),
                                  deepstack=w.deepstack))
        return out

    @staticmethod
    def _visual(window: StreamWindow) -> torch.Tensor:
        """bool ``[n_kept]``: which kept tokens are video (the video tokens come first)."""
        n_video = window.video
        kept = window.keep
        is_video = torch.arange(kept.numel()) < n_video
        return is_video[kept]


def split_decision(result: Any, group: Group, media: Media, tokens_per_step: int,
                   step_positions: int, positions_per_second: float) -> list[StreamWindow]:
    """The core's decision over a committed group, window by window (its rows of
    ``result.window_counts()``): each window's tokens are its video run then its audio run, so
    its keep mask, kept (merged) embeddings and DeepStack rows are consecutive slices."""
    keep = result.keep.detach().cpu()
    device = result.embeds.device
    out: list[StreamWindow] = []
    offset = video_offset = 0
    step, audio_at = group.s0, group.a0
    for row, (n_a, k_a, n_v, k_v) in enumerate(result.window_counts().tolist()):
        n = n_v + n_a
        w_keep = keep[offset : offset + n]
        deep = None
        if media.deepstack is not None:
            kept_video = w_keep[:n_v].to(device)
            deep = [d[video_offset : video_offset + n_v][kept_video] for d in media.deepstack]
        steps = (step, step + (n_v // tokens_per_step if tokens_per_step else 0))
        audio_range = (audio_at, audio_at + n_a)
        start = steps[0] * step_positions if n_v else audio_range[0]
        out.append(StreamWindow(
            index=int(result.first_window) + row,
            t=start / positions_per_second,
            end=max(steps[1] * step_positions, audio_range[1]) / positions_per_second,
            audio=n_a, kept_audio=k_a, video=n_v, kept_video=k_v,
            steps=steps, audio_range=audio_range, keep=w_keep,
            embeds=result.embeds[offset : offset + n][w_keep.to(device)].detach(),
            deepstack=deep,
        ))
        offset += n
        video_offset += n_v
        step, audio_at = steps[1], audio_range[1]
    return out
