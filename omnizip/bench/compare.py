"""``omnizip bench --methods ... --flops-ratio F``: every method at the same decoder cost.

Each method's setting is solved so that its decoder prefill FLOPs (:mod:`omnizip.flops`,
counted layer by layer: what every decoder layer of the model sees) over the full prompt's
land at ``F``:

- the solver varies the method's ``retention`` only (every other option stays at its
  default) and bisects on the FLOPs ratio the token counts *predict* for the prompt (the
  ratio grows with the retention);
- the count model: a pre-decoder method with a budget keeps ``round(retention * N)`` audio +
  video tokens in every layer (the baselines exactly, OmniZip with ``budget="exact"`` to a
  token or two); FastV keeps the whole prompt in its first ``K`` layers and
  ``round(retention * N)`` after them (at least the audio, which it does not prune); SEATS's layers see Stage I's exact counts, then each
  drop's nominal count, none after the removal (:meth:`SEATSConfig.predict_layer_tokens
  <omnizip.methods.seats.SEATSConfig.predict_layer_tokens>`);
- FastV's ``K`` is the OmniZip paper's 5 of Qwen2.5-Omni-7B's 28 layers scaled to the
  model's depth (at least 1), the rule SEATS's schedule follows.

The table then reports the FLOPs ratio each run *measured* (the tokens the patched decoder's
layers saw), next to its prefill time, time to first token and peak memory. A ratio a method
cannot reach (FastV below what its first ``K`` full layers cost) is reported as what it got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..flops import decoder_dims, run_macs
from ..methods import get_method
from ..models import ADAPTERS
from ..models.frames import tokens_per_frame_from_grid

__all__ = ["FASTV_PAPER_LAYER", "bench_method", "predicted_layer_tokens", "solve_methods"]

#: the OmniZip paper's FastV layer K on Qwen2.5-Omni-7B (K of how many layers)
FASTV_PAPER_LAYER = (5, 28)
BISECTION_STEPS = 40


def bench_method(name: str, n_layers: int, **options: Any) -> Any:
    """``get_method(name, **options)``, FastV's ``K`` scaled to the depth unless given."""
    if name == "fastv" and "layer" not in options:
        k, depth = FASTV_PAPER_LAYER
        options["layer"] = max(1, min(n_layers - 1, round(k * n_layers / depth)))
    return get_method(name, **options)


def predicted_layer_tokens(method: Any, ids: torch.Tensor, *, audio_id: int, video_id: int,
                           tokens_per_frame: Any, n_layers: int) -> list[int]:
    """Tokens each decoder layer would see for the prompt ``ids`` ``[L]`` (see the module
    docstring's count model)."""
    predict = getattr(method, "predict_layer_tokens", None)
    if predict is not None:
        return predict(ids, audio_token_id=audio_id, video_token_id=video_id,
                       tokens_per_frame=tokens_per_frame, n_layers=n_layers)
    n_media = int(((ids == audio_id) | (ids == video_id)).sum())
    text = int(ids.numel()) - n_media
    budget = getattr(method, "token_budget", None)
    retention = getattr(method, "retention", None)
    kept = min(int(budget), n_media) if budget is not None else min(
        n_media, round((0.45 if retention is None else retention) * n_media))
    if "audio" not in getattr(method, "modalities", ("audio",)):  # FastV: audio is never pruned
        kept = max(kept, int((ids == audio_id).sum()))
    first = method.in_decoder_layer or 0
    return [int(ids.numel())] * first + [text + kept] * (n_layers - first)


def _solve(predict: Callable[[float], float], target: float) -> tuple[float, float]:
    """(retention, predicted ratio): the retention whose predicted ratio is closest to the
    target, by bisection on the (non-decreasing) prediction over (0, 1]."""
    lo, hi = 1e-4, 1.0
    best = min(((r, predict(r)) for r in (lo, hi)), key=lambda p: abs(p[1] - target))
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        got = predict(mid)
        if abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        if got < target:
            lo = mid
        else:
            hi = mid
    return best


def solve_methods(model: Any, inputs: dict, names: list[str], flops_ratio: float | None
                  ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Per method name, its configuration for the benchmark and how it was chosen."""
    thinker = getattr(model, "thinker", model)
    cfg = thinker.config
    dims = decoder_dims(model)
    ids = inputs["input_ids"][0].to("cpu")
    audio_id, video_id = int(cfg.audio_token_id), int(cfg.video_token_id)
    grid = inputs.get("video_grid_thw")
    merge = int(cfg.vision_config.spatial_merge_size)
    padding = torch.ones(1, ids.numel(), dtype=torch.bool)
    per_frame = tokens_per_frame_from_grid(ids[None], padding, grid, video_id, merge)[0] \
        if grid is not None else 1
    full = run_macs(dims, int(ids.numel()))
    layout = next(a for a in ADAPTERS if a.matches(model)).layout
    methods, settings = {}, {}
    for name in names:
        def ratio_at(retention: float | None, name: str = name) -> tuple[Any, float]:
            opts = {} if retention is None else {"retention": retention}
            method = bench_method(name, dims.layers, **opts).for_model(layout)  # as patched
            tokens = predicted_layer_tokens(method, ids, audio_id=audio_id, video_id=video_id,
                                            tokens_per_frame=per_frame, n_layers=dims.layers)
            return method, run_macs(dims, 0, layer_tokens=tokens) / full

        if flops_ratio is None:
            method, predicted = ratio_at(None)
            retention = getattr(method, "retention", None)
        else:
            retention, predicted = _solve(lambda r, f=ratio_at: f(r)[1], flops_ratio)
            method = ratio_at(retention)[0]
        methods[name] = bench_method(name, dims.layers, **({} if retention is None else {"retention": retention}))
        settings[name] = {"retention": retention, "predicted_flops_ratio": predicted,
                          "layer": getattr(methods[name], "in_decoder_layer", None)}
    return methods, settings
