"""``omnizip[vllm]``: OmniZip inside an unmodified vLLM, as a plugin.

vLLM loads :func:`register` through the ``vllm.general_plugins`` entry point in every process.
It registers the OmniZip model classes under their own architecture names, so they never clash
with vLLM's (or vllm-omni's) registrations, and a server selects one with ``hf_overrides``::

    from vllm import LLM
    from omnizip.vllm import hf_overrides

    llm = LLM("Qwen/Qwen2.5-Omni-7B", hf_overrides=hf_overrides("qwen2.5-omni", {"preset": "45"}))

The OmniZip settings travel in the model config (``hf_config.omnizip``) and are validated when
the server starts (a bad setting stops it with the reason). How the plugin works:
:mod:`omnizip.vllm.thinker` (model side: encoders, compression, positions),
:mod:`omnizip.vllm.processing` (slot counts, joint audio-video blocks),
:mod:`omnizip.vllm.blocks` / :mod:`omnizip.vllm.layout` (transformers' layouts per family),
:mod:`omnizip.vllm.positions`, :mod:`omnizip.vllm.audio_scores`, :mod:`omnizip.vllm.runner`
and :mod:`omnizip.vllm.model_state` (vLLM's pruning path on the V1, V2 and standalone CPU model
runners, which enable it only for vLLM's own video pruning); the families:
:mod:`omnizip.vllm.qwen2_5_omni`, :mod:`omnizip.vllm.qwen3_omni`.

Importing this package imports neither vllm nor transformers.
"""

from __future__ import annotations

from typing import Any

from .settings import CONFIG_KEY, config_to_override, server_config

__all__ = ["ARCHITECTURES", "QWEN2_5_OMNI_ARCH", "QWEN3_OMNI_ARCH", "hf_overrides", "register"]

QWEN2_5_OMNI_ARCH = "OmniZipQwen2_5OmniForConditionalGeneration"
QWEN3_OMNI_ARCH = "OmniZipQwen3OmniMoeForConditionalGeneration"

#: architecture name -> "module:Class" of the OmniZip model class vLLM loads for it
ARCHITECTURES: dict[str, str] = {
    QWEN2_5_OMNI_ARCH: "omnizip.vllm.qwen2_5_omni:OmniZipQwen2_5OmniThinker",
    QWEN3_OMNI_ARCH: "omnizip.vllm.qwen3_omni:OmniZipQwen3OmniThinker",
}

_FAMILIES: dict[str, str] = {
    "qwen2.5-omni": QWEN2_5_OMNI_ARCH,
    "qwen2_5_omni": QWEN2_5_OMNI_ARCH,
    "qwen3-omni": QWEN3_OMNI_ARCH,
    "qwen3_omni": QWEN3_OMNI_ARCH,
    "qwen3_omni_moe": QWEN3_OMNI_ARCH,
}


def hf_overrides(model_type_or_family: str, config: Any = None) -> dict[str, Any]:
    """vLLM ``hf_overrides`` that serve a Qwen-Omni checkpoint with OmniZip.

    Args:
        model_type_or_family: ``"qwen2.5-omni"`` / ``"qwen2_5_omni"`` or ``"qwen3-omni"`` /
            ``"qwen3_omni_moe"`` (case-insensitive).
        config: an :class:`~omnizip.OmniZipConfig`, a dict of its fields (optionally with
            ``"preset"``: ``"45"`` or ``"35"``), or None (the 45% preset). ``budget`` defaults
            to ``"exact"``, the only budget vLLM can serve (slots are fixed before encoding).

    Returns:
        ``{"architectures": [ARCH], "omnizip": {...}}``, JSON-serialisable.

    Raises:
        ValueError / TypeError: unknown family, or an invalid setting (named).
    """
    if not isinstance(model_type_or_family, str):
        raise TypeError(f"model_type_or_family must be a str, got {type(model_type_or_family).__name__}")
    arch = _FAMILIES.get(model_type_or_family.strip().lower())
    if arch is None:
        raise ValueError(
            f"model_type_or_family must be one of {sorted(_FAMILIES)}, got {model_type_or_family!r}"
        )
    return {"architectures": [arch], CONFIG_KEY: config_to_override(server_config(config))}


def register() -> None:
    """vLLM plugin entry point: register the OmniZip architectures (lazily, by module path)
    and let vLLM's model runners take the multimodal-pruning path for them."""
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, target)
    from .runner import enable_pruning_path

    enable_pruning_path()
