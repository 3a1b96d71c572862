"""The OmniZip model state of vLLM's V2 model runner.

vLLM's V2 runner (``v1/worker/gpu/model_runner.py``; vLLM 0.32 to 0.34) keeps each model's
per-request inputs in a "model state" and lets a model supply its own through
``model.get_model_state_cls()`` (``v1/worker/gpu/model_states/__init__.py``). vLLM's
``DefaultModelState`` builds its ``MultiModalPruner`` (``model_states/mm_pruning.py``: it splits
the position channels off pruned media embeddings and rewrites the request's M-RoPE positions
with the model's ``recompute_mrope_positions``) only for vLLM's own video pruning
(``video_pruning_rate > 0``). :class:`OmniZipModelState` is that state with the pruner always
built; everything else (positions, embeddings, attention metadata) is vLLM's.

This module imports vLLM's V2 runner code; the thinkers import it only when the runner asks
(:mod:`omnizip.vllm.thinker`).
"""

from __future__ import annotations

from typing import Any

from vllm.v1.worker.gpu.model_states.default import DefaultModelState
from vllm.v1.worker.gpu.model_states.mm_pruning import MultiModalPruner

from .runner import add_pruner

__all__ = ["OmniZipModelState"]


class OmniZipModelState(DefaultModelState):
    """vLLM's ``DefaultModelState`` whose ``mm_pruner`` is built for the OmniZip thinkers."""

    def __init__(self, vllm_config: Any, model: Any, encoder_cache: Any, device: Any) -> None:
        super().__init__(vllm_config, model, encoder_cache, device)
        add_pruner(self, MultiModalPruner)
