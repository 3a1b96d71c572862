"""Run a model up to its decoder and capture the decoder's inputs, then stop.

What the encoders and the multimodal merge hand to the decoder (embeddings, position ids,
masks, side inputs such as DeepStack) is what every compression method acts on;
:func:`capture_decoder_inputs` reads it from an unpatched (or patched) model without running
a single decoder layer. Used by benchmarks, the CLI and the tests' references.
"""

from __future__ import annotations

from typing import Any

import torch

from . import ADAPTERS

__all__ = ["capture_decoder_inputs", "decoder_of"]


class _ReachedDecoder(Exception):
    """Raised by the capture hook to end the forward once the decoder inputs exist."""


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder (language model) of a supported model or its thinker."""
    adapter = next((a for a in ADAPTERS if a.matches(model)), None)
    if adapter is None:
        raise ValueError(
            f"model: no adapter serves {type(model).__name__}; supported: "
            f"{', '.join(n for a in ADAPTERS for n in a.model_classes)}"
        )
    return adapter.locate(model).decoder


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return [_snapshot(v) for v in value]
    return value


def capture_decoder_inputs(model: torch.nn.Module, **inputs: Any) -> dict[str, Any]:
    """The decoder's keyword arguments for one forward of ``model`` on ``inputs``.

    Runs ``model``'s thinker (``model.thinker`` or ``model`` itself) on ``inputs`` without
    gradients and stops at the decoder's entry: no decoder layer runs. Tensors (and lists of
    tensors) are detached copies; e.g. ``inputs_embeds`` ``[B, L, D]``, ``position_ids``
    ``[R, B, L]``, ``attention_mask``, and on Qwen3-Omni ``visual_pos_masks`` ``[B, L]`` and
    ``deepstack_visual_embeds``. The caller's tensors are not modified.

    Raises:
        ValueError: ``model`` is not a supported model.
        RuntimeError: the forward ended without reaching the decoder.
    """
    decoder = decoder_of(model)
    got: dict[str, Any] = {}

    def stop(module: Any, args: tuple, kwargs: dict) -> None:
        got.update({key: _snapshot(value) for key, value in kwargs.items()})
        raise _ReachedDecoder

    hook = decoder.register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
    try:
        with torch.no_grad():
            getattr(model, "thinker", model)(**inputs)
    except _ReachedDecoder:
        return got
    finally:
        hook.remove()
    raise RuntimeError(f"model: the forward of {type(model).__name__} never reached its decoder")
