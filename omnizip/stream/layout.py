"""The offline token layout of an audio-in-video prompt, built window by window.

With ``use_audio_in_video`` both Qwen-Omni processors lay a video and its audio track out on
one clock of ``position_id_per_seconds`` positions per second: video temporal step ``t`` (one
vision "frame" of ``P`` tokens, ``temporal_patch_size`` sampled frames) sits at temporal
position ``t * step_positions``, audio token ``k`` at ``k``. Every window covers
``window_positions`` positions and holds its video steps, then its audio tokens:

* Qwen2.5-Omni: 2-second chunks (``window_positions = 25 * 2 = 50``; two steps at 2 fps);
* Qwen3-Omni: one step per window (``window_positions = step_positions = 13`` at 2 fps).

So the ids and M-RoPE positions of ``W`` whole windows are a prefix of those of ``W + 1``
windows (verified against the model's own ``get_rope_index`` by tests/test_stream_layout.py);
only the closing markers after the media depend on how the clip ends. :class:`MediaLayout`
computes every piece from counts alone: the text and markers before the media
(:meth:`~MediaLayout.prefix_positions`), one window's tokens (:meth:`~MediaLayout.window`) and
the markers and text after it (:meth:`~MediaLayout.closing_positions`).

Positions are relative to a *base* (the first step and audio token the layout counts from):
(0, 0) for the clip as it is, the first retained window's after a bounded session dropped
older windows (docs/streaming.md, "Bounded memory"): the positions a fresh offline run over the
retained windows gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MediaLayout", "WindowTokens"]


@dataclass(frozen=True)
class WindowTokens:
    """The tokens of one or more consecutive windows, in prompt order.

    Attributes:
        input_ids: int64 ``[n]`` video placeholders of each window's steps, then its audio ones.
        positions: ``[3, n]`` temporal/height/width position ids (the layout's dtype).
        is_video: bool ``[n]``.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    is_video: torch.Tensor


@dataclass(frozen=True)
class MediaLayout:
    """One family's audio-in-video layout (what ``get_rope_index`` computes, piece by piece).

    Attributes:
        video_token_id, audio_token_id: the placeholder ids.
        step_positions: temporal positions per video step (``temporal_patch_size / fps *
            position_id_per_seconds``; an integer for the frame rates a stream accepts).
        window_positions: positions per window (a multiple of ``step_positions``).
        shared_markers: the two opening (closing) markers share one position (Qwen2.5-Omni),
            else they take consecutive positions (Qwen3-Omni).
        closing_after_chunk: Qwen2.5-Omni's rule for the first closing position: one past the
            largest position of the last *window's* last part (its audio when it has any);
            else Qwen3-Omni's: one past the last audio token, unless video steps lie after it.
        position_dtype: int64 (Qwen2.5-Omni) or float32 (Qwen3-Omni).
    """

    video_token_id: int
    audio_token_id: int
    step_positions: int
    window_positions: int
    shared_markers: bool
    closing_after_chunk: bool
    position_dtype: torch.dtype

    @property
    def steps_per_window(self) -> int:
        return self.window_positions // self.step_positions

    # -- before and after the media ----------------------------------------------------------
    def media_start(self, n_text: int) -> int:
        """Position of the first media token after ``n_text`` text tokens and two markers."""
        return n_text + (1 if self.shared_markers else 2)

    def prefix_positions(self, n_text: int) -> torch.Tensor:
        """``[3, n_text + 2]``: text before the media (0, 1, ...), then the two opening markers."""
        positions = torch.arange(n_text + 2)
        if self.shared_markers:  # the second marker shares the first one's position
            positions[-1] = n_text
        return positions.expand(3, -1).to(self.position_dtype)

    def closing_base(self, n_audio: int, n_steps: int, grid: tuple[int, int]) -> int:
        """The first closing marker's position, relative to the media start, for a clip of
        ``n_steps`` video steps of ``grid`` = (tokens high, tokens wide) and ``n_audio`` audio
        tokens (both counted from the base)."""
        last_audio = n_audio - 1
        last_step = (n_steps - 1) * self.step_positions
        video_max = max(last_step, grid[0] - 1, grid[1] - 1)
        if n_steps == 0:
            return last_audio + 1
        if n_audio == 0:
            return video_max + 1
        if self.closing_after_chunk:
            audio_last = last_audio // self.window_positions >= last_step // self.window_positions
        else:
            audio_last = last_step <= last_audio
        return (last_audio if audio_last else video_max) + 1

    def closing_positions(self, start: int, n_tokens: int) -> torch.Tensor:
        """``[3, n_tokens]`` for the two closing markers at ``start`` and the text after them."""
        offsets = torch.arange(n_tokens)
        if self.shared_markers:  # both markers at `start`, the text from start + 1
            offsets = (offsets - 1).clamp(min=0)
        return (start + offsets).expand(3, -1).to(self.position_dtype)

    # -- windows -----------------------------------------------------------------------------
    def last_position(
        self,
        steps: tuple[int, int],
        audio: tuple[int, int],
        grid: tuple[int, int],
        start: int,
        base: tuple[int, int] = (0, 0),
    ) -> int:
        """The largest position id :meth:`window` gives these tokens (without building them)."""
        last = -1
        if steps[1] > steps[0]:
            last = max((steps[1] - 1 - base[0]) * self.step_positions, grid[0] - 1, grid[1] - 1)
        if audio[1] > audio[0]:
            last = max(last, audio[1] - 1 - base[1])
        return start + last

    def prompt_order(self, steps: tuple[int, int], audio: tuple[int, int],
                     grid: tuple[int, int]) -> torch.Tensor:
        """int64 ``[n]``: the tokens of :meth:`window` (video, then audio) in prompt order when
        they span several windows: window by window, each window's video steps then its audio
        tokens (what is left of the longer track after the shorter one ends comes last)."""
        n_steps, n_audio = max(steps[1] - steps[0], 0), max(audio[1] - audio[0], 0)
        step_window = torch.arange(steps[0], steps[0] + n_steps) * self.step_positions
        step_window = (step_window // self.window_positions).repeat_interleave(grid[0] * grid[1])
        audio_window = torch.arange(audio[0], audio[0] + n_audio) // self.window_positions
        key = torch.cat([step_window * 2, audio_window * 2 + 1])
        return torch.sort(key, stable=True).indices

    def window(
        self,
        steps: tuple[int, int],
        audio: tuple[int, int],
        grid: tuple[int, int],
        start: int,
        base: tuple[int, int] = (0, 0),
    ) -> WindowTokens:
        """The tokens of video steps ``[steps[0], steps[1])`` then audio tokens
        ``[audio[0], audio[1])`` (one window, or the merged tail of a clip).

        Args:
            grid: merged tokens (high, wide) of every video step; ``P = grid[0] * grid[1]``.
            start: position of the media start (:meth:`media_start`).
            base: (step, audio token) the positions count from (see the module docstring).
        """
        s0, s1 = steps
        a0, a1 = audio
        high, wide = grid
        n_steps, per_step = max(s1 - s0, 0), high * wide
        t = (torch.arange(s0, s0 + n_steps) - base[0]) * self.step_positions
        t = t.repeat_interleave(per_step)
        h = torch.arange(high).repeat_interleave(wide).repeat(n_steps)
        w = torch.arange(wide).repeat(high * n_steps)
        video = torch.stack([t, h, w])
        audio_pos = (torch.arange(a0, max(a1, a0)) - base[1]).expand(3, -1)
        positions = (torch.cat([video, audio_pos], dim=1) + start).to(self.position_dtype)
        n_video, n_audio = video.shape[1], audio_pos.shape[1]
        ids = torch.cat([torch.full((n_video,), self.video_token_id),
                         torch.full((n_audio,), self.audio_token_id)])
        is_video = torch.arange(n_video + n_audio) < n_video
        return WindowTokens(ids, positions, is_video)
