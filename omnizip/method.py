"""The protocol every token-compression method implements (OmniZip and the baselines).

A method is a validated, frozen dataclass (its configuration). It declares what it needs
from a model explicitly, through the read-only properties of :class:`CompressionMethod`
(subclasses override them with properties or dataclass fields, never by name lookups in
the adapter), and either

- decides each prompt row before the decoder with :meth:`CompressionMethod.compress`
  (``in_decoder_layer is None``; the adapter prunes positions, masks and side inputs with
  the returned ``keep`` mask, see docs/algorithm.md), or
- prunes inside the decoder (``in_decoder_layer == K``, FastV) through its own
  :meth:`CompressionMethod.model_hooks`,
- or both (SEATS: ``decides_before_decoder`` and ``prunes_in_decoder``): the adapter
  compresses first, then hands the compressed prefill to the method's hooks.

**The extension point.** A method that needs hooks of its own (VisionZip's vision-encoder
scores, FastV's layer-K pruning) returns a :class:`MethodHooks` from ``model_hooks(ctx)``;
``ctx`` is the adapter's :class:`omnizip.models.context.ModelContext` (what it located: the
vision encoder, the decoder layers, token ids, and ``ctx.pre_hook`` / ``ctx.post_hook`` to
register hooks that the patch handle removes). The hooks live in the method's own module.

This module imports nothing from the rest of omnizip, so the core may depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .core.select import DEFAULT_BLOCK_ELEMENTS

__all__ = ["DEFAULT_BLOCK_ELEMENTS", "CompressionMethod", "FamilyLayout", "MethodHooks"]

# The default soft cap on a temporary block's elements (bounds peak memory; results do not
# depend on it) is the core's; methods expose it as their ``block_elements`` field.


@dataclass(frozen=True)
class FamilyLayout:
    """How a model family lays out its tokens, as far as methods care.

    Attributes:
        name: the family as error messages name it (``"Qwen3-Omni"``).
        defaults: values of layout-dependent method fields that a method leaves unset
            (``None`` = "the model decides"), e.g. ``{"frame_parity": "stream",
            "audio_frame_tokens": 13}`` on Qwen3-Omni; empty where the methods' own
            fallbacks fit (Qwen2.5-Omni).
    """

    name: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


class MethodHooks:
    """A method's own hooks on one patched model (see the module docstring).

    Built by :meth:`CompressionMethod.model_hooks`; :meth:`attach` registers the hooks through
    the context (the patch handle removes them with its own), :meth:`detach` drops state.
    The adapter calls the other methods at fixed points of every model call; the defaults do
    nothing, so a subclass overrides only what it takes part in.
    """

    def attach(self) -> None:
        """Register the hooks (through ``ctx.pre_hook`` / ``ctx.post_hook``)."""

    def detach(self) -> None:
        """Drop every per-model state (after the handle removed the hooks)."""

    def end_call(self) -> None:
        """End of a model call, also after an error: drop per-call state."""

    def take_seconds(self) -> float:
        """Wall time the hooks spent since the last call (counted in the patch's overhead)."""
        return 0.0

    def video_scores(self, embeds: Any, is_video: Any) -> Any:
        """float ``[N_v]`` one score per video token of the ``[B, L, D]`` batch (row-major,
        ``is_video`` bool ``[B, L]``), handed to ``compress`` as ``video_scores``; or None."""
        return None

    def begin_prefill(self, prefill: Any) -> dict | None:
        """In-decoder methods: the adapter's prefill (``omnizip.models.context.Prefill``)
        enters the decoder; returns decoder kwargs to replace, or None."""
        return None

    def end_prefill(self, kwargs: dict, output: Any) -> None:
        """In-decoder methods: the decoder returned ``output`` for that prefill."""


class CompressionMethod:
    """Base of all methods. Subclasses are ``@dataclass(frozen=True)`` configurations.

    ``name`` is the registry name (``"omnizip"``, ``"random"``, ...). The properties below are
    the method's declared capabilities; their defaults fit a method that ranks tokens from
    the decoder inputs alone.
    """

    name: ClassVar[str] = ""

    @property
    def needs_audio_scores(self) -> bool:
        """The adapter must compute algorithm §3 audio-encoder attention scores (docs/algorithm.md)."""
        return False

    @property
    def audio_score(self) -> str:
        """Which audio scores the adapter supplies: ``"global"`` / ``"windowed"`` encoder
        attention (when :attr:`needs_audio_scores`), or ``"energy"`` (embedding norms)."""
        return "global"

    @property
    def causal(self) -> bool:
        """Decisions for window ``i`` use windows ``<= i`` only (algorithm §9): the adapter
        then scores audio causally (``"global"`` becomes the ``"causal"`` scope)."""
        return False

    @property
    def causal_lookback(self) -> int:
        """Windows a causal method looks back over (used for the causal audio scores)."""
        return 8

    @property
    def audio_score_window(self) -> int | None:
        """With ``audio_score="windowed"``: LLM audio tokens per scoring window, laid along
        each audio stream (the adapter converts them to encoder frames); None: the encoder's
        own attention windows."""
        return None

    @property
    def needs_video_scores(self) -> bool:
        """The method ranks video tokens by vision-encoder scores (its hooks supply them)."""
        return False

    @property
    def in_decoder_layer(self) -> int | None:
        """None for pre-decoder methods; K for methods that prune after decoder layer K."""
        return None

    @property
    def decides_before_decoder(self) -> bool:
        """The adapter calls :meth:`compress` on every row before the first decoder layer."""
        return self.in_decoder_layer is None

    @property
    def prunes_in_decoder(self) -> bool:
        """The method's hooks prune inside the decoder (``begin_prefill``/``end_prefill``),
        after the pre-decoder decision when :attr:`decides_before_decoder` too (SEATS)."""
        return self.in_decoder_layer is not None

    @property
    def block_elements(self) -> int:
        """Soft cap on temporary block sizes for the scores the adapter computes."""
        return DEFAULT_BLOCK_ELEMENTS

    def model_hooks(self, ctx: Any) -> MethodHooks | None:
        """The method's own hooks on a model (None: the adapter's hooks suffice)."""
        return None

    def for_model(self, layout: FamilyLayout) -> CompressionMethod:
        """This method as run on ``layout``'s family: every dataclass field left None whose
        name the family lists in ``layout.defaults`` takes the family's value."""
        if not dataclasses.is_dataclass(self):
            return self
        changes = {
            f.name: layout.defaults[f.name]
            for f in dataclasses.fields(self)
            if f.name in layout.defaults and getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **changes) if changes else self

    def compress(
        self,
        embeds: Any,
        input_ids: Any,
        *,
        audio_token_id: int,
        video_token_id: int,
        tokens_per_frame: Any,
        audio_scores: Any = None,
        video_scores: Any = None,
    ) -> Any:
        """Decide one sequence (pre-decoder methods; the default refuses with a TypeError).

        Args:
            embeds: ``[L, D]`` decoder input embeddings (never modified).
            input_ids: integer ``[L]``.
            tokens_per_frame: int P or one per video chunk (as :func:`omnizip.compress_sequence`).
            audio_scores: float ``[N_a]`` when ``needs_audio_scores`` (else may be None).
            video_scores: float ``[N_v]`` when ``needs_video_scores`` (else may be None).
        Returns:
            a :class:`~omnizip.TokenDecision` (or a subclass with more detail).
        """
        raise TypeError(
            f"method {self.name!r} has no compress(): it prunes inside the decoder "
            f"(in_decoder_layer={self.in_decoder_layer}), where its model hooks decide"
        )
