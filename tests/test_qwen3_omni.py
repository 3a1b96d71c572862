"""omnizip.patch on Hugging Face Qwen3-Omni (tiny random-weight MoE thinker, nothing downloaded).

The same guarantees as for Qwen2.5-Omni: the decoder gets exactly what compress_sequence decides
(with the DeepStack side inputs pruned by the same mask), generate's logits equal a direct
decoder run on the kept tokens, kept fractions follow the budget, batch rows equal single runs,
remove() restores. Plus the Qwen3-Omni layout decision: one frame per video run, windows pair a
frame with its own audio, ISTC frame parity along the stream.

The references never go through the adapter: positions, DeepStack features and the last audio
layer's input come from the unpatched model, tokens per frame from ``video_grid_thw``, audio
frames per stream from transformers' own length formula, audio scores from a dense softmax, and
the decoder reference is ``language_model`` + ``lm_head`` called directly.
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

pytest.importorskip("transformers")

import omnizip
from omnizip import OmniZipConfig, compress_sequence
from omnizip.core.layout import build_layout
from omnizip.demo.media import (
    build_inputs,
    have_media_tools,
    make_test_clip,
    prepare_video_inputs,
    synthetic_frames,
    synthetic_speech,
)
from omnizip.demo.processor import build_offline_qwen3_omni_processor
from omnizip.demo.tiny_model import build_tiny_qwen3_omni, build_tiny_qwen3_omni_thinker
from omnizip.patch import OmniZipHandle, patch, supported_models

AUDIO, VIDEO, IMAGE = 151675, 151656, 151655
NEW_TOKENS = 3
P = 16  # 128x128 frames: 16-pixel patches, 2x2 merge -> 4x4 tokens per frame
STREAM = OmniZipConfig(frame_parity="stream")  # what the adapter runs for the default config


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model():
    # 2-second audio attention windows (n_window_infer 200 mel frames = 26 encoder frames), so
    # the encoder's windows differ from whole streams in these few-second clips
    return build_tiny_qwen3_omni_thinker(seed=0, audio_window_infer=200)


@pytest.fixture(scope="module")
def eager_model():
    return build_tiny_qwen3_omni_thinker(seed=0, audio_window_infer=200, attn_implementation="eager")


@pytest.fixture(scope="module")
def processor():
    return build_offline_qwen3_omni_processor(max_pixels=128 * 128, min_pixels=64 * 64)


@pytest.fixture(scope="module")
def media():
    return {
        "V": synthetic_frames(4.0, seed=0, width=128, height=128),
        "A": synthetic_speech(4.0, 2.0, seed=0),
        "V8": synthetic_frames(8.0, seed=3, width=128, height=128),
        "A8": synthetic_speech(8.0, 5.0, seed=3),
        "V2": synthetic_frames(3.0, seed=1, width=96, height=128),  # 4x3 = 12 tokens per frame
        "A2": synthetic_speech(3.0, 1.0, seed=1),
        "img": synthetic_frames(1.0, seed=2, width=64, height=96)[0],
    }


def prompt(kind: str, m: dict) -> tuple[list, bool]:
    """(conversations, use_audio_in_video) for each prompt kind."""
    text = {"type": "text", "text": "What happens in the clip?"}
    av = {"type": "video", "video": m["V"], "audio": m["A"]}
    av2 = {"type": "video", "video": m["V2"], "audio": m["A2"]}
    table = {
        "av": ([[av, text]], True),
        "image_av": ([[{"type": "image", "image": m["img"]}, av, text]], True),
        "long_av": ([[{"type": "video", "video": m["V8"], "audio": m["A8"]}, text]], True),
        "audio_only": ([[{"type": "audio", "audio": m["A"]}, text]], False),
        "two_audio": ([[{"type": "audio", "audio": m["A"]}, {"type": "audio", "audio": m["A2"]}, text]], False),
        "video_only": ([[{"type": "video", "video": m["V"]}, text]], False),
        # a silent video under use_audio_in_video=True gets plain text positions
        "video_only_uav": ([[{"type": "video", "video": m["V"]}, text]], True),
        "separate_blocks": ([[av, text]], False),
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
    """Run the unpatched thinker up to the decoder: embeddings, positions, DeepStack inputs and
    the last audio layer's input. Returns a dict of clones."""
    thinker = getattr(model, "thinker", model)
    got: dict = {}

    def on_decoder(mod, args, kwargs):
        got["embeds"] = kwargs["inputs_embeds"].detach().clone()
        got["positions"] = kwargs["position_ids"].detach().clone()
        vpm = kwargs.get("visual_pos_masks")
        got["vpm"] = None if vpm is None else vpm.clone()
        ds = kwargs.get("deepstack_visual_embeds")
        got["deepstack"] = None if ds is None else [f.detach().clone() for f in ds]
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


def frames_per_stream(model, feature_lens):
    """Last-layer audio frames per stream, by transformers' own formula (1:1 with tokens)."""
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as mod

    n_window = model.config.audio_config.n_window
    return mod._get_feat_extract_output_lengths(feature_lens, n_window).tolist()


def dense_audio_scores(attn, hidden, frames, cu_seqlens=None):
    """SPEC 3 written out densely: softmax over each stream (or each encoder window), attention
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


def tokens_per_frame_from_grid(inputs, ids_row):
    """P of every video run of one row, from video_grid_thw (2x2 merge), video by video."""
    if "video_grid_thw" not in inputs:
        return []
    grid = inputs["video_grid_thw"]
    per_video = (grid.prod(-1) // 4).tolist()
    p_video = ((grid[:, 1] * grid[:, 2]) // 4).tolist()
    is_v = (ids_row == VIDEO).long()
    starts = ((is_v[1:] == 1) & (is_v[:-1] == 0)).nonzero().flatten() + 1
    if is_v[0]:
        starts = torch.cat([torch.tensor([0]), starts])
    before = torch.cumsum(is_v, 0) - is_v
    bounds = torch.tensor(per_video).cumsum(0)
    return [p_video[int(torch.searchsorted(bounds, before[s], right=True))] for s in starts]


def expected_row(model, inputs, uav, config, scores, row=0):
    """What compress_sequence decides for one row (config as the adapter should run it), the
    kept embeddings and positions, and (single-row prompts) the pruned DeepStack inputs."""
    stage = embedding_stage(model, inputs, uav)
    valid = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"][row][valid]
    embeds = stage["embeds"][row][valid]
    positions = stage["positions"][:, row][:, valid]
    n_audio = int((ids == AUDIO).sum())
    res = compress_sequence(
        embeds, ids, scores if n_audio else None, audio_token_id=AUDIO, video_token_id=VIDEO,
        tokens_per_frame=tokens_per_frame_from_grid(inputs, ids) or 1, config=config,
    )
    out = {"stage": stage, "res": res, "embeds": res.embeds[res.keep],
           "positions": positions[:, res.keep], "vpm": None, "deepstack": None}
    if stage["vpm"] is not None and inputs["input_ids"].shape[0] == 1:
        vpm = stage["vpm"][0]
        out["vpm"] = vpm[res.keep]
        out["deepstack"] = [f[res.keep[vpm]] for f in stage["deepstack"]]
    return out


def direct_logits(model, exp, tokens, deepstack=True):
    """The decoder run directly: prefill the kept embeddings at their original positions (with
    the pruned DeepStack features), then feed ``tokens`` one by one at max(position) + 1, 2, ...
    Returns [len(tokens) + 1, V]."""
    thinker = getattr(model, "thinker", model)
    lm = thinker.model.language_model
    positions = exp["positions"][:, None]
    extra = {}
    if deepstack and exp["vpm"] is not None:
        extra = {"visual_pos_masks": exp["vpm"][None], "deepstack_visual_embeds": exp["deepstack"]}
    out = []
    with torch.no_grad():
        res = lm(inputs_embeds=exp["embeds"][None], position_ids=positions, use_cache=True, **extra)
        cache = res.cache
        out.append(thinker.lm_head(res.last_hidden_state[:, -1]))
        nxt = positions.max() + 1
        for i, tok in enumerate(tokens):
            emb = lm.embed_tokens(torch.tensor([[int(tok)]]))
            pos = torch.full((3, 1, 1), float(nxt + i), dtype=positions.dtype)
            res = lm(inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True)
            cache = res.cache
            out.append(thinker.lm_head(res.last_hidden_state[:, -1]))
    return torch.cat(out)


class DecoderSpy:
    """Records the decoder's inputs as the patch hands them over (registered after the patch)."""

    def __init__(self, model):
        thinker = getattr(model, "thinker", model)
        self.calls: list[dict] = []
        self.hook = thinker.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, mod, args, kwargs):
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache")
        ds = kwargs.get("deepstack_visual_embeds")
        vpm = kwargs.get("visual_pos_masks")
        self.calls.append({
            "embeds": kwargs["inputs_embeds"].detach().clone(),
            "positions": None if kwargs.get("position_ids") is None else kwargs["position_ids"].clone(),
            "mask": mask.clone() if isinstance(mask, torch.Tensor) else mask,
            "past": 0 if cache is None else int(cache.get_seq_length()),
            "vpm": None if vpm is None else vpm.clone(),
            "deepstack": None if ds is None else [f.detach().clone() for f in ds],
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


def runs(ids):
    """[(kind, start, length)] of the maximal audio/video runs of a 1-D id tensor."""
    out = []
    for key, group in itertools.groupby(enumerate(ids.tolist()), key=lambda x: x[1]):
        items = list(group)
        if key in (AUDIO, VIDEO):
            out.append(("A" if key == AUDIO else "V", items[0][0], len(items)))
    return out


# ----------------------------------------------------------------------------- decoder inputs
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_inputs_deepstack_and_generate_logits(attn, model, eager_model, processor, media):
    """An image next to a video with its audio: the decoder gets the core's decision, original
    float positions, the DeepStack mask and features pruned with the same mask (image rows
    whole); generate's logits == the decoder run directly on the kept tokens."""
    model = model if attn == "sdpa" else eager_model
    inputs, uav = make_inputs(processor, media, "image_av")
    with patch(model, OmniZipConfig()) as handle:
        spy = DecoderSpy(model)
        try:
            tokens, logits = generate(model, inputs, uav)
        finally:
            spy.remove()
    rope_deltas = model.model.rope_deltas.clone()
    exp = expected_row(model, inputs, uav, STREAM, handle.audio_scores[0])
    stage, res = exp["stage"], exp["res"]
    n_kept = exp["embeds"].shape[0]
    prefill = spy.calls[0]
    assert torch.equal(handle.results[0].keep, res.keep)
    assert torch.equal(prefill["embeds"][0], exp["embeds"])
    assert prefill["positions"].is_floating_point() and stage["positions"].is_floating_point()
    assert torch.equal(prefill["positions"][1:, 0], exp["positions"])
    assert torch.equal(prefill["positions"][0, 0], torch.arange(n_kept, dtype=torch.float32))
    assert 0 < res.n_audio_kept < res.n_audio and 0 < res.n_video_kept < res.n_video
    # DeepStack: mask and every feature tensor pruned with the sequence's keep mask
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
    # decode continues at max(original position) + 1; rope_deltas (float) counts the drops
    assert float(spy.calls[1]["positions"][1:].max()) == float(stage["positions"].max()) + 1
    assert rope_deltas.is_floating_point()
    assert float(rope_deltas[0, 0]) == float(stage["positions"].max()) + 1 - n_kept
    # generate's logits == the direct decoder run, which depends on the DeepStack features
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    without = direct_logits(model, exp, tokens[0, :-1], deepstack=False)
    assert not torch.allclose(without, ref, rtol=1e-4, atol=1e-5)


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
    """SPEC 3 on Qwen3-Omni: one score per last-layer frame (no pooling), softmax over each
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


def test_text_only_is_a_noop(model, processor, media):
    inputs, uav = make_inputs(processor, media, "text_only")
    _, base = generate(model, inputs, uav)
    with patch(model) as handle:
        _, patched = generate(model, inputs, uav)
    assert handle.results == [] and handle.kept_indices == []
    assert torch.equal(base, patched)


# ----------------------------------------------------------------------------- batch
def test_batch_rows_equal_single_runs(model, processor, media):
    """A left-padded batch (two resolutions, DeepStack over both rows): each row's decision,
    tokens and logits equal that prompt run alone; masks span exactly the cache."""
    inputs, uav = make_inputs(processor, media, "batch")
    assert not bool(inputs["attention_mask"][1, 0])  # row 1 is left-padded
    with patch(model) as handle:
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
    kept = [r.n_kept for r in batch_results]
    prefill = spy.calls[0]
    assert prefill["mask"].shape == (2, max(kept)) and prefill["mask"].sum(1).tolist() == kept
    assert bool(prefill["mask"][:, -1].all())
    # the DeepStack mask follows the re-padded layout: video tokens kept per row, none in pads
    assert prefill["vpm"].sum(1).tolist() == [r.n_video_kept for r in batch_results]
    assert not bool((prefill["vpm"] & ~prefill["mask"].bool()).any())
    assert prefill["deepstack"][0].shape[0] == sum(r.n_video_kept for r in batch_results)
    for call in spy.calls[1:]:
        assert call["mask"].shape[1] == call["past"] + 1
        assert torch.equal(call["mask"][:, : max(kept)], prefill["mask"])


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


# ----------------------------------------------------------------------------- remove
def test_remove_restores_bit_identical(model, processor, media, caplog):
    inputs, uav = make_inputs(processor, media, "image_av")
    before_hooks = hook_counts(model)
    base_tokens, base = generate(model, inputs, uav)
    with torch.no_grad():
        base_fwd = model(**inputs, use_audio_in_video=uav).logits

    handle = patch(model, OmniZipConfig.preset("35"))
    assert isinstance(handle, OmniZipHandle) and handle.active
    assert handle.adapter.name == "qwen3_omni"
    one_patch = hook_counts(model)
    again = patch(model)  # replaces the first patch
    assert not handle.active and again.active and hook_counts(model) == one_patch
    with caplog.at_level(logging.INFO, logger="omnizip"):
        _, compressed = generate(model, inputs, uav)
    assert any("omnizip[qwen3_omni]" in r.getMessage() for r in caplog.records)
    assert not torch.equal(compressed, base)
    again.remove()
    again.remove()  # idempotent
    assert hook_counts(model) == before_hooks
    tokens, restored = generate(model, inputs, uav)
    assert torch.equal(tokens, base_tokens) and torch.equal(restored, base)
    with torch.no_grad():
        assert torch.equal(model(**inputs, use_audio_in_video=uav).logits, base_fwd)


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


@pytest.mark.parametrize("name", ["random", "dycoke", "omnizip-no-merge"])
def test_other_pre_decoder_methods(name, model, processor, media):
    """The adapter runs any pre-decoder method; DyCoke's one-second audio frame becomes 13
    Qwen3-Omni tokens; DeepStack is pruned with whatever the method keeps."""
    from omnizip.methods import get_method

    method = get_method(name)
    inputs, uav = make_inputs(processor, media, "av")
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs, uav)
        run = handle.adapter.effective_method
    if name == "dycoke":
        assert method.audio_frame_tokens is None and run.audio_frame_tokens == 13
    if name == "omnizip-no-merge":
        assert run.frame_parity == "stream" and not run.merge_anchors
    decision = handle.results[0]
    assert decision.n_kept < decision.keep.numel()
    stage = embedding_stage(model, inputs, uav)
    vpm = stage["vpm"][0]
    exp = {"embeds": decision.embeds[decision.keep],
           "positions": stage["positions"][:, 0][:, decision.keep],
           "vpm": vpm[decision.keep],
           "deepstack": [f[decision.keep[vpm]] for f in stage["deepstack"]]}
    ref = direct_logits(model, exp, tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)


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
