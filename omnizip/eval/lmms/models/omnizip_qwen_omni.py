"""``OmniZipQwenOmni`` for lmms-eval's plugin loader (built lazily, needs lmms-eval)."""

from typing import Any


def __getattr__(attr: str) -> Any:
    from ...lmms_eval_plugin import CLASS_NAME, build_model_class

    if attr == CLASS_NAME:
        return build_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
