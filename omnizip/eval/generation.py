"""Answering benchmark items with a (patched) Qwen-Omni model: inputs, greedy decoding, stats.

:class:`OmniAnswerer` is the ``answer_fn`` the runner uses with a real model (and what the
lmms-eval plugin calls): it reads the video (frames with transformers' ``load_video``, the
audio track with PyAV), builds the chat prompt of :mod:`omnizip.eval.prompt`, runs the
thinker's ``generate`` greedily and reports what the decoder saw:

=====================  ======================================================================
stat                   meaning
=====================  ======================================================================
``prompt_tokens``      prompt length before compression
``n_text``             prompt tokens that are neither audio nor video
``n_audio/n_video``    audio / video placeholder tokens of the prompt
``kept_audio/video``   of those, kept (from the patch's per-row decisions; all without one)
``generated_tokens``   tokens generated
``prefill_ms``         wall time of the decoder's prefill forward (after compression)
``ttft_ms``            wall time from ``generate`` to the end of that forward (encoders,
                       scores and compression included)
``overhead_ms``        the compression's own time as the patch reports it
=====================  ======================================================================

Times synchronise CUDA before they are read, so they are real on a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .datasets import Item
from .prompt import SYSTEM_PROMPT, build_conversation

__all__ = ["OmniAnswerer", "load_model"]

#: Model id that builds the tiny random-weight thinker and the offline processor (no weights;
#: for smoke tests of the whole pipeline).
TINY_MODEL = "tiny"


def _sync(device: Any) -> None:
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(
    model_id: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model, processor) for a Qwen2.5-Omni / Qwen3-Omni checkpoint id or local path.

    ``"tiny"`` builds :func:`omnizip.demo.tiny_model.build_tiny_qwen2_5_omni_thinker` with the
    offline processor (random weights: accuracy is meaningless, everything else is real).
    The talker (speech output) is disabled: the benchmarks read text answers.
    """
    if model_id == TINY_MODEL:
        from ..demo.processor import build_offline_processor
        from ..demo.tiny_model import build_tiny_qwen2_5_omni_thinker

        model = build_tiny_qwen2_5_omni_thinker(attn_implementation=attn_implementation or "sdpa")
        processor = build_offline_processor(max_pixels=112 * 112, min_pixels=56 * 56)
        if device not in ("auto", "cpu"):
            model = model.to(device)
        return model, processor
    import transformers
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(model_id)
    classes = {
        "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
        "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
        "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration",
    }
    name = classes.get(getattr(config, "model_type", ""))
    if name is None or not hasattr(transformers, name):
        raise ValueError(
            f"model {model_id!r}: model_type {getattr(config, 'model_type', None)!r} is not a "
            f"supported omni model ({', '.join(classes)})"
        )
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device == "auto":
        kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
    else:
        kwargs["device_map"] = device
    model = getattr(transformers, name).from_pretrained(model_id, **kwargs)
    if hasattr(model, "disable_talker"):
        model.disable_talker()
    model.eval()
    processor = AutoProcessor.from_pretrained(model_id)
    return model, processor


def _decoder(model: Any) -> Any:
    thinker = getattr(model, "thinker", model)
    inner = getattr(thinker, "model", thinker)
    return getattr(inner, "language_model", inner)


def _with_audio_after_video(conversation: list[dict[str, Any]], video: str) -> list[dict[str, Any]]:
    """A copy of ``conversation`` with an audio part after each part holding ``video``."""
    out = []
    for msg in conversation:
        content = msg.get("content")
        if isinstance(content, list):
            parts: list[Any] = []
            for part in content:
                parts.append(part)
                if part.get("type") == "video" and str(part.get("video")) == video:
                    parts.append({"type": "audio", "audio": video})
            msg = {**msg, "content": parts}
        out.append(msg)
    return out


class OmniAnswerer:
    """``answer_fn(item) -> (text, stats)`` backed by a model and its processor.

    Args:
        model: a Qwen-Omni model (full or thinker).
        processor: its processor.
        method: a compression method configuration, or None for the full model. The model is
            patched with ``omnizip.patch(model, method)``; call :meth:`close` to remove it.
        max_new_tokens: greedy decoding length (the answer is one letter; 16 leaves room).
        fps: frames per second sampled from the video (the Qwen-Omni default is 2).
        max_frames: cap on sampled frames (uniform over the clip beyond it); None: no cap.
        min_pixels, max_pixels: per-frame pixel bounds handed to the video processor (the
            OmniZip paper used ``max_pixels = 128 * 28 * 28``); None: the processor's default.
        use_audio_in_video: interleave the video's audio track (when it has one), as the paper;
            False: the track follows the video as its own audio block.
        system_prompt: the system turn (:data:`~omnizip.eval.prompt.SYSTEM_PROMPT`).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        method: Any = None,
        *,
        max_new_tokens: int = 16,
        fps: float = 2.0,
        max_frames: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        use_audio_in_video: bool = True,
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        self.model = model
        self.processor = processor
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.fps = fps
        self.max_frames = max_frames
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.use_audio_in_video = use_audio_in_video
        self.system_prompt = system_prompt
        self.handle = None
        if method is not None:
            from ..patch import patch

            try:
                self.handle = patch(model, method)
            except TypeError as exc:
                raise ValueError(
                    f"method {getattr(method, 'name', method)!r} is not wired into "
                    f"omnizip.patch yet ({exc})"
                ) from exc
        cfg = getattr(getattr(model, "thinker", model), "config", None)
        self.audio_token_id = int(getattr(cfg, "audio_token_id", getattr(cfg, "audio_token_index", -1)))
        self.video_token_id = int(getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", -1)))

    def close(self) -> None:
        """Remove the patch (the model is as before)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    # -- inputs --------------------------------------------------------------------------------
    def _media(self, path: str) -> tuple[Any, Any]:
        from transformers.video_utils import load_video

        from ..demo.media import load_audio_track

        if not Path(path).is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        frames, _ = load_video(str(path), fps=self.fps, backend="pyav")
        if self.max_frames is not None and len(frames) > self.max_frames:
            pick = torch.linspace(0, len(frames) - 1, self.max_frames).round().long().tolist()
            frames = frames[pick]
        if len(frames) % 2:  # temporal patch 2: an even number of frames, as qwen-omni-utils
            frames = frames[: len(frames) - 1] if len(frames) > 1 else frames.repeat(2, axis=0)
        audio = load_audio_track(path, self.processor.feature_extractor.sampling_rate)
        if audio is not None and audio.size == 0:
            audio = None
        return frames, audio

    def _pixel_bounds(self) -> dict[str, int]:
        """``{"shortest_edge": min, "longest_edge": max}`` pixels per frame: the bounds given,
        the processor's own for the other one (the video processor needs both)."""
        current: Any = (getattr(self.processor, "videos_kwargs", None) or {}).get("size")
        if current is None:
            current = getattr(getattr(self.processor, "video_processor", None), "size", None)

        def read(key: str, default: int) -> int:
            value = current.get(key) if isinstance(current, dict) else getattr(current, key, None)
            return int(value) if value else default

        low = int(self.min_pixels) if self.min_pixels is not None else read("shortest_edge", 128 * 28 * 28)
        high = int(self.max_pixels) if self.max_pixels is not None else read("longest_edge", 768 * 28 * 28)
        return {"shortest_edge": min(low, high), "longest_edge": high}

    def inputs(self, conversation: list[dict[str, Any]]) -> tuple[Any, bool]:
        """Processor inputs for a conversation whose user turn holds one video file."""
        video_path = None
        for msg in conversation:
            for part in msg.get("content", []) if isinstance(msg.get("content"), list) else []:
                if part.get("type") == "video":
                    video_path = part.get("video")
        kwargs: dict[str, Any] = {"return_tensors": "pt", "padding": True}
        uav = False
        if video_path is not None:
            frames, audio = self._media(str(video_path))
            if audio is not None and not self.use_audio_in_video:
                # the track as its own audio block right after the video (not interleaved)
                conversation = _with_audio_after_video(conversation, str(video_path))
            kwargs["videos"] = [frames]
            videos_kwargs: dict[str, Any] = {"fps": self.fps, "do_sample_frames": False}
            if self.min_pixels is not None or self.max_pixels is not None:
                videos_kwargs["size"] = self._pixel_bounds()
            kwargs["videos_kwargs"] = videos_kwargs
            if audio is not None:
                kwargs["audio"] = [audio]
                if self.use_audio_in_video:
                    kwargs["load_audio_from_video"] = True
                    kwargs["audio_from_video_indices"] = [0]
                    uav = True
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self.processor(text=[text], **kwargs), uav

    # -- generation ----------------------------------------------------------------------------
    def generate(self, conversation: list[dict[str, Any]], max_new_tokens: int | None = None) -> tuple[str, dict]:
        """Greedy answer to a conversation and the stats of the module docstring."""
        inputs, uav = self.inputs(conversation)
        thinker = getattr(self.model, "thinker", self.model)
        device = next(thinker.parameters()).device
        dtype = next(thinker.parameters()).dtype
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
                  if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}
        ids = inputs["input_ids"][0]
        timing: dict[str, float] = {}
        decoder = _decoder(self.model)

        def pre(module: Any, args: tuple, kwargs: dict) -> None:
            if "prefill_start" not in timing:
                _sync(device)
                timing["prefill_start"] = time.perf_counter()

        def post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if "prefill_end" not in timing:
                _sync(device)
                timing["prefill_end"] = time.perf_counter()

        hooks = [decoder.register_forward_pre_hook(pre, with_kwargs=True),
                 decoder.register_forward_hook(post, with_kwargs=True)]
        try:
            _sync(device)
            start = time.perf_counter()
            tokenizer = getattr(self.processor, "tokenizer", None)
            special = {k: getattr(tokenizer, k, None) for k in ("eos_token_id", "pad_token_id")}
            with torch.no_grad():
                out = thinker.generate(
                    **inputs, use_audio_in_video=uav, do_sample=False,
                    max_new_tokens=max_new_tokens or self.max_new_tokens,
                    **{k: v for k, v in special.items() if v is not None},
                )
        finally:
            for h in hooks:
                h.remove()
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        new = sequences[0, ids.numel():]
        text = self.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
        n_audio = int((ids == self.audio_token_id).sum())
        n_video = int((ids == self.video_token_id).sum())
        kept_audio, kept_video = n_audio, n_video
        overhead = None
        if self.handle is not None and self.handle.results:
            kept_audio = sum(r.n_audio_kept for r in self.handle.results)
            kept_video = sum(r.n_video_kept for r in self.handle.results)
            overhead = self.handle.last_overhead_ms
        stats = {
            "prompt_tokens": int(ids.numel()),
            "n_text": int(ids.numel()) - n_audio - n_video,
            "n_audio": n_audio,
            "n_video": n_video,
            "kept_audio": kept_audio,
            "kept_video": kept_video,
            "generated_tokens": int(new.numel()),
        }
        if "prefill_end" in timing:
            stats["prefill_ms"] = (timing["prefill_end"] - timing["prefill_start"]) * 1e3
            stats["ttft_ms"] = (timing["prefill_end"] - start) * 1e3
        if overhead is not None:
            stats["overhead_ms"] = overhead
        return text, stats

    def __call__(self, item: Item) -> tuple[str, dict]:
        return self.generate(build_conversation(item, system_prompt=self.system_prompt))
