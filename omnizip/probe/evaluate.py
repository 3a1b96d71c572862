"""Accuracy of compression methods on the probe: each method at each retention, one held-out set.

Every method is built by name from the registry (:func:`omnizip.methods.get_method`) with its
own ``retention=`` budget, patched onto the probe model with :func:`omnizip.patch` and run on the
same held-out clips, processed once. A row reports the accuracy (overall and per variant) and
what the decoder saw: kept shares of all audio + video tokens, of audio and of video, and the
decoder FLOPs ratio of :func:`omnizip.flops.flops_ratio` (in-decoder methods counted with their
prune layer).

Method options the probe model needs (:data:`PROBE_OPTIONS`): FastV prunes after decoder layer
``K``; the probe's decoder has 4 layers, so ``K = 1`` (a quarter of the depth, near the OmniZip
paper's ``K = 5`` of 28) instead of the default 5, which this model does not have. And audio
competes with video in FastV's ranking (``modalities=("audio", "video")``): with video alone
as candidates, the audio (41% of the probe's tokens) would stay whole and FastV could not go
below 41% retention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..flops import decoder_dims, run_macs
from ..methods import METHODS, get_method
from ..patch import patch
from .model import ProbeModel
from .task import VARIANTS, build_batch, make_sample
from .train import heldout_seeds

__all__ = [
    "FULL",
    "PROBE_OPTIONS",
    "HeldOut",
    "default_methods",
    "evaluate",
    "heldout_set",
    "predicted_flops",
    "probe_method",
    "retention_at_flops",
    "sweep",
]

FULL = "full"
#: per-method options the probe model needs (see the module docstring)
PROBE_OPTIONS: dict[str, dict[str, Any]] = {
    "fastv": {"layer": 1, "modalities": ("audio", "video")},
}


def default_methods() -> list[str]:
    """Every registry method that is not a paper ablation (methods added later included)."""
    return [name for name, entry in METHODS.items() if not entry.fixed]


def probe_method(name: str, retention: float, **options: Any) -> Any:
    """Method ``name`` at ``retention`` with the probe's options (:data:`PROBE_OPTIONS`)."""
    return get_method(name, **{**PROBE_OPTIONS.get(name, {}), **options, "retention": retention})


@dataclass
class HeldOut:
    """Processed held-out clips: per variant, batches of ``(inputs, answers [B])``."""

    batches: dict[str, list[tuple[Any, torch.Tensor]]]
    n_per_variant: int

    @property
    def size(self) -> int:
        return self.n_per_variant * len(self.batches)


def heldout_set(probe: ProbeModel, n_per_variant: int, batch: int = 16) -> HeldOut:
    """The first ``n_per_variant`` held-out clips of each variant, through the processor.

    Batches hold one variant each, so rows share one prompt length (no padding).
    """
    if isinstance(n_per_variant, bool) or not isinstance(n_per_variant, int) or n_per_variant < 1:
        raise ValueError(f"n_per_variant must be an int >= 1, got {n_per_variant!r}")
    seeds = heldout_seeds(n_per_variant)
    batches: dict[str, list[tuple[Any, torch.Tensor]]] = {}
    for variant in VARIANTS:
        batches[variant] = []
        for start in range(0, n_per_variant, batch):
            samples = [make_sample(probe.task, variant, s) for s in seeds[start:start + batch]]
            inputs, answers = build_batch(probe.processor, samples)
            batches[variant].append((inputs, torch.from_numpy(answers)))
    return HeldOut(batches=batches, n_per_variant=n_per_variant)


def _counts(inputs: Any, config: Any) -> tuple[int, int, int]:
    ids = inputs["input_ids"]
    n_audio = int((ids == config.audio_token_index).sum())
    n_video = int((ids == config.video_token_index).sum())
    return int(ids.numel()) - n_audio - n_video, n_audio, n_video


def _row_macs(dims: Any, handle: Any, inputs: Any) -> tuple[int, int]:
    """(compressed, full) decoder MACs summed over a batch's rows: what each layer saw."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    lengths = (mask.sum(-1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1]))
    full = sum(run_macs(dims, int(n)) for n in lengths.tolist())
    if handle is None or not handle.results:
        return full, full
    if handle.layer_tokens is not None:  # in-decoder pruning (FastV, SEATS)
        return sum(run_macs(dims, 0, layer_tokens=t) for t in handle.layer_tokens), full
    return sum(run_macs(dims, int(k)) for k in
               (len(idx) for idx in handle.kept_indices)), full


def evaluate(probe: ProbeModel, heldout: HeldOut, method: Any = None,
             name: str = FULL, retention: float = 1.0) -> dict[str, Any]:
    """One row: ``method`` (None: all tokens) on every held-out clip.

    ``kept*`` are shares of the audio + video tokens the method kept (for in-decoder methods,
    what reached the layers after their pruning); ``flops_ratio`` is the decoder prefill cost
    over the full run's, from the tokens every layer saw (:func:`omnizip.flops.run_macs`).
    """
    model = probe.model
    dims = decoder_dims(model)
    correct: dict[str, int] = {}
    totals = {"audio": 0, "video": 0, "kept_audio": 0, "kept_video": 0, "macs": 0, "full_macs": 0}
    handle = patch(model, method) if method is not None else None
    try:
        for variant, batches in heldout.batches.items():
            correct[variant] = 0
            for inputs, answers in batches:
                with torch.no_grad():
                    logits = model(**inputs, use_audio_in_video=True).logits
                correct[variant] += int((logits[:, -1].argmax(-1) == answers).sum())
                _, n_audio, n_video = _counts(inputs, model.config)
                totals["audio"] += n_audio
                totals["video"] += n_video
                if handle is not None and handle.results:
                    totals["kept_audio"] += sum(r.n_audio_kept for r in handle.results)
                    totals["kept_video"] += sum(r.n_video_kept for r in handle.results)
                else:
                    totals["kept_audio"] += n_audio
                    totals["kept_video"] += n_video
                macs, full = _row_macs(dims, handle, inputs)
                totals["macs"] += macs
                totals["full_macs"] += full
    finally:
        if handle is not None:
            handle.remove()
    n = heldout.n_per_variant
    return {
        "method": name,
        "retention": retention,
        "kept": (totals["kept_audio"] + totals["kept_video"]) / (totals["audio"] + totals["video"]),
        "kept_audio": totals["kept_audio"] / totals["audio"],
        "kept_video": totals["kept_video"] / totals["video"],
        "accuracy": sum(correct.values()) / heldout.size,
        "accuracy_by_variant": {v: c / n for v, c in correct.items()},
        "flops_ratio": totals["macs"] / totals["full_macs"],
        "n": heldout.size,
    }


def sweep(
    probe: ProbeModel,
    heldout: HeldOut,
    methods: Iterable[str],
    retentions: Iterable[float],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The full-token row, then every method at every retention (methods in the given order)."""
    rows = [evaluate(probe, heldout)]
    for name in methods:
        for retention in retentions:
            if progress is not None:
                progress(f"{name} at retention {retention:g}")
            rows.append(evaluate(probe, heldout, probe_method(name, retention), name, retention))
    return rows


def predicted_flops(probe: ProbeModel, heldout: HeldOut, name: str, retention: float,
                    **options: Any) -> float:
    """Method ``name``'s decoder prefill cost at ``retention`` over the full run's, predicted
    from token counts on the held-out prompts' layout by the count model of ``omnizip bench
    --flops-ratio`` (:func:`omnizip.bench.compare.predicted_layer_tokens`: a pre-decoder
    method keeps ``round(retention * N)`` tokens in every layer, FastV all of them before its
    layer, SEATS its schedule's counts)."""
    from ..bench.compare import predicted_layer_tokens
    from ..models.frames import tokens_per_frame_from_grid

    model = probe.model
    dims = decoder_dims(model)
    inputs = next(iter(heldout.batches.values()))[0][0]
    ids = inputs["input_ids"][0]
    cfg = model.config
    per_frame = tokens_per_frame_from_grid(
        ids[None], torch.ones(1, ids.numel(), dtype=torch.bool), inputs["video_grid_thw"][:1],
        int(cfg.video_token_id), int(cfg.vision_config.spatial_merge_size))[0]
    tokens = predicted_layer_tokens(probe_method(name, retention, **options), ids,
                                    audio_id=int(cfg.audio_token_id),
                                    video_id=int(cfg.video_token_id),
                                    tokens_per_frame=per_frame, n_layers=dims.layers)
    return run_macs(dims, 0, layer_tokens=tokens) / run_macs(dims, int(ids.numel()))


def retention_at_flops(probe: ProbeModel, heldout: HeldOut, name: str, target: float,
                       **options: Any) -> tuple[float, float]:
    """(retention, predicted FLOPs ratio): the ``retention`` at which method ``name`` is
    predicted (:func:`predicted_flops`) to cost ``target`` of the full decoder prefill.

    Bisection on the retention, whose predicted cost never falls as it grows. A target a
    method cannot reach (FastV below the cost of its full first layers) gives the closest it
    gets.
    """
    def predicted(retention: float) -> float:
        return predicted_flops(probe, heldout, name, retention, **options)

    lo, hi = 1e-3, 1.0
    best = min(((r, predicted(r)) for r in (lo, hi)), key=lambda p: abs(p[1] - target))
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        got = predicted(mid)
        if abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        lo, hi = (mid, hi) if got < target else (lo, mid)
    return best
