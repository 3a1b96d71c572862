"""``ChunkStreamSession``: a live stream laid out as chunk items, the way vLLM serves it.

``omnizip.stream(model, processor, config, chunk_seconds=L)`` cuts the stream into chunks of
``L`` seconds and puts each chunk into the prompt as its own media item (a video with its own
audio, between its own markers), exactly as the OmniZip vLLM plugin receives a live stream
from a client (docs/serving_streams.md). Each chunk is decided once it is complete, from that
chunk alone, with the server's configuration (``budget="exact"``: kept counts follow from the
layout), so its kept tokens, their positions and everything in the KV cache before it never
change; the Hugging Face model and a vLLM server given the same chunks prefill the same rows
at the same positions and answer with the same tokens (tests/test_vllm_streams.py).

How a chunk is decided and laid out: the processor builds the inputs of a one-item prompt
(the chunk's frames and audio; Whisper features over the chunk, as vLLM's processor computes
them), the model runs with ``omnizip.patch`` up to its decoder, and the compressed rows of the
item (its markers, its kept tokens) are taken from the decoder's inputs with their positions
shifted onto the stream: transformers numbers an item of a multi-item prompt from the position
after the token before it, so an item's positions relative to its first marker are the same
alone and in the stream (docs/streaming.md, "Chunk items").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .answer import Answer, answer_on_cache, max_new_tokens
from .cache import CachePiece, StreamCache
from .family import stream_family
from .media import check_audio, check_frames
from .prompt import item_prompt_pieces
from .retained import CommittedSpan

__all__ = ["ChunkStreamSession", "StreamChunk"]


@dataclass
class StreamChunk(CommittedSpan):
    """One committed chunk item: the :class:`~omnizip.stream.retained.CommittedSpan` fields
    (``index``, stream seconds ``t`` .. ``end``, its audio and video tokens before and after
    OmniZip), ``ms`` (processing time of the chunk: processor, encoders, decision, prefill) and
    ``cache_tokens`` (tokens in the KV cache after it)."""

    ms: float = 0.0
    cache_tokens: int = 0


class _ReachedDecoder(Exception):
    """Ends the forward of a chunk once the decoder's inputs exist."""


def _refuse_patched(model: torch.nn.Module) -> None:
    """A chunk stream patches the model for each chunk's forward and removes the patch again;
    patching a patched model would remove the user's patch."""
    from ..patch import _existing_handles

    if _existing_handles(model):
        raise ValueError("model: it is patched (omnizip.patch); a chunk stream patches it for "
                         "each chunk itself: remove the patch (handle.remove()) first")


def _check_chunk_seconds(chunk_seconds: Any, fps: float, rate: int) -> tuple[int, int]:
    """(frames, samples) of one chunk; refuses a length that is not whole frames and samples."""
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) \
            or not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be a number of seconds > 0, got {chunk_seconds!r}")
    frames, samples = chunk_seconds * fps, chunk_seconds * rate
    if abs(frames - round(frames)) > 1e-9 or abs(samples - round(samples)) > 1e-6:
        raise ValueError(f"chunk_seconds must hold whole frames at fps={fps:g} and whole audio "
                         f"samples at {rate} Hz, got {chunk_seconds!r}")
    return round(frames), round(samples)


class ChunkStreamSession:
    """A live stream as chunk items on one model (build it with
    ``omnizip.stream(model, processor, config, chunk_seconds=...)``).

    Args:
        model: a Qwen2.5-Omni or Qwen3-Omni model or thinker, not patched (the session patches
            it for each chunk's forward and removes the patch again).
        processor: its processor.
        config: the :class:`omnizip.OmniZipConfig` a vLLM server would run (``causal=False``;
            ``budget`` is set to ``"exact"`` as the server sets it).
        chunk_seconds: seconds per chunk item; must hold whole frames and audio samples. A
            chunk should end on the audio encoder's attention spans (2 s on Qwen2.5-Omni, the
            encoder window on Qwen3-Omni), as a streaming client cuts it.
        fps: frames per second of the appended frames.
        system: an optional system message (default: the chat template's own).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, config: Any, *,
                 chunk_seconds: float, fps: float = 2.0, system: str | None = None) -> None:
        from ..config import OmniZipConfig
        from ..vllm.settings import server_config

        if not isinstance(config, OmniZipConfig):
            raise TypeError(f"config must be an OmniZipConfig, got {type(config).__name__}")
        if config.causal:
            raise ValueError(
                "config: causal must be False with chunk_seconds, got True: a chunk item is "
                "decided once it is complete and from itself alone (the vLLM plugin's rule), so "
                "nothing looks ahead past the chunk; the causal rules are for window-by-window "
                "streams (omnizip.stream without chunk_seconds)")
        self.family = family = stream_family(model, fps)
        _refuse_patched(model)
        self.modules = family.adapter.locate(model)
        self.model = model
        self.thinker = self.modules.thinker
        self.processor = processor
        self.fps = float(fps)
        # a server's kept counts follow from the layout: it runs the exact budget
        self.config = server_config(config.replace(budget="exact"))
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self.chunk_seconds = float(chunk_seconds)
        self._chunk_frames, self._chunk_samples = _check_chunk_seconds(
            chunk_seconds, self.fps, self.sampling_rate)
        if self._chunk_frames % family.temporal_patch:
            raise ValueError(f"chunk_seconds must hold whole video steps of {family.temporal_patch} "
                             f"frames at fps={fps:g}, got {chunk_seconds!r}")
        self.system = system
        self.pieces = item_prompt_pieces(processor, system)
        self._embed = self.modules.inner.get_input_embeddings()
        self._cache = StreamCache(self.modules.decoder)
        self._frames: list[np.ndarray] = []
        self._n_frames = 0
        self._audio: list[np.ndarray] = []
        self._n_samples = 0
        self._received = (0, 0)  # frames, samples appended so far
        self._frame_shape: tuple[int, ...] | None = None
        self._chunks: list[StreamChunk] = []
        self._answers: list[Answer] = []
        self._finished = False
        self.last_output: Any = None
        prefix = self.pieces.prefix_ids
        with torch.no_grad():
            embeds = self._embed(prefix.to(self._embed.weight.device))
        self._next_position = int(prefix.numel())
        self._cache.prefill(CachePiece(embeds, torch.arange(prefix.numel()).expand(3, -1)))

    # -- state -------------------------------------------------------------------------------
    @property
    def chunks(self) -> list[StreamChunk]:
        """Every committed chunk, oldest first."""
        return list(self._chunks)

    @property
    def cache_tokens(self) -> int:
        """Tokens in the KV cache (the prompt's text before the media and every chunk item)."""
        return self._cache.tokens

    @property
    def answers(self) -> list[Answer]:
        return list(self._answers)

    @property
    def t(self) -> float:
        """Seconds of media appended (the longer of the video and the audio)."""
        return max(self._received[0] / self.fps, self._received[1] / self.sampling_rate)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def pending(self) -> tuple[int, int]:
        """``(frames, audio samples)`` appended but not in a committed chunk yet."""
        return self._n_frames, self._n_samples

    # -- appending ---------------------------------------------------------------------------
    def append(self, frames: Any = None, audio: Any = None, *,
               sampling_rate: int | None = None) -> list[StreamChunk]:
        """Add frames (uint8 ``[T, H, W, 3]`` at :attr:`fps`) and/or audio (float32 mono at the
        processor's rate); any lengths. Commits every chunk whose frames and audio are all
        there; returns them. A refused call (ValueError/TypeError) changes nothing."""
        if self._finished:
            raise ValueError("append: the stream is finished (finish() or ask(final=True) was "
                             "called); start a new session")
        f = check_frames(frames) if frames is not None else None
        a = check_audio(audio, sampling_rate, self.sampling_rate) if audio is not None else None
        if f is not None and f.shape[0]:
            shape = tuple(f.shape[1:])
            if self._frame_shape is not None and shape != self._frame_shape:
                raise ValueError(f"frames: every frame of a stream has one size, got {shape} "
                                 f"after {self._frame_shape}")
            self._frame_shape = shape
            self._frames.append(f)
            self._n_frames += f.shape[0]
        if a is not None and a.size:
            self._audio.append(a)
            self._n_samples += a.size
        self._received = (self._received[0] + (0 if f is None else f.shape[0]),
                          self._received[1] + (0 if a is None else a.size))
        committed = []
        while self._n_frames >= self._chunk_frames and self._n_samples >= self._chunk_samples:
            committed.append(self._commit(*self._take(self._chunk_frames, self._chunk_samples)))
        return committed

    def finish(self, *, drop_unpaired: bool = False) -> list[StreamChunk]:
        """Commit what is left as a last, shorter chunk (it needs frames and audio both: a
        chunk item is a video with its own audio track). Idempotent.

        ``drop_unpaired``: a leftover of one kind only (say the last few milliseconds of an
        audio track that outlasts the last frame) is dropped instead of refused; see
        :attr:`pending` before calling for what would be dropped."""
        if self._finished:
            return []
        if drop_unpaired and bool(self._n_frames) != bool(self._n_samples):
            self._frames, self._audio, self._n_frames, self._n_samples = [], [], 0, 0
        if bool(self._n_frames) != bool(self._n_samples):
            left = (f"{self._n_frames} frames and no audio" if self._n_frames
                    else f"{self._n_samples} audio samples and no frames")
            raise ValueError(f"finish: {left} left after the last whole chunk; a chunk item needs "
                             "both (append the missing media, then finish)")
        committed = []
        if self._n_frames:
            committed.append(self._commit(*self._take(self._n_frames, self._n_samples)))
        self._finished = True
        return committed

    def _take(self, n_frames: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        frames, audio = np.concatenate(self._frames), np.concatenate(self._audio)
        self._frames, self._audio = [frames[n_frames:]], [audio[n_samples:]]
        self._n_frames, self._n_samples = frames.shape[0] - n_frames, audio.size - n_samples
        return frames[:n_frames], audio[:n_samples]

    # -- committing --------------------------------------------------------------------------
    def _item_inputs(self, frames: np.ndarray, audio: np.ndarray) -> dict:
        from ..inputs import conversation_inputs

        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        messages.append({"role": "user", "content": [
            {"type": "video", "video": frames, "audio": audio}]})
        inputs, _ = conversation_inputs(self.processor, [messages], use_audio_in_video=True,
                                        fps=self.fps)
        return dict(inputs)

    def _decoder_inputs(self, inputs: dict) -> tuple[dict, Any]:
        """The compressed decoder inputs of a one-item prompt, and the decision."""
        from ..patch import patch

        _refuse_patched(self.model)
        got: dict = {}

        def grab(module: Any, args: tuple, kwargs: dict) -> None:
            got.update(kwargs)
            raise _ReachedDecoder

        device = self._embed.weight.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with patch(self.thinker, self.config) as handle, torch.no_grad():
            hook = self.modules.decoder.register_forward_pre_hook(grab, with_kwargs=True)
            try:
                self.thinker(**inputs, use_audio_in_video=True)
            except _ReachedDecoder:
                pass
            finally:
                hook.remove()
            if not got or not handle.results:
                raise RuntimeError("omnizip: the chunk's forward never reached the decoder")
            return got, handle.results[0]

    def _commit(self, frames: np.ndarray, audio: np.ndarray) -> StreamChunk:
        started = time.perf_counter()
        inputs = self._item_inputs(frames, audio)
        ids = inputs["input_ids"][0]
        got, result = self._decoder_inputs(inputs)
        before = self.pieces.prefix_ids.numel()
        if not torch.equal(ids[:before], self.pieces.prefix_ids):
            raise RuntimeError("processor: a chunk's prompt does not start with the stream's "
                               "prompt text")
        after = self.pieces.after_item
        embeds = got["inputs_embeds"][0]
        n = embeds.shape[0]
        # the item: its opening markers .. its closing markers; the text around is the template's
        item = slice(before, n - after)
        positions = got["position_ids"][-3:, 0, item]
        shift = self._next_position - int(positions[0, 0])
        between = self.pieces.between_ids if self._chunks else None
        pieces = []
        if between is not None and between.numel():
            with torch.no_grad():
                text = self._embed(between.to(embeds.device))
            pieces.append(CachePiece(text, (self._next_position + torch.arange(between.numel()))
                                     .expand(3, -1)))
            shift += int(between.numel())
        visual = deepstack = None
        if got.get("deepstack_visual_embeds") is not None and got.get("visual_pos_masks") is not None:
            visual = got["visual_pos_masks"][0, item].detach().cpu()
            deepstack = [d.detach() for d in got["deepstack_visual_embeds"]]
        pieces.append(CachePiece(embeds[item].detach(), (positions + shift).detach().cpu(),
                                 visual, deepstack))
        for piece in pieces:
            self._cache.prefill(piece)
        self._next_position = int(pieces[-1].positions.max()) + 1
        keep = result.keep
        index = len(self._chunks)
        t = self._chunks[-1].end if self._chunks else 0.0
        chunk = StreamChunk(
            index=index, t=t, end=round(t + frames.shape[0] / self.fps, 6),
            audio=int(result.audio_positions.numel()),
            kept_audio=int(keep[result.audio_positions].sum()),
            video=int(result.video_positions.numel()),
            kept_video=int(keep[result.video_positions].sum()),
            ms=(time.perf_counter() - started) * 1e3, cache_tokens=self._cache.tokens)
        self._chunks.append(chunk)
        return chunk

    # -- questions ---------------------------------------------------------------------------
    def ask(self, question: str, *, final: bool = False, **generate_kwargs: Any) -> str:
        """Answer ``question`` about the committed chunks (``final``: :meth:`finish` first), with
        ``generate_kwargs`` for ``generate``; the question is dropped from the cache afterwards
        (the raw output in :attr:`last_output`, the answer in :attr:`answers`)."""
        started = time.perf_counter()
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        if final:
            self.finish()
        if not self._chunks:
            raise ValueError(f"ask: no chunk is committed yet ({self.t:.2f} s of media appended, "
                             f"chunks of {self.chunk_seconds:g} s); append more or call "
                             "ask(..., final=True) to commit a shorter last chunk")
        ids = self.pieces.question_ids(question)
        positions = (self._next_position + torch.arange(ids.numel())).expand(3, -1)
        budget = max_new_tokens(self.thinker, generate_kwargs, self._cache.tokens + int(ids.numel()))
        limit = self.family.position_limit
        if self._next_position + ids.numel() + budget > limit:
            raise ValueError(f"ask: the question and up to {budget} new tokens need positions up "
                             f"to {self._next_position + ids.numel() + budget}, past the model's "
                             f"{limit}; the stream is too long for one prompt")
        answer, self.last_output = answer_on_cache(
            self.thinker, self._cache, self._embed, self.processor.tokenizer, question, ids,
            positions, generate_kwargs, t=self.t, started=started)
        self._answers.append(answer)
        return answer.text
