"""What a compression method decided for one sequence (algorithm §4 step 9), as plain tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TokenDecision:
    """What a token-compression method decided for one sequence (any method, algorithm §4 step 9).

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
            token budget target; with ``causal=True``, resolved at the stream's first window).
        first_window: the stream index of this sequence's first window (0 unless a causal
            call continued a history: then the history's window count).
        history: with ``causal=True``, the :class:`~omnizip.core.CausalHistory` after this
            call's last window (pass it to the next call); None otherwise.
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
    first_window: int = 0
    history: Any = None

    def window_counts(self) -> torch.Tensor:
        """Tokens per window, int64 ``[W, 4]``: audio, kept audio, video, kept video.

        Row ``j`` is window ``first_window + j``: video chunk ``j`` with audio chunk ``j`` of
        this sequence (algorithm §1); ``W = max(video chunks, audio chunks)``, a window
        missing one of them counts 0 there. Computed on the result's device (reading it is
        the caller's one synchronisation).
        """
        device = self.keep.device
        kept_before = torch.cat(
            [torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(self.keep, 0)]
        )
        n_windows = max(self.audio_chunks.shape[0], self.video_chunks.shape[0])
        out = torch.zeros(n_windows, 4, dtype=torch.int64, device=device)
        for column, chunks in ((0, self.audio_chunks), (2, self.video_chunks)):
            starts, lengths = chunks[:, 0], chunks[:, 1]
            out[: chunks.shape[0], column] = lengths
            out[: chunks.shape[0], column + 1] = kept_before[starts + lengths] - kept_before[starts]
        return out

    def summary(self) -> str:
        return (
            f"OmniZip {super().summary()}, {len(self.anchors)} anchors, "
            f"{self.num_guided} guided windows"
        )
