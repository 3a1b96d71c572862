"""omnizip.patch on Hugging Face Qwen2.5-Omni (tiny random-weight models, nothing downloaded).

Groups (issue numbering): 1 decoder inputs == compress_sequence's decision; 2 generate logits ==
a direct decoder run on the kept tokens; 3 batch rows == single runs; 4 remove() restores;
5 eager and sdpa; 6 every prompt kind; 7 real media through the offline processor.

The references here never go through the adapter: positions come from the unpatched model,
tokens per frame from ``video_grid_thw``, audio scores from a dense softmax written out below,
and the decoder reference is ``language_model`` + ``lm_head`` called directly.
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

pytest.importorskip("transformers")

import omnizip
from omnizip import OmniZipConfig, compress_sequence
from omnizip.demo.media import (
    build_inputs,
    have_media_tools,
    make_test_clip,
    prepare_video_inputs,
    synthetic_frames,
    synthetic_speech,
)
from omnizip.demo.processor import build_offline_processor
from omnizip.demo.tiny_model import (
    build_tiny_qwen2_5_omni,
    build_tiny_qwen2_5_omni_thinker,
)
from omnizip.patch import OmniZipHandle, patch

AUDIO, VIDEO, IMAGE = 151646, 151656, 151655
NEW_TOKENS = 3


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sdpa_model():
    return build_tiny_qwen2_5_omni_thinker(seed=0, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def eager_model():
    return build_tiny_qwen2_5_omni_thinker(seed=0, attn_implementation="eager")


@pytest.fixture(scope="module")
def processor():
    # 112x112 frames -> 4x4 merged tokens per frame (P = 16): small and fast
    return build_offline_processor(max_pixels=112 * 112, min_pixels=56 * 56)


@pytest.fixture(scope="module")
def media():
    return {
        "V": synthetic_frames(4.0, seed=0),
        "A": synthetic_speech(4.0, 2.0, seed=0),
        "V2": synthetic_frames(3.0, seed=1, width=84),
        "A2": synthetic_speech(3.0, 1.0, seed=1),
        "img": synthetic_frames(1.0, seed=2, width=56, height=84)[0],
    }


def prompt(kind: str, m: dict) -> tuple[list, bool]:
    """(conversations, use_audio_in_video) for each prompt kind of the issue."""
    text = {"type": "text", "text": "What happens in the clip?"}
    av = {"type": "video", "video": m["V"], "audio": m["A"]}
    av2 = {"type": "video", "video": m["V2"], "audio": m["A2"]}
    table = {
        "av": ([[av, text]], True),
        "audio_only": ([[{"type": "audio", "audio": m["A"]}, text]], False),
        "two_audio": ([[{"type": "audio", "audio": m["A"]}, {"type": "audio", "audio": m["A2"]}, text]], False),
        "video_only": ([[{"type": "video", "video": m["V"]}, text]], False),
        # transformers gives a silent video under use_audio_in_video=True plain text positions
        "video_only_uav": ([[{"type": "video", "video": m["V"]}, text]], True),
        "separate_blocks": ([[av, text]], False),
        "image": ([[{"type": "image", "image": m["img"]}, av, text]], True),
        "two_videos": ([[av, av2, text]], True),
        "text_only": ([[text]], True),
        "batch": ([[av, text], [av2, text]], True),
    }
    return table[kind]


def make_inputs(processor, media, kind):
    conv, uav = prompt(kind, media)
    return dict(build_inputs(processor, conv, use_audio_in_video=uav)), uav


# ----------------------------------------------------------------------------- references
class _Stop(Exception):
    pass


def embedding_stage(model, inputs, uav):
    """Run the unpatched thinker up to the decoder: embeddings, M-RoPE positions, and the
    last audio layer's input. Returns a dict of clones."""
    thinker = getattr(model, "thinker", model)
    got: dict = {}

    def on_decoder(mod, args, kwargs):
        got["embeds"] = kwargs["inputs_embeds"].detach().clone()
        got["positions"] = kwargs["position_ids"].detach().clone()
        raise _Stop

    def on_tower(mod, args, kwargs):
        got["feature_lens"] = kwargs["feature_lens"].clone()

    def on_attn(mod, args, kwargs):
        got["hidden"] = kwargs["hidden_states"].detach().clone()
        got["cu_seqlens"] = kwargs["cu_seqlens"].clone()

    hooks = [
        thinker.model.language_model.register_forward_pre_hook(on_decoder, with_kwargs=True),
        thinker.model.audio_tower.register_forward_pre_hook(on_tower, with_kwargs=True),
        thinker.model.audio_tower.layers[-1].self_attn.register_forward_pre_hook(on_attn, with_kwargs=True),
    ]
    try:
        with torch.no_grad(), pytest.raises(_Stop):
            thinker(**inputs, use_audio_in_video=uav)
    finally:
        for h in hooks:
            h.remove()
    return got


def dense_audio_scores(attn, hidden, feature_lens, cu_seqlens=None):
    """SPEC 3 written out densely: softmax over each stream (or each encoder window), attention
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


def tokens_per_frame_from_grid(inputs, ids_row):
    """P of every video chunk of one row, from video_grid_thw (2x2 merge), video by video."""
    if "video_grid_thw" not in inputs:
        return []
    grid = inputs["video_grid_thw"]
    per_video = (grid.prod(-1) // 4).tolist()
    p_video = ((grid[:, 1] * grid[:, 2]) // 4).tolist()
    is_v = (ids_row == VIDEO).long()
    starts = ((is_v[1:] == 1) & (is_v[:-1] == 0)).nonzero().flatten() + 1
    if is_v[0]:
        starts = torch.cat([torch.tensor([0]), starts])
    before = torch.cumsum(is_v, 0) - is_v  # video tokens before each slot
    bounds = torch.tensor(per_video).cumsum(0)
    return [p_video[int(torch.searchsorted(bounds, before[s], right=True))] for s in starts]


def direct_logits(model, embeds, positions, tokens):
    """The decoder run directly: prefill ``embeds`` [1, L', D] at M-RoPE ``positions`` [3, 1, L'],
    then feed ``tokens`` one by one at max(position) + 1, 2, ... Returns [len(tokens) + 1, V]."""
    thinker = getattr(model, "thinker", model)
    lm = thinker.model.language_model
    out = []
    with torch.no_grad():
        res = lm(inputs_embeds=embeds, position_ids=positions, use_cache=True)
        cache = res.cache
        out.append(thinker.lm_head(res.last_hidden_state[:, -1]))
        nxt = int(positions.max()) + 1
        for i, tok in enumerate(tokens):
            emb = lm.embed_tokens(torch.tensor([[int(tok)]]))
            pos = torch.full((3, 1, 1), nxt + i, dtype=torch.long)
            res = lm(inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True)
            cache = res.cache
            out.append(thinker.lm_head(res.last_hidden_state[:, -1]))
    return torch.cat(out)


def expected_row(model, inputs, uav, config, handle_scores, row=0):
    """What compress_sequence decides for one row, from the unpatched embedding stage."""
    stage = embedding_stage(model, inputs, uav)
    valid = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"][row][valid]
    embeds = stage["embeds"][row][valid]
    positions = stage["positions"][:, row][:, valid]
    n_audio = int((ids == AUDIO).sum())
    scores = handle_scores if n_audio else None
    res = compress_sequence(
        embeds, ids, scores, audio_token_id=AUDIO, video_token_id=VIDEO,
        tokens_per_frame=tokens_per_frame_from_grid(inputs, ids) or 1, config=config,
    )
    return stage, res, res.embeds[res.keep], positions[:, res.keep]


class DecoderSpy:
    """Records the decoder's inputs as the patch hands them over (registered after the patch)."""

    def __init__(self, model):
        thinker = getattr(model, "thinker", model)
        self.calls: list[dict] = []
        self.hook = thinker.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, mod, args, kwargs):
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache")
        self.calls.append({
            "embeds": kwargs["inputs_embeds"].detach().clone(),
            "positions": None if kwargs.get("position_ids") is None else kwargs["position_ids"].clone(),
            "mask": mask.clone() if isinstance(mask, torch.Tensor) else mask,
            "past": 0 if cache is None else int(cache.get_seq_length()),
        })

    def remove(self):
        self.hook.remove()


def generate(model, inputs, uav, **kw):
    kw.setdefault("max_new_tokens", NEW_TOKENS)
    kw.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(
            **inputs, use_audio_in_video=uav, output_logits=True, return_dict_in_generate=True, **kw
        )
    prompt_len = inputs["input_ids"].shape[1]
    return out.sequences[:, prompt_len:], torch.stack(out.logits, dim=1)  # [B, n], [B, n, V]


def hook_counts(model):
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]


# ----------------------------------------------------------------------------- 1 + 2 + 5
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_inputs_and_generate_logits(attn, sdpa_model, eager_model, processor, media):
    model = sdpa_model if attn == "sdpa" else eager_model
    inputs, uav = make_inputs(processor, media, "av")
    config = OmniZipConfig()
    with patch(model, config) as handle:
        spy = DecoderSpy(model)
        try:
            tokens, logits = generate(model, inputs, uav)
        finally:
            spy.remove()
    rope_deltas = model.model.rope_deltas.clone()
    stage, res, kept_embeds, kept_pos = expected_row(
        model, inputs, uav, config, handle.audio_scores[0]
    )
    # 1: the decoder got exactly the core's tokens, merged embeddings and original positions
    prefill = spy.calls[0]
    assert torch.equal(prefill["embeds"][0], kept_embeds)
    assert torch.equal(prefill["positions"][1:, 0], kept_pos)
    assert torch.equal(prefill["positions"][0, 0], torch.arange(kept_embeds.shape[0]))
    assert torch.equal(handle.results[0].keep, res.keep)
    assert 0 < res.n_audio_kept < res.n_audio and 0 < res.n_video_kept < res.n_video
    # decode steps continue at max(original position) + 1 (SPEC 5)
    first_decode = spy.calls[1]["positions"]
    assert int(first_decode[1:].max()) == int(stage["positions"].max()) + 1
    # 2: generate's logits == the decoder run directly on the kept tokens
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    # rope_deltas accounts for the dropped tokens
    n_kept = kept_embeds.shape[0]
    assert int(rope_deltas[0, 0]) == int(stage["positions"].max()) + 1 - n_kept


def test_audio_scores_match_dense_reference(sdpa_model, processor, media):
    """SPEC 3: global (default) and windowed scores vs a dense softmax; two streams in one
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


# ----------------------------------------------------------------------------- 6
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
    stage, res, kept_embeds, kept_pos = expected_row(
        model, inputs, uav, config, handle.audio_scores[0]
    )
    assert torch.equal(handle.results[0].keep, res.keep)
    assert res.n_kept < res.keep.numel()
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tokens[0, :-1])
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


def test_text_only_is_a_noop(sdpa_model, processor, media):
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "text_only")
    _, base = generate(model, inputs, uav)
    with patch(model) as handle:
        _, patched = generate(model, inputs, uav)
    assert handle.results == [] and handle.kept_indices == []
    assert torch.equal(base, patched)


# ----------------------------------------------------------------------------- 3
def test_batch_rows_equal_single_runs(sdpa_model, processor, media):
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "batch")
    assert not bool(inputs["attention_mask"][1, 0])  # row 1 is left-padded
    config = OmniZipConfig()
    with patch(model, config) as handle:
        spy = DecoderSpy(model)
        try:
            tokens, logits = generate(model, inputs, uav)
        finally:
            spy.remove()
        batch_results = handle.results
        for row, key in enumerate([("V", "A"), ("V2", "A2")]):
            conv = [[{"type": "video", "video": media[key[0]], "audio": media[key[1]]},
                     {"type": "text", "text": "What happens in the clip?"}]]
            single = dict(build_inputs(processor, conv, use_audio_in_video=True))
            s_tokens, s_logits = generate(model, single, True)
            assert torch.equal(handle.results[0].keep, batch_results[row].keep)
            assert torch.equal(s_tokens[0], tokens[row])
            torch.testing.assert_close(logits[row], s_logits[0], rtol=1e-4, atol=1e-4)
    # re-padded on the left; every decode step's mask spans exactly the cache (FA2 slices
    # masks from the right, so a longer uncompressed mask would unmask pads)
    prefill_mask = spy.calls[0]["mask"]
    kept = [r.n_kept for r in batch_results]
    assert prefill_mask.shape == (2, max(kept))
    assert prefill_mask.sum(1).tolist() == kept and bool(prefill_mask[:, -1].all())
    for call in spy.calls[1:]:
        assert call["mask"].shape[1] == call["past"] + 1
        assert torch.equal(call["mask"][:, : max(kept)], prefill_mask)


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
    _, _, kept_embeds, kept_pos = expected_row(model, inputs, uav, config, scores)
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tokens[0, :-1])
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
    _, ref_res, kept_embeds, kept_pos = expected_row(model, inputs, uav, config, scores)
    assert out.logits.shape[1] == res.n_kept == ref_res.n_kept
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tok[0])
    torch.testing.assert_close(out.logits[0, -1], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step_plain[0, -1], ref[1], rtol=1e-4, atol=1e-5)
    pos = torch.full((3, 1, 1), int(kept_pos.max()) + 1)
    with patch(model, config), torch.no_grad():
        out2 = model(**inputs, use_audio_in_video=uav, use_cache=True)
        step = model(input_ids=tok, cache=out2.cache, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(step.logits[0, -1], ref[1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 4
def test_remove_restores_bit_identical(sdpa_model, processor, media, caplog):
    model = sdpa_model
    inputs, uav = make_inputs(processor, media, "av")
    before_hooks = hook_counts(model)
    base_tokens, base = generate(model, inputs, uav)
    with torch.no_grad():
        base_fwd = model(**inputs, use_audio_in_video=uav).logits

    handle = patch(model, OmniZipConfig.preset("35"))
    assert isinstance(handle, OmniZipHandle) and handle.active
    one_patch = hook_counts(model)
    again = patch(model)  # replaces the first patch
    assert not handle.active and again.active
    assert hook_counts(model) == one_patch
    with caplog.at_level(logging.INFO, logger="omnizip"):
        _, compressed = generate(model, inputs, uav)
    assert any("omnizip[qwen2_5_omni]" in r.getMessage() for r in caplog.records)
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


# ----------------------------------------------------------------------------- 7
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
    _, ref_res, kept_embeds, kept_pos = expected_row(
        model, inputs, True, config, handle.audio_scores[0]
    )
    assert torch.equal(res.keep, ref_res.keep)
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tokens[0, :-1])
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


@pytest.mark.parametrize("name", ["random", "dycoke", "omnizip-no-merge", "omnizip-random-audio"])
def test_other_pre_decoder_methods(name, sdpa_model, processor, media):
    """The same adapter runs any pre-decoder method of omnizip.methods (its compress())."""
    from omnizip.methods import get_method

    model = sdpa_model
    method = get_method(name)
    inputs, uav = make_inputs(processor, media, "av")
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs, uav)
    decision = handle.results[0]
    assert decision.n_kept < decision.keep.numel()
    stage = embedding_stage(model, inputs, uav)
    kept_embeds = decision.embeds[decision.keep]
    kept_pos = stage["positions"][:, 0][:, decision.keep]
    ref = direct_logits(model, kept_embeds[None], kept_pos[:, None], tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)


def test_unsupported_methods_are_refused(sdpa_model):
    """fastv and visionzip run (tests/test_baselines_models.py); fastv after a layer the
    decoder does not have (the paper's K = 5 on this 2-layer model) is refused up front."""
    from omnizip.methods import get_method

    for layer in (2, 5):
        with pytest.raises(ValueError, match=r"config: method 'fastv'.*decoder has 2 layers"):
            patch(sdpa_model, get_method("fastv", layer=layer))
    assert sum(a + b for a, b in hook_counts(sdpa_model)) == 0
