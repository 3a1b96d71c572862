"""Causal Whisper log-mel features for streams (docs/algorithm.md §9, "Causal audio features").

Qwen2.5-Omni and Qwen3-Omni read audio through ``WhisperFeatureExtractor``: a centred STFT
(``n_fft`` 400, hop 160, Hann window, reflect padding at the ends), power spectrum, Slaney mel
filters, ``log10(max(mel, 1e-10))``, then ``max(log_spec, log_spec.max() - 8)`` over the WHOLE
input and ``(x + 4) / 4``. Two things look ahead: the clamp (loud audio later lifts the floor of
every earlier frame) and the centred window (frame ``t`` reads ``n_fft // 2`` samples past
``t * hop``). Here the clamp uses the running maximum over frames ``<= t`` and frame ``t`` is
emitted only once its samples have arrived; the end of the input is padded as the offline
extractor pads it. Everything else is Whisper's computation (its torch path), so the features
equal Whisper's wherever the running maximum equals the whole input's.

Bit-exact under any chunking: frames are computed in blocks of :data:`BLOCK_FRAMES` at fixed
places along the stream (block ``b`` holds frames ``b * 64 ..``), :data:`BLOCKS_PER_CALL`
blocks per STFT and mel product, always of the same shape, so a frame's value never depends
on how the samples arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "BLOCK_FRAMES",
    "END_MODES",
    "CausalLogMel",
    "causal_audio_inputs",
    "causal_log_mel",
]

#: frames per fixed-shape block (0.64 s at Whisper's 10-ms hop)
BLOCK_FRAMES = 64
#: blocks per STFT / mel call, padded with silent blocks when fewer are pending
BLOCKS_PER_CALL = 8
#: how the signal continues past its last sample: "reflect" (Whisper on the unpadded array,
#: what Qwen3-Omni's processor computes for one audio) or "silence" (zeros follow: Whisper on
#: a zero-padded array, what Qwen2.5-Omni's processor computes with padding="max_length")
END_MODES = ("reflect", "silence")
#: the log10 floor of Whisper's features: nothing below the (running) maximum minus 8
DYNAMIC_RANGE = 8.0


def _as_samples(name: str, samples: Any) -> torch.Tensor:
    """float32 ``[n]`` from a 1-D array or tensor of real samples."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dim() != 1:
        raise ValueError(f"{name} must be 1-D mono samples [n], got shape {tuple(samples.shape)}")
    if not samples.is_floating_point():
        raise TypeError(f"{name} must hold float samples, got dtype {samples.dtype}")
    samples = samples.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(f"{name} must be finite, got NaN or infinite samples")
    return samples


class _Whisper:
    """The constants of one ``WhisperFeatureExtractor`` and the block computation."""

    def __init__(self, feature_extractor: Any) -> None:
        for attribute in ("n_fft", "hop_length", "mel_filters", "sampling_rate"):
            if not hasattr(feature_extractor, attribute):
                raise TypeError(
                    "feature_extractor must be a WhisperFeatureExtractor (the processor's "
                    f"feature_extractor), got {type(feature_extractor).__name__} without {attribute}"
                )
        if float(getattr(feature_extractor, "dither", 0.0)) != 0.0:
            raise ValueError(
                f"feature_extractor.dither must be 0 (random noise makes features "
                f"non-reproducible), got {feature_extractor.dither}"
            )
        self.n_fft = int(feature_extractor.n_fft)
        self.hop = int(feature_extractor.hop_length)
        self.half = self.n_fft // 2
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.window = torch.hann_window(self.n_fft)
        # [freq, n_mels] as Whisper's torch path holds it (its product is ``mel_filters.T @ ...``)
        self.mel_filters = torch.from_numpy(np.asarray(feature_extractor.mel_filters)).to(torch.float32)
        self.n_mels = int(self.mel_filters.shape[1])
        self.block_samples = (BLOCK_FRAMES - 1) * self.hop + self.n_fft

    def frames_ready(self, received: int) -> int:
        """Frames whose whole window has arrived after ``received`` samples (the start's
        reflection reads samples 1..n_fft/2, so frame 0 needs ``n_fft/2 + 1``)."""
        if received <= self.half:
            return 0
        return (received - self.half) // self.hop + 1

    def total_frames(self, n: int, end: str) -> int:
        """Frames of the whole input: ``n // hop`` (reflect: Whisper drops the last STFT
        frame) or ``ceil(n / hop)`` (silence: the frames the padded processor marks valid)."""
        return n // self.hop if end == "reflect" else -(-n // self.hop)

    def block_log_mel(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """``log10(max(mel, 1e-10))`` of each block, float32 ``[n_mels, BLOCK_FRAMES]``, from
        its ``block_samples`` padded samples. Computed :data:`BLOCKS_PER_CALL` blocks at a
        time, padded with silent blocks: every call has the same shape, so a frame gets the
        same arithmetic wherever its samples came from."""
        out = []
        for start in range(0, len(blocks), BLOCKS_PER_CALL):
            group = blocks[start : start + BLOCKS_PER_CALL]
            missing = BLOCKS_PER_CALL - len(group)
            samples = torch.stack([*group, *[torch.zeros(self.block_samples)] * missing])
            stft = torch.stft(samples, self.n_fft, self.hop, window=self.window, center=False,
                              return_complex=True)
            magnitudes = stft.abs() ** 2  # [BLOCKS_PER_CALL, freq, BLOCK_FRAMES]
            mel = self.mel_filters.T @ magnitudes
            out.extend(torch.clamp(mel, min=1e-10).log10()[: len(group)])
        return out


def _normalise(log_spec: torch.Tensor, running_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's clamp and scale with the running maximum: ``[n_mels, f]`` ->
    (features, the maximum after the last frame)."""
    if log_spec.shape[1] == 0:
        return log_spec, running_max
    frame_max = torch.cummax(log_spec.amax(dim=0), dim=0).values
    frame_max = torch.maximum(frame_max, running_max)
    features = (torch.maximum(log_spec, frame_max - DYNAMIC_RANGE) + 4.0) / 4.0
    return features, frame_max[-1]


class CausalLogMel:
    """A streaming Whisper log-mel extractor: :meth:`push` samples as they arrive, get the
    frames that became final; :meth:`finish` at the end of the input for the last frames.

    Any chunking of the pushes gives exactly :func:`causal_log_mel` of the whole input.
    Carried state: the running maximum, the first ``n_fft/2 + 1`` samples (the start's
    reflection) and the samples of the block in progress (under one block plus a window).

    Args:
        feature_extractor: the processor's ``WhisperFeatureExtractor`` (``dither`` 0).
        end: one of :data:`END_MODES`, how :meth:`finish` pads past the last sample.
    """

    def __init__(self, feature_extractor: Any, *, end: str = "reflect") -> None:
        if end not in END_MODES:
            raise ValueError(f"end must be one of {END_MODES}, got {end!r}")
        self._whisper = _Whisper(feature_extractor)
        self.end = end
        self._head = torch.zeros(0)  # samples 0..n_fft/2: the start's reflection
        self._tail = torch.zeros(0)  # samples from self._tail_start on
        self._tail_start = 0
        self._received = 0
        self._emitted = 0
        self._max = torch.tensor(float("-inf"))
        self._finished = False

    @property
    def sampling_rate(self) -> int:
        return self._whisper.sampling_rate

    @property
    def frames_emitted(self) -> int:
        """Frames returned so far."""
        return self._emitted

    @property
    def samples_received(self) -> int:
        return self._received

    def push(self, samples: Any) -> torch.Tensor:
        """Append mono samples (float, the extractor's sampling rate); returns the new final
        frames, float32 ``[n_mels, f]`` (``f`` may be 0)."""
        if self._finished:
            raise RuntimeError("CausalLogMel.push after finish(): start a new extractor")
        samples = _as_samples("samples", samples)
        whisper = self._whisper
        if self._head.numel() <= whisper.half:
            self._head = torch.cat([self._head, samples[: whisper.half + 1 - self._head.numel()]])
        self._tail = torch.cat([self._tail, samples])
        self._received += samples.numel()
        return self._emit(whisper.frames_ready(self._received), finished=False)

    def finish(self) -> torch.Tensor:
        """The remaining frames, the end padded as :attr:`end` says; float32 ``[n_mels, f]``.
        After it the extractor takes no more samples."""
        if self._finished:
            raise RuntimeError("CausalLogMel.finish called twice")
        whisper = self._whisper
        if self.end == "reflect" and self._received <= whisper.half:
            raise ValueError(
                f'end="reflect" needs more than {whisper.half} samples (the centred STFT '
                f"reflects that many), got {self._received}"
            )
        frames = self._emit(whisper.total_frames(self._received, self.end), finished=True)
        self._finished = True
        return frames

    def _samples_at(self, offset: int, finished: bool) -> torch.Tensor:
        """The padded signal at sample indices ``offset + [0, block)``, from slices: ``x[-j]``
        before the start (the centred STFT's reflection), ``x[j]`` inside, past the end
        ``x[2(n-1) - j]`` (reflect, once finished) or zeros. Rows of frames whose samples are
        not all known yet read zeros there and are never emitted."""
        whisper, n = self._whisper, self._received
        stop = offset + whisper.block_samples
        parts = []
        if offset < 0:  # j in [offset, 0): x[-j], i.e. x[-offset], ..., x[1]
            head = torch.cat([self._head, self._head.new_zeros(whisper.half + 1 - self._head.numel())])
            parts.append(head[1 : 1 - offset].flip(0)[: stop - offset])
        inside_from, inside_to = max(offset, 0), min(stop, n)
        if inside_to > inside_from:
            parts.append(self._tail[inside_from - self._tail_start : inside_to - self._tail_start])
        after = stop - max(offset, n)
        if after > 0:
            if finished and self.end == "reflect":  # j >= n: x[n-2], x[n-3], ...
                first = max(offset, n)
                lo = 2 * (n - 1) - (stop - 1)
                hi = 2 * (n - 1) - first
                start = max(lo, self._tail_start)
                mirrored = self._tail[start - self._tail_start : hi + 1 - self._tail_start].flip(0)
                parts.append(torch.cat([mirrored, mirrored.new_zeros(after - mirrored.numel())]))
            else:
                parts.append(torch.zeros(after))
        return torch.cat(parts)

    def _emit(self, ready: int, finished: bool) -> torch.Tensor:
        whisper = self._whisper
        first = self._emitted
        if ready <= first:
            return torch.zeros(whisper.n_mels, 0)
        blocks = range(first // BLOCK_FRAMES, -(-ready // BLOCK_FRAMES))
        signals = [self._samples_at(b * BLOCK_FRAMES * whisper.hop - whisper.half, finished) for b in blocks]
        pieces = []
        for block, log_spec in zip(blocks, whisper.block_log_mel(signals), strict=True):
            lo = max(first - block * BLOCK_FRAMES, 0)
            hi = min(ready - block * BLOCK_FRAMES, BLOCK_FRAMES)
            pieces.append(log_spec[:, lo:hi])
        log_spec = torch.cat(pieces, dim=1) if pieces else torch.zeros(whisper.n_mels, 0)
        features, self._max = _normalise(log_spec, self._max)
        self._emitted = max(ready, first)
        # Keep only the samples a later frame can still read (its block's first window on).
        keep_from = max((self._emitted // BLOCK_FRAMES) * BLOCK_FRAMES * whisper.hop - whisper.half, 0)
        if keep_from > self._tail_start:
            self._tail = self._tail[keep_from - self._tail_start :].clone()
            self._tail_start = keep_from
        return features


def causal_log_mel(waveform: Any, feature_extractor: Any, *, end: str = "reflect") -> torch.Tensor:
    """Whisper's log-mel of a whole waveform with the causal clamp (running maximum):
    float32 ``[n_mels, frames]``; ``frames = n // hop`` (``end="reflect"``) or
    ``ceil(n / hop)`` (``end="silence"``). Equals :class:`CausalLogMel` fed any chunking."""
    extractor = CausalLogMel(feature_extractor, end=end)
    return torch.cat([extractor.push(_as_samples("waveform", waveform)), extractor.finish()], dim=1)


def causal_audio_inputs(
    waveform: Any, feature_extractor: Any, *, padding: str = "max_length"
) -> dict[str, torch.Tensor]:
    """The audio part of a Qwen-Omni processor's output for one waveform, with causal
    features: ``input_features`` float32 ``[1, n_mels, F]`` and ``feature_attention_mask``
    int32 ``[1, F]``, shaped as the processor returns them.

    ``padding="max_length"`` (Qwen2.5-Omni's processor): the waveform zero-padded (or cut)
    to ``feature_extractor.n_samples``, ``F = nb_max_frames``, the first ``ceil(n / hop)``
    frames valid. ``"longest"`` (Qwen3-Omni's, one audio): ``F = n // hop``, all valid.
    Pass these to the model in place of the processor's ``input_features`` /
    ``feature_attention_mask``; the token counts the processor computed stay right (they
    follow from the mask).
    """
    samples = _as_samples("waveform", waveform)
    hop = int(feature_extractor.hop_length)
    if padding == "max_length":
        total = int(feature_extractor.n_samples)
        samples = samples[:total]
        valid = -(-samples.numel() // hop)
        padded = torch.cat([samples, samples.new_zeros(total - samples.numel())])
        features = causal_log_mel(padded, feature_extractor, end="reflect")
    elif padding == "longest":
        features = causal_log_mel(samples, feature_extractor, end="reflect")
        valid = features.shape[1]
    else:
        raise ValueError(f'padding must be "max_length" or "longest", got {padding!r}')
    mask = torch.zeros(1, features.shape[1], dtype=torch.int32)
    mask[:, :valid] = 1
    return {"input_features": features[None], "feature_attention_mask": mask}

