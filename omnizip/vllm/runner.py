"""Turn on vLLM's multimodal-pruning path for the OmniZip models, on every model runner.

The OmniZip thinkers return each media item's kept tokens with their relative M-RoPE positions
in extra embedding channels (:mod:`omnizip.vllm.layout`). vLLM converts such embeddings back
(``recompute_mrope_positions`` of ``SupportsMultiModalPruning``) only on its "pruning path",
which each runner enables from vLLM's own video pruning setting (``video_pruning_rate > 0``, a
second, different compression that OmniZip refuses). Without the path the channels would reach
the decoder. How the plugin enables it, per runner (vLLM 0.32 to 0.34; docs/serving.md has the
table):

- **V1 GPU and CPU runners** (``v1/worker/gpu_model_runner.py``, ``v1/worker/cpu_model_runner.py``;
  0.32 and 0.33, removed in 0.34): :func:`enable_pruning_path` wraps ``load_model`` so that,
  after the original has run, ``runner.is_multimodal_pruning_enabled`` is set when the loaded
  model declares ``omnizip_needs_pruning_path``. (``CPUModelRunner.load_model`` never sets it,
  whatever the configuration.)
- **V2 runner** (``v1/worker/gpu/model_runner.py``: the GPU default, on x86 CPUs with Triton's
  CPU backend too; the only runner from 0.34): it asks the model for its model state
  (``get_model_state_cls()``); the OmniZip thinkers answer
  :class:`omnizip.vllm.model_state.OmniZipModelState`, vLLM's ``DefaultModelState`` that always
  builds the ``MultiModalPruner``. Nothing is wrapped.
- **Standalone CPU runner** (``v1/worker/cpu/standalone_model_runner.py``, 0.34: CPUs without
  Triton other than x86): it refuses models that supply a model state, so the thinkers do not
  offer one there (:func:`standalone_cpu_runner`), and :func:`enable_pruning_path` wraps its
  ``DefaultModelState.__init__`` to add the pruner, as for V1.

Other models are untouched: every wrapper checks ``omnizip_needs_pruning_path`` on the model.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

__all__ = ["add_pruner", "enable_pruning_path", "standalone_cpu_runner"]

logger = logging.getLogger("omnizip")

_MARK = "_omnizip_pruning_path"
#: the V1 runners: (module, class), present in vLLM 0.32 and 0.33
_V1_RUNNERS = (
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
    ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"),
)
#: the standalone CPU runner's model state and pruner (vLLM 0.34)
_STANDALONE_STATE = ("vllm.v1.worker.cpu.model_states.default", "DefaultModelState")
_STANDALONE_PRUNER = ("vllm.v1.worker.cpu.mm_pruning", "MultiModalPruner")


def _needs_path(model: Any) -> bool:
    return bool(getattr(model, "omnizip_needs_pruning_path", False))


def _find(module: str, name: str) -> Any:
    """``module.name``, or None when this vLLM has no such module (a runner it does not ship)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def standalone_cpu_runner() -> bool:
    """True when this process runs vLLM's standalone (Triton-free) CPU model runner, which
    refuses models that supply their own model state (vLLM 0.34+; older versions have none;
    False outside vLLM's environment)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False

    # looked up on the class: a vLLM Platform logs a warning for every missing instance attribute
    check = getattr(type(current_platform), "uses_standalone_cpu_model_runner", None)
    return bool(current_platform.uses_standalone_cpu_model_runner()) if callable(check) else False


def add_pruner(state: Any, pruner_cls: type) -> None:
    """Give a V2 model state the ``MultiModalPruner`` vLLM built only for its own video pruning.

    ``state`` is a (GPU or standalone CPU) ``DefaultModelState`` after its ``__init__``. Without
    M-RoPE state or an encoder cache (no media inputs) there is nothing to convert.
    """
    if getattr(state, "mm_pruner", None) is not None or not _needs_path(state.model):
        return
    rope_state = getattr(state, "rope_state", None)
    encoder_cache = getattr(state, "encoder_cache", None)  # set only with media inputs
    if rope_state is None or encoder_cache is None:
        return
    state.mm_pruner = pruner_cls(
        state.model, rope_state, encoder_cache, state.inputs_embeds_size
    )


def _wrap_load_model(cls: type) -> None:
    original = cls.__dict__.get("load_model")
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if _needs_path(self.get_model()):
            self.is_multimodal_pruning_enabled = True
        return result

    setattr(load_model, _MARK, True)
    cls.load_model = load_model


def _wrap_state_init(cls: type, pruner_cls: type) -> None:
    original = cls.__dict__.get("__init__")
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        add_pruner(self, pruner_cls)

    setattr(__init__, _MARK, True)
    cls.__init__ = __init__


def enable_pruning_path() -> list[str]:
    """Wrap the runners that need it in this process (idempotent); returns what was wrapped.

    The V2 runner needs nothing here (the thinkers supply their model state).
    """
    wrapped = []
    for module, name in _V1_RUNNERS:
        cls = _find(module, name)
        if cls is not None:
            _wrap_load_model(cls)
            wrapped.append(f"{module}.{name}.load_model")
    if standalone_cpu_runner():
        state_cls, pruner_cls = _find(*_STANDALONE_STATE), _find(*_STANDALONE_PRUNER)
        if state_cls is None or pruner_cls is None:  # pragma: no cover - a vLLM we do not know
            raise RuntimeError(
                "omnizip: this vLLM runs the standalone CPU model runner but has no "
                f"{'.'.join(_STANDALONE_STATE)} / {'.'.join(_STANDALONE_PRUNER)} to add the "
                "multimodal pruner to; see docs/serving.md for the supported versions"
            )
        _wrap_state_init(state_cls, pruner_cls)
        wrapped.append(f"{_STANDALONE_STATE[0]}.{_STANDALONE_STATE[1]}.__init__")
    logger.debug("omnizip: pruning path enabled on %s (V2 runner: model state)", wrapped or "no V1 runner")
    return wrapped
