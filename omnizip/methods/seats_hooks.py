"""SEATS's model side: the encoder scores of Stage I and the decoder steps of Stages II-III.

:class:`SEATSHooks` (built by :meth:`SEATSConfig.model_hooks
<omnizip.methods.seats.SEATSConfig.model_hooks>`) hooks one patched model:

====================================  =======================================================
``visual.blocks[-1].attn`` (pre)      attention received per video token inside windows of
                                      ``grid_in_window`` frames (VisionZip's hooks, their
                                      spans widened): Stage I's video weights
(adapter) audio encoder's last layer  attention received inside ``audio_window_seconds``
                                      windows of each stream (``audio_score_window``)
(adapter) decoder entry               Stage I, :meth:`SEATSConfig.compress` on every row
``decoder.layers[K]`` (pre), K a      Stage II: the last text token's attention, with layer
drop step                             K-1's own input norm, q/k projections, rotary (and q/k
                                      norms) over the hidden states entering layer K; every
                                      row keeps its windows' budgets (``inner_keep``)
``decoder.layers[K]`` (pre), K the    Stage III: every audio/video token left goes
removal step
``decoder.layers[K..]`` (pre/post)    the kept tokens' inputs, side features, cache, decode
                                      bookkeeping (:mod:`omnizip.methods.decoder_pruning`)
====================================  =======================================================

Scoring with layer K-1's weights on layer K's input is what the release computes (it scores
after layer K-1 ran, with that layer's modules); docs/seats.md lists it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..method import MethodHooks
from ..models.context import ModelContext, Prefill
from .decoder_pruning import PrunedPrefill, check_decoder, last_real_index
from .fastv import fastv_attention
from .fastv_hooks import decoder_query_keys
from .seats_result import SEATSDecision
from .seats_select import inner_keep
from .visionzip_hooks import VisionZipHooks

__all__ = ["SEATSHooks"]


class SEATSHooks(MethodHooks):
    """SEATS on one patched model (see the module docstring); ``method`` is a
    :class:`~omnizip.methods.seats.SEATSConfig` as run on the model's family."""

    def __init__(self, ctx: ModelContext, method: Any) -> None:
        self.ctx = ctx
        self.method = method
        self.vision = VisionZipHooks(ctx, method, frames_per_span=method.grid_in_window)
        self.n_layers = len(ctx.decoder.layers)
        schedule = method.layer_schedule(self.n_layers)
        video, audio = method.step_ratios(self.n_layers)
        #: K -> (video keep, audio keep) of a drop, None for the removal
        self.steps: dict[int, tuple[float, float] | None] = dict(
            zip(schedule.effective_drops, zip(video, audio, strict=True), strict=True)
        )
        if schedule.removal is not None:
            self.steps[schedule.removal] = None
        self._state: PrunedPrefill | None = None
        self._layer_ids: dict[int, int] = {}

    def attach(self) -> None:
        check_decoder(self.ctx, self.method.name, sorted(self.steps))
        self.vision.attach()
        if not self.steps:
            return
        layers = self.ctx.decoder.layers
        self._layer_ids = {id(m): i for i, m in enumerate(layers)}
        first = min(self.steps)
        for i in range(first, len(layers)):
            self.ctx.pre_hook(layers[i], self._on_layer)
        for i in range(first, min(self.ctx.side_feature_layers, len(layers))):
            self.ctx.post_hook(layers[i], self._after_layer)

    def detach(self) -> None:
        self.vision.detach()
        self._state = None

    def end_call(self) -> None:
        self.vision.end_call()
        self._state = None

    def take_seconds(self) -> float:
        return self.vision.take_seconds()

    def video_scores(self, embeds: Any, is_video: Any) -> Any:
        return self.vision.video_scores(embeds, is_video)

    # -- the decoder ---------------------------------------------------------------------------
    def begin_prefill(self, prefill: Prefill) -> dict | None:
        """Follow the (Stage I-compressed) prefill through the decoder's steps."""
        ids, ctx = prefill.input_ids, self.ctx
        if not self.steps or not bool(((ids == ctx.audio_token_id) | (ids == ctx.video_token_id)).any()):
            return None
        self._state = PrunedPrefill(ctx, prefill, min(self.steps))
        return self._state.update or None

    def _on_layer(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        state = self._state
        if state is None:
            return None
        layer = self._layer_ids[id(module)]
        decide = None
        if layer in self.steps:
            def decide(hidden: torch.Tensor, kw: dict) -> list[torch.Tensor] | None:
                return self._decide(state, layer, hidden, kw)
        return state.enter_layer(layer, args, kwargs, decide)

    def _decide(self, state: PrunedPrefill, layer: int, hidden: torch.Tensor, kwargs: dict) -> list | None:
        """Per row, the current slots layers ``>= layer`` keep (a Stage II drop or III)."""
        ctx = self.ctx
        padding = state.padding.to(hidden.device)
        ids = state.ids.to(hidden.device)
        is_video, is_audio = ids == ctx.video_token_id, ids == ctx.audio_token_id
        media = (is_video | is_audio) & padding
        if not bool(media.any()):
            return None
        ratios = self.steps[layer]
        if ratios is None:  # Stage III: every audio/video token goes
            return [state.valid(b)[~media[b][padding[b]].to(state.padding.device)]
                    for b in range(hidden.shape[0])]
        current = state.inputs if state.inputs is not None else kwargs
        cos, sin = current["position_embeddings"]
        block = ctx.decoder.layers[layer - 1]
        with torch.no_grad():
            normed = block.input_layernorm(hidden)
            last = last_real_index(padding & ~is_video & ~is_audio)
            query, keys = decoder_query_keys(block.self_attn, normed, cos, sin, last)
            attention = fastv_attention(query, keys, key_mask=padding, scale=float(block.self_attn.scaling))
        kept = []
        for b in range(hidden.shape[0]):
            valid = state.valid(b)
            rows = valid.to(hidden.device)
            keep = inner_keep(attention[b, rows], is_video[b, rows], is_audio[b, rows], ratios[0],
                              ratios[1], self.method.temperature)
            kept.append(valid[keep.to(valid.device)])
        return kept

    def _after_layer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        state = self._state
        if state is None:
            return None
        return state.add_features(self._layer_ids.get(id(module), -1), output)

    def end_prefill(self, kwargs: dict, output: Any) -> None:
        """Cut the caches to the last step's tokens; publish every row's stages."""
        state, self._state = self._state, None
        if state is None:
            return
        state.finish(kwargs, output)
        prefill = state.prefill
        before, caller = prefill.before, prefill.caller_padding
        results: list[SEATSDecision] = []
        for b, stage1 in enumerate(before.results):
            real = caller[b].nonzero().squeeze(1)
            steps = []
            for layer, kept in state.history:
                slots = kept[b]
                if before.changed:
                    slots = before.index[b].to(slots.device)[slots]
                mask = torch.zeros(caller.shape[1], dtype=torch.bool, device=slots.device)
                mask[slots] = True
                steps.append((layer, mask[real.to(slots.device)].to(stage1.keep.device)))
            results.append(SEATSDecision(
                keep=stage1.keep, embeds=stage1.embeds, audio_positions=stage1.audio_positions,
                video_positions=stage1.video_positions, steps=tuple(steps), n_layers=self.n_layers,
            ))
        self.ctx.record(
            results, before.kept_indices, before.audio_scores, time.perf_counter() - state.seconds,
            (int(caller.sum()), int(state.padding.sum())), video_scores=before.video_scores,
            layer_tokens=[r.layer_tokens for r in results],
        )
