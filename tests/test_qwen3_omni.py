"""omnizip.patch on Hugging Face Qwen3-Omni: what is specific to the family.

The model-integration contract (decoder inputs == the core's decision with the DeepStack side
inputs pruned by the same mask, generate == a direct decoder run on the kept tokens, batch rows
== single runs, remove() restores) runs on every family in tests/test_model_contract.py. Here:
the Qwen3-Omni layout decision (one frame per video run, windows pair a frame with its own
audio, ISTC frame parity along the stream), kept fractions against the budget, algorithm §3 audio
scores (one per last-layer frame), prompt kinds, decoding modes, the full model class, errors.

The references never go through the adapter (tests/conftest.py): positions, DeepStack features
and the last audio layer's input come from the unpatched model, tokens per frame from
``video_grid_thw``, audio frames per stream from transformers' own length formula, audio scores
from a dense softmax, and the decoder reference is ``language_model`` + ``lm_head`` directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")

from conftest import (
    FAMILIES,
    MODEL_SIZES,
    VIDEO,
    direct_logits,
    embedding_stage,
    expected_row,
    family_media,
    generate,
    hook_counts,
    make_inputs,
    tokens_per_frame_from_grid,
)

import omnizip
from omnizip import OmniZipConfig
from omnizip.core.layout import build_layout
from omnizip.demo.media import have_media_tools, make_test_clip, prepare_video_inputs
from omnizip.demo.tiny_model import build_tiny_qwen3_omni
from omnizip.patch import patch, supported_models

FAMILY = FAMILIES["qwen3"]
AUDIO = FAMILY.audio
P = 16  # 128x128 frames: 16-pixel patches, 2x2 merge -> 4x4 tokens per frame
STREAM = FAMILY.config()  # what the adapter runs for the default config


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model():
    # 2-second audio attention windows (n_window_infer 200 mel frames = 26 encoder frames), so
    # the encoder's windows differ from whole streams in these few-second clips
    return FAMILY.thinker("sdpa", **MODEL_SIZES["qwen3"])


@pytest.fixture(scope="module")
def processor():
    return FAMILY.processor()


@pytest.fixture(scope="module")
def media():
    return family_media("qwen3")


# ----------------------------------------------------------------------------- references
def frames_per_stream(model, feature_lens):
    """Last-layer audio frames per stream, by transformers' own formula (1:1 with tokens)."""
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as mod

    n_window = model.config.audio_config.n_window
    return mod._get_feat_extract_output_lengths(feature_lens, n_window).tolist()


def dense_audio_scores(attn, hidden, frames, cu_seqlens=None):
    """algorithm §3 written out densely: softmax over each stream (or each encoder window), attention
    received summed over heads and queries; no pooling (Qwen3-Omni: one token per frame)."""
    with torch.no_grad():
        T = hidden.shape[0]
        q = attn.q_proj(hidden).view(T, attn.num_heads, -1).transpose(0, 1).double()
        k = attn.k_proj(hidden).view(T, attn.num_heads, -1).transpose(0, 1).double()
    bounds = [0, *itertools.accumulate(frames)] if cu_seqlens is None else cu_seqlens.tolist()
    received = torch.zeros(T, dtype=torch.float64)
    for s, e in itertools.pairwise(bounds):
        a = torch.softmax(q[:, s:e] @ k[:, s:e].transpose(1, 2) * attn.scaling, dim=-1)
        received[s:e] = a.sum(dim=(0, 1))
    return received.float()


def runs(ids):
    """[(kind, start, length)] of the maximal audio/video runs of a 1-D id tensor."""
    out = []
    for key, group in itertools.groupby(enumerate(ids.tolist()), key=lambda x: x[1]):
        items = list(group)
        if key in (AUDIO, VIDEO):
            out.append(("A" if key == AUDIO else "V", items[0][0], len(items)))
    return out


# ----------------------------------------------------------------------------- layout
def test_layout_one_frame_per_run_and_stream_parity(model, processor, media):
    """The processor's layout: V_0 A_0 V_1 A_1 ..., one frame per video run, A_i = the audio
    of [t_i, t_{i+1}); the adapter pairs V_i with A_i and counts frame parity along the stream
    (so ISTC's temporal half runs) unless the config sets frame_parity="chunk", the
    reference rule, under which every frame is an even (spatial) frame."""
    inputs, uav = make_inputs(processor, media, "av")
    ids = inputs["input_ids"][0]
    stage = embedding_stage(model, inputs, uav)
    t = stage["positions"][0, 0]  # temporal position ids
    layout = runs(ids)
    kinds = "".join(k for k, _, _ in layout)
    assert kinds == "VA" * 4, kinds  # 4 s at 2 fps: 4 grid steps of 2 frames
    for i, (kind, start, length) in enumerate(layout):
        if kind == "V":
            assert length == P and bool((t[start : start + length] == t[start]).all())
        else:  # the audio after frame i lies in [t_i, t_{i+1})
            t_i = t[layout[i - 1][1]]
            assert bool((t[start : start + length] >= t_i).all())
            if i + 1 < len(layout):
                assert bool((t[start : start + length] < t[layout[i + 1][1]]).all())
    chunk_parity = build_layout(ids, AUDIO, VIDEO, P, "chunk").frame_tables[0].parity
    stream_parity = build_layout(ids, AUDIO, VIDEO, P, "stream").frame_tables[0].parity
    assert chunk_parity.tolist() == [0, 0, 0, 0] and stream_parity.tolist() == [0, 1, 0, 1]

    with patch(model) as handle, torch.no_grad():
        model(**inputs, use_audio_in_video=uav)
        scores = handle.audio_scores[0]
        stream = handle.results[0]
        assert handle.config.frame_parity is None  # the user's config is not changed
        assert handle.adapter.effective_method == STREAM
    with patch(model, OmniZipConfig(frame_parity="chunk")) as handle, torch.no_grad():
        assert handle.adapter.effective_method == OmniZipConfig(frame_parity="chunk")
        model(**inputs, use_audio_in_video=uav)
        chunk = handle.results[0]
    with patch(model, OmniZipConfig(frame_parity="stream")) as handle, torch.no_grad():
        model(**inputs, use_audio_in_video=uav)
        explicit = handle.results[0]
    want_stream = expected_row(model, inputs, uav, STREAM, scores)["res"]
    want_chunk = expected_row(model, inputs, uav, OmniZipConfig(frame_parity="chunk"), scores)["res"]
    assert torch.equal(stream.keep, want_stream.keep) and torch.equal(explicit.keep, stream.keep)
    assert torch.equal(chunk.keep, want_chunk.keep)
    assert not torch.equal(stream.keep, chunk.keep)
    # windows: frame i with its own audio; each frame gets its window's ratio
    assert stream.num_guided == 4 and stream.video_chunks.shape[0] == 4
    assert stream.window_audio_retention.shape == (4,)
    assert torch.equal(stream.video_chunk_ratio, want_stream.video_chunk_ratio)


# ----------------------------------------------------------------------------- budget
@pytest.mark.parametrize(
    "config",
    [OmniZipConfig.preset("45"), OmniZipConfig.preset("35"), OmniZipConfig(budget="exact")],
    ids=["45", "35", "exact"],
)
def test_kept_fractions_match_budget(config, model, processor, media):
    """Kept audio = the salient share (1 - rho_a) plus the anchors (c N_a); kept video =
    (1 - rho_v) N_v: exactly under budget="exact", within per-frame rounding otherwise."""
    inputs, uav = make_inputs(processor, media, "long_av")
    with patch(model, config) as handle, torch.no_grad():
        model(**inputs, use_audio_in_video=uav)
    res = handle.results[0]
    n_a, n_v = res.n_audio, res.n_video
    assert (n_a, n_v) == (104, 8 * P)  # 8 s: 13 audio tokens per second, 8 grid steps
    n_dom = round((1 - config.rho_audio) * n_a)
    n_ctx = min(round(config.contextual_ratio * n_a), n_a - n_dom)
    assert int(res.salient.sum()) == n_dom and res.anchors.numel() == n_ctx
    assert res.n_audio_kept == n_dom + n_ctx
    target = (1 - config.rho_video) * n_v
    if config.budget == "exact":
        assert res.n_video_kept == round(target)
    else:
        frames = n_v // P
        assert abs(res.n_video_kept - target) <= frames  # int() per frame
    ratios = res.video_chunk_ratio
    assert bool((ratios >= config.min_ratio - 1e-9).all() and (ratios <= config.max_ratio + 1e-9).all())
    assert res.num_guided == 8 and len(set(ratios.tolist())) > 1  # audio-guided, per frame


# ----------------------------------------------------------------------------- audio scores
def test_audio_scores_match_dense_reference(model, processor, media):
    """algorithm §3 on Qwen3-Omni: one score per last-layer frame (no pooling), softmax over each
    whole stream (global) or the encoder's own windows (windowed); energy = L2 norms."""
    attn = model.model.audio_tower.layers[-1].self_attn
    for kind in ("two_audio", "av"):
        inputs, uav = make_inputs(processor, media, kind)
        stage = embedding_stage(model, inputs, uav)
        frames = frames_per_stream(model, stage["feature_lens"])
        n_audio = int((inputs["input_ids"] == AUDIO).sum())
        assert sum(frames) == stage["hidden"].shape[0] == n_audio  # frames 1:1 to tokens
        assert stage["cu_seqlens"].numel() - 1 > len(frames)  # windows shorter than streams
        for scope in ("global", "windowed"):
            with patch(model, OmniZipConfig(audio_score=scope)) as handle, torch.no_grad():
                model(**inputs, use_audio_in_video=uav)
            cu = stage["cu_seqlens"] if scope == "windowed" else None
            dense = dense_audio_scores(attn, stage["hidden"], frames, cu)
            torch.testing.assert_close(handle.audio_scores[0], dense, rtol=1e-4, atol=1e-5)
    inputs, uav = make_inputs(processor, media, "av")
    stage = embedding_stage(model, inputs, uav)
    with patch(model, OmniZipConfig(audio_score="energy")) as handle, torch.no_grad():
        model(**inputs, use_audio_in_video=uav)
    audio = stage["embeds"][0][inputs["input_ids"][0] == AUDIO]
    torch.testing.assert_close(handle.audio_scores[0], audio.norm(dim=-1))


# ----------------------------------------------------------------------------- prompt kinds
@pytest.mark.parametrize(
    "kind", ["audio_only", "video_only", "video_only_uav", "separate_blocks", "two_videos"]
)
def test_prompt_kinds(kind, model, processor, media):
    inputs, uav = make_inputs(processor, media, kind)
    with patch(model) as handle:
        tokens, logits = generate(model, inputs, uav)
    exp = expected_row(model, inputs, uav, STREAM, handle.audio_scores[0])
    res = exp["res"]
    assert torch.equal(handle.results[0].keep, res.keep)
    assert res.n_kept < res.keep.numel()
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    if kind == "audio_only":
        assert res.n_video == 0 and res.n_audio_kept < res.n_audio
    if kind.startswith("video_only"):  # one run of 4 frames, no audio: unguided at rho_video
        assert res.n_audio == 0 and res.num_guided == 0 and res.video_chunks.shape[0] == 1
    if kind == "separate_blocks":  # video then its audio as a block: one window
        assert res.audio_chunks.shape[0] == 1 and res.video_chunks.shape[0] == 1
    if kind == "two_videos":  # 4 + 3 one-frame runs, two resolutions, two streams
        assert res.video_chunks.shape[0] == 7 and res.audio_chunks.shape[0] == 7
        assert tokens_per_frame_from_grid(inputs, inputs["input_ids"][0]) == [16] * 4 + [12] * 3


def test_other_decoding_modes(model, processor, media):
    """Static cache == dynamic cache on a padded batch; cache-free generate == cached; beam
    search runs; prompt-lookup (assisted) decoding is refused; a plain forward returns the
    compressed sequence's logits; a user loop decoding without position_ids relies on the
    (float) rope_deltas."""
    inputs, uav = make_inputs(processor, media, "av")
    batch, _ = make_inputs(processor, media, "batch")
    with patch(model) as handle:
        d_tokens, d_logits = generate(model, batch, True)
        s_tokens, s_logits = generate(model, batch, True, cache_implementation="static")
        tokens, logits = generate(model, inputs, uav)
        nc_tokens, nc_logits = generate(model, inputs, uav, use_cache=False, max_new_tokens=2)
        beams, _ = generate(model, batch, True, num_beams=2, max_new_tokens=2)
        assert beams.shape == (2, 2)
        with pytest.raises(ValueError, match="assisted"):
            generate(model, inputs, uav, prompt_lookup_num_tokens=2, max_new_tokens=6)
        with torch.no_grad():
            out = model(**inputs, use_audio_in_video=uav, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            step = model(input_ids=tok, cache=out.cache).logits
        scores = handle.audio_scores[0]
    assert torch.equal(d_tokens, s_tokens)
    torch.testing.assert_close(s_logits, d_logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens[:, :2], nc_tokens)
    torch.testing.assert_close(nc_logits, logits[:, :2], rtol=1e-4, atol=1e-5)
    exp = expected_row(model, inputs, uav, STREAM, scores)
    assert out.logits.shape[1] == exp["res"].n_kept
    ref = direct_logits(model, exp, tok[0])
    torch.testing.assert_close(out.logits[0, -1], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step[0, -1], ref[1], rtol=1e-4, atol=1e-5)


def test_full_model_class_and_errors(processor, media):
    """Qwen3OmniMoeForConditionalGeneration (talker off) is accepted; the error for an
    unsupported model lists both families; labels are refused; nothing is left behind."""
    full = build_tiny_qwen3_omni(seed=0, audio_window_infer=200)
    assert type(full).__name__ == "Qwen3OmniMoeForConditionalGeneration"
    assert {"Qwen3OmniMoeForConditionalGeneration",
            "Qwen3OmniMoeThinkerForConditionalGeneration"} <= set(supported_models())
    with pytest.raises(ValueError, match="Qwen3OmniMoeThinkerForConditionalGeneration"):
        patch(torch.nn.Linear(2, 2))
    inputs, uav = make_inputs(processor, media, "av")
    with patch(full) as handle:
        tokens, logits = generate(full.thinker, inputs, uav)
        with pytest.raises(ValueError, match="labels"):
            full.thinker(**inputs, use_audio_in_video=uav, labels=inputs["input_ids"])
    exp = expected_row(full, inputs, uav, STREAM, handle.audio_scores[0])
    assert torch.equal(handle.results[0].keep, exp["res"].keep)
    ref = direct_logits(full, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    assert sum(a + b for a, b in hook_counts(full)) == 0
    assert omnizip.patch is patch


@pytest.mark.skipif(not have_media_tools(), reason="needs ffmpeg and espeak-ng")
def test_real_media_clip(model, processor, tmp_path):
    """A real MP4 (espeak-ng speech then silence over ffmpeg's moving testsrc2) through the
    offline Qwen3-Omni processor into the patched thinker."""
    clip = make_test_clip(tmp_path / "clip.mp4", seconds=4.0, width=128, height=128)
    inputs = dict(prepare_video_inputs(processor, clip, "What is said?"))
    ids = inputs["input_ids"][0]
    assert int((ids == AUDIO).sum()) >= 50 and int((ids == VIDEO).sum()) == 4 * P
    with patch(model) as handle:
        tokens, logits = generate(model, inputs, True)
    res = handle.results[0]
    assert 0 < res.retention < 1 and res.num_guided == 4
    exp = expected_row(model, inputs, True, STREAM, handle.audio_scores[0])
    assert torch.equal(res.keep, exp["res"].keep)
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
