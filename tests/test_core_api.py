"""The core's contract beyond reference equivalence: validation, edge cases, options, bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    # Partial trailing tokens and frame-less chunks are kept whole (SPEC deviation 3).
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


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_stays_bounded_no_pool_by_video_matrix():
    """No temporary exceeds max(the embeddings, the block cap): the [pool, N_v] similarity
    matrix (here 20x larger than the cap) is never formed whole (SPEC deviation 6)."""
    embeds, ids, scores = interleaved(60, 16, audio=50, dim=8, seed=2)
    n_video = int((ids == V).sum())
    block = 4096
    pool = 3000 * (0.3 - 0.05)
    assert pool * n_video > 20 * max(embeds.numel(), block)
    with _LargestTensor() as probe:
        run(embeds, ids, scores, 16, block_elements=block)
    assert probe.largest <= max(embeds.numel(), 4 * block)


def test_attention_scores_never_form_h_t_t():
    t, h, d = 600, 4, 8
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(t, h, d, generator=gen), torch.randn(t, h, d, generator=gen)
    block = 8192
    with _LargestTensor() as probe:
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


@pytest.mark.parametrize("retention", [0.2, 0.35, 0.45, 0.8])
def test_retention_target_is_met_with_exact_budget(retention):
    embeds, ids, scores = interleaved(10, 8, audio=25, seed=4)
    res = run(embeds, ids, scores, 8, retention=retention, budget="exact")
    total = res.n_audio + res.n_video
    assert abs((res.n_audio_kept + res.n_video_kept) - retention * total) <= 3
    gap = res.rho_video - res.rho_audio
    if res.rho_audio > 0 and res.rho_video < 0.999:
        assert gap == pytest.approx(0.3)


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
