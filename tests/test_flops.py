"""The FLOPs calculator against hand computation."""

from __future__ import annotations

import pytest

from omnizip.flops import (
    MODEL_DIMS,
    ModelDims,
    decode_macs,
    flops_ratio,
    model_dims,
    prefill_macs,
    run_macs,
)


def test_prefill_and_decode_by_hand():
    # n=10, d=4, m=8: 4*10*16 + 2*100*4 + 2*10*4*8 = 640 + 800 + 640
    assert prefill_macs(10, 4, 8) == 2080
    # R=3 over a cache of 10: 3*(4*16 + 2*4*8) + 2*4*(3*10 + 6) = 3*128 + 8*36
    assert decode_macs(10, 3, 4, 8) == 384 + 288
    assert decode_macs(10, 0, 4, 8) == 0
    # token i attends n + i keys: sum over i of (4d^2 + 2dm + 2d(n+i))
    assert decode_macs(7, 5, 3, 6) == sum(4 * 9 + 2 * 3 * 6 + 2 * 3 * (7 + i) for i in range(1, 6))


def test_run_and_ratio_by_hand():
    dims = ModelDims(hidden=4, intermediate=8, layers=2)
    # full: n = 2 + 4 + 6 = 12; kept: 2 + 2 + 3 = 7; R = 3
    full = 2 * (4 * 12 * 16 + 2 * 144 * 4 + 2 * 12 * 32 + 3 * (64 + 64) + 2 * 4 * (36 + 6))
    kept = 2 * (4 * 7 * 16 + 2 * 49 * 4 + 2 * 7 * 32 + 3 * (64 + 64) + 2 * 4 * (21 + 6))
    assert run_macs(dims, 12, generated=3) == full
    assert run_macs(dims, 7, generated=3) == kept
    assert flops_ratio(dims, 2, 4, 6, 2, 3, generated=3) == pytest.approx(kept / full)
    assert flops_ratio(dims, 2, 4, 6, 4, 6, generated=3) == 1.0
    # FastV at K=1 of 2 layers: one layer full, one on the kept tokens
    per_full, per_kept = full // 2, kept // 2
    assert flops_ratio(dims, 2, 4, 6, 2, 3, generated=3, prune_layer=1) == pytest.approx(
        (per_full + per_kept) / full
    )
    assert flops_ratio(dims, 2, 4, 6, 2, 3, prune_layer=0) == flops_ratio(dims, 2, 4, 6, 2, 3)


def test_ratio_behaviour_on_a_real_size():
    dims = MODEL_DIMS["Qwen/Qwen2.5-Omni-7B"]
    r45 = flops_ratio(dims, 300, 1000, 9000, 700, 3600, generated=1)
    r35 = flops_ratio(dims, 300, 1000, 9000, 600, 2700, generated=1)
    assert 0 < r35 < r45 < 1
    # between the token ratio (linear terms) and its square (attention term)
    tokens = (300 + 4300) / 10300
    assert tokens**2 < r45 < tokens


def test_model_dims_sources():
    assert model_dims((8, 16, 3)) == ModelDims(8, 16, 3)
    assert model_dims("Qwen/Qwen2.5-Omni-3B") == ModelDims(2048, 11008, 36)
    nested = {"thinker_config": {"text_config": {"hidden_size": 64, "intermediate_size": 128,
                                                 "num_hidden_layers": 2}}}
    assert model_dims(nested) == ModelDims(64, 128, 2)

    class Cfg:
        hidden_size, intermediate_size, num_hidden_layers = 32, 64, 4

    class Model:
        config = Cfg()

    assert model_dims(Model()) == ModelDims(32, 64, 4)
    with pytest.raises(ValueError, match="unknown model"):
        model_dims("nope")
    with pytest.raises(ValueError, match="cannot read hidden_size"):
        model_dims({"hidden_size": 3})
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        ModelDims(0, 1, 1)


def test_model_dims_from_transformers_config():
    pytest.importorskip("transformers")
    from omnizip.demo.tiny_model import tiny_thinker_config

    cfg = tiny_thinker_config()
    assert model_dims(cfg) == ModelDims(64, 128, 2)


def test_ratio_input_errors():
    dims = (4, 8, 2)
    with pytest.raises(ValueError, match="kept tokens exceed"):
        flops_ratio(dims, 1, 2, 2, 3, 1)
    with pytest.raises(ValueError, match="n_audio must be an int >= 0"):
        flops_ratio(dims, 1, -2, 2, 0, 1)
    with pytest.raises(ValueError, match=r"prune_layer must be an int in \[0, 2\]"):
        flops_ratio(dims, 1, 2, 2, 1, 1, prune_layer=3)
    assert flops_ratio(dims, 0, 0, 0, 0, 0) == 1.0
