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

from ..flops import flops_ratio
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


def evaluate(probe: ProbeModel, heldout: HeldOut, method: Any = None,
             name: str = FULL, retention: float = 1.0) -> dict[str, Any]:
    """One row: ``method`` (None: all tokens) on every held-out clip."""
    model = probe.model
    correct: dict[str, int] = {}
    totals = {"text": 0, "audio": 0, "video": 0, "kept_audio": 0, "kept_video": 0}
    handle = patch(model, method) if method is not None else None
    try:
        for variant, batches in heldout.batches.items():
            correct[variant] = 0
            for inputs, answers in batches:
                with torch.no_grad():
                    logits = model(**inputs, use_audio_in_video=True).logits
                correct[variant] += int((logits[:, -1].argmax(-1) == answers).sum())
                n_text, n_audio, n_video = _counts(inputs, model.config)
                totals["text"] += n_text
                totals["audio"] += n_audio
                totals["video"] += n_video
                if handle is not None and handle.results:
                    totals["kept_audio"] += sum(r.n_audio_kept for r in handle.results)
                    totals["kept_video"] += sum(r.n_video_kept for r in handle.results)
                else:
                    totals["kept_audio"] += n_audio
                    totals["kept_video"] += n_video
    finally:
        if handle is not None:
            handle.remove()
    layer = getattr(method, "in_decoder_layer", None) if method is not None else None
    n = heldout.n_per_variant
    n_rows = heldout.size
    ratio = flops_ratio(
        model.config, totals["text"] // n_rows, totals["audio"] // n_rows,
        totals["video"] // n_rows, round(totals["kept_audio"] / n_rows),
        round(totals["kept_video"] / n_rows), prune_layer=layer,
    )
    return {
        "method": name,
        "retention": retention,
        "kept": (totals["kept_audio"] + totals["kept_video"]) / (totals["audio"] + totals["video"]),
        "kept_audio": totals["kept_audio"] / totals["audio"],
        "kept_video": totals["kept_video"] / totals["video"],
        "accuracy": sum(correct.values()) / n_rows,
        "accuracy_by_variant": {v: c / n for v, c in correct.items()},
        "flops_ratio": ratio,
        "n": n_rows,
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


def retention_at_flops(config: Any, counts: tuple[int, int, int], target: float,
                       prune_layer: int | None) -> float | None:
    """The retention at which a method pruning after ``prune_layer`` (None: before the decoder)
    costs ``target`` of the full decoder FLOPs (:func:`omnizip.flops.flops_ratio`), for one
    prompt of ``counts = (text, audio, video)`` tokens; None when no retention reaches it.

    The cost depends only on how many tokens are kept, so this bisects on the kept count.
    """
    n_text, n_audio, n_video = counts
    total = n_audio + n_video

    def ratio(kept: int) -> float:
        kept_audio = min(kept, n_audio)
        return flops_ratio(config, n_text, n_audio, n_video, kept_audio, kept - kept_audio,
                           prune_layer=prune_layer)

    if ratio(0) > target + 1e-12:
        return None
    lo, hi = 0, total  # ratio(lo) <= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ratio(mid) <= target + 1e-12:
            lo = mid
        else:
            hi = mid
    kept = hi if ratio(hi) <= target + 1e-12 else lo
    return kept / total if kept else None

