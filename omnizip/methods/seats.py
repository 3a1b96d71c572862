"""``seats``: SEATS, stage-adaptive token selection (Xin et al., arXiv 2605.20035).

Three stages (the exact rules, the defaults' sources and every place where this differs
from the authors' release are in docs/seats.md):

I.   **Before the decoder** (:meth:`SEATSConfig.compress`): per temporal window and per
     modality (``grid_in_window`` video frames; ``audio_window_seconds`` of audio), keep
     ``encoder_ratio_scale`` times the modality's target by greedy max-min diversity over
     the decoder-input embeddings, distances weighted by the attention each token received
     in the encoder's last attention layer (inside the same windows).
II.  **Inside the decoder**, progressive drops after the schedule's layers: the last text
     token's attention (the layer's own q/k projections, rotary, q/k norms) ranks the audio
     and video tokens; the budget goes to temporal windows by ``softmax(mean score / T)``,
     within a window by modality demand, and each window keeps its top tokens. The per-step
     keep ratios come from a bisection so that the retention averaged over all layers meets
     the target (:mod:`.seats_schedule`).
III. **Late removal**: every audio/video token left is dropped before the removal layer.

Budget: ``video_ratio`` / ``audio_ratio`` are the release's per-modality targets, the share of
the modality's tokens kept **averaged over all decoder layers**; ``retention`` sets both
from one overall target, through the release's published pairs (:func:`ratio_pair`).
Decoder hooks: :mod:`omnizip.methods.seats_hooks`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.layout import build_layout
from ..method import DEFAULT_BLOCK_ELEMENTS, CompressionMethod, FamilyLayout
from ._common import (
    check_choice,
    check_int,
    check_ratio_open_closed,
    check_scores,
    prepare,
    video_frame_runs,
)
from .seats_hooks import SEATSHooks
from .seats_result import SEATSDecision
from .seats_schedule import LayerSchedule, derive_schedule, keep_ratios, ratio_pair
from .seats_select import divprune_windows, window_counts

__all__ = ["SEATSConfig", "SEATSDecision"]

#: one second of Qwen2.5-Omni audio (25 LLM tokens); the family layout sets Qwen3-Omni's 13
DEFAULT_AUDIO_FRAME_TOKENS = 25
#: the release's window temperature per family (``inner_llm_units*.py``)
TEMPERATURES = {"Qwen2.5-Omni": 0.1, "Qwen3-Omni": 0.3}
#: the overall retention when neither it nor the per-modality ratios are given (the
#: release's default pair, 0.30 / 0.65, is its "R=35" point)
DEFAULT_RETENTION = 0.35
SCHEDULES = ("exp",)


def _check_float(name: str, value: Any, low: float, low_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be a finite float {'>' if low_open else '>='} {low}, got {value!r}")


def _layers_tuple(value: Any) -> tuple[int, ...]:
    """Drop layers from a tuple/list of ints or the release's ``"16-18-20"`` / ``"16,18,20"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # one layer (a command line's "16" arrives as an int)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # --option drop_layers=16-18-20 arrives as ("16-18-20",)
    if isinstance(value, str):
        value = [p for p in value.replace("-", ",").split(",") if p.strip()]
    if isinstance(value, (list, tuple)):
        try:
            parsed = tuple(sorted({int(str(v).strip()) for v in value}))
        except ValueError:
            parsed = None
        if parsed is not None and all(v >= 1 for v in parsed):
            return parsed
    raise ValueError(f"drop_layers must be layer numbers >= 1 (e.g. (16, 18, 20) or '16-18-20'), got {value!r}")


@dataclass(frozen=True)
class SEATSConfig(CompressionMethod):
    """SEATS (see the module docstring; defaults are the release's, docs/seats.md).

    Attributes:
        retention: overall target (the layer-averaged share of audio + video tokens); sets
            ``video_ratio``/``audio_ratio`` from the release's pairs. Default: its R = 35 pair.
        video_ratio, audio_ratio: per-modality layer-averaged targets (give both, or neither).
        encoder_ratio_scale: Stage I keeps ``scale * ratio`` of each modality (capped at 1).
        grid_in_window: video frames (temporal grid steps) per Stage I window.
        audio_window_seconds: seconds of audio per Stage I window (and audio scoring window).
        audio_frame_tokens: LLM audio tokens per second; None: the family's (25; Qwen3-Omni 13).
        drop_layers: Stage II steps, "drop after layer d" (1-based, = FastV's K); None:
            derived from the decoder's depth (:func:`~.seats_schedule.derive_schedule`).
        late_block_layer: media are removed before this 1-based layer (K = value - 1); None:
            derived with ``drop_layers`` (give both or neither).
        window_temperature: of the softmax over the windows' mean scores; None: the family's
            (0.1; Qwen3-Omni 0.3).
        schedule: how the total drop is split over the steps: ``"exp"`` (1 : e : e^2 ...).
        family: the model family whose released settings apply (set when patched; None:
            Qwen2.5-Omni's).
        block_elements: soft cap on temporary block sizes (memory bound).
    """

    name: ClassVar[str] = "seats"

    retention: float | None = None
    video_ratio: float | None = None
    audio_ratio: float | None = None
    encoder_ratio_scale: float = 1.4
    grid_in_window: int = 2
    audio_window_seconds: int = 2
    audio_frame_tokens: int | None = None
    drop_layers: tuple[int, ...] | None = None
    late_block_layer: int | None = None
    window_temperature: float | None = None
    schedule: str = "exp"
    family: str | None = None
    block_elements: int = DEFAULT_BLOCK_ELEMENTS

    def __post_init__(self) -> None:
        if self.retention is not None:
            check_ratio_open_closed("retention", self.retention)
        given = [self.video_ratio is not None, self.audio_ratio is not None]
        if any(given) and (not all(given) or self.retention is not None):
            raise ValueError(
                "give retention, or both video_ratio and audio_ratio, not a mix: got retention="
                f"{self.retention!r}, video_ratio={self.video_ratio!r}, audio_ratio={self.audio_ratio!r}"
            )
        for name in ("video_ratio", "audio_ratio"):
            if getattr(self, name) is not None:
                check_ratio_open_closed(name, getattr(self, name))
        _check_float("encoder_ratio_scale", self.encoder_ratio_scale, 0.0)
        check_int("grid_in_window", self.grid_in_window, 1)
        check_int("audio_window_seconds", self.audio_window_seconds, 1)
        if self.audio_frame_tokens is not None:
            check_int("audio_frame_tokens", self.audio_frame_tokens, 1)
        if (self.drop_layers is None) != (self.late_block_layer is None):
            raise ValueError(
                f"give drop_layers and late_block_layer together (or neither, to derive both from "
                f"the decoder's depth), got drop_layers={self.drop_layers!r}, "
                f"late_block_layer={self.late_block_layer!r}"
            )
        if self.drop_layers is not None:
            object.__setattr__(self, "drop_layers", _layers_tuple(self.drop_layers))
            check_int("late_block_layer", self.late_block_layer, 2)
        if self.window_temperature is not None:
            _check_float("window_temperature", self.window_temperature, 0.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.family is not None and not isinstance(self.family, str):
            raise TypeError(f"family must be a family name or None, got {self.family!r}")
        check_int("block_elements", self.block_elements, 1024)

    # -- capabilities (omnizip.method) ------------------------------------------------------
    @property
    def needs_audio_scores(self) -> bool:
        return True

    @property
    def audio_score(self) -> str:
        return "windowed"

    @property
    def audio_score_window(self) -> int:
        """LLM audio tokens per scoring window: the Stage I audio window."""
        return self.audio_window_seconds * (self.audio_frame_tokens or DEFAULT_AUDIO_FRAME_TOKENS)

    @property
    def needs_video_scores(self) -> bool:
        return True

    @property
    def prunes_in_decoder(self) -> bool:
        return True

    def model_hooks(self, ctx: Any) -> SEATSHooks:
        """Vision-encoder scores and the decoder steps (:mod:`omnizip.methods.seats_hooks`)."""
        return SEATSHooks(ctx, self)

    def for_model(self, layout: FamilyLayout) -> SEATSConfig:
        """As run on ``layout``'s family: its audio token rate and released settings."""
        method = super().for_model(layout)
        assert isinstance(method, SEATSConfig)
        return method if method.family is not None else dataclasses.replace(method, family=layout.name)

    # -- the budget ----------------------------------------------------------------------------
    @property
    def targets(self) -> tuple[float, float]:
        """(video, audio) layer-averaged targets."""
        if self.video_ratio is not None and self.audio_ratio is not None:
            return float(self.video_ratio), float(self.audio_ratio)
        return ratio_pair(DEFAULT_RETENTION if self.retention is None else self.retention, self.family)

    @property
    def encoder_ratios(self) -> tuple[float, float]:
        """(video, audio) Stage I keep ratios: ``min(1, scale * target)``."""
        return tuple(min(1.0, self.encoder_ratio_scale * t) for t in self.targets)  # type: ignore[return-value]

    @property
    def temperature(self) -> float:
        if self.window_temperature is not None:
            return float(self.window_temperature)
        return TEMPERATURES.get(self.family or "", TEMPERATURES["Qwen2.5-Omni"])

    def layer_schedule(self, n_layers: int) -> LayerSchedule:
        """Where the steps act in a decoder of ``n_layers`` layers (given or derived)."""
        if self.drop_layers is None or self.late_block_layer is None:
            return derive_schedule(n_layers, self.family)
        return LayerSchedule(n_layers, tuple(self.drop_layers), int(self.late_block_layer) - 1)

    def step_ratios(self, n_layers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(video, audio) keep ratio of every effective drop step (bisection, per modality)."""
        layers = self.layer_schedule(n_layers)
        (tv, ta), (ev, ea) = self.targets, self.encoder_ratios
        return (keep_ratios(layers, tv, ev, self.schedule), keep_ratios(layers, ta, ea, self.schedule))

    # -- Stage I ------------------------------------------------------------------------------
    def compress(self, embeds, input_ids, *, audio_token_id, video_token_id, tokens_per_frame,
                 audio_scores=None, video_scores=None) -> SEATSDecision:
        """Stage I on one row: windowed, attention-weighted diversity selection per modality.

        ``audio_scores`` / ``video_scores``: one encoder-attention weight per audio / video
        token (the method's hooks and the adapter supply them, scored inside the same windows).
        Embeddings are not changed (``embeds`` is returned as is, not copied).
        """
        layout = prepare(embeds, input_ids, audio_token_id, video_token_id, tokens_per_frame)
        device = embeds.device
        keep = torch.ones(layout.length, dtype=torch.bool, device=device)
        ratio_v, ratio_a = self.encoder_ratios
        for what, positions, scores, lengths, ratio in (
            ("video", layout.video_positions, video_scores, self.video_windows(layout), ratio_v),
            ("audio", layout.audio_positions, audio_scores, self.audio_windows(layout.n_audio), ratio_a),
        ):
            n = positions.numel()
            if n == 0:
                continue
            if scores is None:
                raise ValueError(
                    f"{what}_scores: seats weighs its {n} {what} tokens by the attention they "
                    f"received in the {what} encoder's last layer; patch a model (its hooks "
                    "compute them) or pass one score per token"
                )
            scores = check_scores(f"{what}_scores", scores, n, f"{what} token").to(device)
            pos = positions.to(device)
            keep[pos] = divprune_windows(
                embeds[pos], scores, lengths, window_counts(lengths, ratio), self.block_elements
            )
        return SEATSDecision(
            keep=keep, embeds=embeds, audio_positions=layout.audio_positions.to(device),
            video_positions=layout.video_positions.to(device),
        )

    def predict_layer_tokens(self, input_ids: torch.Tensor, *, audio_token_id: int, video_token_id: int,
                             tokens_per_frame: Any, n_layers: int) -> list[int]:
        """Tokens each decoder layer sees for the row ``input_ids``, without running anything:
        Stage I's counts exactly (they depend on the windows only), each drop step's nominal
        ``max(1, round(ratio * count))`` per modality (the windowed budgets can differ from it
        by a few tokens), none after the removal. For choosing a setting (``omnizip bench``)."""
        layout = build_layout(input_ids, audio_token_id, video_token_id, tokens_per_frame)
        ratio_v, ratio_a = self.encoder_ratios
        counts = [
            int(window_counts(self.video_windows(layout), ratio_v).sum()) if layout.n_video else 0,
            int(window_counts(self.audio_windows(layout.n_audio), ratio_a).sum()) if layout.n_audio else 0,
        ]
        text = layout.length - layout.n_audio - layout.n_video
        layers = self.layer_schedule(n_layers)
        steps = dict(zip(layers.effective_drops, zip(*self.step_ratios(n_layers), strict=True), strict=True))
        out = []
        for layer in range(n_layers):
            if layer == layers.removal:
                counts = [0, 0]
            elif layer in steps:
                counts = [max(1, round(r * c)) if c else 0 for r, c in zip(steps[layer], counts, strict=True)]
            out.append(text + sum(counts))
        return out

    def video_windows(self, layout: Any) -> torch.Tensor:
        """int64 ``[W]`` (host): video tokens per Stage I window, ``grid_in_window`` frames each,
        frames counted in order over all video of the row (a chunk's partial tail is a frame)."""
        _, frame_lengths, _ = video_frame_runs(layout)
        if frame_lengths.numel() == 0:
            return frame_lengths
        group = torch.arange(frame_lengths.numel()) // self.grid_in_window
        return torch.zeros(int(group[-1]) + 1, dtype=torch.int64).index_add_(0, group, frame_lengths)

    def audio_windows(self, n_audio: int) -> torch.Tensor:
        """int64 ``[W]`` (host): audio tokens per Stage I window, over all audio of the row."""
        width = self.audio_score_window
        lengths = [width] * (n_audio // width) + ([n_audio % width] if n_audio % width else [])
        return torch.tensor(lengths, dtype=torch.int64)
