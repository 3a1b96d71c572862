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


# ----------------------------------------------------------------------------- one cost model
def test_decoder_as_built_by_hand():
    """The exact count for the models as built: GQA widths, three SwiGLU matrices, causal
    attention; a MoE counts its active experts and its router."""
    pytest.importorskip("transformers")
    from omnizip.demo.tiny_model import tiny_qwen3_omni_thinker_config, tiny_thinker_config
    from omnizip.flops import DecoderDims, decoder_dims

    cfg = tiny_thinker_config()  # hidden 64, 4 heads / 2 KV heads of 16, FFN 128, 2 layers
    assert decoder_dims(cfg) == DecoderDims(hidden=64, layers=2, q_width=64, kv_width=32,
                                            mlp_width=128)
    linear = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    assert run_macs(cfg, 10) == 2 * (10 * linear + 10 * 11 * 64)
    # R = 3 tokens over a cache of 10: each runs the linear layers and attends to 10 + i keys
    assert run_macs(cfg, 10, generated=3) == 2 * (
        10 * linear + 10 * 11 * 64 + sum(linear + 2 * 64 * (10 + i) for i in range(1, 4)))
    moe = tiny_qwen3_omni_thinker_config()  # 4 experts, 2 per token of width 32
    assert decoder_dims(moe) == DecoderDims(hidden=64, layers=2, q_width=64, kv_width=32,
                                            mlp_width=2 * 32, router=4)


def test_papers_convention_is_the_same_model():
    """ModelDims (FastV's count) = the one formula with q = k = d, two FFN matrices and
    non-causal attention."""
    dims = ModelDims(hidden=4, intermediate=8, layers=3)
    assert run_macs(dims, 10) == 3 * prefill_macs(10, 4, 8)
    assert run_macs(dims, 10, generated=2) == 3 * (prefill_macs(10, 4, 8) + decode_macs(10, 2, 4, 8))


def test_bench_prediction_and_eval_ratio_come_from_one_function():
    pytest.importorskip("transformers")
    import omnizip.bench as bench
    from omnizip.demo.tiny_model import tiny_thinker_config
    from omnizip.flops import decoder_dims, predicted_speedup

    assert bench.predicted_speedup is predicted_speedup and bench.decoder_dims is decoder_dims
    cfg = tiny_thinker_config()
    # omnizip eval: 5 text + 40 audio + 100 video tokens, 20 + 50 kept, nothing generated;
    # omnizip bench: 145 -> 75 decoder tokens
    ratio = flops_ratio(cfg, 5, 40, 100, 20, 50)
    assert ratio == pytest.approx(1 / predicted_speedup(145, 75, cfg))
    assert ratio == pytest.approx(run_macs(cfg, 75) / run_macs(cfg, 145))
