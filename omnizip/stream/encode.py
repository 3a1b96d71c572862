"""The model's own encoders, run on a stream's new media only.

Both Qwen-Omni encoders are stable under appending: the vision encoder attends within each
video step (its ``cu_seqlens`` hold one frame of patches each), the audio encoder within its
attention windows (Qwen2.5-Omni: each 2-s chunk of 200 mel frames; Qwen3-Omni: each
``n_window_infer`` span, its convolutions within 1-s chunks). So encoding whole steps and whole
windows as they arrive gives the rows a whole-clip call gives them (tests/test_stream_session.py
checks it against the unpatched model's decoder inputs).

:class:`StreamEncoders` also computes the audio scores the method asks for (algorithm §3) the way
the patched model does for the same configuration: the attention the last encoder layer's
frames receive, ``"causal"`` over the encoder windows of the look-back (the stream keeps the
q/k of the last ``lookback - 1`` windows), ``"windowed"`` within each window, or ``"energy"``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from ..core import audio_attention_scores, audio_energy_scores, pool_audio_scores

__all__ = ["AudioFeatures", "StreamEncoders", "VideoFeatures"]


@dataclass
class VideoFeatures:
    """Encoded video steps: ``embeds`` ``[steps * P, D]`` in prompt order, and per DeepStack
    layer ``[steps * P, D]`` (Qwen3-Omni; None elsewhere)."""

    embeds: torch.Tensor
    deepstack: list[torch.Tensor] | None


@dataclass
class AudioFeatures:
    """Encoded audio: ``embeds`` ``[n, D]`` one row per LLM audio token and ``scores``
    float32 ``[n]`` (None when the method ranks audio without scores)."""

    embeds: torch.Tensor
    scores: torch.Tensor | None


class StreamEncoders:
    """Runs one model's vision and audio encoders on new media (see the module docstring).

    Args:
        modules: the family's located modules (``adapter.locate(model)``: ``inner``,
            ``audio_tower``, ``score_attn``).
        method: the compression method as run on this family.
        audio_pool: encoder frames per LLM audio token.
        score_mode: ``"causal"``, ``"windowed"``, ``"energy"`` or None (no scores).
        lookback: encoder windows a causal score spans (the new one included).
    """

    def __init__(self, modules: Any, method: Any, audio_pool: int, score_mode: str | None,
                 lookback: int) -> None:
        self.inner = modules.inner
        self.score_attn = modules.score_attn
        self.method = method
        self.audio_pool = audio_pool
        self.score_mode = score_mode
        self.lookback = lookback
        # q/k of the last `lookback - 1` encoder windows: [(q [T, H, Dh], k [T, H, Dh]), ...]
        self._past: deque = deque(maxlen=max(lookback - 1, 0))

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.inner.get_input_embeddings().weight.device

    def video(self, pixel_values: torch.Tensor, steps: int, grid: tuple[int, int]) -> VideoFeatures:
        """Encode ``steps`` whole video steps (their patches, in order)."""
        grid_thw = torch.tensor([[steps, grid[0], grid[1]]], device=self.device)
        with torch.no_grad():
            out = self.inner.get_video_features(
                pixel_values.to(self.device, self.dtype), video_grid_thw=grid_thw, return_dict=True)
        embeds = torch.cat(list(out.pooler_output)).to(self.dtype)
        deep = getattr(out, "deepstack_features", None)
        deepstack = [torch.cat(list(layer)) for layer in deep] if deep else None
        return VideoFeatures(embeds, deepstack)

    def audio(self, mel: torch.Tensor) -> AudioFeatures:
        """Encode whole encoder windows of mel frames ``[n_mels, M]`` (or the stream's last,
        partial one) and score their tokens."""
        captured: dict[str, torch.Tensor] = {}

        def capture(module: Any, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
            captured["cu_seqlens"] = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)

        frames = int(mel.shape[-1])
        features = mel.to(self.device, self.dtype)[None]
        mask = torch.ones(1, frames, dtype=torch.long, device=self.device)
        hook = None
        if self.score_mode in ("causal", "windowed"):
            hook = self.score_attn.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.inner.get_audio_features(features, feature_attention_mask=mask,
                                                    return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        embeds = out.last_hidden_state.to(self.dtype)
        return AudioFeatures(embeds, self._scores(embeds, captured))

    def _scores(self, embeds: torch.Tensor, captured: dict) -> torch.Tensor | None:
        if self.score_mode is None:
            return None
        if self.score_mode == "energy":
            return audio_energy_scores(embeds)
        hidden, cu_seqlens = captured["hidden"], captured["cu_seqlens"]
        module = self.score_attn
        frames, heads = int(hidden.shape[0]), int(module.num_heads)
        with torch.no_grad():
            query = module.q_proj(hidden).reshape(frames, heads, -1)
            key = module.k_proj(hidden).reshape(frames, heads, -1)
            lengths = torch.diff(cu_seqlens.to("cpu", torch.int64))
            if self.score_mode == "windowed":
                frame_scores = audio_attention_scores(
                    query, key, scope="windowed", stream_lengths=[frames], cu_seqlens=cu_seqlens,
                    scale=float(module.scaling), block_elements=self.method.block_elements)
            else:
                frame_scores = self._causal(query, key, lengths, float(module.scaling))
        return pool_audio_scores(frame_scores, [frames], pool=self.audio_pool).to(torch.float32)

    def _causal(self, query: torch.Tensor, key: torch.Tensor, lengths: torch.Tensor,
                scale: float) -> torch.Tensor:
        """Scores of the new frames: each new encoder window by the attention it receives
        within its look-back span (the previous ``lookback - 1`` windows' q/k come from the
        cache). One call per new window, its look-back passed as ONE window in front of it:
        the new window's span then holds exactly the frames (and has exactly the shape) it
        has in a whole-stream call, so its scores are the same bit for bit, while the
        look-back's own span (scored too, and dropped) is one span instead of one per window."""
        out = []
        start = 0
        for n in lengths.tolist():  # one entry per new encoder window (a handful per call)
            q, k = query[start : start + n], key[start : start + n]
            past_q = [pq for pq, _ in self._past]
            past_k = [pk for _, pk in self._past]
            look_back = sum(int(pq.shape[0]) for pq in past_q)
            bounds = [0, look_back, look_back + n] if look_back else [0, n]
            scores = audio_attention_scores(
                torch.cat([*past_q, q]), torch.cat([*past_k, k]), scope="causal",
                cu_seqlens=torch.tensor(bounds, dtype=torch.int32, device=query.device),
                lookback=self.lookback, scale=scale, block_elements=self.method.block_elements)
            out.append(scores[look_back:])
            self._past.append((q.clone(), k.clone()))
            start += n
        return torch.cat(out)
