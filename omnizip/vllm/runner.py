"""Turn on vLLM's multimodal-pruning path for the OmniZip models (and only for them).

vLLM's model runner rewrites M-RoPE positions after the encoders (``recompute_mrope_positions``
of ``SupportsMultiModalPruning``) only when ``runner.is_multimodal_pruning_enabled`` is set.
``GPUModelRunner.load_model`` sets it only when the user also configured vLLM's own video
pruning (``video_pruning_rate > 0``, which would be a second, different compression), and
``CPUModelRunner.load_model`` overrides ``load_model`` and never sets it at all (vLLM 0.32,
``v1/worker/cpu_model_runner.py``). Without it, the compressed embeddings (which carry their
positions as extra channels) would reach the decoder unconverted.

Workaround, without editing vLLM: :func:`enable_pruning_path` (called by the plugin's
``register()`` in every vLLM process) wraps both runners' ``load_model`` so that, after the
original has run, the flag is set when the loaded model declares
``omnizip_needs_pruning_path = True``. Other models are untouched.

vLLM 0.32's V2 model runner (used by default where Triton is installed, i.e. on GPUs) decides
in ``v1/worker/gpu/model_states/mm_pruning.py`` (``maybe_create_mm_pruner``) from the same
``video_pruning_rate`` setting; it is not wrapped here (no GPU to test it on), so the OmniZip
models refuse to start under it with the fix in the message (``VLLM_USE_V2_MODEL_RUNNER=0``).
"""

from __future__ import annotations

import functools
import logging

__all__ = ["enable_pruning_path"]

logger = logging.getLogger("omnizip")

_MARK = "_omnizip_pruning_path"


def _wrap(cls: type) -> None:
    original = cls.__dict__.get("load_model")
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if getattr(self.get_model(), "omnizip_needs_pruning_path", False):
            self.is_multimodal_pruning_enabled = True
        return result

    setattr(load_model, _MARK, True)
    cls.load_model = load_model


def enable_pruning_path() -> None:
    """Wrap the V1 GPU and CPU model runners' ``load_model`` (idempotent)."""
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError as exc:  # a vLLM without the V1 runner: nothing to enable
        logger.warning("omnizip: vLLM's V1 model runner not found (%s); compression disabled", exc)
        return
    _wrap(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        return
    _wrap(CPUModelRunner)
