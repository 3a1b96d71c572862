"""OmniZip configuration: one validated dataclass (algorithm §2, options of section 7).

It lives in the core because it is part of the algorithm's definition, and so does
``compress``, what the package's method protocol calls. The core imports nothing from the
rest of the package, so the protocol itself (``omnizip.method.CompressionMethod``: hooks,
per-family defaults) is added by the subclass ``omnizip/config.py`` exports as
``omnizip.OmniZipConfig``; this class is its base and what :func:`compress_sequence` accepts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch

from .causal import decide
from .history import CausalHistory
from .results import CompressionResult
from .scores import audio_energy_scores
from .select import DEFAULT_BLOCK_ELEMENTS
from .similarity import float32_safe
from .validate import check_inputs

BUDGET_MODES = ("reference", "exact")
MERGE_SCOPES = ("global", "window")
AUDIO_SCORE_MODES = ("global", "windowed", "energy")
AUDIO_SELECTIONS = ("score", "random")
FRAME_PARITIES = ("chunk", "stream")
RETENTION_SPLITS = ("scale", "shift", "even")

# The paper's two operating points (algorithm §2): name -> (rho_audio, rho_video).
PRESETS: dict[str, tuple[float, float]] = {"45": (0.3, 0.6), "35": (0.4, 0.7)}
# torch generators take 64-bit seeds; the signed range is the one every backend accepts.
MAX_SEED = 2**63 - 1


def _check_ratio(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}, got {value}")


@dataclass(frozen=True)
class OmniZipConfig:
    """How much OmniZip compresses, and which of the algorithm §7 options it uses.

    Attributes (the paper's symbols in brackets; defaults are the paper's 45%-retention setting):
        rho_audio: [rho_a] fraction of audio tokens NOT chosen as salient.
        rho_video: [rho_v] target fraction of all video tokens dropped.
        contextual_ratio: [c] anchors per audio token (anchors = round(c * N_a)).
        g: [G] at most this many non-salient audio tokens are merged into each anchor
            (0 disables merging; the paper uses 15 on AVUT and 3 elsewhere). Any size is
            fine: work and memory depend on the tokens that can merge, not on ``g``.
        min_ratio, max_ratio: [r_min, r_max] bounds of a window's video compression ratio.
        knn: [k] neighbours in the DPC-kNN density of the spatial step.
        budget: "reference" (algorithm §4 step 7, the published normalisation, which may miss the
            budget because of its clamps) or "exact" (algorithm §7: one shift of all window ratios
            plus per-frame rounding so the kept video count is exactly round((1-rho_v) N_v)).
        merge_scope: "global" (algorithm §4 step 3: merge score against all video tokens) or
            "window" (algorithm §7: only the video of the token's own time window, as the paper's
            text describes; linear time in the clip length).
        audio_score: how model adapters score audio tokens (algorithm §3): "global" attention over
            each whole audio stream (reference), "windowed" attention inside the encoder's own
            attention windows, or "energy" (L2 norm of each audio token's embedding).
        retention: optional overall target, the fraction of audio+video tokens kept. When set,
            rho_audio and rho_video are resolved per sequence so the expected kept count meets
            it, by the rule ``retention_split`` names (:meth:`resolve_ratios`).
        token_budget: optional absolute number of audio+video tokens to keep per sequence,
            resolved like ``retention``. Use ``budget="exact"`` to meet either exactly.
        retention_split: how a ``retention`` / ``token_budget`` target is split between audio
            and video (algorithm §7): ``"scale"`` (default) multiplies the kept fractions of
            this config's rho_audio / rho_video by one factor, so their audio:video proportion
            is kept; ``"shift"`` moves both rho by one additive amount (the rule before
            ``"scale"``; it drives video towards zero when audio dominates the tokens);
            ``"even"`` keeps the same fraction of each modality (the baselines' split).
            Without a target it changes nothing.
        frame_parity: ``"chunk"`` (reference: ISTC frame parity restarts in every video
            chunk), ``"stream"`` (parity runs along each interleaved audio-video stream, and
            an odd frame is compared with the previous frame even across chunks), or None
            (default): the model's layout decides: ``"chunk"`` for Qwen2.5-Omni and the bare
            core, ``"stream"`` for Qwen3-Omni, whose layout puts one frame in each chunk so
            that per-chunk parity would never run the temporal half of ISTC.
        dynamic_ratios: ablation switch. False gives every video chunk ``rho_video`` (no
            audio guidance of the video ratios); the paper's "w/o dynamic ratio" ablation.
        merge_anchors: ablation switch. False keeps the anchors as they are (same token
            count, no merging); the paper's "w/o anchor merging" ablation.
        audio_selection: ``"score"`` (algorithm §4 step 1) or ``"random"``: salient audio chosen
            uniformly at random (seeded by ``seed``); the paper's "ISTC + random audio" ablation.
        seed: seed of ``audio_selection="random"``, in [0, 2**63 - 1].
        block_elements: soft cap on the elements of any temporary similarity block; bounds
            peak memory for long inputs (algorithm §6.6). Results do not depend on it.
        causal: streams (algorithm §9): every decision for window ``i`` is a function of
            windows ``<= i`` only, so appending windows never changes a decided one, and a
            stream can be decided window by window with a :class:`~omnizip.core.CausalHistory`
            (``compress_sequence(..., history=...)``). Not combinable with ``budget="exact"``
            or ``token_budget`` (both need the whole stream's counts); ``retention`` is resolved
            from the first window's token mix.
        causal_lookback: K, the windows a causal decision may look back over (the window
            itself and the K-1 before it), an int >= 2; 8 windows are 16 s on Qwen2.5-Omni.
    """

    name: ClassVar[str] = "omnizip"  # the method registry's name

    rho_audio: float = 0.3
    rho_video: float = 0.6
    contextual_ratio: float = 0.05
    g: int = 3
    min_ratio: float = 0.35
    max_ratio: float = 0.75
    knn: int = 5
    budget: str = "reference"
    merge_scope: str = "global"
    audio_score: str = "global"
    retention: float | None = None
    token_budget: int | None = None
    retention_split: str = "scale"
    frame_parity: str | None = None
    dynamic_ratios: bool = True
    merge_anchors: bool = True
    audio_selection: str = "score"
    seed: int = 0
    block_elements: int = DEFAULT_BLOCK_ELEMENTS
    causal: bool = False
    causal_lookback: int = 8

    def __post_init__(self) -> None:
        for name in ("rho_audio", "rho_video", "contextual_ratio", "min_ratio", "max_ratio"):
            _check_ratio(name, getattr(self, name))
        if self.min_ratio > self.max_ratio:
            raise ValueError(
                f"min_ratio must be <= max_ratio, got min_ratio={self.min_ratio} "
                f"> max_ratio={self.max_ratio}"
            )
        _check_int("g", self.g, 0)
        _check_int("knn", self.knn, 1)
        _check_int("block_elements", self.block_elements, 1024)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("causal_lookback", self.causal_lookback, 2)
        for name in ("dynamic_ratios", "merge_anchors", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, allowed in (
            ("budget", BUDGET_MODES),
            ("merge_scope", MERGE_SCOPES),
            ("audio_score", AUDIO_SCORE_MODES),
            ("audio_selection", AUDIO_SELECTIONS),
            ("frame_parity", (*FRAME_PARITIES, None)),
            ("retention_split", RETENTION_SPLITS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.retention is not None and self.token_budget is not None:
            raise ValueError("give at most one of retention and token_budget, got both")
        if self.retention is not None:
            if isinstance(self.retention, bool) or not isinstance(self.retention, (int, float)):
                raise TypeError(f"retention must be a float in (0, 1], got {self.retention!r}")
            if not (math.isfinite(self.retention) and 0.0 < self.retention <= 1.0):
                raise ValueError(f"retention must lie in (0, 1], got {self.retention!r}")
        if self.token_budget is not None:
            _check_int("token_budget", self.token_budget, 0)
        if self.causal:
            self._check_causal()

    def _check_causal(self) -> None:
        """Options that need the whole stream's counts have no causal meaning (algorithm §9)."""
        if self.budget == "exact":
            raise ValueError(
                'causal=True cannot be combined with budget="exact": an exact whole-stream '
                "budget needs the whole stream's token counts before the first window is "
                'decided; use budget="reference" (the default) with causal=True'
            )
        if self.token_budget is not None:
            raise ValueError(
                f"causal=True cannot be combined with token_budget={self.token_budget}: an "
                "absolute budget for the whole stream needs its length in advance; use "
                "retention (resolved from the first window) or rho_audio / rho_video"
            )

    @classmethod
    def preset(cls, name: str | int, **overrides: Any) -> OmniZipConfig:
        """The paper's operating points: ``"45"`` (rho 0.3 / 0.6) or ``"35"`` (0.4 / 0.7);
        ``overrides`` set any field, ``rho_audio`` / ``rho_video`` included (they win over the
        preset's values)."""
        key = str(name).rstrip("%")
        if key not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        rho_audio, rho_video = PRESETS[key]
        return cls(**{"rho_audio": rho_audio, "rho_video": rho_video, **overrides})

    @property
    def needs_audio_scores(self) -> bool:
        """Energy scores come from the embeddings; the others from the audio encoder."""
        return self.audio_score != "energy" and self.audio_selection == "score"

    def compress(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        *,
        audio_token_id: int,
        video_token_id: int,
        tokens_per_frame,
        audio_scores: torch.Tensor | None = None,
        video_scores: torch.Tensor | None = None,
        history: CausalHistory | None = None,
    ) -> CompressionResult:
        """:func:`omnizip.compress_sequence` with this configuration (the method protocol).

        With ``audio_score="energy"`` and no scores given, the scores are the L2 norms of
        the audio embeddings (algorithm §3). ``video_scores`` is not used by OmniZip.
        ``history``: a causal stream's state (``causal=True`` only), as for
        :func:`omnizip.compress_sequence`.
        """
        if audio_scores is None and (self.audio_score == "energy" or self.audio_selection == "random"):
            check_inputs(embeds, input_ids, None, audio_token_id, video_token_id)
            audio_scores = _energy_ranking(embeds.detach()[input_ids == audio_token_id])
        return decide(
            embeds, input_ids, audio_scores, audio_token_id=audio_token_id,
            video_token_id=video_token_id, tokens_per_frame=tokens_per_frame, config=self,
            history=history,
        )

    def replace(self, **changes: Any) -> OmniZipConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniZipConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown OmniZipConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def resolve_ratios(self, n_audio: int, n_video: int) -> tuple[float, float]:
        """(rho_audio, rho_video) to use for one sequence with these token counts.

        Without ``retention``/``token_budget`` these are the configured ratios. With a target
        of K kept audio+video tokens, the expected kept count
        ``min(1 - rho_a + c, 1) N_a + (1 - rho_v) N_v`` (anchors counted on the audio side)
        is made to meet K by the ``retention_split`` rule (algorithm §7):

        - ``"scale"``: kept fractions ``k_a = s k_a0`` and ``k_v = s k_v0`` for one factor ``s``,
          ``k_a0 = min(1 - rho_audio + c, 1)`` and ``k_v0 = 1 - rho_video`` being this config's;
        - ``"shift"``: ``rho_a = rho_audio + t`` and ``rho_v = rho_video + t`` for one ``t``;
        - ``"even"``: ``k_a = k_v = s``.

        Every ratio is clipped to [0, 1); where one side hits a bound (the audio side cannot
        drop its anchors), the other absorbs the remainder. Solved by bisection on the one
        parameter (the kept count is monotone in it), on the host: counts are host integers.
        """
        total = n_audio + n_video
        if total == 0 or (self.retention is None and self.token_budget is None):
            return self.rho_audio, self.rho_video
        target = self.token_budget if self.token_budget is not None else self.retention * total
        target = min(float(target), float(total))
        ceiling = math.nextafter(1.0, 0.0)
        audio_extra = self.contextual_ratio if self.g > 0 else 0.0

        def clip(x: float) -> float:
            return min(max(x, 0.0), ceiling)

        if self.retention_split == "shift":
            def ratios(t: float) -> tuple[float, float]:
                return clip(self.rho_audio + t), clip(self.rho_video + t)

            lo, hi = -2.0, 2.0
        else:
            # kept fraction k -> ratio: audio keeps (1 - rho_a + c) N_a, video (1 - rho_v) N_v
            if self.retention_split == "scale":
                keep_audio = min(1.0 - self.rho_audio + audio_extra, 1.0)
                keep_video = 1.0 - self.rho_video
            else:
                keep_audio = keep_video = 1.0

            def ratios(t: float) -> tuple[float, float]:  # t = -s: kept falls as t grows
                return clip(1.0 + audio_extra + t * keep_audio), clip(1.0 + t * keep_video)

            lo, hi = -1.0 / min(keep_audio, keep_video), 0.0

        # kept(ra, rv), anchors capped by the non-salient tokens
        def kept(ra: float, rv: float) -> float:
            audio = min((1.0 - ra + audio_extra) * n_audio, float(n_audio))
            return audio + (1.0 - rv) * n_video

        # Bisection on the one parameter: kept() is monotone non-increasing in it.
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if kept(*ratios(mid)) > target:
                lo = mid
            else:
                hi = mid
        return ratios(hi)


def _energy_ranking(audio_rows: torch.Tensor) -> torch.Tensor:
    """Energy scores (algorithm §3) of ``[N_a, D]`` rows, float32 ``[N_a]``, always finite.

    Only their order matters (the salient tokens are the highest). Norms of rows near a
    dtype's largest value overflow float32; then all rows are scaled by one power of two
    first, which keeps the order.
    """
    scores = audio_energy_scores(audio_rows)
    if bool(torch.isfinite(scores).all()):
        return scores
    everything = torch.arange(audio_rows.shape[0], device=audio_rows.device)
    scaled, _ = float32_safe(audio_rows, everything, scores)
    return audio_energy_scores(scaled)
