"""``StreamSession``: OmniZip on a growing audio-video stream, on a Hugging Face model.

What one :meth:`StreamSession.append` does (docs/streaming.md has the whole story):

1. checks the frames and audio (nothing is kept from an append that is refused);
2. encodes only the new media: whole video steps (:class:`~.media.FrameBuffer`) and whole
   audio-encoder windows of causal log-mel frames (:class:`~.media.MelBuffer`), with the audio
   scores the method needs (:class:`~.encode.StreamEncoders`);
3. commits every window whose tokens are final (:mod:`.pending`): decides it with the causal
   core, carrying ``CausalHistory`` from window to window, and prefills its kept tokens into
   the KV cache at the positions the offline layout gives them (:mod:`.layout`), dropping the
   oldest windows first when a bound would break (:mod:`.retained`).

:meth:`StreamSession.ask` runs the closing markers and a question on top of the cache and
drops them again (:mod:`.answer`); :meth:`StreamSession.finish` commits the last, partial
window as the offline run treats the end of a clip.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .answer import Answer, answer_on_cache, max_new_tokens
from .cache import CachePiece, StreamCache
from .encode import StreamEncoders
from .family import stream_family
from .media import FrameBuffer, MelBuffer, check_audio, check_frames
from .pending import Group, Pending
from .prompt import prompt_pieces
from .retained import Bounds, Retained, StreamWindow, split_decision

__all__ = ["Answer", "StreamSession"]


def _check_int(name: str, value: Any, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class StreamSession:
    """A live stream on one model (build it with :func:`omnizip.stream`).

    Args:
        model: a Qwen2.5-Omni or Qwen3-Omni model or thinker (not patched: the session
            compresses by itself).
        processor: its processor (chat template, video processor, feature extractor).
        config: an :class:`omnizip.OmniZipConfig` with ``causal=True``.
        fps: frames per second of the appended frames (the stream's fixed clock).
        max_cache_tokens: bound on the KV cache (None: unbounded); see docs/streaming.md.
        position_limit: the last usable position + 1 (default: the decoder config's
            ``max_position_embeddings``).
        question_positions: positions kept free after the media for a question and its
            answer.
        system: an optional system message (default: the chat template's own).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, config: Any, *, fps: float = 2.0,
                 max_cache_tokens: int | None = None, position_limit: int | None = None,
                 question_positions: int = 1024, system: str | None = None) -> None:
        from ..config import OmniZipConfig

        if not isinstance(config, OmniZipConfig):
            raise TypeError(f"config must be an OmniZipConfig(causal=True), got {type(config).__name__}")
        if not config.causal:
            raise ValueError("config: causal must be True for a stream (OmniZipConfig(causal=True)): "
                             "the offline rules look ahead over the whole clip")
        _check_int("max_cache_tokens", max_cache_tokens, 1, optional=True)
        _check_int("position_limit", position_limit, 1, optional=True)
        _check_int("question_positions", question_positions, 0, optional=False)
        self.family = family = stream_family(model, fps)
        modules = family.adapter.locate(model)
        self.model = model
        self.thinker = modules.thinker
        self.processor = processor
        self.fps = float(fps)
        self.config = config
        self.method = config.for_model(family.adapter.layout)
        self.pieces = prompt_pieces(processor, system)
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self._frames = FrameBuffer(processor, self.fps, family.temporal_patch)
        self._mel = MelBuffer(processor.feature_extractor, family.mel_per_encoder_window,
                              family.audio_end)
        self._encoders = StreamEncoders(modules, self.method, family.audio_pool,
                                        self._score_mode(), self._encoder_lookback())
        layout = family.layout
        self._pending = Pending(layout.steps_per_window, layout.window_positions,
                                family.temporal_patch)
        self._embed = modules.inner.get_input_embeddings()
        self._cache = StreamCache(modules.decoder)
        limit = family.position_limit if position_limit is None else position_limit
        self.position_limit = limit
        self.question_positions = question_positions
        self._start = layout.media_start(self.pieces.n_text)
        if max_cache_tokens is not None and max_cache_tokens <= self.pieces.prefix_ids.numel():
            raise ValueError(f"max_cache_tokens must exceed the {self.pieces.prefix_ids.numel()} "
                             f"tokens of the prompt before the media, got {max_cache_tokens}")
        if limit - question_positions <= self._start:
            raise ValueError(f"question_positions {question_positions} leaves no positions for "
                             f"media below position_limit {limit}")
        self._retained = Retained(Bounds(max_cache_tokens, limit - question_positions))
        self._base = (0, 0)
        self._history: Any = None
        self._windows: list[StreamWindow] = []
        self._answers: list[Answer] = []
        self._carry = 0.0  # processing seconds not yet attributed to a committed window
        self._finished = False
        self.last_output: Any = None
        with torch.no_grad():
            ids = self.pieces.prefix_ids.to(self._embed.weight.device)
            self._prefix = CachePiece(self._embed(ids), layout.prefix_positions(self.pieces.n_text))
        self._cache.prefill(self._prefix)

    # -- configuration -----------------------------------------------------------------------
    def _score_mode(self) -> str | None:
        """The audio scores the patched model computes for this method (algorithm §3)."""
        mode = self.method.audio_score
        if mode == "energy":
            return "energy"
        if not self.method.needs_audio_scores:
            return None
        return "causal" if mode == "global" else mode

    def _encoder_lookback(self) -> int:
        """Encoder windows a causal score spans, as the patched model counts them
        (``AudioScoring._encoder_lookback``): ``causal_lookback`` windows' seconds, rounded up
        to encoder windows, at least 2."""
        adapter = self.family.adapter
        encoder_seconds = self.family.mel_per_encoder_window / adapter.mel_frames_per_second
        seconds = self.method.causal_lookback * adapter.window_seconds
        return max(2, math.ceil(seconds / encoder_seconds - 1e-9))

    # -- state -------------------------------------------------------------------------------
    @property
    def windows(self) -> list[StreamWindow]:
        """Every committed window, oldest first (``in_cache`` False once dropped). ``ms`` is the
        session's processing time since the previous commit, shared by the windows an append
        committed (encoding included)."""
        return list(self._windows)

    @property
    def cache_tokens(self) -> int:
        """Tokens in the KV cache (prompt prefix + kept tokens of the retained windows)."""
        return self._cache.tokens

    @property
    def answers(self) -> list[Answer]:
        return list(self._answers)

    @property
    def t(self) -> float:
        """Seconds of media appended (the longer of the video and the audio)."""
        return max(self._frames.received / self.fps, self._mel.samples / self.sampling_rate)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def rebuilds(self) -> int:
        """How often the bounded-memory policy re-prefilled the cache."""
        return self._retained.rebuilds

    # -- appending ---------------------------------------------------------------------------
    def append(self, frames: Any = None, audio: Any = None, *,
               sampling_rate: int | None = None) -> list[StreamWindow]:
        """Add frames (uint8 ``[T, H, W, 3]`` at :attr:`fps`) and/or audio (float32 mono at the
        processor's rate, 16 kHz); any lengths, either may be None or empty. Returns the
        windows this call committed. A refused call (ValueError/TypeError) changes nothing."""
        if self._finished:
            raise ValueError("append: the stream is finished (finish() or ask(final=True) was "
                             "called); start a new session")
        f = check_frames(frames) if frames is not None else np.zeros((0, 1, 1, 3), np.uint8)
        a = (check_audio(audio, sampling_rate, self.sampling_rate) if audio is not None
             else np.zeros(0, np.float32))
        if audio is None and sampling_rate is not None:
            check_audio(a, sampling_rate, self.sampling_rate)
        self._frames.check(f)
        if f.shape[0] and self._frames.size is None:
            self._check_window_fits(f[0])
        return self._process(f, a, final=False)

    def finish(self) -> list[StreamWindow]:
        """Commit everything left, the last window possibly partial, as the offline run treats
        the end of the clip (an odd last frame repeated, the audio's end padded). Idempotent."""
        if self._finished:
            return []
        if self._frames.received == 0 or self._mel.samples == 0:
            missing = "video frames" if self._frames.received == 0 else "audio"
            raise ValueError(f"finish: the stream has no {missing}; omnizip.stream compresses "
                             "audio-video streams (append both)")
        half = int(self.processor.feature_extractor.n_fft) // 2
        if self.family.audio_end == "reflect" and self._mel.samples <= half:
            raise ValueError(f"finish: {self.family.name} features reflect the audio's end, which "
                             f"needs more than {half} samples; got {self._mel.samples}")
        committed = self._process(np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.float32),
                                  final=True)
        self._finished = True
        return committed

    def _check_window_fits(self, frame: np.ndarray) -> None:
        """Refuse a cache bound too small for one window at this stream's resolution."""
        bound = self._retained.bounds.max_tokens
        if bound is None:
            return
        from .media import video_patches

        _, grid = video_patches(self.processor, frame[None], self.fps)
        merge = self.family.spatial_merge
        layout = self.family.layout
        window = layout.steps_per_window * (grid[1] // merge) * (grid[2] // merge) + layout.window_positions
        need = self.pieces.prefix_ids.numel() + window
        if need > 0.75 * bound:
            raise ValueError(f"max_cache_tokens: {bound} is too small for this stream: the prompt "
                             f"prefix and one uncompressed window take {need} tokens, which must "
                             f"fit in 3/4 of the bound (use at least {int(need / 0.75) + 1})")

    def _process(self, frames: np.ndarray, audio: np.ndarray, final: bool) -> list[StreamWindow]:
        started = time.perf_counter()
        patches, steps = self._frames.push(frames, final)
        if steps:
            grid = self._frames.grid
            self._pending.add_video(self._encoders.video(patches, steps, grid), steps)
        mel = self._mel.push(audio, final)
        if mel is not None:
            self._pending.add_audio(self._encoders.audio(mel))
        committed: list[StreamWindow] = []
        for group in self._pending.ready(self._frames.received, final):
            committed += self._commit(group)
        self._carry += time.perf_counter() - started
        if committed:
            share = self._carry * 1e3 / len(committed)
            for window in committed:
                window.ms = share
            self._carry = 0.0
        return committed

    # -- committing --------------------------------------------------------------------------
    @property
    def _grid(self) -> tuple[int, int]:
        merge = self.family.spatial_merge
        grid = self._frames.grid or (merge, merge)
        return grid[0] // merge, grid[1] // merge

    def _commit(self, group: Group) -> list[StreamWindow]:
        layout = self.family.layout
        spans = max(-(-(group.s1 - group.s0) // layout.steps_per_window),
                    -(-(group.a1 - group.a0) // layout.window_positions), 1)
        media = self._pending.take(group, spans)
        steps, audio = (group.s0, group.s1), (group.a0, group.a1)
        order = layout.prompt_order(steps, audio, self._grid)  # a group may span windows
        ids = layout.window(steps, audio, self._grid, 0).input_ids[order]
        device = self._encoders.device
        embeds = torch.cat([media.video.to(device), media.audio.to(device)])[order.to(device)]
        result = self.method.compress(
            embeds, ids.to(device),
            audio_token_id=layout.audio_token_id, video_token_id=layout.video_token_id,
            tokens_per_frame=self._pending.tokens_per_step, audio_scores=media.scores,
            history=self._history,
        )
        self._history = result.history
        out = split_decision(result, group, media, self._pending.tokens_per_step,
                             layout.step_positions, self.family.positions_per_second)
        for window in out:
            self._prefill_window(window)
        self._windows += out
        return out

    def _positions(self, window: StreamWindow) -> torch.Tensor:
        """The kept tokens' positions ``[3, n_kept]`` at the current base."""
        full = self.family.layout.window(window.steps, window.audio_range, self._grid,
                                         self._start, self._base)
        return full.positions[:, window.keep]

    def _prefill_window(self, window: StreamWindow) -> None:
        layout = self.family.layout
        retained = self._retained
        n_new = int(window.keep.sum())

        def last(base: tuple[int, int]) -> int:
            return layout.last_position(window.steps, window.audio_range, self._grid,
                                        self._start, base)

        if retained.over(self._cache.tokens, n_new, last(self._base)):
            own = (window.steps[0], window.audio_range[0])

            def span_of(first: int) -> int:
                kept = retained.windows[first:]
                return last((kept[0].steps[0], kept[0].audio_range[0]) if kept else own)

            retained.drop_for(self._prefix.n_tokens, n_new, span_of)
            self._base = retained.base(own)
            self._cache.rebuild([self._prefix, *retained.pieces(self._positions)])
            retained.rebuilds += 1
            if retained.over(self._cache.tokens, n_new, last(self._base)):
                raise RuntimeError(f"window {window.index} does not fit the stream's bounds even "
                                   "alone; raise max_cache_tokens or position_limit")
        visual = None
        if window.deepstack is not None:
            visual = (torch.arange(window.keep.numel()) < window.video)[window.keep]
        self._cache.prefill(CachePiece(window.embeds, self._positions(window), visual,
                                       window.deepstack))
        window.cache_tokens = self._cache.tokens
        retained.windows.append(window)

    # -- questions ---------------------------------------------------------------------------
    def ask(self, question: str, *, final: bool = False, **generate_kwargs: Any) -> str:
        """Answer ``question`` about the committed windows (``final``: :meth:`finish` first),
        with ``generate_kwargs`` for ``generate`` (e.g. ``max_new_tokens``); the question is
        dropped from the cache afterwards. The raw ``generate`` output is kept in
        :attr:`last_output`, the answer in :attr:`answers`."""
        started = time.perf_counter()
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        if final:
            self.finish()
        if not self._windows:
            if self._frames.received == 0 and self._mel.samples == 0:
                raise ValueError("ask: no media yet; append frames and audio first")
            raise ValueError(
                f"ask: no window is committed yet ({self.t:.2f} s of media appended; a window "
                "commits once its media and the next window's first frame arrived); append more "
                "or call ask(..., final=True) to commit the partial window")
        layout = self.family.layout
        n_steps = self._pending.step0 - self._base[0]
        n_audio = self._pending.audio0 - self._base[1]
        first = self._start + layout.closing_base(n_audio, n_steps, self._grid)
        ids = self.pieces.closing_ids(question)
        positions = layout.closing_positions(first, int(ids.numel()))
        budget = max_new_tokens(self.thinker, generate_kwargs, self._cache.tokens + int(ids.numel()))
        if first + ids.numel() + budget > self.position_limit:
            raise ValueError(
                f"ask: the question and up to {budget} new tokens need positions up to "
                f"{first + ids.numel() + budget}, past position_limit {self.position_limit}; "
                "raise question_positions or ask for fewer tokens")
        answer, self.last_output = answer_on_cache(
            self.thinker, self._cache, self._embed, self.processor.tokenizer, question, ids,
            positions, generate_kwargs, t=self.t, started=started)
        self._answers.append(answer)
        return answer.text
