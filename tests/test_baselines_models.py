"""The baselines that need more than the decoder inputs, on both model families (tiny models).

- ``visionzip``: the adapter's per-video-token scores equal a dense, eager computation of the
  attention received in the vision encoder's last block (softmax written out here, rotary
  included, over the encoder's own spans, mapped to LLM tokens through the encoder's own
  output order); the decoder gets exactly what ``method.compress`` decides with those scores;
  ``generate``'s logits equal the decoder run directly on the kept tokens.
- ``fastv``: ``generate``'s logits (prefill and decode steps) equal an independent computation:
  layers < K on the whole prompt, the last token's attention in layer K-1 from a full eager
  attention matrix, the chosen tokens dropped, layers >= K on the kept tokens, the cache of
  layers < K pruned to the kept tokens for decoding; kept counts match the budget exactly;
  batch rows equal single runs; static cache equals dynamic cache.

The references never go through the adapter: they hook the unpatched model only to read its
tensors, and run its layers directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")

from conftest import (
    FAMILIES,
    IMAGE,
    NEW_TOKENS,
    VIDEO,
    decode_steps,
    direct_logits,
    embedding_stage,
    generate,
    hook_counts,
    kept_inputs,
    lm_of,
)
from conftest import tokens_per_frame_from_grid as tokens_per_frame

from omnizip.demo.media import build_inputs, synthetic_frames, synthetic_speech
from omnizip.methods import get_method
from omnizip.patch import patch


# ----------------------------------------------------------------------------- fixtures
class Family:
    """A tiny model of one family (3 decoder layers), its processor, media and token ids."""

    def __init__(self, name: str, attn: str = "sdpa") -> None:
        self.name = name
        spec = FAMILIES[name]
        self.model = spec.thinker(attn, text_layers=3)
        self.audio = spec.audio
        if name == "qwen2_5":
            # 168x112 frames: 6x4 merged tokens per frame, wider than the encoder's 4x4-token
            # attention windows, so its window order differs from the LLM order
            self.processor = spec.processor(max_pixels=168 * 112, min_pixels=56 * 56)
            size = {"width": 168, "height": 112}
        else:
            self.processor = spec.processor(max_pixels=128 * 128, min_pixels=64 * 64)
            size = {"width": 128, "height": 128}
        self.media = {
            "V": synthetic_frames(4.0, seed=0, **size),
            "A": synthetic_speech(4.0, 2.0, seed=0),
            "V2": synthetic_frames(2.0, seed=1, **size),
            "A2": synthetic_speech(2.0, 1.0, seed=1),
            "img": synthetic_frames(
                1.0,
                seed=2,
                width=56 if name == "qwen2_5" else 64,
                height=84 if name == "qwen2_5" else 96,
            )[0],
        }

    def inputs(self, kind: str) -> dict:
        m = self.media
        text = {"type": "text", "text": "What happens in the clip?"}
        av = {"type": "video", "video": m["V"], "audio": m["A"]}
        av2 = {"type": "video", "video": m["V2"], "audio": m["A2"]}
        conv = {
            "av": [[av, text]],
            "image_av": [[{"type": "image", "image": m["img"]}, av, text]],
            "batch": [[av, text], [av2, text]],
            "row1": [[av2, text]],
        }[kind]
        return dict(build_inputs(self.processor, conv, use_audio_in_video=True))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the tiny models' many small ops are fastest single-threaded on small CI machines
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    return Family(request.param)


@pytest.fixture(scope="module")
def eager_qwen2_5():
    return Family("qwen2_5", attn="eager")


# ----------------------------------------------------------------------------- helpers
def decoder_stage(model, inputs):
    """The unpatched thinker's decoder inputs (M-RoPE rows only), with DeepStack inputs."""
    got = embedding_stage(model, inputs, audio=False)
    if got["positions"].shape[0] == 4:  # a leading plain text row: keep the M-RoPE rows
        got["positions"] = got["positions"][1:]
    return got


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def dense_video_scores(model, inputs):
    """Per video token (sequence order), the attention its patches receive in the vision
    encoder's last block: eager softmax over each span of the block's cu_seqlens, summed over
    heads and queries, averaged over the 2x2 patches of the LLM token. The encoder order is
    mapped to LLM order by matching the merger's output rows with the encoder's output rows."""
    visual = getattr(model, "thinker", model).model.visual
    calls: list[dict] = []

    def on_visual(mod, args, kwargs):
        calls.append({"grid": kwargs.get("grid_thw", args[1] if len(args) > 1 else None)})

    def on_attn(mod, args, kwargs):
        calls[-1]["attn"] = (
            kwargs.get("hidden_states", args[0] if args else None).detach().clone(),
            kwargs["cu_seqlens"].clone(),
            tuple(t.detach().clone() for t in kwargs["position_embeddings"]),
        )

    def after_merger(mod, args, output):
        calls[-1]["merged"] = output.detach().clone()

    def after_visual(mod, args, kwargs, output):
        calls[-1]["pooled"] = output.pooler_output.detach().clone()

    hooks = [
        visual.register_forward_pre_hook(on_visual, with_kwargs=True),
        visual.blocks[-1].attn.register_forward_pre_hook(on_attn, with_kwargs=True),
        visual.merger.register_forward_hook(after_merger),
        visual.register_forward_hook(after_visual, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(**inputs, use_audio_in_video=True)
    finally:
        for h in hooks:
            h.remove()
    video = [c for c in calls if torch.equal(c["grid"], inputs["video_grid_thw"])]
    assert len(video) == 1
    call = video[0]
    attn = visual.blocks[-1].attn
    hidden, cu, (cos, sin) = call["attn"]
    T, heads = hidden.shape[0], attn.num_heads
    with torch.no_grad():
        if hasattr(attn, "qkv"):
            q, k, _ = attn.qkv(hidden).view(T, 3, heads, -1).unbind(1)
        else:
            q, k = attn.q(hidden).view(T, heads, -1), attn.k(hidden).view(T, heads, -1)
    cos, sin = cos.double()[:, None], sin.double()[:, None]
    q = q.double() * cos + _rotate_half(q.double()) * sin
    k = k.double() * cos + _rotate_half(k.double()) * sin
    received = torch.zeros(T, dtype=torch.float64)
    for s, e in itertools.pairwise(cu.tolist()):
        a = torch.softmax(torch.einsum("qhd,khd->hqk", q[s:e], k[s:e]) * attn.scaling, dim=-1)
        received[s:e] = a.sum(dim=(0, 1))
    per_token = received.view(-1, 4).mean(1)  # encoder (window) order
    dist = torch.cdist(call["pooled"].double(), call["merged"].double())  # LLM row -> encoder row
    order = dist.argmin(1)
    assert bool((dist.min(1).values < 1e-6).all()) and torch.equal(
        order.sort().values, torch.arange(len(order))
    )
    return per_token[order].float()


# ----------------------------------------------------------------------------- VisionZip
@pytest.mark.parametrize("kind", ["av", "image_av"])
def test_visionzip_scores_decision_and_logits(fam, kind):
    model = fam.model
    inputs = fam.inputs(kind)
    method = get_method("visionzip", retention=0.5)
    decoder_calls: list[dict] = []

    def spy(mod, args, kwargs):
        decoder_calls.append(
            {
                k: kwargs.get(k)
                for k in (
                    "inputs_embeds",
                    "position_ids",
                    "visual_pos_masks",
                    "deepstack_visual_embeds",
                )
            }
        )

    with patch(model, method) as handle:
        hook = lm_of(model).register_forward_pre_hook(spy, with_kwargs=True)
        try:
            tokens, logits = generate(model, inputs)  # encoders run before the thinker
        finally:
            hook.remove()
        generate_scores = handle.video_scores[0]
        with torch.no_grad():  # a plain forward: the encoders run inside the thinker
            model(**inputs, use_audio_in_video=True)
    # scores: the adapter's == the dense eager reference (video calls only, LLM order)
    dense = dense_video_scores(model, inputs)
    ids = inputs["input_ids"][0]
    assert dense.numel() == int((ids == VIDEO).sum())
    torch.testing.assert_close(handle.video_scores[0], dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(generate_scores, dense, rtol=1e-4, atol=1e-5)
    # the decoder got exactly method.compress's decision with those scores
    stage = decoder_stage(model, inputs)
    decision = method.compress(
        stage["embeds"][0],
        ids,
        audio_token_id=fam.audio,
        video_token_id=VIDEO,
        tokens_per_frame=tokens_per_frame(inputs, ids),
        audio_scores=handle.audio_scores[0],
        video_scores=dense,
    )
    assert torch.equal(handle.results[0].keep, decision.keep)
    kept_embeds = decision.embeds[decision.keep]
    kept_pos = stage["positions"][:, 0][:, decision.keep]
    prefill = decoder_calls[0]
    assert torch.equal(prefill["inputs_embeds"][0], kept_embeds)
    given = prefill["position_ids"]
    given = given[1:] if given.shape[0] == 4 else given
    assert torch.equal(given[:, 0], kept_pos)
    n_multi = decision.n_audio + decision.n_video
    assert decision.n_audio_kept + decision.n_video_kept == round(0.5 * n_multi)
    assert 0 < decision.n_video_kept < decision.n_video
    if kind == "image_av":
        assert bool(decision.keep[ids == IMAGE].all())
    # generate's logits == the decoder run directly on the kept tokens
    ref = direct_logits(model, kept_inputs(stage, decision), tokens[0, :-1])
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)


def test_visionzip_batch_beams_and_cache_free(fam):
    """Two videos in a left-padded batch: each row's scores are its own video's (the dense
    reference, in row order) and its decision equals the prompt alone; beam search (encoder
    outputs repeated per beam) and cache-free generate (no new encoder call per step) find
    the scores too."""
    model = fam.model
    batch = fam.inputs("batch")
    method = get_method("visionzip", retention=0.5)
    with patch(model, method) as handle:
        tokens, _ = generate(model, batch)
        rows = handle.results
        scores = handle.video_scores
        for row, kind in enumerate(["av", "row1"]):
            one = fam.inputs(kind)
            one_tokens, _ = generate(model, one)
            assert torch.equal(handle.results[0].keep, rows[row].keep)
            torch.testing.assert_close(handle.video_scores[0], scores[row], rtol=1e-5, atol=1e-6)
            assert torch.equal(one_tokens[0], tokens[row])
        beams, _ = generate(model, batch, num_beams=2)
        assert beams.shape == (2, NEW_TOKENS)
        one = fam.inputs("av")
        cached, _ = generate(model, one)
        uncached, _ = generate(model, one, use_cache=False)
        assert torch.equal(cached, uncached)
    torch.testing.assert_close(
        torch.cat(scores), dense_video_scores(model, batch), rtol=1e-4, atol=1e-5
    )


# ----------------------------------------------------------------------------- FastV
def fastv_reference(model, stage, ids, layer, retention, tokens):
    """FastV by hand: layers < K on all tokens, the last token's attention in layer K-1 from
    the full eager attention matrix, drop, layers >= K on the kept tokens; decode with the
    cache of layers < K pruned to the kept tokens. Returns (keep [L], logits [n + 1, V])."""
    from transformers import DynamicCache

    thinker = getattr(model, "thinker", model)
    lm = lm_of(model)
    embeds, positions = stage["embeds"], stage["positions"]  # [1, L, D], [3, 1, L]
    L = embeds.shape[1]
    vpm = None if stage["vpm"] is None else stage["vpm"][0]
    deepstack = stage["deepstack"] or []

    def causal(n):
        m = torch.full((n, n), float("-inf")).triu(1)
        return m[None, None].to(embeds.dtype)

    def add_deepstack(h, i, mask, feats):
        if i < len(feats):
            h = h.clone()
            h[0, mask] = h[0, mask] + feats[i]
        return h

    with torch.no_grad():
        cos, sin = lm.rotary_emb(embeds, positions)
        cache = DynamicCache(config=lm.config)
        h = embeds
        for i in range(layer):
            h_in = h
            h = lm.layers[i](
                h,
                attention_mask=causal(L),
                position_embeddings=(cos, sin),
                cache=cache,
                use_cache=True,
            )
            h = add_deepstack(h, i, vpm, deepstack)
        # layer K-1's attention, the whole matrix, eager
        block = lm.layers[layer - 1]
        attn = block.self_attn
        x = block.input_layernorm(h_in)
        hd = attn.head_dim
        q = attn.q_proj(x).view(1, L, -1, hd)
        k = attn.k_proj(x).view(1, L, -1, hd)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        c, s = cos[:, :, None].double(), sin[:, :, None].double()
        q = q.double() * c + _rotate_half(q.double()) * s
        k = k.double() * c + _rotate_half(k.double()) * s
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scaling + causal(L).double()
        att = torch.softmax(logits, dim=-1)[0, :, -1].mean(0)  # [L]
        # FastV's budget: candidates (video + image) keep the budget minus the other tokens
        audio_id = getattr(thinker.config, "audio_token_id", None)
        is_cand = (ids == VIDEO) | (ids == IMAGE)
        n_multi = int(is_cand.sum() + (ids == audio_id).sum())
        n_keep = max(
            0, min(round(retention * n_multi) - (n_multi - int(is_cand.sum())), int(is_cand.sum()))
        )
        chosen = att.masked_fill(~is_cand, float("-inf")).topk(n_keep).indices
        keep = ~is_cand
        keep[chosen] = True
        # layers >= K on the kept tokens
        n = int(keep.sum())
        h = h[:, keep]
        cos_k, sin_k = cos[:, keep], sin[:, keep]
        vpm_k = None if vpm is None else vpm[keep]
        ds_k = [f[keep[vpm]] for f in deepstack]
        for i in range(layer, len(lm.layers)):
            h = lm.layers[i](
                h,
                attention_mask=causal(n),
                position_embeddings=(cos_k, sin_k),
                cache=cache,
                use_cache=True,
            )
            h = add_deepstack(h, i, vpm_k, ds_k)
        out = [thinker.lm_head(lm.norm(h)[:, -1])]
        for i in range(layer):  # decode bookkeeping: every layer holds the kept tokens
            cache.layers[i].keys = cache.layers[i].keys[:, :, keep]
            cache.layers[i].values = cache.layers[i].values[:, :, keep]
        start = positions.max() + 1
        start = float(start) if positions.is_floating_point() else int(start)
        out += decode_steps(model, cache, start, tokens)
    return keep, torch.cat(out)


@pytest.mark.parametrize("layer", [1, 2])
def test_fastv_generate_equals_manual_computation(fam, layer):
    model = fam.model
    inputs = fam.inputs("image_av")
    retention = 0.7
    method = get_method("fastv", retention=retention, layer=layer)
    before = hook_counts(model)
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs)
        with torch.no_grad():  # a plain (cache-free) forward: the kept tokens' logits
            plain = model(**inputs, use_audio_in_video=True, use_cache=False).logits
    assert hook_counts(model) == before
    ids = inputs["input_ids"][0]
    stage = decoder_stage(model, inputs)
    keep, ref = fastv_reference(model, stage, ids, layer, retention, tokens[0, :-1])
    res = handle.results[0]
    assert torch.equal(res.keep, keep)
    assert torch.equal(handle.kept_indices[0], keep.nonzero().flatten())
    # text, audio and the other modalities stay; the budget is met exactly
    n_multi = res.n_audio + res.n_video + int((ids == IMAGE).sum())
    kept_multi = int(res.keep[(ids == fam.audio) | (ids == VIDEO) | (ids == IMAGE)].sum())
    assert kept_multi == round(retention * n_multi)
    assert res.n_audio_kept == res.n_audio and 0 < res.n_video_kept < res.n_video
    assert bool(res.keep[(ids != fam.audio) & (ids != VIDEO) & (ids != IMAGE)].all())
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)
    assert plain.shape[1] == int(keep.sum())
    torch.testing.assert_close(plain[0, -1], ref[0], rtol=1e-4, atol=1e-5)


def test_fastv_eager_attention(eager_qwen2_5):
    """Same as above with eager attention (the decoder's own masks as 4-D float tensors)."""
    fam = eager_qwen2_5
    inputs = fam.inputs("av")
    with patch(fam.model, get_method("fastv", retention=0.7, layer=2)) as handle:
        tokens, logits = generate(fam.model, inputs)
    stage = decoder_stage(fam.model, inputs)
    keep, ref = fastv_reference(fam.model, stage, inputs["input_ids"][0], 2, 0.7, tokens[0, :-1])
    assert torch.equal(handle.results[0].keep, keep)
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-5)


def test_fastv_batch_rows_and_static_cache(fam):
    """Left-padded batch: each row decided on its own and re-padded == that prompt alone;
    a static cache gives the dynamic cache's logits."""
    model = fam.model
    batch = fam.inputs("batch")
    assert not bool(batch["attention_mask"][1, 0])  # row 1 is left-padded
    with patch(model, get_method("fastv", retention=0.7, layer=1)) as handle:
        tokens, logits = generate(model, batch)
        results = handle.results
        s_tokens, s_logits = generate(model, batch, cache_implementation="static")
        assert torch.equal(tokens, s_tokens)
        torch.testing.assert_close(s_logits, logits, rtol=1e-4, atol=1e-5)
        for row, kind in enumerate(["av", "row1"]):
            one_tokens, one_logits = generate(model, fam.inputs(kind))
            assert torch.equal(handle.results[0].keep, results[row].keep)
            assert torch.equal(one_tokens[0], tokens[row])
            torch.testing.assert_close(logits[row], one_logits[0], rtol=1e-4, atol=1e-4)


def test_refusals_leave_nothing_behind(fam):
    model = fam.model
    n_layers = len(lm_of(model).layers)
    for layer in (n_layers, 5):
        with pytest.raises(ValueError, match="decoder has 3 layers"):
            patch(model, get_method("fastv", layer=layer))
    assert sum(a + b for a, b in hook_counts(model)) == 0
    with pytest.raises(TypeError, match="decide"):  # fastv cannot act before the decoder
        get_method("fastv").compress(
            torch.zeros(2, 4),
            torch.zeros(2, dtype=torch.long),
            audio_token_id=1,
            video_token_id=2,
            tokens_per_frame=1,
        )
