"""``--model_args`` of ``omnizip_qwen_omni``: the method they select and the request's chat.

No lmms-eval import here (the class in :mod:`omnizip.eval.lmms.model` needs it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LMMS_EVAL_FORWARDED", "MODEL_NAME", "conversation", "method_from_args"]

MODEL_NAME = "omnizip_qwen_omni"

#: keywords lmms-eval's CLI forwards to every model besides ``--model_args`` that this model
#: accepts and ignores (its ``batch_size`` and ``device`` are model arguments).
LMMS_EVAL_FORWARDED = frozenset({"max_batch_size"})


def method_from_args(
    method: str | None,
    retention: Any,
    token_budget: Any,
    preset: Any,
    options: dict[str, Any],
    model_arguments: tuple[str, ...] = (),
) -> Any:
    """The method configuration the model arguments select (None: the full model).

    Args:
        method: a name of :data:`omnizip.methods.METHODS`, or ``none``/empty for no method.
        retention, token_budget: the budget (None: the method's default).
        preset: ``"45"``/``"35"`` (the paper's rho_audio/rho_video pairs) or None.
        options: the remaining ``key=value`` arguments, taken as options of the method.
        model_arguments: the model's own argument names (for the error message).

    Raises:
        ValueError: unknown method, preset, or an argument that is neither a model argument
            nor an option of the method (the message lists both).
    """
    from ...config import PRESETS
    from ...methods import METHODS, coerce_option, get_method

    if method in (None, "", "none"):
        given = [k for k, v in (("retention", retention), ("token_budget", token_budget),
                                ("preset", preset)) if v is not None] + sorted(options)
        if given:
            raise ValueError(
                f"{MODEL_NAME}: {', '.join(given)} need a compression method, but method=none; "
                f"model arguments: {', '.join(model_arguments)}"
            )
        return None
    if method not in METHODS:
        raise ValueError(f"{MODEL_NAME}: unknown method {method!r}; known methods: none, {', '.join(METHODS)}")
    known = METHODS[method].options
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"{MODEL_NAME}: unknown model argument {', '.join(map(repr, unknown))}: neither a "
            f"model argument ({', '.join(model_arguments)}) nor an option of method {method!r} "
            f"({', '.join(known)})"
        )
    opts = {k: coerce_option(method, k, v) if isinstance(v, str) else v for k, v in options.items()}
    if retention is not None:
        opts["retention"] = float(retention)
    if token_budget is not None:
        opts["token_budget"] = int(token_budget)
    if preset is not None:
        if str(preset) not in PRESETS:
            raise ValueError(f"{MODEL_NAME}: preset must be one of {sorted(PRESETS)}, got {preset!r}")
        rho_a, rho_v = PRESETS[str(preset)]
        opts.setdefault("rho_audio", rho_a)
        opts.setdefault("rho_video", rho_v)
    return get_method(method, **opts)


def conversation(context: str, visuals: list[Any], system_prompt: str | None) -> list[dict]:
    """Chat messages for one request: its one video file, then the task's text.

    Raises:
        FileNotFoundError: no visual (lmms-eval's tasks return ``[]`` for a missing file).
        ValueError: anything but exactly one video path.
    """
    if not visuals:
        raise FileNotFoundError(f"{MODEL_NAME}: the request has no video (the task found no file)")
    if len(visuals) != 1 or not isinstance(visuals[0], str):
        raise ValueError(
            f"{MODEL_NAME}: each request must hold exactly one video file path, got "
            f"{[type(v).__name__ for v in visuals]}"
        )
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "video", "video": visuals[0]},
                                                 {"type": "text", "text": context}]})
    return messages
