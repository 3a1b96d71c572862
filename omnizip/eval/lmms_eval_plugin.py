"""lmms-eval model plugin: OmniZip-patched Qwen-Omni models as an lmms-eval ``--model``.

Optional: lmms-eval is not a dependency of omnizip. This module imports without it; the model
class is built (and lmms-eval imported) only when it is first asked for.

Two ways to select it, neither edits lmms-eval's source:

1. **Plugin package** (lmms-eval's ``LMMS_EVAL_PLUGINS`` hook: lmms-eval imports
   ``<plugin>.models``, reads its ``AVAILABLE_MODELS`` (name -> class name, the class living in
   ``<plugin>.models.<name>``) and, in its CLI, adds ``<plugin>.tasks`` to the task search
   path)::

       LMMS_EVAL_PLUGINS=omnizip.eval.lmms python -m lmms_eval \\
           --model omnizip_qwen_omni \\
           --model_args pretrained=Qwen/Qwen2.5-Omni-7B,method=omnizip,retention=0.45 \\
           --tasks worldsense --batch_size 1

2. **Programmatic registration** (``lmms_eval.api.registry.register_model``) before running
   lmms-eval in the same process::

       from omnizip.eval.lmms_eval_plugin import register
       register()            # adds "omnizip_qwen_omni" to lmms-eval's model registry
       from lmms_eval.__main__ import cli_evaluate
       cli_evaluate()

``--model_args`` (comma separated ``key=value``; lmms-eval converts numbers and booleans):
``pretrained`` (checkpoint id/path), ``method`` (a name of :data:`omnizip.methods.METHODS` or
``none``), ``retention`` / ``token_budget``, ``preset`` (``45``/``35`` for the omnizip
methods), ``device``, ``dtype``, ``attn_implementation``, ``max_new_tokens`` (default for
tasks that set none), ``fps``, ``max_frames``, ``max_pixels``, ``min_pixels``,
``use_audio_in_video``, ``system_prompt`` (``omnizip``: the OmniZip evaluation's, ``qwen``:
Qwen's default, ``none``), and any other key is an option of the method (e.g. ``g=15``,
``layer=5``).

Each request is answered with greedy decoding (the task's ``until`` strings cut the answer).
A request's visuals must be one video file (the audio-video benchmarks); images are not
supported. Only ``generate_until`` is implemented (multiple-choice tasks of these benchmarks
are generation tasks); ``loglikelihood`` raises.

The interface implemented is lmms-eval's "simple" model API (``lmms_eval.api.model.lmms``:
``generate_until(requests)`` with ``request.args = (context, gen_kwargs, doc_to_visual,
doc_id, task, split)``), as of lmms-eval 0.3-0.5.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_NAME", "build_model_class", "is_available", "register"]

MODEL_NAME = "omnizip_qwen_omni"
CLASS_NAME = "OmniZipQwenOmni"
_CLASS: type | None = None


def is_available() -> bool:
    """True when lmms-eval can be imported."""
    try:
        import lmms_eval.api.model  # noqa: F401
    except ImportError:
        return False
    return True


def _method_from_args(method: str, retention: Any, token_budget: Any, preset: Any,
                      options: dict[str, Any]) -> Any:
    from ..config import PRESETS
    from ..methods import METHODS, coerce_option, get_method

    if method in (None, "", "none"):
        if retention is not None or token_budget is not None or options:
            raise ValueError("retention/token_budget/method options need a method (method=none)")
        return None
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: none, {', '.join(METHODS)}")
    opts = {k: coerce_option(method, k, v) if isinstance(v, str) else v for k, v in options.items()}
    if retention is not None:
        opts["retention"] = float(retention)
    if token_budget is not None:
        opts["token_budget"] = int(token_budget)
    if preset is not None:
        rho_a, rho_v = PRESETS[str(preset)]
        opts.setdefault("rho_audio", rho_a)
        opts.setdefault("rho_video", rho_v)
    return get_method(method, **opts)


def _conversation(context: str, visuals: list[Any], system_prompt: str | None) -> list[dict]:
    videos = [v for v in visuals if isinstance(v, str)]
    if len(videos) != 1 or len(visuals) != 1:
        raise ValueError(
            f"{MODEL_NAME}: each request must hold exactly one video file, got "
            f"{[type(v).__name__ for v in visuals]}"
        )
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "video", "video": videos[0]},
                                                 {"type": "text", "text": context}]})
    return messages


def build_model_class() -> type:
    """The lmms-eval model class (imports lmms-eval; ImportError with a hint without it)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        from lmms_eval.api.model import lmms
    except ImportError as exc:
        raise ImportError(
            f"{MODEL_NAME} needs lmms-eval (pip install lmms-eval); it is an optional extra of "
            "omnizip"
        ) from exc
    from ..eval.generation import OmniAnswerer, load_model
    from ..eval.prompt import QWEN_OMNI_SYSTEM_PROMPT, SYSTEM_PROMPT

    prompts = {"omnizip": SYSTEM_PROMPT, "qwen": QWEN_OMNI_SYSTEM_PROMPT, "none": None}

    class OmniZipQwenOmni(lmms):
        """A Qwen-Omni checkpoint compressed by an omnizip method (see the module docs)."""

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
            batch_size: int = 1,
            **method_options: Any,
        ) -> None:
            super().__init__()
            if str(system_prompt) not in prompts:
                raise ValueError(f"system_prompt must be one of {sorted(prompts)}, got {system_prompt!r}")
            if str(batch_size).split(":")[0] not in ("1", "auto"):
                raise ValueError(
                    f"{MODEL_NAME} answers one request at a time (batch_size=1), got {batch_size!r}"
                )
            self.pretrained = pretrained
            self.batch_size_per_gpu = 1
            self.method_config = _method_from_args(method, retention, token_budget, preset, method_options)
            model, processor = load_model(
                pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation
            )
            self._model, self.processor = model, processor
            self.answerer = OmniAnswerer(
                model, processor, self.method_config, max_new_tokens=int(max_new_tokens),
                fps=float(fps), max_frames=max_frames, min_pixels=min_pixels,
                max_pixels=max_pixels, use_audio_in_video=bool(use_audio_in_video),
                system_prompt=prompts[str(system_prompt)],
            )
            self.system_prompt = prompts[str(system_prompt)]
            self.last_stats: list[dict] = []

        @property
        def model(self) -> Any:
            return self._model

        @property
        def batch_size(self) -> int:
            return self.batch_size_per_gpu

        def generate_until(self, requests: list[Any]) -> list[str]:
            answers = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                visuals = [v for v in (visuals or []) if v is not None]
                conversation = _conversation(context, visuals, self.system_prompt)
                text, stats = self.answerer.generate(
                    conversation, max_new_tokens=gen_kwargs.get("max_new_tokens")
                )
                until = gen_kwargs.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                self.last_stats.append({"doc_id": doc_id, "task": task, **stats})
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                answers.append(text)
            return answers

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError(f"{MODEL_NAME} implements generate_until only")

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError(f"{MODEL_NAME} implements generate_until only")

    OmniZipQwenOmni.__name__ = OmniZipQwenOmni.__qualname__ = CLASS_NAME
    _CLASS = OmniZipQwenOmni
    return _CLASS


def register(name: str = MODEL_NAME) -> type:
    """Register the class in lmms-eval's model registry under ``name``; returns the class."""
    cls = build_model_class()
    from lmms_eval.api.registry import register_model

    return register_model(name)(cls)


def __getattr__(attr: str) -> Any:  # lazy: `from omnizip.eval.lmms_eval_plugin import OmniZipQwenOmni`
    if attr == CLASS_NAME:
        return build_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
