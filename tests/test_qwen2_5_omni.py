"""omnizip.patch on Hugging Face Qwen2.5-Omni: what is specific to the family.

The model-integration contract (decoder inputs == the core's decision, generate == a direct
decoder run on the kept tokens, batch rows == single runs, remove() restores) runs on every
family in tests/test_model_contract.py. Here: algorithm §3 audio scores (frame pairs pooled per
token) against a dense softmax, every prompt kind, sampling, static cache, manual decoding,
errors, real media through the offline processor into the full model class.

The references never go through the adapter (tests/conftest.py): positions come from the
unpatched model, tokens per frame from ``video_grid_thw``, audio scores from a dense softmax
written out below, and the decoder reference is ``language_model`` + ``lm_head`` directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")

from conftest import (
    FAMILIES,
    IMAGE,
    MODEL_SIZES,
    NEW_TOKENS,
    VIDEO,
    direct_logits,
    embedding_stage,
    expected_row,
    family_media,
    generate,
    hook_counts,
    make_inputs,
)

import omnizip
from omnizip import OmniZipConfig
from omnizip.demo.media import build_inputs, have_media_tools, make_test_clip, prepare_video_inputs
from omnizip.demo.tiny_model import build_tiny_qwen2_5_omni
from omnizip.patch import patch

FAMILY = FAMILIES["qwen2_5"]
AUDIO = FAMILY.audio


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sdpa_model():
    return FAMILY.thinker("sdpa", **MODEL_SIZES["qwen2_5"])


@pytest.fixture(scope="module")
def processor():
    # 112x112 frames -> 4x4 merged tokens per frame (P = 16): small and fast
    return FAMILY.processor()


@pytest.fixture(scope="module")
def media():
    return family_media("qwen2_5")


# ----------------------------------------------------------------------------- references
def dense_audio_scores(attn, hidden, feature_lens, cu_seqlens=None):
    """algorithm §3 written out densely: softmax over each stream (or each encoder window), attention
    received summed over heads and queries, frame pairs averaged within each stream."""
    frames_per_stream = ((feature_lens - 1) // 2 + 1).tolist()
    with torch.no_grad():
        T = hidden.shape[0]
        q = attn.q_proj(hidden).view(T, attn.num_heads, -1).transpose(0, 1).double()
        k = attn.k_proj(hidden).view(T, attn.num_heads, -1).transpose(0, 1).double()
    bounds = [0]
    if cu_seqlens is None:
        for n in frames_per_stream:
            bounds.append(bounds[-1] + n)
    else:
        bounds = cu_seqlens.tolist()
    received = torch.zeros(T, dtype=torch.float64)
    for s, e in itertools.pairwise(bounds):
        a = torch.softmax(q[:, s:e] @ k[:, s:e].transpose(1, 2) * attn.scaling, dim=-1)
        received[s:e] = a.sum(dim=(0, 1))
    tokens, start = [], 0
    for n in frames_per_stream:
        seg = received[start : start + (n // 2) * 2].view(-1, 2).mean(1)
        tokens.append(seg)
        start += n
    return torch.cat(tokens).float()



# ----------------------------------------------------------------------------- audio scores
def test_audio_scores_match_dense_reference(sdpa_model, processor, media):
    """algorithm §3: global (default) and windowed scores vs a dense softmax; two streams in one
    prompt map one-to-one; energy = L2 norm of the audio embeddings."""
    model = sdpa_model
    for kind in ("two_audio", "two_videos"):
        inputs, uav = make_inputs(processor, media, kind)
        stage = embedding_stage(model, inputs, uav)
        attn = model.model.audio_tower.layers[-1].self_attn
        for scope in ("global", "windowed"):
            with patch(model, OmniZipConfig(audio_score=scope)) as handle, torch.no_grad():
                model(**inputs, use_audio_in_video=uav)
            cu = stage["cu_seqlens"] if scope == "windowed" else None
            dense = dense_audio_scores(attn, stage["hidden"], stage["feature_lens"], cu)
            assert len(stage["feature_lens"]) == 2
            torch.testing.assert_close(handle.audio_scores[0], dense, rtol=1e-4, atol=1e-5)
        if kind == "two_audio":  # each stream scored on its own == scored together
            single = []
            for key in ("A", "A2"):
                conv = [[{"type": "audio", "audio": media[key]}, {"type": "text", "text": "x"}]]
                one = dict(build_inputs(processor, conv, use_audio_in_video=False))
                with patch(model) as handle, torch.no_grad():
                    model(**one)
                single.append(handle.audio_scores[0])
            with patch(model) as handle, torch.no_grad():
                model(**inputs)
            torch.testing.assert_close(handle.audio_scores[0], torch.cat(single), rtol=1e-4, atol=1e-6)
    inputs, uav = make_inputs(processor, media, "av")
    stage = embedding_stage(model, inputs, uav)
    with patch(model, OmniZipConfig(audio_score="energy")) as handle, torch.no_grad():
        model(**inputs, use_audio_in_video=uav)
    audio = stage["embeds"][0][inputs["input_ids"][0] == AUDIO]
    torch.testing.assert_close(handle.audio_scores[0], audio.norm(dim=-1))


# ----------------------------------------------------------------------------- prompt kinds
@pytest.mark.parametrize(
    "kind",
    [
        "audio_only", "two_audio", "video_only", "video_only_uav", "separate_blocks", "image",
        "two_videos",
    ],
)
def test_prompt_kinds(kind, sdpa_model, processor, media):
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, kind)
    config = OmniZipConfig()
    with patch(model, config) as handle:
        tokens, logits = generate(model, inputs, uav)
    exp = expected_row(model, inputs, uav, config, handle.audio_scores[0])
    stage, res = exp["stage"], exp["res"]
    assert torch.equal(handle.results[0].keep, res.keep)
    assert res.n_kept < res.keep.numel()
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    ids = inputs["input_ids"][0]
    if kind == "image":  # images are never touched
        image = ids == IMAGE
        assert bool(res.keep[image].all())
        torch.testing.assert_close(res.embeds[image], stage["embeds"][0][image], rtol=0, atol=0)
    if kind.startswith("video_only"):  # no audio: every video chunk unguided at rho_video
        assert res.n_audio == 0 and res.num_guided == 0
    if kind in ("audio_only", "two_audio"):
        assert res.n_video == 0 and res.n_audio_kept < res.n_audio
    if kind == "separate_blocks":  # one audio block and one video block: one window
        assert res.audio_chunks.shape[0] == 1 and res.video_chunks.shape[0] == 1
    if kind == "two_videos":
        assert res.video_chunks.shape[0] == 4 and res.audio_chunks.shape[0] == 4


# ----------------------------------------------------------------------------- decoding
def test_sampling_and_static_cache(sdpa_model, processor, media):
    """Sampling: each step's logits == the direct decoder fed the sampled tokens. Static cache:
    same logits as the dynamic cache, also for a left-padded batch."""
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "av")
    batch, _ = make_inputs(processor, media, "batch")
    config = OmniZipConfig()
    with patch(model, config) as handle:
        torch.manual_seed(0)
        tokens, logits = generate(model, inputs, uav, do_sample=True, top_k=20, max_new_tokens=4)
        scores = handle.audio_scores[0]
        d_tokens, d_logits = generate(model, batch, True)
        s_tokens, s_logits = generate(model, batch, True, cache_implementation="static")
    assert torch.equal(d_tokens, s_tokens)
    torch.testing.assert_close(s_logits, d_logits, rtol=1e-4, atol=1e-5)
    exp = expected_row(model, inputs, uav, config, scores)
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)


def test_plain_forward_and_manual_decoding(sdpa_model, processor, media):
    """A plain forward returns the compressed sequence's logits; a user loop decoding without
    position_ids relies on rope_deltas; one passing the uncompressed mask + positions works."""
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "av")
    config = OmniZipConfig()
    with patch(model, config) as handle, torch.no_grad():
        out = model(**inputs, use_audio_in_video=uav, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        step_plain = model(input_ids=tok, cache=out.cache).logits  # no position_ids, no mask
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(tok)], dim=1)  # uncompressed
        res = handle.results[0]
        scores = handle.audio_scores[0]
    exp = expected_row(model, inputs, uav, config, scores)
    kept_pos = exp["positions"]
    assert out.logits.shape[1] == res.n_kept == exp["res"].n_kept
    ref = direct_logits(model, exp, tok[0])
    torch.testing.assert_close(out.logits[0, -1], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step_plain[0, -1], ref[1], rtol=1e-4, atol=1e-5)
    pos = torch.full((3, 1, 1), int(kept_pos.max()) + 1)
    with patch(model, config), torch.no_grad():
        out2 = model(**inputs, use_audio_in_video=uav, use_cache=True)
        step = model(input_ids=tok, cache=out2.cache, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(step.logits[0, -1], ref[1], rtol=1e-4, atol=1e-5)


def test_bad_input_errors(sdpa_model, processor, media):
    assert omnizip.patch is patch  # the one-line entry point is the package attribute
    with pytest.raises(ValueError, match="Qwen2_5OmniThinkerForConditionalGeneration"):
        patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model"):
        patch("not a model")
    with pytest.raises(TypeError, match="config"):
        patch(sdpa_model, {"rho_audio": 0.3})
    inputs, uav = make_inputs(processor, media, "av")
    with patch(sdpa_model), pytest.raises(ValueError, match="labels"):
        sdpa_model(**inputs, use_audio_in_video=uav, labels=inputs["input_ids"])
    assert sum(a + b for a, b in hook_counts(sdpa_model)) == 0


def test_caller_tensors_untouched(sdpa_model, processor, media):
    inputs, uav = make_inputs(processor, media, "batch")
    copies = {k: v.clone() for k, v in inputs.items()}
    with patch(sdpa_model):
        generate(sdpa_model, inputs, uav)
    for k, v in inputs.items():
        assert torch.equal(v, copies[k]), k


# ----------------------------------------------------------------------------- real media
@pytest.mark.skipif(not have_media_tools(), reason="needs ffmpeg and espeak-ng")
def test_real_media_full_model(processor, tmp_path):
    """A real MP4 (espeak-ng speech then silence over ffmpeg's moving testsrc2) through the
    offline processor into the full Qwen2_5OmniForConditionalGeneration class, patched."""
    clip = make_test_clip(tmp_path / "clip.mp4", seconds=4.0, width=112, height=112)
    inputs = dict(prepare_video_inputs(processor, clip, "What is said?"))
    ids = inputs["input_ids"][0]
    assert int((ids == AUDIO).sum()) >= 95 and int((ids == VIDEO).sum()) > 0
    model = build_tiny_qwen2_5_omni(seed=0)
    assert type(model).__name__ == "Qwen2_5OmniForConditionalGeneration"
    config = OmniZipConfig()
    with patch(model, config) as handle:
        tokens, logits = generate(model.thinker, inputs, True)
    res = handle.results[0]
    assert 0 < res.retention < 1 and res.num_guided == 2
    exp = expected_row(model, inputs, True, config, handle.audio_scores[0])
    assert torch.equal(res.keep, exp["res"].keep)
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    assert sum(a + b for a, b in hook_counts(model)) == 0
    assert omnizip.OmniZipConfig is OmniZipConfig


def test_other_decoding_modes(sdpa_model, processor, media):
    """Cache-free generate == cached generate; beam search runs on a compressed batch;
    prompt-lookup (assisted) decoding, which crops the cache to uncompressed lengths, is refused
    with a clear error."""
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "av")
    batch, _ = make_inputs(processor, media, "batch")
    with patch(model):
        tokens, logits = generate(model, inputs, uav)
        nc_tokens, nc_logits = generate(model, inputs, uav, use_cache=False)
        assert torch.equal(tokens, nc_tokens)
        torch.testing.assert_close(nc_logits, logits, rtol=1e-4, atol=1e-5)
        beams, _ = generate(model, batch, True, num_beams=2)
        assert beams.shape == (2, NEW_TOKENS)
        with pytest.raises(ValueError, match="assisted"):
            generate(model, inputs, uav, prompt_lookup_num_tokens=2, max_new_tokens=6)


def test_unsupported_methods_are_refused(sdpa_model):
    """fastv and visionzip run (tests/test_baselines_models.py); fastv after a layer the
    decoder does not have (the paper's K = 5 on this 2-layer model) is refused up front."""
    from omnizip.methods import get_method

    for layer in (2, 5):
        with pytest.raises(ValueError, match=r"config: method 'fastv'.*decoder has 2 layers"):
            patch(sdpa_model, get_method("fastv", layer=layer))
    assert sum(a + b for a, b in hook_counts(sdpa_model)) == 0
