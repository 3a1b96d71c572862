"""SEATS's layer schedule: where tokens are dropped inside the decoder and how many per step.

Three pieces of plain arithmetic (no tensors), each the release's rule restated
(docs/seats.md, "Stage II" and "Layer schedules"):

- :func:`keep_ratios`: the per-step keep ratios of the progressive drops, found by bisection
  so that the multimodal retention averaged over all decoder layers meets the target;
- :func:`derive_schedule`: the drop layers and the removal layer of a decoder of any depth,
  scaled from the family's released schedule;
- :func:`ratio_pair`: the per-modality targets (video, audio) of an overall retention, read off
  the release's published operating points.

Layer numbers follow FastV's ``K``: "a step at K" means layers ``0 .. K-1`` (0-based) see the
tokens before the step and layers ``K ..`` the tokens after it. The release writes its drop
layers the same way (``progressive_drop_layers: 16-18-20`` drops after the 16th layer) and its
``late_block_layer`` one higher (``24``: media are gone *before* the 24th layer, K = 23).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

__all__ = [
    "RATIO_PAIRS",
    "REFERENCE_SCHEDULES",
    "LayerSchedule",
    "derive_schedule",
    "keep_ratios",
    "ratio_pair",
]

#: bisection steps of :func:`keep_ratios` (the release's count; the interval is then 2^-50)
BISECTION_STEPS = 50
#: the release rounds every solved per-step keep ratio to this many decimals
RATIO_DECIMALS = 4


@dataclass(frozen=True)
class LayerSchedule:
    """Where SEATS acts inside a decoder of ``n_layers`` layers (FastV-style ``K`` values).

    Attributes:
        n_layers: decoder depth.
        drops: strictly increasing progressive-drop steps (Stage II), each in ``1 .. n-1``.
        removal: the step that removes every audio/video token (Stage III), or None.
    """

    n_layers: int
    drops: tuple[int, ...]
    removal: int | None

    @property
    def effective_drops(self) -> tuple[int, ...]:
        """The drops before the removal (later ones have no media left to drop)."""
        if self.removal is None:
            return self.drops
        return tuple(k for k in self.drops if k < self.removal)


#: the release's schedules: family -> (depth, drop steps K, removal step K). Qwen2.5-Omni-7B
#: (``seats/config.yaml``: drop layers 16-18-20, late block layer 24) and Qwen3-Omni-30B-A3B
#: (``seats/config_qwen3_30b.yaml``: 27-31-35, late block layer 40).
REFERENCE_SCHEDULES: dict[str, tuple[int, tuple[int, ...], int]] = {
    "Qwen2.5-Omni": (28, (16, 18, 20), 23),
    "Qwen3-Omni": (48, (27, 31, 35), 39),
}

#: the release's evaluation settings: family -> ((overall retention R, video ratio, audio
#: ratio), ...), from ``scripts/eval_qwen2_5_omni_seats.sh`` ("R=35" .. "R=10") and
#: ``scripts/eval_qwen3_omni_seats.sh`` (the same four points, same order, unlabelled).
RATIO_PAIRS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "Qwen2.5-Omni": ((0.10, 0.06, 0.35), (0.15, 0.10, 0.45), (0.25, 0.20, 0.55), (0.35, 0.30, 0.65)),
    "Qwen3-Omni": ((0.10, 0.07, 0.45), (0.15, 0.12, 0.50), (0.25, 0.22, 0.60), (0.35, 0.32, 0.70)),
}

#: the family whose tables apply when none is known (a method used outside a model)
DEFAULT_FAMILY = "Qwen2.5-Omni"


def ratio_pair(retention: float, family: str | None = None) -> tuple[float, float]:
    """``(video_ratio, audio_ratio)`` for an overall retention ``R`` in (0, 1].

    The release evaluates four hand-set pairs per family; between them (and from the lowest
    to ``(0, 0)`` at ``R = 0``, from the highest to ``(1, 1)`` at ``R = 1``) each ratio is
    interpolated linearly in ``R``, so the pair is monotone in ``R`` and exact at the
    released points.
    """
    table = RATIO_PAIRS.get(family or DEFAULT_FAMILY, RATIO_PAIRS[DEFAULT_FAMILY])
    points = ((0.0, 0.0, 0.0), *table, (1.0, 1.0, 1.0))
    r = min(max(float(retention), 0.0), 1.0)
    for (r0, v0, a0), (r1, v1, a1) in itertools.pairwise(points):
        if r <= r1:
            t = (r - r0) / (r1 - r0)
            return v0 + t * (v1 - v0), a0 + t * (a1 - a0)
    return 1.0, 1.0  # pragma: no cover - r <= 1 always meets the last point


def derive_schedule(n_layers: int, family: str | None = None) -> LayerSchedule:
    """The family's released schedule, scaled to a decoder of ``n_layers`` layers.

    At the released depth it is the release's own. Elsewhere every step ``K`` becomes
    ``round(K * n_layers / depth)``; the steps are then made distinct and kept inside
    ``1 .. n_layers - 1`` (each at most one below the next, then at least one above the
    previous). A decoder too shallow for three drops and a removal (fewer than 5 layers)
    keeps the removal and the earliest drops that fit: 4 layers -> drops (1, 2), removal 3;
    3 -> (1,), 2; 2 -> (), 1; 1 layer -> nothing inside the decoder.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
    depth, drops, removal = REFERENCE_SCHEDULES.get(
        family or DEFAULT_FAMILY, REFERENCE_SCHEDULES[DEFAULT_FAMILY]
    )
    if n_layers == depth:
        return LayerSchedule(n_layers, drops, removal)
    room = min(len(drops) + 1, n_layers - 1)
    if room <= 0:
        return LayerSchedule(n_layers, (), None)
    steps = [round(k * n_layers / depth) for k in (*drops[: room - 1], removal)]
    steps[-1] = min(steps[-1], n_layers - 1)
    for i in range(len(steps) - 2, -1, -1):  # at most one below the next
        steps[i] = min(steps[i], steps[i + 1] - 1)
    steps[0] = max(steps[0], 1)
    for i in range(1, len(steps)):  # at least one above the previous
        steps[i] = max(steps[i], steps[i - 1] + 1)
    return LayerSchedule(n_layers, tuple(steps[:-1]), steps[-1])


def _drop_weights(n_drops: int, schedule: str) -> list[float]:
    """Normalised share of the total drop taken by each step: ``e^i`` (1 : e : e^2 ...)."""
    if schedule != "exp":
        raise ValueError(f"schedule must be 'exp' (the release's only schedule), got {schedule!r}")
    raw = [math.exp(i) for i in range(n_drops)]
    return [w / sum(raw) for w in raw]


def keep_ratios(
    layers: LayerSchedule, target: float, start: float, schedule: str = "exp"
) -> tuple[float, ...]:
    """Per-drop keep ratios so that the layer-averaged retention of one modality is ``target``.

    The model: the decoder input holds ``start`` (Stage I's share, e.g. ``1.4 * target``) of
    the modality; drop step ``i`` removes ``x * start * w_i`` of it (``w`` from
    :func:`_drop_weights`), so the level after step ``i`` is ``start - x * start * sum(w_<=i)``
    (never below 0); layers from the removal on hold none. ``x`` in [0, 1] is chosen by
    bisection so that ``sum over layers of the level`` equals ``target * n_layers`` (x = 0
    when even no drop stays above it, 1 when even dropping everything stays below). Step
    ``i`` keeps ``level_{i+1} / level_i`` of the tokens left, rounded to 4 decimals.

    Returns one ratio per :attr:`LayerSchedule.effective_drops` entry (empty without drops).
    """
    drops = layers.effective_drops
    if not drops:
        return ()
    end = layers.n_layers if layers.removal is None else min(layers.removal, layers.n_layers)
    bounds = (0, *drops, end)
    spans = [b - a for a, b in itertools.pairwise(bounds)]
    weights = _drop_weights(len(drops), schedule)

    def levels(x: float, floor: float) -> list[float]:
        out, level = [start], start
        for w in weights:
            level = max(level - x * start * w, floor)
            out.append(level)
        return out

    def layer_sum(x: float) -> float:
        return sum(span * level for span, level in zip(spans, levels(x, 0.0), strict=True))

    goal = target * layers.n_layers
    if goal >= layer_sum(0.0):
        x = 0.0
    elif goal <= layer_sum(1.0):
        x = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2.0
            if layer_sum(mid) > goal:
                lo = mid
            else:
                hi = mid
        x = (lo + hi) / 2.0
    lv = levels(x, 1e-12)
    return tuple(
        round(lv[i + 1] / lv[i], RATIO_DECIMALS) if lv[i] > 1e-12 else 0.0 for i in range(len(drops))
    )
