"""FastV's model side: rank at decoder layer K-1, prune the inputs of layers K.. (in place of
an attention map), prune the cache of the earlier layers after the prefill.

:class:`FastVHooks` (built by :meth:`FastVConfig.model_hooks
<omnizip.methods.fastv.FastVConfig.model_hooks>`) hooks the decoder the adapter located:

====================================  =======================================================
``decoder.layers[K-1].self_attn``     the last real token's attention over the layer's keys
(pre)                                 (recomputed post-rotary q/k, no attention matrix);
                                      decide every row (``FastVConfig.decide``)
``decoder.layers[K..]`` (pre)         hidden states (layer K), rotary embeddings, text
                                      positions and causal mask of the kept tokens
``decoder.layers[K..n_side-1]``       families that add side features after early layers
(post)                                (Qwen3-Omni DeepStack, K below them): add them at the
                                      kept tokens (the decoder's own addition is held back)
end of the prefill (adapter)          prune the cache of layers < K to the kept tokens, so
                                      decoding is bookkept as for the pre-decoder methods
====================================  =======================================================

The pruning itself is the shared one of :mod:`omnizip.methods.decoder_pruning` (one step at
K); the contract these hooks implement is in :mod:`omnizip.methods.fastv`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..method import MethodHooks
from ..models.context import ModelContext, Prefill
from ..models.rotary import apply_rotary
from .decoder_pruning import PrunedPrefill, check_decoder, last_real_index

__all__ = ["FastVHooks", "decoder_query_keys", "last_real_index"]


class FastVHooks(MethodHooks):
    """FastV on one patched model (see the module docstring); ``method`` is a
    :class:`~omnizip.methods.fastv.FastVConfig` (its ``layer`` is K)."""

    def __init__(self, ctx: ModelContext, method: Any) -> None:
        self.ctx = ctx
        self.method = method
        self.layer = int(method.layer)
        self._state: PrunedPrefill | None = None
        self._results: list[Any] = []
        self._layer_ids: dict[int, int] = {}

    def attach(self) -> None:
        """Check the decoder fits, then hook layers K-1 and K.. (see the module docstring)."""
        check_decoder(self.ctx, self.method.name, [self.layer])
        layers = self.ctx.decoder.layers
        self._layer_ids = {id(m): i for i, m in enumerate(layers)}
        self.ctx.pre_hook(layers[self.layer - 1].self_attn, self._on_scores)
        for i in range(self.layer, len(layers)):
            self.ctx.pre_hook(layers[i], self._on_layer)
        for i in range(self.layer, min(self.ctx.side_feature_layers, len(layers))):
            self.ctx.post_hook(layers[i], self._after_layer)

    def detach(self) -> None:
        self._state = None

    def end_call(self) -> None:
        self._state = None

    def begin_prefill(self, prefill: Prefill) -> dict | None:
        """Remember what layers K-1 and K need; nothing is pruned before the decoder (the
        family's side features of layers >= K are held back, to be added pruned)."""
        ctx, ids = self.ctx, prefill.input_ids
        multimodal = (
            (ids == ctx.audio_token_id) | (ids == ctx.video_token_id) | (ids == ctx.image_token_id)
        )
        if not bool(multimodal.any()):
            length = int(ids.shape[1])
            ctx.record([], [], [], prefill.started, (length, length))
            return None
        self._state = PrunedPrefill(ctx, prefill, self.layer)
        self._results = []
        return self._state.update or None

    def _on_scores(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Layer K-1's attention: the last real token's attention over all keys, from the
        layer's own q/k (no attention matrix); decide every row (FastVConfig.decide)."""
        state = self._state
        if state is None or self._results:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        rotary = kwargs.get("position_embeddings")
        if hidden is None or rotary is None or hidden.dim() != 3 or hidden.shape[1] != state.length:
            raise RuntimeError(
                f"omnizip: fastv expected the whole prompt ({state.length} tokens) and its rotary "
                f"embeddings in decoder layer {self.layer - 1}'s attention, got "
                f"{None if hidden is None else tuple(hidden.shape)}"
            )
        started = time.perf_counter()
        ctx = self.ctx
        padding = state.padding.to(hidden.device)
        ids = state.ids.to(hidden.device)
        kept: list[torch.Tensor] = []
        with torch.no_grad():
            query, keys = decoder_query_keys(module, hidden, rotary[0], rotary[1], last_real_index(padding))
            for b in range(hidden.shape[0]):
                valid = padding[b].nonzero().squeeze(1)
                decision = self.method.decide(
                    hidden[b, valid], ids[b, valid], query[b], keys[b, valid],
                    audio_token_id=ctx.audio_token_id, video_token_id=ctx.video_token_id,
                    image_token_id=ctx.image_token_id, scale=float(module.scaling),
                )
                self._results.append(decision)
                kept.append(valid[decision.keep.to(valid.device)])
        state.decide(self.layer, kept)
        state.seconds += time.perf_counter() - started
        return None

    def _on_layer(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Layers K..: the kept tokens only (layer K prunes, the later ones get its inputs)."""
        state = self._state
        if state is None:
            return None
        return state.enter_layer(self._layer_ids[id(module)], args, kwargs)

    def _after_layer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """Side features (DeepStack) after a layer >= K, added at the kept tokens."""
        state = self._state
        if state is None:
            return None
        return state.add_features(self._layer_ids.get(id(module), -1), output)

    def end_prefill(self, kwargs: dict, output: Any) -> None:
        """Prune the cache of layers < K to the kept tokens (so every layer holds the same
        L' tokens and decoding is bookkept as for the other methods), publish the decisions."""
        state, self._state = self._state, None
        if state is None or not self._results:
            return
        state.finish(kwargs, output)
        before, after = int(state.prefill.padding.sum()), int(state.padding.sum())
        n_layers = len(self.ctx.decoder.layers)
        layer_tokens = [
            [int(state.prefill.padding[b].sum())] * self.layer + [int(k.numel())] * (n_layers - self.layer)
            for b, k in enumerate(state.kept_in_prefill())
        ]
        self.ctx.record(
            self._results, state.kept_in_prefill(), [None] * len(self._results),
            time.perf_counter() - state.seconds, (before, after), layer_tokens=layer_tokens,
        )


def decoder_query_keys(
    attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-rotary query of each row's token ``last`` and all keys of one decoder attention.

    Args:
        attn: the decoder layer's ``self_attn`` (``q_proj``, ``k_proj``, ``head_dim``, and
            ``q_norm``/``k_norm`` on Qwen3).
        hidden: ``[B, L, D]`` its input (after the layer's ``input_layernorm``).
        cos, sin: ``[B or 1, L, Dh]`` the rotary ``position_embeddings`` handed to it (M-RoPE
            sections already folded in by the model's rotary module).
        last: int64 ``[B]`` the query slot per row.
    Returns:
        ``q`` ``[B, H, Dh]`` and ``k`` ``[B, L, H_kv, Dh]``, in the model's dtype.
    """
    bsz, length, _ = hidden.shape
    head_dim = int(attn.head_dim)
    rows = torch.arange(bsz, device=hidden.device)
    last = last.to(hidden.device)
    q = attn.q_proj(hidden[rows, last]).view(bsz, -1, head_dim)
    k = attn.k_proj(hidden).view(bsz, length, -1, head_dim)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if q_norm is not None and k_norm is not None:
        q, k = q_norm(q), k_norm(k)
    cos = cos.to(hidden.device).expand(bsz, -1, -1)
    sin = sin.to(hidden.device).expand(bsz, -1, -1)
    q = apply_rotary(q, cos[rows, last][:, None, :], sin[rows, last][:, None, :])
    k = apply_rotary(k, cos[:, :, None, :], sin[:, :, None, :])
    return q, k
