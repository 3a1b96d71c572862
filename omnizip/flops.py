"""Theoretical decoder FLOPs of a prompt, and the FLOPs ratio a token budget buys.

The count is the one token-compression papers use (FastV, ECCV 2024, and the DyCoke /
OmniZip appendices), per decoder layer over ``n`` tokens with hidden size ``d`` and FFN
(intermediate) size ``m``::

    prefill(n) = 4 n d^2  +  2 n^2 d  +  2 n d m
                 (Q, K, V, O projections; Q K^T and A V; the two FFN matmuls)

and, for ``R`` generated tokens decoding over a KV cache of ``n`` prompt tokens, token
``i = 1..R`` runs the projections and FFN on itself and attends to ``n + i`` keys::

    decode(n, R) = R (4 d^2 + 2 d m)  +  2 d (R n + R (R + 1) / 2)

Both are multiply-accumulate counts (one multiply-add = 1), as in FastV's formula; multiply
by 2 for floating-point operations. The ratio between two budgets does not depend on that
factor or on the number of layers. Deliberate simplifications of the published formula, kept
so numbers compare with the papers: grouped-query attention (K/V projections narrower than
``d``) and the third matrix of a gated (SwiGLU) FFN are not counted, and neither are the
embedding, the LM head, norms or the encoders.

A run's FLOPs: ``layers * (prefill(n) + decode(n, R))`` with ``n`` the prompt tokens the
decoder sees (text + kept audio + kept video). In-decoder pruning (FastV) at layer ``K``:
``K`` layers over the full prompt and ``layers - K`` over the kept tokens, in prefill and in
decoding (each layer's cache holds what that layer saw).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODEL_DIMS",
    "ModelDims",
    "decode_macs",
    "flops_ratio",
    "model_dims",
    "prefill_macs",
    "run_macs",
]


@dataclass(frozen=True)
class ModelDims:
    """Decoder dimensions the FLOPs count needs.

    Attributes:
        hidden: ``d``, the hidden size. intermediate: ``m``, the FFN size. layers: decoder layers.
    """

    hidden: int
    intermediate: int
    layers: int

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


#: Thinker (LLM) dimensions of the released checkpoints (their ``text_config``).
MODEL_DIMS: dict[str, ModelDims] = {
    "Qwen/Qwen2.5-Omni-7B": ModelDims(hidden=3584, intermediate=18944, layers=28),
    "Qwen/Qwen2.5-Omni-3B": ModelDims(hidden=2048, intermediate=11008, layers=36),
}


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def model_dims(spec: Any) -> ModelDims:
    """:class:`ModelDims` from a transformers config (full model, thinker or text config),
    a model (its ``.config``), a mapping, a ``(hidden, intermediate, layers)`` triple, a
    :class:`ModelDims`, or a checkpoint name of :data:`MODEL_DIMS`.

    Nested configs are searched in the order ``thinker_config`` -> ``text_config``.
    """
    if isinstance(spec, ModelDims):
        return spec
    if isinstance(spec, str):
        if spec in MODEL_DIMS:
            return MODEL_DIMS[spec]
        raise ValueError(f"unknown model {spec!r}; known: {', '.join(MODEL_DIMS)} (or pass a config)")
    if isinstance(spec, (tuple, list)) and len(spec) == 3:
        return ModelDims(*(int(v) for v in spec))
    cfg = getattr(spec, "config", spec) if not isinstance(spec, Mapping) else spec
    for nested in ("thinker_config", "text_config"):
        inner = _get(cfg, nested)
        if inner is not None:
            cfg = inner
    hidden, inter, layers = (
        _get(cfg, "hidden_size"), _get(cfg, "intermediate_size"), _get(cfg, "num_hidden_layers")
    )
    if None in (hidden, inter, layers):
        raise ValueError(
            "cannot read hidden_size / intermediate_size / num_hidden_layers from "
            f"{type(cfg).__name__}; pass ModelDims(hidden, intermediate, layers)"
        )
    return ModelDims(int(hidden), int(inter), int(layers))


def prefill_macs(n: int, hidden: int, intermediate: int) -> int:
    """One layer over ``n`` prompt tokens: ``4 n d^2 + 2 n^2 d + 2 n d m``."""
    d, m = hidden, intermediate
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def decode_macs(n: int, generated: int, hidden: int, intermediate: int) -> int:
    """One layer, ``generated`` tokens decoded over a cache of ``n`` prompt tokens:
    ``R (4 d^2 + 2 d m) + 2 d (R n + R (R + 1) / 2)``."""
    r, d, m = generated, hidden, intermediate
    return r * (4 * d * d + 2 * d * m) + 2 * d * (r * n + r * (r + 1) // 2)


def run_macs(
    dims: Any, n_tokens: int, *, generated: int = 0, prune_layer: int | None = None,
    n_after: int | None = None,
) -> int:
    """Decoder multiply-accumulates of one prompt of ``n_tokens`` and ``generated`` tokens.

    With ``prune_layer=K`` and ``n_after``: the first ``K`` layers see ``n_tokens``, the
    others ``n_after`` (FastV).
    """
    dims = model_dims(dims)
    for name, value in (("n_tokens", n_tokens), ("generated", generated)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    d, m, layers = dims.hidden, dims.intermediate, dims.layers

    def per_layer(n: int) -> int:
        return prefill_macs(n, d, m) + decode_macs(n, generated, d, m)

    if prune_layer is None:
        return layers * per_layer(n_tokens)
    if isinstance(prune_layer, bool) or not isinstance(prune_layer, int) or not 0 <= prune_layer <= layers:
        raise ValueError(f"prune_layer must be an int in [0, {layers}], got {prune_layer!r}")
    after = n_tokens if n_after is None else n_after
    return prune_layer * per_layer(n_tokens) + (layers - prune_layer) * per_layer(after)


def flops_ratio(
    dims: Any,
    n_text: int,
    n_audio: int,
    n_video: int,
    kept_audio: int,
    kept_video: int,
    *,
    generated: int = 0,
    prune_layer: int | None = None,
) -> float:
    """FLOPs of the compressed run over FLOPs of the full run (1.0 = no saving).

    Args:
        dims: anything :func:`model_dims` accepts (e.g. ``model.config``).
        n_text: prompt tokens that are neither audio nor video (always kept).
        n_audio, n_video: audio / video tokens of the full prompt.
        kept_audio, kept_video: those the decoder sees after compression.
        generated: ``R``, tokens generated after the prompt.
        prune_layer: ``K`` for in-decoder pruning (FastV); None for pre-decoder methods.
    """
    for name, value in (("n_text", n_text), ("n_audio", n_audio), ("n_video", n_video),
                        ("kept_audio", kept_audio), ("kept_video", kept_video)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if kept_audio > n_audio or kept_video > n_video:
        raise ValueError(
            f"kept tokens exceed the prompt's: audio {kept_audio}/{n_audio}, video {kept_video}/{n_video}"
        )
    full_n = n_text + n_audio + n_video
    kept_n = n_text + kept_audio + kept_video
    full = run_macs(dims, full_n, generated=generated)
    if full == 0:
        return 1.0
    if prune_layer is None:
        kept = run_macs(dims, kept_n, generated=generated)
    else:
        kept = run_macs(dims, full_n, generated=generated, prune_layer=prune_layer, n_after=kept_n)
    return kept / full
