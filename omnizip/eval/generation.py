"""Answering benchmark items with a (patched) Qwen-Omni model: inputs, greedy decoding, stats.

:class:`OmniAnswerer` is the ``answer_fn`` the runner uses with a real model (and what the
lmms-eval plugin calls): it reads the video and its audio track and builds the chat prompt of
:mod:`omnizip.eval.prompt` into processor inputs (:mod:`omnizip.eval.conversation`), runs the
thinker's ``generate`` greedily and reports what the decoder saw. Models load with
:func:`omnizip.loading.load_model` (re-exported here as ``load_model``):

=====================  ======================================================================
stat                   meaning
=====================  ======================================================================
``prompt_tokens``      prompt length before compression
``n_text``             prompt tokens that are neither audio nor video
``n_audio/n_video``    audio / video placeholder tokens of the prompt
``kept_audio/video``   of those, kept (from the patch's per-row decisions; all without one)
``generated_tokens``   tokens generated
``generated_ids``      their token ids (compared across engines)
``layer_tokens``       tokens each decoder layer saw (methods that prune inside the decoder)
``prefill_ms``         wall time of the decoder's prefill forward (after compression)
``ttft_ms``            wall time from ``generate`` to the end of that forward (encoders,
                       scores and compression included)
``overhead_ms``        the compression's own time as the patch reports it
=====================  ======================================================================

Times synchronise CUDA before they are read, so they are real on a GPU.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..inputs import to_device
from ..loading import load_model  # the one loader; `model, processor = load_model(...)` unpacks
from .conversation import ConversationInputs
from .datasets import Item
from .prompt import SYSTEM_PROMPT, build_conversation

__all__ = ["OmniAnswerer", "load_model"]

#: the built-in smoke-test model name (:data:`omnizip.loading.BUILTIN_MODELS`)
TINY_MODEL = "tiny"


def _sync(device: Any) -> None:
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def _decoder(model: Any) -> Any:
    thinker = getattr(model, "thinker", model)
    inner = getattr(thinker, "model", thinker)
    return getattr(inner, "language_model", inner)


class OmniAnswerer(ConversationInputs):
    """``answer_fn(item) -> (text, stats)`` backed by a model and its processor.

    Args:
        model: a Qwen-Omni model (full or thinker).
        processor: its processor.
        method: a compression method configuration, or None for the full model. The model is
            patched with ``omnizip.patch(model, method)``; call :meth:`close` to remove it.
        max_new_tokens: greedy decoding length (the answer is one letter; 16 leaves room).
        fps, max_frames, min_pixels, max_pixels, use_audio_in_video, system_prompt: the inputs
            (:class:`~omnizip.eval.conversation.ConversationInputs`).
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
        super().__init__(processor, fps=fps, max_frames=max_frames, min_pixels=min_pixels,
                         max_pixels=max_pixels, use_audio_in_video=use_audio_in_video,
                         system_prompt=system_prompt)
        self.model = model
        self.method = method
        self.max_new_tokens = max_new_tokens
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

    # -- generation ----------------------------------------------------------------------------
    def generate(self, conversation: list[dict[str, Any]], max_new_tokens: int | None = None) -> tuple[str, dict]:
        """Greedy answer to a conversation and the stats of the module docstring."""
        inputs, uav = self.inputs(conversation)
        thinker = getattr(self.model, "thinker", self.model)
        device = next(thinker.parameters()).device
        inputs = to_device(inputs, device, next(thinker.parameters()).dtype)
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
        layer_tokens = None
        if self.handle is not None and self.handle.results:
            kept_audio = sum(r.n_audio_kept for r in self.handle.results)
            kept_video = sum(r.n_video_kept for r in self.handle.results)
            overhead = self.handle.last_overhead_ms
            if self.handle.layer_tokens:
                layer_tokens = [sum(c) for c in zip(*self.handle.layer_tokens, strict=True)]
        stats = {
            "prompt_tokens": int(ids.numel()),
            "n_text": int(ids.numel()) - n_audio - n_video,
            "n_audio": n_audio,
            "n_video": n_video,
            "kept_audio": kept_audio,
            "kept_video": kept_video,
            "generated_tokens": int(new.numel()),
            "generated_ids": [int(t) for t in new.tolist()],
        }
        if "prefill_end" in timing:
            stats["prefill_ms"] = (timing["prefill_end"] - timing["prefill_start"]) * 1e3
            stats["ttft_ms"] = (timing["prefill_end"] - start) * 1e3
        if overhead is not None:
            stats["overhead_ms"] = overhead
        if layer_tokens is not None:
            stats["layer_tokens"] = layer_tokens
        return text, stats

    def __call__(self, item: Item) -> tuple[str, dict]:
        return self.generate(build_conversation(item, system_prompt=self.system_prompt))
