"""The core's contract beyond reference equivalence: validation, edge cases, options, bounds."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LargestTensor

from omnizip import (
    OmniZipConfig,
    audio_attention_scores,
    audio_energy_scores,
    compress_sequence,
    pool_audio_scores,
)

A, V, T = 7, 9, 1  # audio, video, text ids


def interleaved(windows: int, p: int, frames: int = 2, audio: int = 10, tail_video: int = 0,
                text: int = 3, dim: int = 16, seed: int = 0):
    """ids/embeds/scores for ``[text][V_0][A_0]...[V_w-1][A_w-1][tail video][text]``."""
    ids = [T] * text
    for _ in range(windows):
        ids += [V] * (frames * p) + [A] * audio
    ids += [V] * tail_video + [T] * text
    ids = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(len(ids), dim, generator=gen)
    scores = torch.rand(int((ids == A).sum()), generator=gen)
    return embeds, ids, scores


def run(embeds, ids, scores, p, **cfg):
    return compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                             tokens_per_frame=p, config=OmniZipConfig(**cfg))


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("name", ["rho_audio", "rho_video", "contextual_ratio", "min_ratio", "max_ratio"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_config_rejects_ratio_outside_unit_interval(name, value):
    with pytest.raises(ValueError, match=name):
        OmniZipConfig(**{name: value})


def test_config_errors_name_argument_and_value():
    with pytest.raises(ValueError, match=r"min_ratio must be <= max_ratio.*0\.8.*0\.5"):
        OmniZipConfig(min_ratio=0.8, max_ratio=0.5)
    with pytest.raises(ValueError, match="g must be an int >= 0, got -1"):
        OmniZipConfig(g=-1)
    with pytest.raises(ValueError, match="knn must be an int >= 1, got 0"):
        OmniZipConfig(knn=0)
    with pytest.raises(TypeError, match="g must be an int"):
        OmniZipConfig(g=2.5)
    with pytest.raises(TypeError, match="rho_audio must be a float"):
        OmniZipConfig(rho_audio="0.3")
    with pytest.raises(ValueError, match="budget must be one of"):
        OmniZipConfig(budget="approximate")
    with pytest.raises(ValueError, match="merge_scope must be one of"):
        OmniZipConfig(merge_scope="local")
    with pytest.raises(ValueError, match="at most one of retention and token_budget"):
        OmniZipConfig(retention=0.4, token_budget=100)
    with pytest.raises(ValueError, match="retention must lie in"):
        OmniZipConfig(retention=0.0)


def test_presets_are_the_papers():
    assert (OmniZipConfig.preset("45").rho_audio, OmniZipConfig.preset("45").rho_video) == (0.3, 0.6)
    assert (OmniZipConfig.preset(35).rho_audio, OmniZipConfig.preset("35%").rho_video) == (0.4, 0.7)
    assert OmniZipConfig() == OmniZipConfig.preset("45")
    assert OmniZipConfig.preset("35", g=15).g == 15
    # a field given with a preset wins over the preset's value (was a TypeError)
    tuned = OmniZipConfig.preset("35", rho_video=0.5)
    assert (tuned.rho_audio, tuned.rho_video) == (0.4, 0.5)
    with pytest.raises(ValueError, match="rho_video"):
        OmniZipConfig.preset("45", rho_video=1.5)
    with pytest.raises(ValueError, match="preset must be one of"):
        OmniZipConfig.preset("50")
    cfg = OmniZipConfig(budget="exact")
    assert OmniZipConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown OmniZipConfig fields"):
        OmniZipConfig.from_dict({"rho": 0.1})


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_get_clear_errors():
    embeds, ids, scores = interleaved(2, 4)
    with pytest.raises(ValueError, match="same length L"):
        run(embeds[:-1], ids, scores, 4)
    with pytest.raises(ValueError, match=r"one score per audio token.*20 audio tokens.*19 scores"):
        run(embeds, ids, scores[:-1], 4)
    with pytest.raises(ValueError, match="audio_scores must be finite"):
        run(embeds, ids, torch.where(torch.arange(20) == 3, float("nan"), scores), 4)
    with pytest.raises(ValueError, match="audio_scores must be finite"):
        run(embeds, ids, torch.where(torch.arange(20) == 3, float("inf"), scores), 4)
    with pytest.raises(ValueError, match=r"audio_scores must have shape \[N_a\]"):
        run(embeds, ids, scores[None], 4)
    with pytest.raises(TypeError, match="audio_scores must be floating point"):
        run(embeds, ids, torch.arange(20), 4)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[L\]"):
        run(embeds, ids[None], scores, 4)
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        run(embeds, ids.float(), scores, 4)
    with pytest.raises(ValueError, match=r"embeds must have shape \[L, D\]"):
        run(embeds[None], ids, scores, 4)
    with pytest.raises(TypeError, match="embeds must be float"):
        run(embeds.long(), ids, scores, 4)
    with pytest.raises(ValueError, match="tokens_per_frame must be a positive int, got 0"):
        run(embeds, ids, scores, 0)
    with pytest.raises(ValueError, match="tokens_per_frame must be a positive int, got -3"):
        run(embeds, ids, scores, -3)
    with pytest.raises(ValueError, match="3 values but the sequence has 2 video chunks"):
        run(embeds, ids, scores, [4, 4, 4])
    with pytest.raises(TypeError, match="tokens_per_frame must be an int"):
        run(embeds, ids, scores, 4.0)
    with pytest.raises(ValueError, match="audio_scores has 3 scores but the sequence has no audio"):
        run(embeds, torch.where(ids == A, T, ids), scores[:3], 4)
    with pytest.raises(ValueError, match="audio_scores must hold one score per audio token"):
        run(embeds, ids, None, 4)
    with pytest.raises(TypeError, match="config must be an OmniZipConfig"):
        compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                          tokens_per_frame=4, config={"rho_audio": 0.3})


# ----------------------------------------------------------------------------- edge cases

def test_text_only_sequence_is_a_noop():
    embeds = torch.randn(12, 8)
    ids = torch.full((12,), T)
    res = run(embeds, ids, None, 4)
    assert res.keep.all() and torch.equal(res.embeds, embeds)
    assert res.embeds.data_ptr() != embeds.data_ptr()
    assert res.retention == 1.0 and res.n_audio == res.n_video == 0


def test_caller_tensors_are_never_modified():
    embeds, ids, scores = interleaved(5, 4, seed=3)
    copies = [t.clone() for t in (embeds, ids, scores)]
    res = run(embeds, ids, scores, 4)
    for before, after in zip(copies, (embeds, ids, scores), strict=True):
        assert torch.equal(before, after)
    assert res.embeds.data_ptr() != embeds.data_ptr()
    # Merged anchors did change the output somewhere (so the check above is meaningful).
    assert not torch.equal(res.embeds, embeds)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32_of_the_same_values(dtype):
    embeds, ids, scores = interleaved(4, 6, seed=5)
    low = embeds.to(dtype)
    res_low = run(low, ids, scores, 6)
    res_32 = run(low.float(), ids, scores, 6)
    assert res_low.embeds.dtype == dtype
    assert torch.equal(res_low.keep, res_32.keep)
    assert torch.equal(res_low.embeds, res_32.embeds.to(dtype))


def test_video_only_uses_rho_video_in_every_chunk():
    embeds, ids, _ = interleaved(3, 4, audio=0)  # three adjacent video chunks merge into one run
    ids = ids.clone()
    ids[3 + 8] = T  # split it: chunk 0 = 8 tokens (2 frames), chunk 1 = 15 (3 frames + 3)
    res = run(embeds, ids, None, 4, rho_video=0.5)
    assert res.num_guided == 0
    assert res.video_chunks.tolist() == [[3, 8], [12, 15]]
    assert torch.equal(res.video_chunk_ratio, torch.full((2,), 0.5, dtype=torch.float64))
    # int(4 * 0.5) = 2 of 4 kept in each of the 5 whole frames, the 3 partial tokens kept.
    assert res.n_video_kept == 5 * 2 + 3
    assert res.keep[24:27].all()


def test_audio_only_compresses_audio_and_merges_by_anchor_similarity():
    embeds, ids, scores = interleaved(3, 4, frames=0, audio=20)
    res = run(embeds, ids, scores, 4, g=3)
    n_audio = 20  # the three audio runs are adjacent: one chunk
    assert res.n_video == 0 and res.n_audio == 3 * n_audio  # adjacent runs: one chunk
    assert res.n_audio_kept == round(0.7 * 60) + round(0.05 * 60)
    assert (res.merge_target >= 0).sum() <= 3 * len(res.anchors)


def test_single_frame_and_partial_frame_chunks():
    # Chunk 0: one whole frame + 2 partial tokens; chunk 1: only 3 tokens (no whole frame).
    ids = torch.tensor([T] + [V] * 6 + [A] * 5 + [V] * 3 + [A] * 5 + [T])
    embeds = torch.randn(len(ids), 8, generator=torch.Generator().manual_seed(1))
    res = run(embeds, ids, torch.rand(10), 4)
    keep = res.keep
    # Partial trailing tokens and frame-less chunks are kept whole (algorithm §6.3).
    assert keep[5:7].all() and keep[12:15].all()
    r0 = float(res.video_chunk_ratio[0])
    assert int(keep[1:5].sum()) == int(4 * (1 - r0))


def test_g_zero_disables_anchors_and_merging():
    embeds, ids, scores = interleaved(4, 4)
    res = run(embeds, ids, scores, 4, g=0)
    assert res.anchors.numel() == 0 and (res.merge_target == -1).all()
    audio = res.audio_positions
    assert torch.equal(res.embeds, embeds)
    assert int(res.keep[audio].sum()) == round(0.7 * audio.numel())


def test_block_size_does_not_change_results():
    embeds, ids, scores = interleaved(6, 9, audio=30, tail_video=5, dim=48, seed=11)
    for scope in ("global", "window"):
        big = run(embeds, ids, scores, 9, merge_scope=scope)
        small = run(embeds, ids, scores, 9, merge_scope=scope, block_elements=1024)
        assert torch.equal(big.keep, small.keep)
        assert torch.allclose(big.embeds, small.embeds, atol=1e-6)
        assert torch.equal(big.merge_target, small.merge_target)
        # Bit for bit: the merge scores do not depend on how the similarity search is blocked.
        assert torch.equal(big.merge_weight, small.merge_weight)
        assert torch.equal(big.embeds, small.embeds)


@pytest.mark.parametrize("scope", ["global", "window"])
@pytest.mark.parametrize("seed", range(4))
def test_block_size_does_not_change_merged_embeddings_bit_for_bit(scope, seed):
    """Blocked matrix products round differently with the block's shape; the merge scores
    (hence weights and merged anchors) must not inherit that."""
    embeds, ids, scores = interleaved(5, 3, audio=40, dim=5, seed=seed)
    big = run(embeds, ids, scores, 3, merge_scope=scope, rho_audio=0.9)
    small = run(embeds, ids, scores, 3, merge_scope=scope, rho_audio=0.9, block_elements=1024)
    assert (big.merge_target >= 0).any()
    for name in ("keep", "merge_target", "merge_weight", "embeds"):
        assert torch.equal(getattr(big, name), getattr(small, name)), name




def test_memory_stays_bounded_no_pool_by_video_matrix():
    """No temporary exceeds max(the embeddings, the block cap): the [pool, N_v] similarity
    matrix (here 20x larger than the cap) is never formed whole (algorithm §6.6)."""
    embeds, ids, scores = interleaved(60, 16, audio=50, dim=8, seed=2)
    n_video = int((ids == V).sum())
    block = 4096
    pool = 3000 * (0.3 - 0.05)
    assert pool * n_video > 20 * max(embeds.numel(), block)
    with LargestTensor() as probe:
        run(embeds, ids, scores, 16, block_elements=block)
    assert probe.largest <= max(embeds.numel(), 4 * block)


def test_attention_scores_never_form_h_t_t():
    t, h, d = 600, 4, 8
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(t, h, d, generator=gen), torch.randn(t, h, d, generator=gen)
    block = 8192
    with LargestTensor() as probe:
        blocked = audio_attention_scores(q, k, block_elements=block)
    assert probe.largest < h * t * t // 10
    full = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) * d**-0.5, dim=-1).sum(dim=(0, 1))
    assert torch.allclose(blocked, full, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("seed", range(12))
def test_exact_budget_keeps_exactly_the_target(seed):
    gen = torch.Generator().manual_seed(seed)
    windows = int(torch.randint(1, 9, (1,), generator=gen))
    p = int(torch.randint(3, 10, (1,), generator=gen))
    embeds, ids, scores = interleaved(windows, p, audio=int(torch.randint(4, 30, (1,), generator=gen)),
                                      seed=seed)
    rho_video = [0.5, 0.6, 0.7, 0.9][seed % 4]
    res = run(embeds, ids, scores, p, budget="exact", rho_video=rho_video)
    assert res.n_video_kept == round((1 - rho_video) * res.n_video)
    # One common shift of the base ratios: differences between windows are preserved
    # wherever no clamp applies.
    ref = run(embeds, ids, scores, p, rho_video=rho_video)
    assert torch.equal(res.keep[res.audio_positions], ref.keep[ref.audio_positions])
    # Each frame keeps floor or ceil of its fractional share P * (1 - r).
    frames = res.video_chunks[:, 1] // p
    for chunk in range(res.video_chunks.shape[0]):
        start = int(res.video_chunks[chunk, 0])
        want = p * (1 - float(res.video_chunk_ratio[chunk]))
        for f in range(int(frames[chunk])):
            kept = int(res.keep[start + f * p : start + (f + 1) * p].sum())
            assert math.floor(want) - 1 <= kept <= math.ceil(want) + 1


@pytest.mark.parametrize("split", ["scale", "shift", "even"])
@pytest.mark.parametrize("retention", [0.2, 0.35, 0.45, 0.8])
def test_retention_target_is_met_with_exact_budget(retention, split):
    embeds, ids, scores = interleaved(10, 8, audio=25, seed=4)
    res = run(embeds, ids, scores, 8, retention=retention, budget="exact", retention_split=split)
    total = res.n_audio + res.n_video
    assert abs((res.n_audio_kept + res.n_video_kept) - retention * total) <= 3
    # each rule's invariant, where no bound of [0, 1) applies (algorithm §7)
    kept_audio, kept_video = 1 - res.rho_audio + 0.05, 1 - res.rho_video
    if res.rho_audio > 0 and res.rho_video < 0.999 and kept_audio < 1:
        if split == "shift":
            assert res.rho_video - res.rho_audio == pytest.approx(0.3)
        elif split == "scale":
            assert kept_audio / kept_video == pytest.approx(0.75 / 0.4)
        else:
            assert kept_audio == pytest.approx(kept_video)


def test_token_budget_is_met_with_exact_budget():
    embeds, ids, scores = interleaved(10, 8, audio=25, seed=4)
    res = run(embeds, ids, scores, 8, token_budget=150, budget="exact")
    assert abs(res.n_audio_kept + res.n_video_kept - 150) <= 3


def test_pool_audio_scores_and_energy():
    frames = torch.arange(11, dtype=torch.float32)
    pooled = pool_audio_scores(frames, stream_lengths=[5, 6])
    assert torch.equal(pooled, torch.tensor([0.5, 2.5, 5.5, 7.5, 9.5]))
    assert torch.equal(pool_audio_scores(frames, pool=1), frames)
    x = torch.randn(5, 3)
    assert torch.allclose(audio_energy_scores(x), x.norm(dim=1))
    with pytest.raises(ValueError, match="stream_lengths must sum to the 11 frames"):
        pool_audio_scores(frames, stream_lengths=[5, 5])
    with pytest.raises(ValueError, match="needs cu_seqlens"):
        audio_attention_scores(torch.randn(4, 1, 2), torch.randn(4, 1, 2), scope="windowed")
    with pytest.raises(ValueError, match="query and key must have the same shape"):
        audio_attention_scores(torch.randn(4, 1, 2), torch.randn(5, 1, 2))


# ----------------------------------------------------------------------------- frame parity

@pytest.mark.parametrize("seed", range(6))
def test_stream_parity_runs_both_istc_halves_on_one_frame_chunks(seed):
    """Qwen3-Omni-like layout, one frame per chunk: with frame_parity="stream" frame j of the
    interleaved stream is spatial when j is even and temporal (against frame j - 1, in the
    previous chunk) when odd. Checked against the reference's per-frame rules; the audio side
    and the per-window ratios are those of the reference layout."""
    from reference_omnizip import dpc_knn_keep, reference_compress, temporal_keep

    p = 6
    gen = torch.Generator().manual_seed(seed)
    ids = [T, T]
    for _ in range(7):
        ids += [V] * p + [A] * int(torch.randint(3, 9, (1,), generator=gen))
    ids = torch.tensor([*ids, T, V, V, V, V, V, V, T])  # a second, separate one-frame video
    embeds = torch.randn(len(ids), 12, generator=gen)
    scores = torch.rand(int((ids == A).sum()), generator=gen)
    res = run(embeds, ids, scores, p, frame_parity="stream")
    ref = reference_compress(embeds, ids, scores, A, V, p)
    assert torch.equal(res.keep[res.audio_positions], ref.keep[res.audio_positions])
    assert torch.allclose(res.video_chunk_ratio, torch.tensor(ref.video_chunk_ratio, dtype=torch.float64))
    rows = embeds.tolist()
    chunks = ref.video_chunks
    for j, (start, _length) in enumerate(chunks):
        frame = rows[start : start + p]
        n_keep = int(p * (1 - ref.video_chunk_ratio[j]))
        first_of_stream = j == 0 or j == len(chunks) - 1
        in_stream = j if j < len(chunks) - 1 else 0
        if in_stream % 2 == 0 or first_of_stream:
            kept = dpc_knn_keep(frame, n_keep, 5)
        else:
            prev_start = chunks[j - 1][0]
            kept = temporal_keep(rows[prev_start : prev_start + p], frame, n_keep)
        expect = torch.zeros(p, dtype=torch.bool)
        expect[kept] = True
        assert torch.equal(res.keep[start : start + p], expect), f"chunk {j}"
    # The chunk parity of the reference never runs the temporal step here: they must differ.
    assert not torch.equal(res.keep, run(embeds, ids, scores, p).keep)


# ----------------------------------------------------------------------------- ablations

def test_ablation_switches():
    embeds, ids, scores = interleaved(6, 6, audio=20, seed=9)
    full = run(embeds, ids, scores, 6)
    flat = run(embeds, ids, scores, 6, dynamic_ratios=False)
    assert torch.equal(flat.video_chunk_ratio, torch.full_like(flat.video_chunk_ratio, 0.6))
    assert not torch.equal(full.video_chunk_ratio, flat.video_chunk_ratio)
    assert torch.equal(flat.keep[flat.audio_positions], full.keep[full.audio_positions])

    unmerged = run(embeds, ids, scores, 6, merge_anchors=False)
    assert torch.equal(unmerged.keep, full.keep)  # same tokens, same budget
    assert torch.equal(unmerged.embeds, embeds) and not torch.equal(full.embeds, embeds)
    assert (unmerged.merge_target == -1).all()

    rand_a = run(embeds, ids, scores, 6, audio_selection="random", seed=1)
    rand_b = run(embeds, ids, scores, 6, audio_selection="random", seed=1)
    rand_c = run(embeds, ids, scores, 6, audio_selection="random", seed=2)
    assert torch.equal(rand_a.keep, rand_b.keep)
    assert not torch.equal(rand_a.salient, rand_c.salient)
    assert rand_a.n_audio_kept == full.n_audio_kept
    assert not torch.equal(rand_a.salient, full.salient)


# ----------------------------------------------------------------------------- hardening (issue 11)

def _reference_merged(embeds, ref):
    """The merged output written from the reference's decisions (anchors, members, weights)
    with the merge formula of algorithm §4 step 4, in float64 and differentiable in ``embeds``."""
    x = embeds.double()
    rows = list(x.unbind(0))
    audio = ref.audio_positions
    for anchor in ref.anchors:
        members = [i for i, t in enumerate(ref.merge_target) if t == anchor]
        weights = [ref.merge_weight[i] for i in members]
        total = rows[audio[anchor]]
        for i, w in zip(members, weights, strict=True):
            total = total + w * x[audio[i]]
        rows[audio[anchor]] = total / (1.0 + sum(weights))
    return torch.stack(rows)


@pytest.mark.parametrize("scope", ["global", "window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autograd_reaches_kept_and_merged_tokens(scope, dtype):
    """With grad on (a training forward), the output is differentiable with the decisions
    fixed: its gradient equals that of the reference's merge formula on the same tokens."""
    from reference_omnizip import reference_compress

    embeds, ids, scores = interleaved(4, 4, audio=40, seed=21)
    leaf = embeds.to(dtype, copy=True).requires_grad_(True)
    x = leaf * 1.0  # a non-leaf, as in a model forward
    res = run(x, ids, scores, 4, g=4, contextual_ratio=0.1, merge_scope=scope)
    ref = reference_compress(embeds.to(dtype), ids, scores, A, V, 4, g=4, contextual_ratio=0.1,
                             merge_scope=scope)
    assert torch.equal(res.keep, ref.keep) and res.merge_target.tolist() == ref.merge_target
    assert res.embeds.requires_grad and not embeds.requires_grad
    upstream = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    keep = ref.keep
    (grad,) = torch.autograd.grad((res.embeds[keep] * upstream[keep]).sum(), leaf)
    expected_rows = _reference_merged(leaf, ref)
    (expected,) = torch.autograd.grad((expected_rows[keep] * upstream[keep].double()).sum(), leaf)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), expected.double(), **tol)
    torch.testing.assert_close(res.embeds.detach().double()[keep], expected_rows.detach()[keep], **tol)
    # Gradients reach both kept tokens (identity) and merged members (their weight).
    merged = res.merge_target >= 0
    assert merged.any() and (grad[res.audio_positions[merged]].abs().sum(dim=1) > 0).all()
    assert grad[~keep].abs().sum() > 0  # dropped members still get their share


def test_autograd_minimal_issue_case():
    x = torch.randn(8, 4, requires_grad=True)
    res = compress_sequence(x, torch.tensor([1, 9, 9, 9, 9, 7, 7, 1]), torch.rand(2),
                            audio_token_id=7, video_token_id=9, tokens_per_frame=2)
    res.embeds[res.keep].sum().backward()
    assert torch.equal(x.grad, res.keep[:, None].float().expand(8, 4))


def test_huge_g_is_bounded_by_the_pool():
    """Work and memory do not grow with g: g beyond the pool gives the same result as
    g = pool size, and no temporary is sized anchors x g."""
    embeds, ids, scores = interleaved(3, 4, audio=40, dim=8, seed=6)
    n_pool = 120 - round(0.7 * 120) - round(0.05 * 120)
    block = 4096
    with LargestTensor() as probe:
        large = run(embeds, ids, scores, 4, g=10**5, block_elements=block)
    assert probe.largest <= max(embeds.numel(), block)
    at_pool = run(embeds, ids, scores, 4, g=n_pool, block_elements=block)
    for name in ("keep", "embeds", "merge_target", "merge_weight"):
        assert torch.equal(getattr(large, name), getattr(at_pool, name)), name
    assert torch.equal(run(embeds, ids, scores, 4, g=10**9).keep, at_pool.keep)


@pytest.mark.parametrize("scale", [3e37, 3e38])
def test_merge_near_float32_max_stays_finite_and_matches_reference(scale):
    from reference_omnizip import reference_compress

    embeds, ids, scores = interleaved(3, 4, audio=30, dim=8, seed=8)
    big = (embeds / embeds.abs().max() * scale).float()
    assert torch.isfinite(big).all()
    res = run(big, ids, scores, 4, contextual_ratio=0.1)
    ref = reference_compress(big, ids, scores, A, V, 4, contextual_ratio=0.1)
    assert torch.isfinite(res.embeds).all()
    assert torch.equal(res.keep, ref.keep) and res.merge_target.tolist() == ref.merge_target
    anchors = res.audio_positions[res.anchors]
    torch.testing.assert_close(res.embeds[anchors].double() / scale,
                               ref.embeds[anchors].double().clamp(-3.4028234663852886e38,
                                                                  3.4028234663852886e38) / scale,
                               rtol=1e-5, atol=1e-6)


def test_float64_is_merged_in_float64_and_may_exceed_float32_range():
    from reference_omnizip import reference_compress

    embeds, ids, scores = interleaved(3, 4, audio=30, dim=8, seed=9)
    for scale in (1.0, 1e100):
        x = embeds.double() * scale + 1e-9 * scale  # offsets float32 cannot hold
        res = run(x, ids, scores, 4, contextual_ratio=0.1)
        ref = reference_compress(x, ids, scores, A, V, 4, contextual_ratio=0.1)
        assert res.embeds.dtype == torch.float64 and torch.isfinite(res.embeds).all()
        assert torch.equal(res.keep, ref.keep) and res.merge_target.tolist() == ref.merge_target
        # The formula with the core's own weights, in float64: exact to float64 rounding.
        with_core_weights = reference_compress(x, ids, scores, A, V, 4, contextual_ratio=0.1)
        with_core_weights.merge_weight = res.merge_weight.double().tolist()
        expected = _reference_merged(x, with_core_weights)
        torch.testing.assert_close(res.embeds, expected, rtol=1e-12, atol=0.0)


def test_seed_must_fit_torch_generators():
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 9223372036854775807\]"):
        OmniZipConfig(seed=2**63)
    with pytest.raises(ValueError, match="seed"):
        OmniZipConfig(seed=2**64)
    embeds, ids, scores = interleaved(2, 4)
    assert run(embeds, ids, scores, 4, audio_selection="random", seed=2**63 - 1).n_audio_kept > 0


def test_exact_budget_ratios_stay_below_one():
    """Discarding (almost) everything: the widened upper bound is the largest float64 below
    1, never 1.0 (float32 rounding of that bound made ratios exactly 1)."""
    ids = torch.tensor([T] + [V] * 8 + [A] * 4 + [V] * 8 + [A] * 4 + [T])
    embeds = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(0))
    for rho_video in (0.9, 0.99):
        res = run(embeds, ids, torch.rand(8), 4, rho_video=rho_video, budget="exact")
        assert (res.video_chunk_ratio < 1.0).all(), res.video_chunk_ratio.tolist()
        assert res.n_video_kept == round((1 - rho_video) * 16)
    # Windows with S = 1, 0, 1/2: the budget's shift clamps two chunks at r_max, which they
    # hold as that exact float64 value, not as its float32 rounding (0.699999988...).
    ids = torch.tensor([T] + ([V] * 8 + [A] * 10) * 3 + [T])
    embeds = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(0))
    scores = torch.cat([torch.full((10,), 3.0), torch.full((10,), 1.0),
                        torch.tensor([2.0] * 5 + [0.0] * 5)])
    res = run(embeds, ids, scores, 4, rho_audio=0.5, g=0, rho_video=0.6, min_ratio=0.3,
              max_ratio=0.7, budget="exact")
    assert res.window_audio_retention.tolist() == [1.0, 0.0, 0.5]
    assert res.video_chunk_ratio.tolist()[1:] == [0.7, 0.7]
    assert res.n_video_kept == round(0.4 * 24)


def test_energy_selection_near_float32_max_ranks_by_norm():
    """audio_score="energy" without scores (the method protocol): norms of rows near
    float32's maximum overflow; the salient tokens are still the largest rows."""
    ids = torch.tensor([T] + [A] * 10 + [T])
    scale = torch.tensor([1.0, 0.2, 0.9, 0.1, 0.5, 0.6, 0.3, 0.8, 0.4, 0.7]) * 3e38
    embeds = torch.zeros(12, 4)
    embeds[1:11] = scale[:, None]
    config = OmniZipConfig(audio_score="energy", rho_audio=0.5, g=0)
    res = config.compress(embeds, ids, audio_token_id=A, video_token_id=V, tokens_per_frame=4)
    assert res.salient.tolist() == (scale >= scale.sort().values[5]).tolist()
