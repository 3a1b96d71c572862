"""algorithm §3 audio scoring on the Qwen-Omni audio encoders (a mixin of the family adapters).

The audio encoder's last attention layer is hooked (its input after the pre-attention
LayerNorm); q/k are recomputed and every frame is scored by the attention it receives
(:func:`omnizip.audio_attention_scores`), per audio stream, pooled to LLM tokens
(:func:`omnizip.pool_audio_scores`). The adapter hands the scores of a prefill to the method
(``needs_audio_scores``), or embedding-norm scores for ``audio_score="energy"``.

A causal method (``causal=True``, algorithm §9) with ``audio_score="global"`` is scored with
``scope="causal"``: each encoder attention window by the attention it receives within its
look-back span, so no frame's score depends on later audio ("windowed" and "energy" are
causal already). The span is the method's ``causal_lookback`` OmniZip windows converted to
encoder windows by their length in seconds, at least 2 (:meth:`AudioScoring._encoder_lookback`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from ..core import audio_attention_scores, audio_energy_scores, pool_audio_scores
from ..method import CompressionMethod
from .prefill import PrefillCall

__all__ = ["AudioScoring", "stream_windows"]

logger = logging.getLogger("omnizip")


def stream_windows(stream_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """int32 ``[n + 1]`` cumulative bounds of windows of ``width`` frames laid along each
    stream (a stream's last window may be shorter), for ``audio_attention_scores``."""
    lengths = stream_lengths.to("cpu", torch.int64)
    full, tail = lengths // width, lengths % width
    per_stream = full + (tail > 0).to(torch.int64)
    sizes = torch.full((int(per_stream.sum()),), width, dtype=torch.int64)
    last = torch.cumsum(per_stream, 0) - 1
    sizes[last[tail > 0]] = tail[tail > 0]
    return torch.nn.functional.pad(torch.cumsum(sizes, 0), (1, 0)).to(torch.int32)


class AudioScoring:
    """Audio-encoder hooks and scores; the adapter sets :attr:`method`, :attr:`audio_pool`
    and ``_call`` (the prefill in flight) and registers :meth:`_on_audio_tower` and
    :meth:`_on_audio_last_attention`."""

    method: CompressionMethod
    #: frames pooled per LLM audio token
    audio_pool: int = 2
    #: seconds of one OmniZip window (algorithm §1) on this family: Qwen2.5-Omni's 2-s chunk
    window_seconds: float = 2.0
    #: mel frames per second of the audio features (Whisper's 16 kHz with a 160-sample hop)
    mel_frames_per_second: int = 100
    _call: PrefillCall | None
    _warned: set[str]

    def _on_audio_tower(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Frames per audio stream after the stride-2 conv stem (the last layer's ``T_s``)."""
        call = self._call
        if call is None or not self._encoder_scores():
            return None
        feature_lens = kwargs.get("feature_lens", args[1] if len(args) > 1 else None)
        if feature_lens is not None:
            lens = torch.as_tensor(feature_lens).to("cpu", torch.int64).flatten()
            call.stream_frames = self._stream_frames(lens)
        return None

    @staticmethod
    def _stream_frames(feature_lens: torch.Tensor) -> torch.Tensor:
        """Frames per stream in the encoder layers: mel frames after the stride-2 conv stem
        (per 2*n_window chunk, which sums to the same count for a whole stream)."""
        return (feature_lens - 1) // 2 + 1

    def _on_audio_last_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """algorithm §3: q/k of the last audio layer from its (LayerNorm-ed) input -> token scores."""
        call = self._call
        method = self.method
        if call is None or not self._encoder_scores():
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        if hidden is None or hidden.dim() != 2:
            return None
        frames = hidden.shape[0]
        streams = call.stream_frames
        if streams is None or int(streams.sum()) != frames:
            self._warn_once(
                "streams",
                "omnizip: audio stream lengths unknown; scoring all audio frames as one stream",
            )
            streams = torch.tensor([frames])
        heads = int(module.num_heads)
        mode = self._score_mode()
        started = time.perf_counter()
        with torch.no_grad():
            query = module.q_proj(hidden).reshape(frames, heads, -1)
            key = module.k_proj(hidden).reshape(frames, heads, -1)
            frame_scores = audio_attention_scores(
                query,
                key,
                scope=mode,
                stream_lengths=streams,
                cu_seqlens=self._score_windows(cu_seqlens, streams),
                scale=float(module.scaling),
                block_elements=method.block_elements,
                lookback=self._encoder_lookback() if mode == "causal" else None,
            )
            call.scores.append(pool_audio_scores(frame_scores, streams, pool=self.audio_pool))
        call.score_seconds += time.perf_counter() - started
        return None

    def _score_windows(self, cu_seqlens: Any, streams: torch.Tensor) -> Any:
        """The spans of ``audio_score="windowed"``: the encoder's own attention windows, or
        windows of ``method.audio_score_window`` LLM tokens laid along each stream (SEATS);
        the causal scope's units: the encoder's own windows."""
        mode = self._score_mode()
        if mode == "causal":
            return cu_seqlens
        if mode != "windowed":
            return None
        tokens = self.method.audio_score_window
        if tokens is None:
            return cu_seqlens
        return stream_windows(streams, int(tokens) * self.audio_pool)

    def _audio_scores(
        self, call: PrefillCall, embeds: torch.Tensor, is_audio: torch.Tensor
    ) -> torch.Tensor | None:
        """One score per audio token of the batch, row-major (the order the model scatters
        the audio features in), from the encoder (algorithm §3) or the ``energy`` variant."""
        n_audio = int(is_audio.sum())
        if n_audio == 0:
            return None
        if self._score_mode() != "energy" and not self._encoder_scores():
            return None  # the method ranks audio without scores (e.g. random selection)
        if self._encoder_scores():
            scores = torch.cat(call.scores) if call.scores else None
            if scores is not None and scores.numel() == n_audio:
                return scores.to(embeds.device)
            got = 0 if scores is None else scores.numel()
            self._warn_once(
                "energy",
                f"omnizip: audio encoder gave {got} scores for {n_audio} audio tokens (audio "
                "features not computed in this call?); using the `energy` scores instead",
            )
        return audio_energy_scores(embeds[is_audio])

    def _score_mode(self) -> str:
        """algorithm §3 variant: the method's ``audio_score`` ("global" / "windowed" / "energy"),
        with "global" scored causally (``"causal"``) for a causal method."""
        mode = self.method.audio_score
        return "causal" if mode == "global" and self.method.causal else mode

    def _encoder_window_seconds(self) -> float:
        """Seconds of one attention window of the audio encoder (its ``cu_seqlens`` spans):
        on Qwen2.5-Omni a ``2 * n_window`` mel-frame chunk."""
        audio = self.thinker.config.audio_config
        return 2 * int(audio.n_window) / self.mel_frames_per_second

    def _encoder_lookback(self) -> int:
        """The method's ``causal_lookback`` (OmniZip windows) as encoder windows: the same
        seconds, rounded up, at least 2 (a window and the one before it)."""
        seconds = self.method.causal_lookback * self.window_seconds
        return max(2, math.ceil(seconds / self._encoder_window_seconds() - 1e-9))

    def _encoder_scores(self) -> bool:
        """Whether the audio encoder's last layer must be scored for this method."""
        return self.method.needs_audio_scores and self._score_mode() != "energy"

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
