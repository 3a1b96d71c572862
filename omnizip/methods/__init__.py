"""The registry of token-compression methods: OmniZip, its paper ablations, and baselines.

Every entry builds a frozen, validated configuration implementing
:class:`omnizip.method.CompressionMethod`::

    from omnizip.methods import get_method
    method = get_method("dycoke", retention=0.45)      # DyCokeConfig(retention=0.45)
    decision = method.compress(embeds, ids, audio_token_id=..., video_token_id=...,
                               tokens_per_frame=P, audio_scores=..., video_scores=...)

========================  ==================================================================
name                      method
========================  ==================================================================
``omnizip``               OmniZip (docs/algorithm.md), :class:`~omnizip.OmniZipConfig`
``omnizip-no-dynamic``    ablation: every video chunk uses ``rho_video`` (no audio guidance)
``omnizip-no-merge``      ablation: anchors kept as they are (no anchor merging)
``omnizip-random-audio``  ablation: ISTC video + salient audio chosen at random
``random``                uniform random pruning (:class:`RandomConfig`)
``dycoke``                DyCoke TTM on video and audio (:class:`DyCokeConfig`)
``visionzip``             VisionZip video + OmniZip audio (:class:`VisionZipConfig`)
``fastv``                 FastV inside the decoder (:class:`FastVConfig`)
``seats``                 SEATS before and inside the decoder (:class:`SEATSConfig`)
========================  ==================================================================

What an adapter does with a method (``omnizip.patch`` wiring):

- ``method.in_decoder_layer is None``: call ``method.compress(...)`` per prompt row before
  the first decoder layer, exactly as for OmniZip, passing ``audio_scores`` when
  ``method.needs_audio_scores`` (algorithm §3, ``method.audio_score`` says which variant) and the
  ``video_scores`` the method's own hooks supply (VisionZip:
  :mod:`omnizip.methods.visionzip_hooks`).
- ``method.in_decoder_layer == K`` (FastV): the method's own hooks prune inside the decoder
  (:mod:`omnizip.methods.fastv`, :mod:`omnizip.methods.fastv_hooks`).
- both (``seats``: ``decides_before_decoder`` and ``prunes_in_decoder``): ``compress``
  first (Stage I), then its hooks inside the decoder (:mod:`omnizip.methods.seats_hooks`);
  ``retention`` is the layer-averaged retention there (docs/seats.md).

A method that needs hooks of its own returns them from ``model_hooks(ctx)`` (the extension
point, :mod:`omnizip.method`); nothing in the model adapters names a method.

Budgets: the baselines take ``retention`` (fraction of audio + video tokens kept) or
``token_budget`` (absolute) and keep exactly that many. The OmniZip entries take them too
(algorithm §7 targets) and then default to ``budget="exact"`` (algorithm §7), so a comparison at a
matched budget is matched; the core meets such a target to within a token or two (more when a
video chunk ends in a partial frame, which OmniZip always keeps). Without a target they are
the paper's reference semantics (``rho_audio`` / ``rho_video``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import OmniZipConfig
from ..method import CompressionMethod
from ._common import DEFAULT_RETENTION, BudgetedMethod
from .dycoke import DyCokeConfig
from .fastv import FastVConfig
from .random import RandomConfig
from .seats import SEATSConfig
from .visionzip import VisionZipConfig

__all__ = [
    "DEFAULT_RETENTION",
    "METHODS",
    "BudgetedMethod",
    "DyCokeConfig",
    "FastVConfig",
    "MethodEntry",
    "RandomConfig",
    "SEATSConfig",
    "VisionZipConfig",
    "coerce_option",
    "get_method",
    "method_fields",
    "method_name",
]


@dataclass(frozen=True)
class MethodEntry:
    """One registry entry: a configuration class plus the fields fixed by this entry.

    Calling the entry builds the configuration: ``entry(**options)`` ==
    ``entry.cls(**{**entry.defaults, **options})``; options naming a fixed field (an
    ablation switch) are refused, so ``omnizip-no-merge`` can never be turned back on.
    """

    cls: type
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    #: defaults applied when the options set a ``retention`` or ``token_budget`` target
    target_defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, **options: Any) -> CompressionMethod:
        targeted = options.get("retention") is not None or options.get("token_budget") is not None
        defaults = self.target_defaults if targeted else {}
        return self.cls(**{**defaults, **self.fixed, **options})

    @property
    def options(self) -> tuple[str, ...]:
        """Field names an option may set."""
        return tuple(f.name for f in dataclasses.fields(self.cls) if f.name not in self.fixed)


METHODS: dict[str, MethodEntry] = {
    "omnizip": MethodEntry(
        OmniZipConfig, "OmniZip: audio-guided dynamic audio/video token compression (docs/algorithm.md)",
        paper="Tao et al., arXiv 2511.14582", target_defaults={"budget": "exact"},
    ),
    "omnizip-no-dynamic": MethodEntry(
        OmniZipConfig, "OmniZip without dynamic per-window video ratios (paper ablation)",
        fixed={"dynamic_ratios": False}, paper="Tao et al., arXiv 2511.14582, ablation",
        target_defaults={"budget": "exact"},
    ),
    "omnizip-no-merge": MethodEntry(
        OmniZipConfig, "OmniZip without anchor merging (paper ablation)",
        fixed={"merge_anchors": False}, paper="Tao et al., arXiv 2511.14582, ablation",
        target_defaults={"budget": "exact"},
    ),
    "omnizip-random-audio": MethodEntry(
        OmniZipConfig, "ISTC video compression with randomly selected audio (paper ablation)",
        fixed={"audio_selection": "random"}, paper="Tao et al., arXiv 2511.14582, ablation",
        target_defaults={"budget": "exact"},
    ),
    "random": MethodEntry(
        RandomConfig, "uniform random pruning of audio and video tokens at a matched budget",
    ),
    "dycoke": MethodEntry(
        DyCokeConfig, "DyCoke temporal token merging (TTM) on video and audio",
        paper="Tao et al., DyCoke, CVPR 2025",
    ),
    "visionzip": MethodEntry(
        VisionZipConfig, "VisionZip dominant + contextual video tokens, OmniZip audio",
        paper="Yang et al., VisionZip, CVPR 2025",
    ),
    "fastv": MethodEntry(
        FastVConfig, "FastV: prune visual tokens after decoder layer K by last-token attention",
        paper="Chen et al., FastV, ECCV 2024",
    ),
    "seats": MethodEntry(
        SEATSConfig, "SEATS: windowed diversity before the decoder, progressive drops and late "
        "removal inside it (docs/seats.md)",
        paper="Xin et al., arXiv 2605.20035",
    ),
}


def _unknown_name(name: Any) -> ValueError:
    known = ", ".join(METHODS)
    close = difflib.get_close_matches(str(name), list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown method {name!r}{hint}; known methods: {known}")


def method_fields(name: str) -> tuple[str, ...]:
    """Option names :func:`get_method` accepts for ``name``."""
    if name not in METHODS:
        raise _unknown_name(name)
    return METHODS[name].options


def get_method(name: str, **options: Any) -> CompressionMethod:
    """Build the configuration of method ``name`` with ``options`` (validated).

    Raises:
        ValueError: unknown method (the message lists the known ones), an option the method
            does not have (the message lists its fields), an option fixed by an ablation
            entry, or an invalid value (the configuration's own message).
        TypeError: an option of the wrong type.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise _unknown_name(name)
    entry = METHODS[name]
    fixed = sorted(set(options) & set(entry.fixed))
    if fixed:
        raise ValueError(
            f"method {name!r} fixes {', '.join(f'{k}={entry.fixed[k]!r}' for k in fixed)} (it is "
            f"that ablation); use method 'omnizip' to set {', '.join(fixed)}"
        )
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(entry.options)}"
        )
    return entry(**options)


def method_name(method: CompressionMethod) -> str:
    """The registry name of a configuration (ablations recognised by their switches)."""
    for name, entry in METHODS.items():
        if type(method) is entry.cls and entry.fixed and all(
            getattr(method, k) == v for k, v in entry.fixed.items()
        ):
            return name
    return getattr(method, "name", type(method).__name__)


def _field_type(cls: type, option: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(option, Any)


def coerce_option(name: str, option: str, text: str) -> Any:
    """Parse the command-line text of option ``option`` of method ``name`` to its field type.

    ``"none"`` gives None for optional fields; bools accept true/false/1/0/yes/no; tuples
    take comma-separated values.
    """
    if name not in METHODS:
        raise _unknown_name(name)
    entry = METHODS[name]
    if option not in entry.options:
        raise ValueError(
            f"method {name!r} has no option {option!r}; its options: {', '.join(entry.options)}"
        )
    kind = _field_type(entry.cls, option)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = len(args) < len(typing.get_args(kind))
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and args:
        kind = args[0]
    raw = text.strip()
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        return _parse(kind, raw)
    except ValueError as exc:
        raise ValueError(f"option {option}={text!r} of method {name!r}: {exc}") from None


def _parse(kind: Any, raw: str) -> Any:
    parsers: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str}
    if kind is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected a bool (true/false)")
    if typing.get_origin(kind) is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind in parsers:
        try:
            return parsers[kind](raw)
        except ValueError:
            raise ValueError(f"expected {kind.__name__}") from None
    return raw
