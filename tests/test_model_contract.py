"""The model-integration contract of omnizip.patch, written once and run on every family.

On tiny random-weight models (nothing downloaded): 1 the decoder gets exactly the core's
decision (merged embeddings, original positions, side inputs pruned by the same mask);
2 generate's logits equal a direct decoder run on the kept tokens; 3 batch rows equal single
runs; 4 remove() restores the model bit-identically; every pre-decoder method of
omnizip.methods runs through the same adapter. Family-specific behaviour (prompt kinds, audio
scores, layouts) is tested in tests/test_qwen2_5_omni.py and tests/test_qwen3_omni.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("transformers")

from conftest import (
    FAMILIES,
    IMAGE,
    MODEL_SIZES,
    NEW_TOKENS,
    VIDEO,
    DecoderSpy,
    direct_logits,
    embedding_stage,
    expected_row,
    family_media,
    generate,
    hook_counts,
    kept_inputs,
    make_inputs,
    single_av_inputs,
)

from omnizip import OmniZipConfig
from omnizip.methods import get_method
from omnizip.patch import OmniZipHandle, patch

#: the prompt each family's contract runs on (Qwen3-Omni: an image too, for DeepStack)
CONTRACT_KIND = {"qwen2_5": "av", "qwen3": "image_av"}


def setup(fam, attn="sdpa"):
    return fam.thinker(attn, **MODEL_SIZES[fam.name]), fam.processor(), family_media(fam.name)


# ----------------------------------------------------------------------------- 1 + 2
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_inputs_and_generate_logits(fam, attn):
    """The decoder gets the core's decision at the original positions (plus, on Qwen3-Omni,
    the DeepStack mask and features pruned with the same mask, image rows whole); generate's
    logits == the decoder run directly on the kept tokens; decoding continues at
    max(original position) + 1 and rope_deltas counts the drops."""
    model, processor, media = setup(fam, attn)
    inputs, uav = make_inputs(processor, media, CONTRACT_KIND[fam.name])
    with patch(model, OmniZipConfig()) as handle:
        spy = DecoderSpy(model)
        try:
            tokens, logits = generate(model, inputs, uav)
        finally:
            spy.remove()
    rope_deltas = model.model.rope_deltas.clone()
    exp = expected_row(model, inputs, uav, fam.config(), handle.audio_scores[0])
    stage, res = exp["stage"], exp["res"]
    n_kept = exp["embeds"].shape[0]
    prefill = spy.calls[0]
    assert torch.equal(handle.results[0].keep, res.keep)
    assert 0 < res.n_audio_kept < res.n_audio and 0 < res.n_video_kept < res.n_video
    assert torch.equal(prefill["embeds"][0], exp["embeds"])
    assert torch.equal(prefill["positions"][1:, 0], exp["positions"])
    positions_dtype = stage["positions"].dtype
    assert torch.equal(prefill["positions"][0, 0], torch.arange(n_kept, dtype=positions_dtype))
    # decode continues at max(original position) + 1 (algorithm §5); rope_deltas counts the drops
    assert float(spy.calls[1]["positions"][1:].max()) == float(stage["positions"].max()) + 1
    assert float(rope_deltas[0, 0]) == float(stage["positions"].max()) + 1 - n_kept
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    if fam.deepstack:
        _check_deepstack(model, inputs, exp, prefill, tokens, ref, rope_deltas)


def _check_deepstack(model, inputs, exp, prefill, tokens, ref, rope_deltas):
    """Qwen3-Omni: float positions; DeepStack mask and every feature tensor pruned with the
    sequence's keep mask; the direct decoder run depends on those features."""
    stage, res = exp["stage"], exp["res"]
    assert prefill["positions"].is_floating_point() and stage["positions"].is_floating_point()
    assert rope_deltas.is_floating_point()
    ids = inputs["input_ids"][0]
    assert torch.equal(stage["vpm"][0], (ids == IMAGE) | (ids == VIDEO))
    assert torch.equal(prefill["vpm"][0], exp["vpm"])
    assert len(prefill["deepstack"]) == len(stage["deepstack"]) == 2
    for got, want, full in zip(prefill["deepstack"], exp["deepstack"], stage["deepstack"], strict=True):
        assert torch.equal(got, want)
        assert got.shape[0] == int(exp["vpm"].sum()) < full.shape[0]
    image = ids == IMAGE
    assert bool(res.keep[image].all())  # images are never touched, nor their DeepStack rows
    n_image = int(image.sum())
    for got, full in zip(prefill["deepstack"], stage["deepstack"], strict=True):
        assert torch.equal(got[:n_image], full[:n_image])  # the image precedes the video
    without = direct_logits(model, exp, tokens[0, :-1], deepstack=False)
    assert not torch.allclose(without, ref, rtol=1e-4, atol=1e-5)


def test_text_only_is_a_noop(fam):
    model, processor, media = setup(fam)
    inputs, uav = make_inputs(processor, media, "text_only")
    _, base = generate(model, inputs, uav)
    with patch(model) as handle:
        _, patched = generate(model, inputs, uav)
    assert handle.results == [] and handle.kept_indices == []
    assert torch.equal(base, patched)


# ----------------------------------------------------------------------------- 3
def test_batch_rows_equal_single_runs(fam):
    """A left-padded batch (two resolutions): each row's decision, tokens and logits equal that
    prompt run alone; the batch is re-padded on the left and every decode step's mask spans
    exactly the cache (FA2 slices masks from the right, so a longer uncompressed mask would
    unmask pads); on Qwen3-Omni the DeepStack mask follows the re-padded layout."""
    model, processor, media = setup(fam)
    inputs, uav = make_inputs(processor, media, "batch")
    assert not bool(inputs["attention_mask"][1, 0])  # row 1 is left-padded
    with patch(model, OmniZipConfig()) as handle:
        spy = DecoderSpy(model)
        try:
            tokens, logits = generate(model, inputs, uav)
        finally:
            spy.remove()
        batch_results = handle.results
        for row, (video, audio) in enumerate([("V", "A"), ("V2", "A2")]):
            s_tokens, s_logits = generate(model, single_av_inputs(processor, media, video, audio), True)
            assert torch.equal(handle.results[0].keep, batch_results[row].keep)
            assert torch.equal(s_tokens[0], tokens[row])
            torch.testing.assert_close(logits[row], s_logits[0], rtol=1e-4, atol=1e-4)
    kept = [r.n_kept for r in batch_results]
    prefill = spy.calls[0]
    assert prefill["mask"].shape == (2, max(kept)) and prefill["mask"].sum(1).tolist() == kept
    assert bool(prefill["mask"][:, -1].all())
    for call in spy.calls[1:]:
        assert call["mask"].shape[1] == call["past"] + 1
        assert torch.equal(call["mask"][:, : max(kept)], prefill["mask"])
    if fam.deepstack:  # video tokens kept per row, none in pads
        assert prefill["vpm"].sum(1).tolist() == [r.n_video_kept for r in batch_results]
        assert not bool((prefill["vpm"] & ~prefill["mask"].bool()).any())
        assert prefill["deepstack"][0].shape[0] == sum(r.n_video_kept for r in batch_results)


# ----------------------------------------------------------------------------- 4
def test_remove_restores_bit_identical(fam, caplog):
    model, processor, media = setup(fam)
    inputs, uav = make_inputs(processor, media, CONTRACT_KIND[fam.name])
    before_hooks = hook_counts(model)
    base_tokens, base = generate(model, inputs, uav)
    with torch.no_grad():
        base_fwd = model(**inputs, use_audio_in_video=uav).logits

    handle = patch(model, OmniZipConfig.preset("35"))
    assert isinstance(handle, OmniZipHandle) and handle.active
    assert handle.adapter.name == fam.adapter
    one_patch = hook_counts(model)
    again = patch(model)  # replaces the first patch
    assert not handle.active and again.active
    assert hook_counts(model) == one_patch
    with caplog.at_level(logging.INFO, logger="omnizip"):
        _, compressed = generate(model, inputs, uav)
    assert any(f"omnizip[{fam.adapter}]" in r.getMessage() for r in caplog.records)
    assert again.last_summary and not torch.equal(compressed, base)
    again.remove()
    again.remove()  # idempotent
    assert hook_counts(model) == before_hooks

    tokens, restored = generate(model, inputs, uav)
    assert torch.equal(tokens, base_tokens) and torch.equal(restored, base)
    with torch.no_grad():
        assert torch.equal(model(**inputs, use_audio_in_video=uav).logits, base_fwd)
    # context manager: removed on exit, also on error
    with pytest.raises(RuntimeError), patch(model):
        raise RuntimeError("boom")
    assert hook_counts(model) == before_hooks


# ----------------------------------------------------------------------------- methods
PRE_DECODER_METHODS = {
    "qwen2_5": ["random", "dycoke", "omnizip-no-merge", "omnizip-random-audio"],
    "qwen3": ["random", "dycoke", "omnizip-no-merge"],
}


@pytest.mark.parametrize(
    ("family", "name"), [(f, n) for f, names in PRE_DECODER_METHODS.items() for n in names]
)
def test_other_pre_decoder_methods(family, name):
    """The same adapter runs any pre-decoder method of omnizip.methods (its compress()); side
    inputs (DeepStack) are pruned with whatever the method keeps; on Qwen3-Omni DyCoke's
    one-second audio frame becomes 13 tokens and OmniZip's frame parity runs along the stream."""
    fam = FAMILIES[family]
    model, processor, media = setup(fam)
    method = get_method(name)
    inputs, uav = make_inputs(processor, media, "av")
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs, uav)
        run = handle.adapter.effective_method
    if fam.stream_parity and name == "dycoke":
        assert method.audio_frame_tokens is None and run.audio_frame_tokens == 13
    if fam.stream_parity and name == "omnizip-no-merge":
        assert run.frame_parity == "stream" and not run.merge_anchors
    decision = handle.results[0]
    assert decision.n_kept < decision.keep.numel()
    exp = kept_inputs(embedding_stage(model, inputs, uav, audio=False), decision)
    ref = direct_logits(model, exp, tokens[0, :-1])
    assert ref.shape[0] == NEW_TOKENS
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
