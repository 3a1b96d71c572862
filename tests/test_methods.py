"""The method registry and the baselines (random, DyCoke, VisionZip, FastV) on plain tensors.

Budgets are exact, text is never dropped, inputs are never modified, dtypes are kept, seeds
make results reproducible, and every baseline agrees with a small, loop-based implementation
written here from the papers' rules (not from the package's code).
"""

from __future__ import annotations

import math

import pytest
import torch

from omnizip import OmniZipConfig, compress_sequence
from omnizip.methods import (
    METHODS,
    DyCokeConfig,
    FastVConfig,
    RandomConfig,
    VisionZipConfig,
    coerce_option,
    get_method,
    method_fields,
    method_name,
)
from omnizip.methods._common import distribute, split_counts
from omnizip.methods.fastv import fastv_attention, fastv_select
from omnizip.methods.visionzip import vision_token_scores

A, V, T, IMG = 7, 9, 1, 5  # audio, video, text, image ids


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # thousands of tiny ops: thread start-up dominates on small multi-core CI machines
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sequence(windows=4, p=16, frames=2, audio=10, tail_video=0, text=3, dim=12, seed=0,
             lead_audio=0):
    """ids / embeds / audio scores / video scores of
    ``[text][audio*lead][V_0][A_0]...[V_w-1][A_w-1][tail video][text]``."""
    ids = [T] * text + [A] * lead_audio
    for _ in range(windows):
        ids += [V] * (frames * p) + [A] * audio
    ids += [V] * tail_video + [T] * text
    ids = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(len(ids), dim, generator=gen)
    a_scores = torch.rand(int((ids == A).sum()), generator=gen)
    v_scores = torch.rand(int((ids == V).sum()), generator=gen)
    return embeds, ids, a_scores, v_scores


def run(method, embeds, ids, a_scores=None, v_scores=None, p=16):
    return method.compress(embeds, ids, audio_token_id=A, video_token_id=V, tokens_per_frame=p,
                           audio_scores=a_scores, video_scores=v_scores)


BASELINES = {
    "random": lambda **kw: RandomConfig(**kw),
    "dycoke": lambda **kw: DyCokeConfig(**kw),
    "visionzip": lambda **kw: VisionZipConfig(**kw),
}
LAYOUTS = {
    "interleaved": dict(windows=4),
    "tail_partial_frame": dict(windows=3, tail_video=7),
    "odd_frames": dict(windows=5, frames=1, audio=7),
    "audio_only": dict(windows=0, lead_audio=53),
    "video_only": dict(windows=3, audio=0),
    "long_audio_lead": dict(windows=2, lead_audio=31),
}


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_classes():
    assert set(METHODS) == {"omnizip", "omnizip-no-dynamic", "omnizip-no-merge",
                            "omnizip-random-audio", "random", "dycoke", "visionzip", "fastv",
                            "seats"}
    assert get_method("omnizip") == OmniZipConfig()
    assert get_method("omnizip-no-dynamic").dynamic_ratios is False
    assert get_method("omnizip-no-merge").merge_anchors is False
    assert get_method("omnizip-random-audio").audio_selection == "random"
    assert get_method("omnizip-no-merge", rho_audio=0.4).rho_audio == 0.4
    assert isinstance(get_method("dycoke", retention=0.5), DyCokeConfig)
    for name in METHODS:
        assert method_name(get_method(name)) == name
    assert "window" in method_fields("dycoke")


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown method 'dycok'.*did you mean 'dycoke'.*known methods: omnizip"):
        get_method("dycok")
    with pytest.raises(ValueError, match=r"method 'random' has no option 'windw'; its options: retention, token_budget"):
        get_method("random", windw=3)
    with pytest.raises(ValueError, match=r"fixes merge_anchors=False"):
        get_method("omnizip-no-merge", merge_anchors=True)
    with pytest.raises(ValueError, match="retention must lie in"):
        get_method("random", retention=1.5)


def test_coerce_option_parses_field_types():
    assert coerce_option("dycoke", "window", "6") == 6
    assert coerce_option("random", "retention", "0.3") == 0.3
    assert coerce_option("random", "retention", "none") is None
    assert coerce_option("dycoke", "audio", "no") is False
    assert coerce_option("fastv", "modalities", "video, audio") == ("video", "audio")
    assert coerce_option("seats", "drop_layers", "16,18,20") == ("16", "18", "20")
    assert get_method("seats", drop_layers=coerce_option("seats", "drop_layers", "16,18,20"),
                      late_block_layer=coerce_option("seats", "late_block_layer", "24")).drop_layers == (16, 18, 20)
    assert coerce_option("omnizip", "budget", "exact") == "exact"
    with pytest.raises(ValueError, match=r"option window='x' of method 'dycoke': expected int"):
        coerce_option("dycoke", "window", "x")
    with pytest.raises(ValueError, match="has no option 'nope'"):
        coerce_option("dycoke", "nope", "1")


@pytest.mark.parametrize("cls", [RandomConfig, DyCokeConfig, VisionZipConfig, FastVConfig])
def test_budget_validation(cls):
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="retention must lie in"):
            cls(retention=bad)
    with pytest.raises(TypeError, match="retention must be a float"):
        cls(retention="0.5")
    with pytest.raises(ValueError, match="token_budget must be an int >= 0"):
        cls(token_budget=-1)
    with pytest.raises(ValueError, match="at most one of retention and token_budget"):
        cls(retention=0.5, token_budget=10)
    cfg = cls(retention=0.4)
    with pytest.raises(Exception):  # frozen  # noqa: B017
        cfg.retention = 0.5
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(retention=0.6).retention == 0.6


def test_method_specific_validation():
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        DyCokeConfig(window=1)
    with pytest.raises(ValueError, match="dominant_fraction must lie in"):
        VisionZipConfig(dominant_fraction=1.5)
    with pytest.raises(ValueError, match="video_score must be one of"):
        VisionZipConfig(video_score="cls")
    with pytest.raises(ValueError, match="layer must be an int >= 1"):
        FastVConfig(layer=0)
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        FastVConfig(modalities=("text",))
    assert FastVConfig(modalities="video,audio").modalities == ("video", "audio")


def test_split_and_distribute_helpers():
    assert split_counts(50, 150, 100) == (25, 75)
    assert split_counts(0, 10, 4) == (0, 4)
    assert split_counts(10, 0, 4) == (4, 0)
    assert split_counts(3, 100, 100) == (3, 97)
    assert sum(split_counts(7, 13, 11)) == 11
    caps = torch.tensor([4, 4, 4, 2])
    for total in range(0, 15):
        got = distribute(total, caps)
        assert int(got.sum()) == total and bool((got <= caps).all())
    assert distribute(5, torch.tensor([4, 4, 4])).tolist() == [2, 2, 1]


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("budget", [("retention", 0.05), ("retention", 0.3), ("retention", 0.45),
                                    ("retention", 0.77), ("retention", 1.0), ("token_budget", 0),
                                    ("token_budget", 37), ("token_budget", 10_000)])
def test_kept_count_matches_budget_exactly(name, layout, budget):
    embeds, ids, a_scores, v_scores = sequence(**LAYOUTS[layout])
    n_a, n_v = int((ids == A).sum()), int((ids == V).sum())
    method = BASELINES[name](**{budget[0]: budget[1]})
    res = run(method, embeds, ids, a_scores, v_scores)
    n = n_a + n_v
    want = min(budget[1], n) if budget[0] == "token_budget" else min(n, round(budget[1] * n))
    assert res.n_audio_kept + res.n_video_kept == want
    assert (res.n_audio_kept, res.n_video_kept) == split_counts(n_a, n_v, want)
    assert bool(res.keep[(ids != A) & (ids != V)].all()), "text must never be dropped"
    assert res.keep.dtype == torch.bool and res.keep.shape == ids.shape


@pytest.mark.parametrize("name", ["omnizip", "omnizip-no-dynamic", "omnizip-no-merge",
                                  "omnizip-random-audio"])
@pytest.mark.parametrize("retention", [0.2, 0.35, 0.45, 0.6])
def test_omnizip_entries_with_a_target_use_the_exact_budget(name, retention):
    method = get_method(name, retention=retention)
    assert method.budget == "exact" and get_method(name).budget == "reference"
    assert get_method(name, retention=retention, budget="reference").budget == "reference"
    for layout in ("interleaved", "odd_frames", "video_only", "long_audio_lead"):
        embeds, ids, a_scores, _ = sequence(**LAYOUTS[layout])
        n = int(((ids == A) | (ids == V)).sum())
        res = run(method, embeds, ids, a_scores)
        # the core meets a target to within a token (whole frames only; see the registry docs)
        assert abs(res.n_audio_kept + res.n_video_kept - round(retention * n)) <= 1
        assert bool(res.keep[(ids != A) & (ids != V)].all())


@pytest.mark.parametrize("name", BASELINES)
def test_default_budget_is_the_45_percent_point(name):
    embeds, ids, a_scores, v_scores = sequence()
    n = int(((ids == A) | (ids == V)).sum())
    res = run(BASELINES[name](), embeds, ids, a_scores, v_scores)
    assert res.n_audio_kept + res.n_video_kept == round(0.45 * n)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inputs_untouched_dtype_kept_deterministic(name, dtype):
    embeds, ids, a_scores, v_scores = sequence(seed=3)
    embeds = embeds.to(dtype)
    copies = [t.clone() for t in (embeds, ids, a_scores, v_scores)]
    method = BASELINES[name](retention=0.4)
    res = run(method, embeds, ids, a_scores, v_scores)
    for before, after in zip(copies, (embeds, ids, a_scores, v_scores), strict=True):
        assert torch.equal(before, after)
    assert res.embeds.dtype == dtype and res.embeds.shape == embeds.shape
    assert res.embeds.data_ptr() != embeds.data_ptr()
    again = run(method, embeds, ids, a_scores, v_scores)
    assert torch.equal(res.keep, again.keep) and torch.equal(res.embeds, again.embeds)
    # text rows are the input's
    text = (ids != A) & (ids != V)
    assert torch.equal(res.embeds[text], embeds[text])


def test_random_seed_and_modes():
    embeds, ids, _, _ = sequence(windows=6)
    a = run(RandomConfig(retention=0.5, seed=1), embeds, ids)
    b = run(RandomConfig(retention=0.5, seed=1), embeds, ids)
    c = run(RandomConfig(retention=0.5, seed=2), embeds, ids)
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    joint = run(RandomConfig(retention=0.5, per_modality=False), embeds, ids)
    n = int(((ids == A) | (ids == V)).sum())
    assert joint.n_audio_kept + joint.n_video_kept == round(0.5 * n)
    # embeddings are not changed by pruning
    assert torch.equal(a.embeds, embeds)


def test_no_multimodal_tokens_keeps_everything():
    ids = torch.full((9,), T)
    embeds = torch.randn(9, 4)
    for name in BASELINES:
        res = run(BASELINES[name](retention=0.3), embeds, ids)
        assert bool(res.keep.all()) and res.retention == 1.0


def test_input_errors_are_clear():
    embeds, ids, a_scores, v_scores = sequence()
    with pytest.raises(ValueError, match="same length L"):
        run(RandomConfig(), embeds[:-1], ids)
    with pytest.raises(ValueError, match="audio_token_id and video_token_id must differ"):
        RandomConfig().compress(embeds, ids, audio_token_id=A, video_token_id=A, tokens_per_frame=16)
    with pytest.raises(ValueError, match=r"video_scores: visionzip needs one vision-encoder attention score per video token"):
        run(VisionZipConfig(), embeds, ids, a_scores, None)
    with pytest.raises(ValueError, match=r"video_scores must hold one score per video token: expected shape \[128\]"):
        run(VisionZipConfig(), embeds, ids, a_scores, v_scores[:-1])
    with pytest.raises(ValueError, match="audio_scores must hold one score per audio token"):
        run(VisionZipConfig(), embeds, ids, None, v_scores)
    with pytest.raises(ValueError, match="video_scores must be finite"):
        run(VisionZipConfig(), embeds, ids, a_scores, torch.full_like(v_scores, float("nan")))
    # energy variants need no scores
    res = run(VisionZipConfig(video_score="energy", audio_score="energy"), embeds, ids)
    assert not VisionZipConfig(video_score="energy").needs_video_scores
    assert VisionZipConfig().needs_video_scores and VisionZipConfig().needs_audio_scores
    assert res.n_audio_kept + res.n_video_kept == round(0.45 * 168)


# ----------------------------------------------------------------------------- DyCoke
def _cos(x, y):
    return float(x @ y) / (max(float(x.norm()), 1e-12) * max(float(y.norm()), 1e-12))


def naive_ttm(x, p, k, window):
    """DyCoke TTM from the paper's rules, with loops: frames of ``p`` tokens (a shorter tail
    is kept), groups of ``window``: odd frames vs the previous frame, even frames vs the
    group's first; pivots whole; the rest of the budget shared equally (earliest frames get
    the leftovers); each compared frame keeps its least similar tokens."""
    n = x.shape[0]
    n_frames = n // p
    keep = [False] * n
    pivots = [f for f in range(n_frames) if f % window == 0]
    compared = [f for f in range(n_frames) if f % window != 0]
    n_pivot = len(pivots) * p + (n - n_frames * p)
    assert k >= n_pivot, "naive reference covers budgets above the pivots"
    for f in pivots:
        for t in range(p):
            keep[f * p + t] = True
    for t in range(n_frames * p, n):
        keep[t] = True
    rem = k - n_pivot
    for j, f in enumerate(compared):
        count = rem // len(compared) + (1 if j < rem % len(compared) else 0)
        o = f % window
        ref = f - 1 if o % 2 == 1 else f - o
        sims = [(_cos(x[f * p + t], x[ref * p + t]), t) for t in range(p)]
        for _, t in sorted(sims)[:count]:
            keep[f * p + t] = True
    return torch.tensor(keep)


@pytest.mark.parametrize("window,retention", [(2, 0.6), (2, 0.9), (3, 0.45), (3, 0.7), (4, 0.3),
                                              (4, 0.45), (4, 0.6), (4, 0.9)])
def test_dycoke_matches_naive_ttm(window, retention):
    p = 9
    embeds, ids, _, _ = sequence(windows=6, p=p, frames=2, audio=25, seed=window)
    res = run(DyCokeConfig(retention=retention, window=window, audio_frame_tokens=5), embeds, ids,
              p=p)
    n_a, n_v = int((ids == A).sum()), int((ids == V).sum())
    k_a, k_v = split_counts(n_a, n_v, round(retention * (n_a + n_v)))
    want_v = naive_ttm(embeds[ids == V], p, k_v, window)
    want_a = naive_ttm(embeds[ids == A], 5, k_a, window)
    assert torch.equal(res.keep[ids == V], want_v)
    assert torch.equal(res.keep[ids == A], want_a)


def test_dycoke_budget_below_pivots_drops_compared_frames():
    p = 8
    embeds, ids, _, _ = sequence(windows=4, p=p, audio=0)
    n_v = int((ids == V).sum())  # 8 frames: pivots 0 and 4 (16 tokens)
    res = run(DyCokeConfig(token_budget=10, window=4), embeds, ids, p=p)
    kept = res.keep[ids == V].view(8, p)
    assert res.n_video_kept == 10 and n_v == 64
    assert not bool(kept[[1, 2, 3, 5, 6, 7]].any())


def test_dycoke_video_only_mode_keeps_audio():
    embeds, ids, _, _ = sequence(windows=4)
    n_a = int((ids == A).sum())
    res = run(DyCokeConfig(retention=0.5, audio=False), embeds, ids)
    assert res.n_audio_kept == n_a
    assert res.n_audio_kept + res.n_video_kept == round(0.5 * int(((ids == A) | (ids == V)).sum()))


# ----------------------------------------------------------------------------- VisionZip
def naive_visionzip_video(x, scores, segments, k_total, frac):
    """VisionZip per frame, with loops (paper rules): dominant by score, evenly spaced targets
    among the rest, each other token merged into its most similar target (mean)."""
    caps = [len(s) for s in segments]
    base = [c * k_total // sum(caps) for c in caps]
    left = k_total - sum(base)
    for i, c in enumerate(caps):
        if left and base[i] < c:
            base[i] += 1
            left -= 1
    keep = torch.zeros(x.shape[0], dtype=torch.bool)
    out = x.clone()
    for seg, k in zip(segments, base, strict=True):
        n_dom = min(round(k * frac), k)
        order = sorted(seg, key=lambda i: (-float(scores[i]), i))
        dom = set(order[:n_dom])
        rest = [i for i in seg if i not in dom]
        n_ctx = k - n_dom
        targets = []
        if n_ctx:
            step = max(1, len(rest) // n_ctx)
            targets = rest[::step][:n_ctx]
        for i in dom | set(targets):
            keep[i] = True
        members = {t: [] for t in targets}
        if targets:
            for i in rest:
                if i in members:
                    continue
                best = max(targets, key=lambda t: (_cos(x[i], x[t]), -targets.index(t)))
                members[best].append(i)
        for t, ms in members.items():
            out[t] = (x[t] + sum((x[m] for m in ms), torch.zeros_like(x[t]))) / (1 + len(ms))
    return keep, out


@pytest.mark.parametrize("retention", [0.2, 0.45, 0.7])
@pytest.mark.parametrize("frac", [54 / 64, 0.5, 1.0, 0.0])
def test_visionzip_video_matches_naive(retention, frac):
    p = 12
    embeds, ids, a_scores, v_scores = sequence(windows=3, p=p, tail_video=5, audio=8, seed=7)
    res = run(VisionZipConfig(retention=retention, dominant_fraction=frac), embeds, ids,
              a_scores, v_scores, p=p)
    n_a, n_v = int((ids == A).sum()), int((ids == V).sum())
    _, k_v = split_counts(n_a, n_v, round(retention * (n_a + n_v)))
    # frames: 6 whole frames of 12, then the tail of 5 (its own chunk)
    segments = [list(range(f * p, (f + 1) * p)) for f in range(6)] + [list(range(72, 77))]
    want_keep, want_embeds = naive_visionzip_video(embeds[ids == V], v_scores, segments, k_v, frac)
    assert torch.equal(res.keep[ids == V], want_keep)
    torch.testing.assert_close(res.embeds[ids == V][want_keep], want_embeds[want_keep])


def test_visionzip_audio_side_is_omnizip():
    # N_a = 100, N_v = 300, retention 0.75 -> audio keeps 75 = 70 salient + 5 anchors, which is
    # OmniZip with rho_audio = 0.3 (the contextual ratio 0.05 gives 5 anchors)
    p = 30
    embeds, ids, a_scores, v_scores = sequence(windows=5, p=p, frames=2, audio=20, seed=11)
    assert int((ids == A).sum()) == 100 and int((ids == V).sum()) == 300
    res = run(VisionZipConfig(retention=0.75), embeds, ids, a_scores, v_scores, p=p)
    ref = compress_sequence(embeds, ids, a_scores, audio_token_id=A, video_token_id=V,
                            tokens_per_frame=p, config=OmniZipConfig(rho_audio=0.3))
    audio = ids == A
    assert res.n_audio_kept == 75
    assert torch.equal(res.keep[audio], ref.keep[audio])
    torch.testing.assert_close(res.embeds[audio], ref.embeds[audio])


def test_visionzip_small_audio_budget_uses_anchors_only():
    embeds, ids, a_scores, v_scores = sequence(windows=4, audio=40)  # N_a = 160: 8 anchors
    res = run(VisionZipConfig(token_budget=20), embeds, ids, a_scores, v_scores)
    assert res.n_audio_kept + res.n_video_kept == 20
    assert res.n_audio_kept == split_counts(160, 128, 20)[0]


def test_vision_token_scores_matches_dense_softmax():
    gen = torch.Generator().manual_seed(0)
    t, h, d = 24, 2, 8
    q, k = torch.randn(t, h, d, generator=gen), torch.randn(t, h, d, generator=gen)
    cu = torch.tensor([0, 16, 24])
    window_index = torch.tensor([1, 0, 3, 2, 5, 4])  # merged tokens in window order
    got = vision_token_scores(q, k, cu, merge_unit=4, window_index=window_index)
    received = torch.zeros(t)
    for s, e in ((0, 16), (16, 24)):
        att = torch.softmax(torch.einsum("ihd,jhd->hij", q[s:e], k[s:e]) / math.sqrt(d), dim=-1)
        received[s:e] = att.sum(dim=(0, 1))
    pooled = received.view(-1, 4).mean(1)
    torch.testing.assert_close(got, pooled[torch.argsort(window_index)])


# ----------------------------------------------------------------------------- FastV
def naive_fastv_attention(q_all, k_all, key_valid=None):
    """Eager causal attention of every query over its keys (the full [H, L, L] matrix, GQA by
    repeating key heads), then the last query's row averaged over heads."""
    length, heads, d = q_all.shape
    kv = k_all.shape[1]
    k_rep = k_all.repeat_interleave(heads // kv, dim=1)
    logits = torch.einsum("ihd,jhd->hij", q_all, k_rep) / math.sqrt(d)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if key_valid is not None:
        causal = causal & key_valid[None, :]
    logits = logits.masked_fill(~causal, float("-inf"))
    return torch.softmax(logits, dim=-1)[:, -1, :].mean(0)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_fastv_select_equals_full_attention(heads, kv_heads):
    gen = torch.Generator().manual_seed(heads * 10 + kv_heads)
    length, d = 40, 8
    q_all = torch.randn(length, heads, d, generator=gen)
    k_all = torch.randn(length, kv_heads, d, generator=gen)
    candidates = torch.zeros(length, dtype=torch.bool)
    candidates[5:30] = True
    want_attn = naive_fastv_attention(q_all, k_all)
    torch.testing.assert_close(fastv_attention(q_all[-1], k_all), want_attn)
    for n_keep in (0, 7, 25, 99):
        keep = fastv_select(q_all[-1], k_all, candidates, n_keep)
        top = sorted(range(5, 30), key=lambda j: (-float(want_attn[j]), j))[: min(n_keep, 25)]
        want = ~candidates.clone()
        want[top] = True
        assert torch.equal(keep, want)


def test_fastv_select_batched_with_padding():
    gen = torch.Generator().manual_seed(5)
    b, length, heads, kv, d = 2, 20, 4, 2, 8
    q_all = torch.randn(b, length, heads, d, generator=gen)
    k_all = torch.randn(b, length, kv, d, generator=gen)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[1, :6] = False  # left padding of row 1
    cand = torch.zeros(b, length, dtype=torch.bool)
    cand[:, 8:16] = True
    keep = fastv_select(q_all[:, -1], k_all, cand, torch.tensor([3, 5]), key_mask=valid)
    for row, n_keep in ((0, 3), (1, 5)):
        att = naive_fastv_attention(q_all[row], k_all[row], valid[row])
        top = sorted(range(8, 16), key=lambda j: (-float(att[j]), j))[:n_keep]
        want = ~cand[row].clone()
        want[top] = True
        assert torch.equal(keep[row], want)


def test_fastv_config_decide_and_contract():
    cfg = FastVConfig(retention=0.5, layer=3)
    assert cfg.in_decoder_layer == 3 and FastVConfig().in_decoder_layer == 5
    ids = torch.tensor([T] * 4 + [A] * 10 + [V] * 30 + [IMG] * 6 + [T] * 3)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(ids), 16, generator=gen)
    q = torch.randn(4, 8, generator=gen)
    k = torch.randn(len(ids), 2, 8, generator=gen)
    before = (hidden.clone(), ids.clone(), q.clone(), k.clone())
    dec = cfg.decide(hidden, ids, q, k, audio_token_id=A, video_token_id=V, image_token_id=IMG)
    for a, b in zip(before, (hidden, ids, q, k), strict=True):
        assert torch.equal(a, b)
    # 46 multimodal tokens, keep 23: audio (10) is not a candidate, so video + image keep 13
    assert int(dec.keep.sum()) == len(ids) - 46 + 23
    assert bool(dec.keep[(ids == T) | (ids == A)].all())
    assert int(dec.keep[(ids == V) | (ids == IMG)].sum()) == 13
    joint = FastVConfig(retention=0.5, modalities=("audio", "video", "image")).decide(
        hidden, ids, q, k, audio_token_id=A, video_token_id=V, image_token_id=IMG)
    assert int(joint.keep[(ids == A) | (ids == V) | (ids == IMG)].sum()) == 23
    with pytest.raises(TypeError, match="prunes inside the decoder"):
        cfg.compress(hidden, ids, audio_token_id=A, video_token_id=V, tokens_per_frame=4)
    with pytest.raises(ValueError, match="multiple of key heads"):
        fastv_attention(torch.randn(3, 8), torch.randn(10, 2, 8))
