"""``OmniZipQwenOmni``: the lmms-eval model class (imports lmms-eval; see
:mod:`omnizip.eval.lmms_eval_plugin` for the model arguments and how lmms-eval finds it)."""

from __future__ import annotations

import gc
import inspect
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from ..generation import OmniAnswerer, load_model
from ..prompt import QWEN_OMNI_SYSTEM_PROMPT, SYSTEM_PROMPT
from .model_args import LMMS_EVAL_FORWARDED, MODEL_NAME, conversation, method_from_args

__all__ = ["OmniZipQwenOmni"]

_PROMPTS = {"omnizip": SYSTEM_PROMPT, "qwen": QWEN_OMNI_SYSTEM_PROMPT, "none": None}


class OmniZipQwenOmni(lmms):
    """A Qwen-Omni checkpoint compressed by an omnizip method, answering lmms-eval requests."""

    def __init__(
        self,
        pretrained: str = "Qwen/Qwen2.5-Omni-7B",
        method: str = "omnizip",
        retention: float | None = None,
        token_budget: int | None = None,
        preset: str | None = None,
        device: str = "auto",
        dtype: str = "bfloat16",
        attn_implementation: str | None = None,
        max_new_tokens: int = 16,
        fps: float = 2.0,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        use_audio_in_video: bool = True,
        system_prompt: str = "omnizip",
        batch_size: int | str = 1,
        **method_options: Any,
    ) -> None:
        super().__init__()
        for key in sorted(LMMS_EVAL_FORWARDED & set(method_options)):
            logger.debug(f"{MODEL_NAME}: ignoring lmms-eval's {key}={method_options.pop(key)!r} "
                         "(requests are answered one at a time)")
        if str(system_prompt) not in _PROMPTS:
            raise ValueError(
                f"{MODEL_NAME}: system_prompt must be one of {sorted(_PROMPTS)}, got {system_prompt!r}"
            )
        if str(batch_size).split(":")[0] not in ("1", "auto"):
            raise ValueError(
                f"{MODEL_NAME} answers one request at a time (batch_size=1), got {batch_size!r}"
            )
        arguments = tuple(p for p in inspect.signature(type(self).__init__).parameters
                          if p not in ("self", "method_options"))
        self.pretrained = pretrained
        self.batch_size_per_gpu = 1
        self.method_config = method_from_args(method, retention, token_budget, preset,
                                              method_options, arguments)
        model, processor = load_model(
            pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        self._model, self.processor = model, processor
        self.system_prompt = _PROMPTS[str(system_prompt)]
        self.answerer: OmniAnswerer | None = OmniAnswerer(
            model, processor, self.method_config, max_new_tokens=int(max_new_tokens),
            fps=float(fps), max_frames=max_frames, min_pixels=min_pixels,
            max_pixels=max_pixels, use_audio_in_video=bool(use_audio_in_video),
            system_prompt=self.system_prompt,
        )
        #: per request: doc_id, task, and the answerer's stats or the error
        self.last_stats: list[dict] = []

    @property
    def model(self) -> Any:
        return self._model

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _answer(self, request: Any) -> GenerationResult | str:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        gen_kwargs = dict(gen_kwargs or {})
        record: dict[str, Any] = {"doc_id": doc_id, "task": task}
        try:
            if self.answerer is None:
                raise RuntimeError(f"{MODEL_NAME}: the model was released by clean()")
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            visuals = [v for v in (visuals or []) if v is not None]
            text, stats = self.answerer.generate(
                conversation(context, visuals, self.system_prompt),
                max_new_tokens=gen_kwargs.get("max_new_tokens"),
            )
        except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
            # one unreadable item is a wrong answer, not the end of the run
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.last_stats.append(record)
            logger.warning(f"{MODEL_NAME}: {task} doc {doc_id}: failed, answered '' ({record['error']})")
            return ""
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        record.update(stats)
        self.last_stats.append(record)
        handle = self.answerer.handle
        summary = handle.last_summary if handle is not None and handle.last_summary else (
            f"full model: audio {stats['n_audio']}, video {stats['n_video']} tokens")
        logger.info(f"{MODEL_NAME}: {task} doc {doc_id}: {summary}")
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        # the prompt tokens the decoder saw, after compression (lmms-eval logs them per sample)
        seen = stats["prompt_tokens"] - (stats["n_audio"] + stats["n_video"]
                                         - stats["kept_audio"] - stats["kept_video"])
        return GenerationResult(text, TokenCounts(input_tokens=seen,
                                                  output_tokens=stats["generated_tokens"]))

    def generate_until(self, requests: list[Any]) -> list[GenerationResult | str]:
        return [self._answer(request) for request in requests]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME} implements generate_until only")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} implements generate_until only")

    def clean(self) -> None:
        """Remove the patch's hooks and drop the model (lmms-eval calls this after the
        requests, e.g. before an LLM judge loads)."""
        if self.answerer is not None:
            self.answerer.close()
        self.answerer = None
        self._model = self.processor = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
