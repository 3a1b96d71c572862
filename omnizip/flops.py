"""The decoder cost model: multiply-accumulates of a prompt, the FLOPs ratio a token budget
buys and the prefill speedup token counts predict. ``omnizip bench`` and ``omnizip eval`` both
count with :func:`layer_macs`; nothing else in omnizip counts decoder work.

Per decoder layer, over ``n`` prompt tokens, for a decoder of hidden size ``d``, query width
``q = heads * head_dim``, key/value width ``k = kv_heads * head_dim``, FFN width ``m`` with ``f``
matrices (SwiGLU: gate, up, down, ``f = 3``) and a mixture-of-experts router of ``E`` experts::

    linear      = 2 d q + 2 d k + f d m + d E          (Q, O; K, V; FFN; router) per token
    prefill(n)  = n * linear + n (n + 1) q             (causal: Q K^T and A V over n(n+1)/2 pairs)
    decode(n,R) = R * linear + 2 q (R n + R (R + 1) / 2)   (token i attends to n + i keys)

For a mixture of experts ``m`` is the active width (``experts_per_token * expert_width``, plus a
shared expert). These are multiply-accumulate counts (one multiply-add = 1); multiply by 2 for
floating-point operations. Embedding, LM head, norms and the encoders are not counted: they do
not depend on how many audio/video tokens the decoder sees.

Why this count: it is what the decoder computes. Token-compression papers (FastV, ECCV 2024,
and the DyCoke / OmniZip appendices) use a simpler one, ``4 n d^2 + 2 n^2 d + 2 n d m`` per
layer: it is the same model with ``q = k = d`` (no grouped-query attention), ``f = 2`` (two FFN
matrices) and a non-causal attention term ``2 n^2 q``. That convention overstates attention
about twice (a causal prefill computes half the score matrix) and misses GQA, the third SwiGLU
matrix and MoE; its ratios are close to but not those of the real model. It stays available,
through the same formula, as :class:`ModelDims` (and :func:`prefill_macs` /
:func:`decode_macs` with ``(hidden, intermediate)``), so numbers can be compared with papers.

A run's count: ``layers * (prefill(n) + decode(n, R))`` with ``n`` the prompt tokens the decoder
sees (text + kept audio + kept video). In-decoder pruning (FastV) at layer ``K``: ``K`` layers
over the full prompt and ``layers - K`` over the kept tokens, in prefill and in decoding (each
layer's cache holds what that layer saw). Methods whose layers see different counts (SEATS's
progressive drops) are counted layer by layer: ``sum_i layer(n_i)`` (``layer_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODEL_DIMS",
    "DecoderDims",
    "ModelDims",
    "decode_macs",
    "decoder_dims",
    "flops_ratio",
    "layer_macs",
    "model_dims",
    "predicted_speedup",
    "prefill_macs",
    "run_macs",
]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class DecoderDims:
    """The decoder sizes the cost model needs (see the module docstring).

    Attributes:
        hidden: ``d``. layers: decoder layers. q_width: ``heads * head_dim``. kv_width:
        ``kv_heads * head_dim``. mlp_width: FFN width ``m`` (MoE: the active experts' width).
        router: experts of a MoE router (a ``d x E`` matmul), 0 for a dense FFN.
        ffn_matrices: ``f``, FFN matrices per token (3 for SwiGLU; the papers' convention: 2).
        causal: causal attention (``n (n + 1) q``); False: the papers' ``2 n^2 q``.
    """

    hidden: int
    layers: int
    q_width: int
    kv_width: int
    mlp_width: int
    router: int = 0
    ffn_matrices: int = 3
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "q_width", "kv_width", "mlp_width", "ffn_matrices"):
            _check_int(name, getattr(self, name), 1)
        _check_int("router", self.router, 0)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelDims:
    """The papers' (FastV) convention of a decoder: only ``d``, ``m`` and the layer count.

    Counted by the same model as :class:`DecoderDims` with ``q = k = d``, two FFN matrices and
    non-causal attention (:meth:`decoder`).

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

    def decoder(self) -> DecoderDims:
        """These sizes under the papers' counting convention."""
        d = self.hidden
        return DecoderDims(hidden=d, layers=self.layers, q_width=d, kv_width=d,
                           mlp_width=self.intermediate, ffn_matrices=2, causal=False)


#: Thinker (LLM) dimensions of the released checkpoints (their ``text_config``), in the papers'
#: convention (``flops_ratio("Qwen/Qwen2.5-Omni-7B", ...)`` compares with published ratios).
MODEL_DIMS: dict[str, ModelDims] = {
    "Qwen/Qwen2.5-Omni-7B": ModelDims(hidden=3584, intermediate=18944, layers=28),
    "Qwen/Qwen2.5-Omni-3B": ModelDims(hidden=2048, intermediate=11008, layers=36),
}


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _text_config(spec: Any) -> Any:
    """The decoder's config inside a model, a full/thinker config or a mapping
    (``thinker_config`` -> ``text_config``)."""
    cfg = getattr(spec, "config", spec) if not isinstance(spec, Mapping) else spec
    for nested in ("thinker_config", "text_config"):
        inner = _get(cfg, nested)
        if inner is not None:
            cfg = inner
    return cfg


def model_dims(spec: Any) -> ModelDims:
    """:class:`ModelDims` (the papers' convention) from a transformers config (full model,
    thinker or text config), a model (its ``.config``), a mapping, a ``(hidden, intermediate,
    layers)`` triple, a :class:`ModelDims`, or a checkpoint name of :data:`MODEL_DIMS`.

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
    cfg = _text_config(spec)
    hidden, inter, layers = (
        _get(cfg, "hidden_size"), _get(cfg, "intermediate_size"), _get(cfg, "num_hidden_layers")
    )
    if None in (hidden, inter, layers):
        raise ValueError(
            "cannot read hidden_size / intermediate_size / num_hidden_layers from "
            f"{type(cfg).__name__}; pass ModelDims(hidden, intermediate, layers)"
        )
    return ModelDims(int(hidden), int(inter), int(layers))


def decoder_dims(spec: Any) -> DecoderDims:
    """:class:`DecoderDims` of a decoder as built: from a Qwen-Omni model (full or thinker), its
    config (full, thinker or text config) or a mapping; a :class:`DecoderDims` as is; anything
    else :func:`model_dims` accepts (a triple, a :class:`ModelDims`, a checkpoint name) in the
    papers' convention. Raises ValueError when the sizes cannot be read."""
    if isinstance(spec, DecoderDims):
        return spec
    if isinstance(spec, (ModelDims, str, tuple, list)):
        return model_dims(spec).decoder()
    cfg = _text_config(spec)
    d, heads, layers = (_get(cfg, "hidden_size"), _get(cfg, "num_attention_heads"),
                        _get(cfg, "num_hidden_layers"))
    if None in (d, heads, layers):
        if heads is None and None not in (d, layers) and _get(cfg, "intermediate_size") is not None:
            return model_dims(spec).decoder()  # no head count: the papers' convention
        raise ValueError(
            "cannot read hidden_size / num_attention_heads / num_hidden_layers from "
            f"{type(cfg).__name__}; pass DecoderDims(...)"
        )
    d, heads = int(d), int(heads)
    kv_heads = int(_get(cfg, "num_key_value_heads") or heads)
    head_dim = int(_get(cfg, "head_dim") or d // heads)
    experts, per_tok = _get(cfg, "num_experts"), _get(cfg, "num_experts_per_tok")
    if experts and per_tok and _get(cfg, "moe_intermediate_size"):
        mlp = int(per_tok) * int(_get(cfg, "moe_intermediate_size"))
        mlp += int(_get(cfg, "shared_expert_intermediate_size") or 0)
        router = int(experts)
    else:
        mlp, router = int(_get(cfg, "intermediate_size")), 0
    return DecoderDims(d, int(layers), heads * head_dim, kv_heads * head_dim, mlp, router)


def layer_macs(n: int, dims: DecoderDims, generated: int = 0) -> int:
    """One decoder layer's multiply-accumulates: the prefill of ``n`` prompt tokens and
    ``generated`` tokens decoded over that cache (the module docstring's formula)."""
    d, q, k, m, r = dims.hidden, dims.q_width, dims.kv_width, dims.mlp_width, generated
    linear = 2 * d * q + 2 * d * k + dims.ffn_matrices * d * m + d * dims.router
    attention = n * (n + 1) * q if dims.causal else 2 * n * n * q
    decode = r * linear + 2 * q * (r * n + r * (r + 1) // 2)
    return n * linear + attention + decode


def prefill_macs(n: int, hidden: int, intermediate: int) -> int:
    """One layer over ``n`` prompt tokens, papers' convention: ``4 n d^2 + 2 n^2 d + 2 n d m``."""
    return layer_macs(n, ModelDims(hidden, intermediate, 1).decoder())


def decode_macs(n: int, generated: int, hidden: int, intermediate: int) -> int:
    """One layer, ``generated`` tokens decoded over a cache of ``n`` prompt tokens, papers'
    convention: ``R (4 d^2 + 2 d m) + 2 d (R n + R (R + 1) / 2)``."""
    dims = ModelDims(hidden, intermediate, 1).decoder()
    return layer_macs(n, dims, generated) - layer_macs(n, dims)


def run_macs(
    dims: Any, n_tokens: int, *, generated: int = 0, prune_layer: int | None = None,
    n_after: int | None = None, layer_tokens: list[int] | None = None,
) -> int:
    """Decoder multiply-accumulates of one prompt of ``n_tokens`` and ``generated`` tokens.

    ``dims``: anything :func:`decoder_dims` accepts. With ``prune_layer=K`` and ``n_after``: the
    first ``K`` layers see ``n_tokens``, the others ``n_after`` (FastV). With ``layer_tokens``
    (one count per decoder layer, e.g. ``handle.layer_tokens[row]``): layer ``i`` sees
    ``layer_tokens[i]`` (SEATS's progressive drops; ``n_tokens`` is then not used).
    """
    dims = decoder_dims(dims)
    for name, value in (("n_tokens", n_tokens), ("generated", generated)):
        _check_int(name, value, 0)
    layers = dims.layers
    if layer_tokens is not None:
        counts = list(layer_tokens)
        if len(counts) != layers:
            raise ValueError(f"layer_tokens must hold one count per decoder layer ({layers}), got {len(counts)}")
        for value in counts:
            _check_int("layer_tokens entries", value, 0)
        return sum(layer_macs(n, dims, generated) for n in counts)
    if prune_layer is None:
        return layers * layer_macs(n_tokens, dims, generated)
    if isinstance(prune_layer, bool) or not isinstance(prune_layer, int) or not 0 <= prune_layer <= layers:
        raise ValueError(f"prune_layer must be an int in [0, {layers}], got {prune_layer!r}")
    after = n_tokens if n_after is None else n_after
    return (prune_layer * layer_macs(n_tokens, dims, generated)
            + (layers - prune_layer) * layer_macs(after, dims, generated))


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
        dims: anything :func:`decoder_dims` accepts (e.g. ``model.config``: the decoder as
            built; a :class:`ModelDims` or a checkpoint name: the papers' convention).
        n_text: prompt tokens that are neither audio nor video (always kept).
        n_audio, n_video: audio / video tokens of the full prompt.
        kept_audio, kept_video: those the decoder sees after compression.
        generated: ``R``, tokens generated after the prompt.
        prune_layer: ``K`` for in-decoder pruning (FastV); None for pre-decoder methods.
    """
    for name, value in (("n_text", n_text), ("n_audio", n_audio), ("n_video", n_video),
                        ("kept_audio", kept_audio), ("kept_video", kept_video)):
        _check_int(name, value, 0)
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


def predicted_speedup(n_full: int, n_kept: int, dims: Any) -> float:
    """``F(n_full) / F(n_kept)``: the prefill speedup the token counts predict (``F`` the
    prefill count of :func:`run_macs`; the layer count cancels)."""
    return run_macs(dims, n_full) / max(run_macs(dims, n_kept), 1)
