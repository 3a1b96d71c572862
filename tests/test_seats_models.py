"""SEATS through ``omnizip.patch`` on both families (tiny 4-layer models: drops after layers
1 and 2, removal before layer 4, the derived schedule).

- Stage I weights: the adapter's audio / video scores equal dense eager softmaxes inside
  the SEATS windows (2 s of audio per stream, 2 frames of video), pooled as the encoders pool;
  the decoder's input is ``method.compress``'s decision with them.
- Stages II-III: ``generate``'s logits (prefill and decode steps) equal the decoder run layer
  by layer by hand: at each step the last text token's attention from a full eager softmax
  (layer K-1's norm and q/k on the hidden states entering K), the plain reference's
  selection (tests/reference_seats.py), the chosen tokens sliced out of the hidden states,
  rotary, DeepStack features and the cache of the earlier layers.
- Left-padded batch rows equal single runs; static cache equals dynamic; eager attention;
  the patch is removable.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")

import reference_seats as ref
from conftest import (
    FAMILIES,
    IMAGE,
    MODEL_SIZES,
    VIDEO,
    decode_steps,
    embedding_stage,
    family_media,
    generate,
    hook_counts,
    lm_of,
    make_inputs,
    single_av_inputs,
    thinker_of,
)
from conftest import tokens_per_frame_from_grid as tokens_per_frame

from omnizip.methods import get_method
from omnizip.patch import patch

LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def setup(fam, attn="sdpa"):
    model = fam.thinker(attn, text_layers=LAYERS, **MODEL_SIZES[fam.name])
    return model, fam.processor(), family_media(fam.name)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def dense_received(q, k, spans, scale):
    """float64 ``[T]``: per frame, the attention it receives inside its span (heads and
    queries summed), the softmax written out."""
    out = torch.zeros(q.shape[0], dtype=torch.float64)
    for s, e in itertools.pairwise(spans):
        a = torch.softmax(torch.einsum("qhd,khd->hqk", q[s:e].double(), k[s:e].double()) * scale, -1)
        out[s:e] = a.sum(dim=(0, 1))
    return out


def dense_audio_scores(model, stage, window_tokens, pool):
    """SEATS's audio weights of a one-stream prompt: windows of ``window_tokens * pool``
    frames of the last audio layer's input, pairs averaged when the encoder pools them."""
    attn = thinker_of(model).model.audio_tower.layers[-1].self_attn
    hidden = stage["hidden"]
    frames, heads = hidden.shape[0], attn.num_heads
    with torch.no_grad():
        q = attn.q_proj(hidden).view(frames, heads, -1)
        k = attn.k_proj(hidden).view(frames, heads, -1)
    spans = [*range(0, frames, window_tokens * pool), frames]
    scores = dense_received(q, k, spans, attn.scaling)
    if pool == 2:
        scores = scores[: frames // 2 * 2].view(-1, 2).mean(1)
    return scores


def dense_video_scores(model, inputs, frames_per_window):
    """SEATS's video weights: attention received in the vision encoder's last block inside
    windows of ``frames_per_window`` temporal steps of each video, 2x2 patches averaged, in
    the LLM's order (the merger's rows matched to the encoder's output rows)."""
    visual = thinker_of(model).model.visual
    calls: list[dict] = []

    def on_visual(mod, args, kwargs):
        calls.append({"grid": kwargs.get("grid_thw", args[1] if len(args) > 1 else None)})

    def on_attn(mod, args, kwargs):
        calls[-1]["attn"] = (kwargs.get("hidden_states", args[0] if args else None).detach().clone(),
                             tuple(t.detach().clone() for t in kwargs["position_embeddings"]))

    def after_merger(mod, args, output):
        calls[-1]["merged"] = output.detach().clone()

    def after_visual(mod, args, kwargs, output):
        calls[-1]["pooled"] = output.pooler_output.detach().clone()

    hooks = [visual.register_forward_pre_hook(on_visual, with_kwargs=True),
             visual.blocks[-1].attn.register_forward_pre_hook(on_attn, with_kwargs=True),
             visual.merger.register_forward_hook(after_merger),
             visual.register_forward_hook(after_visual, with_kwargs=True)]
    try:
        with torch.no_grad():
            thinker_of(model)(**inputs, use_audio_in_video=True)
    finally:
        for h in hooks:
            h.remove()
    call = next(c for c in calls if torch.equal(c["grid"], inputs["video_grid_thw"]))
    attn = visual.blocks[-1].attn
    hidden, (cos, sin) = call["attn"]
    n, heads = hidden.shape[0], attn.num_heads
    with torch.no_grad():
        if hasattr(attn, "qkv"):
            q, k, _ = attn.qkv(hidden).view(n, 3, heads, -1).unbind(1)
        else:
            q, k = attn.q(hidden).view(n, heads, -1), attn.k(hidden).view(n, heads, -1)
    cos, sin = cos.double()[:, None], sin.double()[:, None]
    q = q.double() * cos + _rotate_half(q.double()) * sin
    k = k.double() * cos + _rotate_half(k.double()) * sin
    spans, start = [0], 0
    for t, h, w in call["grid"].tolist():
        for f in range(0, t, frames_per_window):
            start += min(frames_per_window, t - f) * h * w
            spans.append(start)
    per_token = dense_received(q, k, spans, attn.scaling).view(-1, 4).mean(1)
    dist = torch.cdist(call["pooled"].double(), call["merged"].double())
    return per_token[dist.argmin(1)].float()


# ----------------------------------------------------------------------------- reference
def seats_reference(model, stage, ids, keep1, method, tokens):
    """Stages II-III by hand on the Stage I kept tokens ``keep1`` of one row; returns the
    kept masks per step (over the row) and the logits of the prefill and decode steps."""
    from transformers import DynamicCache

    thinker = thinker_of(model)
    lm = lm_of(model)
    audio_id = int(thinker.config.audio_token_id)
    schedule = method.layer_schedule(LAYERS)
    ratios_v = ref.keep_ratios(LAYERS, list(schedule.drops), schedule.removal, *method.targets[:1],
                               method.encoder_ratios[0])
    ratios_a = ref.keep_ratios(LAYERS, list(schedule.drops), schedule.removal, method.targets[1],
                               method.encoder_ratios[1])
    slots = keep1.nonzero().flatten()  # row slots of the current tokens
    h = stage["embeds"][:, slots]
    positions = stage["positions"]
    positions = positions[1:] if positions.shape[0] == 4 else positions
    positions = positions[:, :, slots]
    vpm = None if stage["vpm"] is None else stage["vpm"][0]
    feats = [f[keep1[vpm]] for f in stage["deepstack"] or []]
    vpm = None if vpm is None else vpm[slots]
    cache = DynamicCache(config=lm.config)
    steps = []
    with torch.no_grad():
        cos, sin = lm.rotary_emb(h, positions)
        for i in range(LAYERS):
            if i in schedule.drops or i == schedule.removal:
                cur = ids[slots]
                media = (cur == VIDEO) | (cur == audio_id)
                if i == schedule.removal:
                    keep = ~media
                else:
                    block = lm.layers[i - 1]
                    attn = block.self_attn
                    x = block.input_layernorm(h)
                    n, hd = x.shape[1], attn.head_dim
                    q = attn.q_proj(x).view(1, n, -1, hd)
                    k = attn.k_proj(x).view(1, n, -1, hd)
                    if hasattr(attn, "q_norm"):
                        q, k = attn.q_norm(q), attn.k_norm(k)
                    c, s = cos[:, :, None].double(), sin[:, :, None].double()
                    q = q.double() * c + _rotate_half(q.double()) * s
                    k = k.double() * c + _rotate_half(k.double()) * s
                    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
                    last = int((~media).nonzero().max())
                    logits = torch.einsum("hd,khd->hk", q[0, last], k[0]) * attn.scaling
                    att = torch.softmax(logits, dim=-1).mean(0)
                    step = schedule.drops.index(i)
                    keep = torch.tensor(ref.inner_keep(att.tolist(), (cur == VIDEO).tolist(),
                                                       (cur == audio_id).tolist(), ratios_v[step],
                                                       ratios_a[step], method.temperature))
                h, cos, sin = h[:, keep], cos[:, keep], sin[:, keep]
                if vpm is not None:
                    feats = [f[keep[vpm]] for f in feats]
                    vpm = vpm[keep]
                for j in range(i):  # the release prunes the earlier layers' cache at each step
                    cache.layers[j].keys = cache.layers[j].keys[:, :, keep]
                    cache.layers[j].values = cache.layers[j].values[:, :, keep]
                slots = slots[keep]
                row = torch.zeros_like(keep1)
                row[slots] = True
                steps.append((i, row))
            n = h.shape[1]
            mask = torch.full((n, n), float("-inf")).triu(1)[None, None].to(h.dtype)
            h = lm.layers[i](h, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            if i < len(feats):
                h = h.clone()
                h[0, vpm] = h[0, vpm] + feats[i]
        out = [thinker.lm_head(lm.norm(h)[:, -1])]
        start = stage["positions"].max() + 1
        start = float(start) if positions.is_floating_point() else int(start)
        out += decode_steps(model, cache, start, tokens)
    return steps, torch.cat(out)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["av", "image_av"])
def test_seats_scores_decisions_and_logits(fam, kind):
    model, processor, media = setup(fam)
    inputs, uav = make_inputs(processor, media, kind)
    method = get_method("seats", retention=0.3)
    before = hook_counts(model)
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs, uav)
        run = handle.adapter.effective_method
        with torch.no_grad():  # a cache-free forward: logits of the last layers' tokens
            plain = model(**inputs, use_audio_in_video=True, use_cache=False).logits
    assert hook_counts(model) == before
    ids = inputs["input_ids"][0]
    stage = embedding_stage(model, inputs, uav)
    pool = 2 if fam.name == "qwen2_5" else 1
    assert run.family == ("Qwen2.5-Omni" if pool == 2 else "Qwen3-Omni")
    torch.testing.assert_close(handle.audio_scores[0].double(),
                               dense_audio_scores(model, stage, run.audio_score_window, pool),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(handle.video_scores[0], dense_video_scores(model, inputs, 2),
                               rtol=1e-4, atol=1e-5)
    res = handle.results[0]
    stage1 = run.compress(stage["embeds"][0], ids, audio_token_id=fam.audio, video_token_id=VIDEO,
                          tokens_per_frame=tokens_per_frame(inputs, ids),
                          audio_scores=handle.audio_scores[0], video_scores=handle.video_scores[0])
    assert torch.equal(res.keep, stage1.keep) and 0 < res.n_video_kept < res.n_video
    steps, want = seats_reference(model, stage, ids, res.keep, run, tokens[0, :-1])
    assert [k for k, _ in res.steps] == [k for k, _ in steps] == [1, 2, 3]
    for (_, got), (_, exp) in zip(res.steps, steps, strict=True):
        assert torch.equal(got, exp)
    assert not bool(res.steps[-1][1][(ids == VIDEO) | (ids == fam.audio)].any())
    if kind == "image_av":
        assert bool(res.steps[-1][1][ids == IMAGE].all())  # images are not SEATS's to drop
    torch.testing.assert_close(logits[0], want, rtol=1e-4, atol=1e-5)
    assert plain.shape[1] == int(res.steps[-1][1].sum())
    torch.testing.assert_close(plain[0, -1], want[0], rtol=1e-4, atol=1e-5)
    assert handle.layer_tokens[0] == [int(res.keep.sum())] + [int(m.sum()) for _, m in res.steps]
    nominal = run.predict_layer_tokens(ids, audio_token_id=fam.audio, video_token_id=VIDEO,
                                       tokens_per_frame=tokens_per_frame(inputs, ids), n_layers=LAYERS)
    assert nominal[0] == handle.layer_tokens[0][0] and nominal[3] == handle.layer_tokens[0][3]


def test_seats_batch_rows_static_cache_and_removal(fam):
    """Left-padded batch: each row equals that prompt alone; a static cache gives the dynamic
    cache's tokens and logits; after remove() the model is the unpatched one."""
    model, processor, media = setup(fam)
    batch, uav = make_inputs(processor, media, "batch")
    assert not bool(batch["attention_mask"][1, 0])  # row 1 is left-padded
    plain_tokens, plain_logits = generate(model, batch, uav)
    with patch(model, get_method("seats", retention=0.3)) as handle:
        tokens, logits = generate(model, batch, uav)
        rows = handle.results
        s_tokens, s_logits = generate(model, batch, uav, cache_implementation="static")
        assert torch.equal(tokens, s_tokens)
        torch.testing.assert_close(s_logits, logits, rtol=1e-4, atol=1e-5)
        for row, (video, audio) in enumerate([("V", "A"), ("V2", "A2")]):
            one_tokens, one_logits = generate(model, single_av_inputs(processor, media, video, audio), uav)
            one = handle.results[0]
            assert torch.equal(one.keep, rows[row].keep)
            assert [(k, m.tolist()) for k, m in one.steps] == [(k, m.tolist()) for k, m in rows[row].steps]
            assert torch.equal(one_tokens[0], tokens[row])
            torch.testing.assert_close(logits[row], one_logits[0], rtol=1e-4, atol=1e-4)
    again_tokens, again_logits = generate(model, batch, uav)
    assert torch.equal(again_tokens, plain_tokens) and torch.equal(again_logits, plain_logits)


def test_seats_eager_attention_and_explicit_schedule():
    fam = FAMILIES["qwen2_5"]
    model, processor, media = setup(fam, attn="eager")
    inputs, uav = make_inputs(processor, media, "av")
    method = get_method("seats", retention=0.25, drop_layers=(1,), late_block_layer=4)
    with patch(model, method) as handle:
        tokens, logits = generate(model, inputs, uav)
        run = handle.adapter.effective_method
    res = handle.results[0]
    assert [k for k, _ in res.steps] == [1, 3]
    stage = embedding_stage(model, inputs, uav)
    steps, want = seats_reference(model, stage, inputs["input_ids"][0], res.keep, run, tokens[0, :-1])
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(res.steps, steps, strict=True))
    torch.testing.assert_close(logits[0], want, rtol=1e-4, atol=1e-5)


def test_seats_refusals_leave_nothing_behind(fam):
    model, _, _ = setup(fam)
    with pytest.raises(ValueError, match=f"decoder has {LAYERS} layers"):
        patch(model, get_method("seats", drop_layers=(1, 2), late_block_layer=LAYERS + 1))
    assert sum(a + b for a, b in hook_counts(model)) == 0
