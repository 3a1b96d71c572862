"""The OmniZip configuration of a vLLM server: set once, read from ``hf_config.omnizip``.

vLLM fixes the number of prompt slots of every media item in its processor, before any encoder
runs, so the server needs a configuration whose kept-token counts follow from the token layout
alone: ``budget="exact"`` (see docs/algorithm.md, "exact budget"). It is the default here; an
explicit ``budget="reference"`` is refused at start-up with the reason.

Imports neither vllm nor transformers (used by :func:`omnizip.vllm.hf_overrides` in any
environment).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import OmniZipConfig

__all__ = ["CONFIG_KEY", "config_to_override", "server_config"]

#: the key of the Hugging Face config that carries the OmniZip settings (via ``hf_overrides``)
CONFIG_KEY = "omnizip"


def _refuse_causal(causal: Any) -> None:
    if causal:
        raise ValueError(
            f"omnizip.causal must be False on vLLM, got {causal!r}: vLLM fixes each media "
            "item's prompt slots before its encoders run, while the causal rules set a window's "
            "kept token count from its audio scores; serve a live stream as chunk items, each "
            "decided on its own with the exact budget (docs/serving_streams.md; on Hugging "
            "Face: omnizip.stream(..., chunk_seconds=...)), or use omnizip.stream on Hugging "
            "Face for the causal rules"
        )


def _from_mapping(data: Mapping[str, Any]) -> OmniZipConfig:
    fields = dict(data)
    _refuse_causal(fields.get("causal"))
    preset = fields.pop("preset", None)
    fields.setdefault("budget", "exact")
    if preset is not None:
        if not isinstance(preset, (str, int)) or isinstance(preset, bool):
            raise TypeError(f"omnizip.preset must be '45' or '35', got {preset!r}")
        return OmniZipConfig.preset(preset, **fields)
    return OmniZipConfig.from_dict(fields)


def _check_servable(config: OmniZipConfig) -> OmniZipConfig:
    _refuse_causal(config.causal)
    if config.budget != "exact":
        raise ValueError(
            f"omnizip.budget must be 'exact' on vLLM, got {config.budget!r}: vLLM fixes each "
            "media item's prompt slots before the encoders run, so the kept token count must "
            "follow from the layout alone (leave budget unset or set it to 'exact')"
        )
    return config


def server_config(value: Any) -> OmniZipConfig:
    """The validated :class:`~omnizip.OmniZipConfig` of a server.

    Args:
        value: an ``OmniZipConfig``, a mapping of its fields (optionally with ``"preset"``:
            ``"45"`` or ``"35"``, the other fields overriding it), or None (the paper's 45%
            setting). ``budget`` defaults to ``"exact"``.

    Raises:
        TypeError / ValueError naming the setting, what was expected and what came.
    """
    if value is None:
        return OmniZipConfig(budget="exact")
    if isinstance(value, OmniZipConfig):
        return _check_servable(value)
    if isinstance(value, Mapping):
        return _check_servable(_from_mapping(value))
    raise TypeError(
        "omnizip settings must be an OmniZipConfig or a dict of its fields (optionally with "
        f"'preset'), got {type(value).__name__}"
    )


def config_to_override(config: OmniZipConfig) -> dict[str, Any]:
    """The JSON-serialisable dict that ``hf_overrides`` carries to every vLLM process."""
    return config.to_dict()
