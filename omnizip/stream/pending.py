"""Encoded media that is not committed yet, and the rule that says when a window commits.

Windows follow the offline layout (:mod:`omnizip.stream.layout`): window ``c`` holds video
steps ``[c * S, (c + 1) * S)`` and audio tokens ``[c * A, (c + 1) * A)`` (``S`` steps and ``A``
positions per window). The core pairs maximal video and audio runs (algorithm §1), so a
window's tokens are final only once the next window's video exists: were the video to end
there, the audio after it would join this window's audio run (and video after a window
without audio joins its video run). Hence, before the end of the stream, window ``c``
commits when

* its ``S`` video steps are encoded and at least one frame of window ``c + 1`` arrived, and
* its ``A`` audio tokens are encoded (their encoder attention window is whole).

:meth:`Pending.ready` applies it; at the end of the stream everything left is one group
(its windows, the last possibly partial, decided in one core call as the offline run decides
the end of the clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .encode import AudioFeatures, VideoFeatures

__all__ = ["Group", "Pending"]


@dataclass(frozen=True)
class Group:
    """Media to commit: video steps ``[s0, s1)`` and audio tokens ``[a0, a1)`` (absolute)."""

    s0: int
    s1: int
    a0: int
    a1: int


@dataclass
class Media:
    """The encoder rows of a :class:`Group`: video ``[n_v, D]`` (+ DeepStack per layer), audio
    ``[n_a, D]`` and its scores ``[n_a]`` (or None)."""

    video: torch.Tensor
    deepstack: list[torch.Tensor] | None
    audio: torch.Tensor
    scores: torch.Tensor | None


class Pending:
    """Encoded, uncommitted video steps and audio tokens of one stream.

    Args:
        steps_per_window, audio_per_window: ``S`` and ``A`` above.
        frames_per_step: sampled frames per video step.
        tokens_per_step: ``P`` (known once the first step is encoded; set by :meth:`add_video`).
    """

    def __init__(self, steps_per_window: int, audio_per_window: int, frames_per_step: int) -> None:
        self.steps_per_window = steps_per_window
        self.audio_per_window = audio_per_window
        self.frames_per_step = frames_per_step
        self.tokens_per_step = 0
        self.next_window = 0  # clock index of the first uncommitted window
        self.step0 = 0  # absolute index of the first pending step / audio token
        self.audio0 = 0
        self._video: list[torch.Tensor] = []
        self._deep: list[list[torch.Tensor]] = []
        self._audio: list[torch.Tensor] = []
        self._scores: list[torch.Tensor] = []
        self.n_steps = 0  # encoded so far (absolute)
        self.n_audio = 0

    def add_video(self, features: VideoFeatures, steps: int) -> None:
        if steps == 0:
            return
        self.tokens_per_step = int(features.embeds.shape[0]) // steps
        self._video.append(features.embeds)
        if features.deepstack is not None:
            self._deep.append(features.deepstack)
        self.n_steps += steps

    def add_audio(self, features: AudioFeatures) -> None:
        self._audio.append(features.embeds)
        if features.scores is not None:
            self._scores.append(features.scores)
        self.n_audio += int(features.embeds.shape[0])

    def ready(self, frames_received: int, final: bool) -> list[Group]:
        """The groups to commit now (see the module docstring)."""
        groups: list[Group] = []
        c = self.next_window
        s, a = self.steps_per_window, self.audio_per_window
        if final:
            if self.n_steps > c * s or self.n_audio > c * a:
                groups.append(Group(c * s, self.n_steps, c * a, self.n_audio))
            return groups
        while (self.n_steps >= (c + 1) * s
               and frames_received > (c + 1) * s * self.frames_per_step
               and self.n_audio >= (c + 1) * a):
            groups.append(Group(c * s, (c + 1) * s, c * a, (c + 1) * a))
            c += 1
        return groups

    def take(self, group: Group, windows: int) -> Media:
        """The rows of ``group`` (the oldest pending media), removed from the store;
        ``windows``: clock windows it spans (advances :attr:`next_window`)."""
        p = self.tokens_per_step
        n_v = (group.s1 - group.s0) * p
        n_a = group.a1 - group.a0
        video = torch.cat(self._video) if self._video else torch.zeros(0, 0)
        audio = torch.cat(self._audio) if self._audio else torch.zeros(0, 0)
        out = Media(
            video=video[:n_v],
            deepstack=[torch.cat(layer)[:n_v] for layer in zip(*self._deep, strict=True)] if self._deep else None,
            audio=audio[:n_a],
            scores=torch.cat(self._scores)[:n_a] if self._scores else None,
        )
        self._video = [video[n_v:]] if video.shape[0] > n_v else []
        self._audio = [audio[n_a:]] if audio.shape[0] > n_a else []
        if self._deep:
            rest = [torch.cat(layer)[n_v:] for layer in zip(*self._deep, strict=True)]
            self._deep = [rest] if rest[0].shape[0] else []
        if self._scores:
            scores = torch.cat(self._scores)
            self._scores = [scores[n_a:]] if scores.shape[0] > n_a else []
        self.step0, self.audio0 = group.s1, group.a1
        self.next_window += windows
        return out
