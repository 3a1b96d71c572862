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

The contract these hooks implement is in :mod:`omnizip.methods.fastv`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..method import MethodHooks
from ..models.batch import Repadded, gather_tokens, renumber_text_row, repad_rows
from ..models.context import LayerFeatures, ModelContext, Prefill
from ..models.decode import prune_cache_layers
from ..models.rotary import apply_rotary

__all__ = ["FastVHooks", "FastVPrefill", "decoder_query_keys", "last_real_index"]


@dataclass
class FastVPrefill:
    """One FastV prefill in flight (from the decoder's start to its end).

    Attributes:
        prefill: the adapter's view of the prompt (ids, padding, positions).
        results: per row, the :class:`~omnizip.TokenDecision` of layer K.
        kept_rows: per row, the original slots kept.
        layout: the re-padded layout (None until layer K-1 has been scored).
        inputs: the pruned per-layer inputs (mask, rotary embeddings, text positions) for the
            layers from K on, built at layer K.
        held: the family's side features of layers >= K, held back from the decoder;
            ``features`` the same pruned to the kept tokens (after layer K-1).
        seconds: time spent in FastV's hooks (the patch's overhead).
    """

    prefill: Prefill
    results: list[Any] = field(default_factory=list)
    kept_rows: list[torch.Tensor] = field(default_factory=list)
    layout: Repadded | None = None
    inputs: dict[str, Any] | None = None
    held: LayerFeatures | None = None
    features: LayerFeatures | None = None
    seconds: float = 0.0

    @property
    def length(self) -> int:
        return int(self.prefill.input_ids.shape[1])

    @property
    def changed(self) -> bool:
        return self.layout is not None and bool((self.layout.n_dropped > 0).any())


class FastVHooks(MethodHooks):
    """FastV on one patched model (see the module docstring); ``method`` is a
    :class:`~omnizip.methods.fastv.FastVConfig` (its ``layer`` is K)."""

    def __init__(self, ctx: ModelContext, method: Any) -> None:
        self.ctx = ctx
        self.method = method
        self.layer = int(method.layer)
        self._state: FastVPrefill | None = None
        self._layer_ids: dict[int, int] = {}

    def attach(self) -> None:
        """Check the decoder fits, then hook layers K-1 and K.. (see the module docstring)."""
        decoder, layer, name = self.ctx.decoder, self.layer, self.method.name
        layers = decoder.layers
        n_layers = len(layers)
        if not 1 <= layer < n_layers:
            raise ValueError(
                f"config: method {name!r} prunes after decoder layer {layer} "
                f"(layer={layer}), but this model's decoder has {n_layers} layers; choose a "
                f"layer between 1 and {n_layers - 1}"
            )
        kinds = set(getattr(decoder.config, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise ValueError(
                f"config: method {name!r} supports decoders with full "
                f"attention only; this one has layer types {sorted(kinds)}"
            )
        self._layer_ids = {id(m): i for i, m in enumerate(layers)}
        self.ctx.pre_hook(layers[layer - 1].self_attn, self._on_scores)
        for i in range(layer, n_layers):
            self.ctx.pre_hook(layers[i], self._on_layer)
        for i in range(layer, min(self.ctx.side_feature_layers, n_layers)):
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
        state = FastVPrefill(prefill)
        state.seconds = time.perf_counter() - prefill.started
        self._state = state
        update, state.held = ctx.hold_back_features(prefill.kwargs, self.layer)
        return update or None

    def _on_scores(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Layer K-1's attention: the last real token's attention over all keys, from the
        layer's own q/k (no attention matrix); decide every row (FastVConfig.decide)."""
        state = self._state
        if state is None or state.layout is not None:
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
        ctx, prefill = self.ctx, state.prefill
        padding = prefill.padding.to(hidden.device)
        ids = prefill.input_ids.to(hidden.device)
        with torch.no_grad():
            query, keys = decoder_query_keys(module, hidden, rotary[0], rotary[1], last_real_index(padding))
            for b in range(hidden.shape[0]):
                valid = padding[b].nonzero().squeeze(1)
                decision = self.method.decide(
                    hidden[b, valid],
                    ids[b, valid],
                    query[b],
                    keys[b, valid],
                    audio_token_id=ctx.audio_token_id,
                    video_token_id=ctx.video_token_id,
                    image_token_id=ctx.image_token_id,
                    scale=float(module.scaling),
                )
                state.results.append(decision)
                state.kept_rows.append(valid[decision.keep.to(valid.device)])
        state.layout = repad_rows(state.kept_rows, padding, prefill.positions, prefill.text_row)
        if state.held is not None:
            state.features = state.held.pruned(state.layout)
        state.seconds += time.perf_counter() - started
        return None

    def _on_layer(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Layers K..: the kept tokens only. Layer K gathers the hidden states; every layer
        gets the pruned mask, rotary embeddings and text positions (the decoder builds those
        once for the whole prompt and hands the same ones to every layer)."""
        state = self._state
        if state is None or not state.changed:
            return None
        layout = state.layout
        assert layout is not None  # changed implies a layout
        hidden = args[0] if args else kwargs.get("hidden_states")
        new_kwargs = dict(kwargs)
        if state.inputs is None:  # layer K: prune
            if hidden is None or hidden.shape[1] != state.length:
                raise RuntimeError(
                    "omnizip: fastv expected the whole prompt entering decoder layer "
                    f"{self.layer}, got {None if hidden is None else tuple(hidden.shape)}"
                )
            started = time.perf_counter()
            index = layout.index.to(hidden.device)
            hidden = gather_tokens(hidden, index, fill=0, dim=1)
            state.inputs = self._layer_inputs(state, kwargs, hidden, index, layout.padding)
            # decode bookkeeping, exactly as for the methods that prune before the decoder
            self.ctx.begin_decode(state.length, layout)
            state.seconds += time.perf_counter() - started
            if args:
                args = (hidden, *args[1:])
            else:
                new_kwargs["hidden_states"] = hidden
        new_kwargs.update(state.inputs)
        return args, new_kwargs

    def _layer_inputs(
        self, state: FastVPrefill, kwargs: dict, hidden: torch.Tensor, index: torch.Tensor,
        padding: torch.Tensor,
    ) -> dict:
        """Mask, rotary embeddings and text positions of the pruned layout for layers K.."""
        from transformers.masking_utils import create_causal_mask

        out: dict[str, Any] = {}
        bsz = hidden.shape[0]
        padding = padding.to(hidden.device)
        rotary = kwargs.get("position_embeddings")
        if rotary is not None:
            out["position_embeddings"] = tuple(
                gather_tokens(t.expand(bsz, *t.shape[1:]), index.to(t.device), fill=0, dim=1)
                for t in rotary
            )
        text = kwargs.get("position_ids")
        if isinstance(text, torch.Tensor):
            text = renumber_text_row(text.expand(bsz, -1), state.prefill.padding, padding)
            out["position_ids"] = text
        mask2d = None if bool(padding.all()) else padding.long()
        out["attention_mask"] = create_causal_mask(
            config=self.ctx.decoder.config,
            inputs_embeds=hidden,
            attention_mask=mask2d,
            cache=kwargs.get("cache", kwargs.get("past_key_values")),
            position_ids=text if isinstance(text, torch.Tensor) else None,
            layer_idx=self.layer,
        )
        return out

    def _after_layer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """Side features (DeepStack) after a layer >= K, added at the kept tokens."""
        state = self._state
        if state is None or state.features is None:
            return None
        return state.features.add_after(self._layer_ids.get(id(module), -1), output)

    def end_prefill(self, kwargs: dict, output: Any) -> None:
        """Prune the cache of layers < K to the kept tokens (so every layer holds the same
        L' tokens and decoding is bookkept as for the other methods), publish the decisions."""
        state, self._state = self._state, None
        if state is None or state.layout is None:
            return
        layout = state.layout
        started = time.perf_counter()
        if state.changed:
            cache = getattr(output, "cache", None)
            if cache is None:
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and getattr(cache, "layers", None):
                prune_cache_layers(cache, range(self.layer), layout.index)
        before, after = int(state.prefill.padding.sum()), int(layout.padding.sum())
        state.seconds += time.perf_counter() - started
        self.ctx.record(
            state.results, state.kept_rows, [None] * len(state.results),
            time.perf_counter() - state.seconds, (before, after),
        )


def last_real_index(padding: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: the last real (non-pad) slot of each row of a bool ``[B, L]`` mask."""
    length = padding.shape[1]
    return (length - 1) - padding.flip(1).to(torch.int8).argmax(1).to(torch.int64)


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
