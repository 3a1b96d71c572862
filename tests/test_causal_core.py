"""Causal OmniZip in the core (docs/algorithm.md section 9): the stream contracts.

(a) deciding after W windows and after W+k windows gives the same decisions on windows < W;
(b) deciding window by window (or in any groups) with the carried history equals one call;
(c) the default (offline) configuration fails (a) (negative control, a deterministic example);
(d) over >= 60 s of a realistic layout the kept share is within 2% of the configured retention;
(e) the audio still guides the video;
(f) an independent plain-Python reference of the rules (tests/reference_causal.py) agrees.
Plus the history's own contract: bounded, device-movable, no aliasing, refused where it has no
meaning, and the per-window counts.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import LargestTensor
from reference_causal import reference_causal_compress, reference_counter_uniform

from omnizip import CausalHistory, OmniZipConfig, compress_sequence
from omnizip.core.causal_audio import counter_uniform

A, V, T = 7, 9, 1  # audio, video, text ids
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
SETTINGS = settings(max_examples=70, deadline=None, derandomize=True, suppress_health_check=HEALTH)
RATIO = st.one_of(st.sampled_from([0.3, 0.6, 0.0, 0.9]), st.floats(0.0, 0.95))


# ----------------------------------------------------------------------------- strategies
@st.composite
def streams(draw):
    """A stream of windows: ``ids``, tokens per frame (one per video chunk), and where each
    window ends (the cut after its last chunk). Windows in V-A (or A-V) order, with or
    without text between them, partial frames, several resolutions, a partial last window,
    unguided video or audio-only windows at the end, video-only and audio-only streams."""
    mode = draw(st.sampled_from(["both", "both", "both", "video", "audio"]))
    order = draw(st.sampled_from(["VA", "AV"]))
    sizes = draw(st.sampled_from([[2], [3], [4], [2, 3], [1, 5]]))
    text_between = mode != "both" or draw(st.sampled_from([False, False, True]))
    n_windows = draw(st.integers(1, 8))
    ids, per_chunk, ends = [T] * draw(st.integers(0, 2)), [], []

    def video():
        p = draw(st.sampled_from(sizes))
        per_chunk.append(p)
        return [V] * max(1, p * draw(st.integers(0, 3)) + draw(st.integers(0, p - 1)))

    def audio():
        return [A] * draw(st.integers(1, 16))

    for _ in range(n_windows):
        if mode == "both":
            parts = [video(), audio()] if order == "VA" else [audio(), video()]
        else:
            parts = [video() if mode == "video" else audio()]
        for part in parts:
            ids += part
        ends.append(len(ids))
        if text_between:
            ids += [T] * draw(st.integers(1, 2))
    extra = draw(st.sampled_from(["none", "none", "video", "audio"])) if mode == "both" else "none"
    for _ in range(draw(st.integers(1, 2)) if extra != "none" else 0):
        ids += [T]  # a separate run
        ids += video() if extra == "video" else audio()
        ends.append(len(ids))
    ids += [T] * draw(st.integers(0, 2))
    return torch.tensor(ids), per_chunk, ends


@st.composite
def inputs(draw, kinds=("random", "random", "duplicated", "zeros")):
    """A stream with embeddings (random, rows repeated, or some rows zero) and scores.
    Rows repeated make ties that exact arithmetic has but float32 may break either way, so
    the comparison with the float64 reference draws without them."""
    ids, per_chunk, ends = draw(streams())
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dim = draw(st.integers(2, 10))
    kind = draw(st.sampled_from(kinds))
    x = torch.randn(ids.numel(), dim, generator=gen)
    if kind == "duplicated":
        x = x[torch.randint(0, 3, (ids.numel(),), generator=gen)]
    elif kind == "zeros":
        x[torch.rand(ids.numel(), generator=gen) < 0.3] = 0.0
    n_audio = int((ids == A).sum())
    score_kind = draw(st.sampled_from(["random", "random", "ties"]))
    scores = (torch.rand(n_audio, generator=gen) if score_kind == "random"
              else torch.randint(0, 3, (n_audio,), generator=gen).float())
    return ids, x.to(dtype), scores if n_audio else None, per_chunk, ends


@st.composite
def causal_configs(draw, reference_only: bool = False):
    low, high = sorted([draw(RATIO), draw(RATIO)])
    fields = dict(
        rho_audio=draw(RATIO), rho_video=draw(RATIO),
        contextual_ratio=draw(st.sampled_from([0.05, 0.2, 0.5, 0.0])),
        g=draw(st.sampled_from([3, 1, 15, 0])), min_ratio=low, max_ratio=high,
        knn=draw(st.integers(1, 6)), merge_scope=draw(st.sampled_from(["global", "window"])),
        frame_parity=draw(st.sampled_from([None, "chunk", "stream", "stream"])),
        dynamic_ratios=draw(st.sampled_from([True, True, False])),
        merge_anchors=draw(st.sampled_from([True, True, False])),
        causal_lookback=draw(st.integers(2, 5)),
        block_elements=draw(st.sampled_from([1024, 1 << 20])),
    )
    if not reference_only:
        fields["audio_selection"] = draw(st.sampled_from(["score", "score", "random"]))
        fields["seed"] = draw(st.sampled_from([0, 7, 2**63 - 1]))
        if draw(st.booleans()):
            fields["retention"] = draw(st.sampled_from([0.5, 0.2, 1.0]))
    return OmniZipConfig(causal=True, **fields)


# ----------------------------------------------------------------------------- helpers
def decide(ids, embeds, scores, per_chunk, config, history=None):
    return compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                             tokens_per_frame=per_chunk or 1, config=config, history=history)


def cut(ids, embeds, scores, per_chunk, start, stop):
    """The tokens ``[start, stop)`` with their scores and P values."""
    a0, a1 = int((ids[:start] == A).sum()), int((ids[:stop] == A).sum())
    v_runs = _runs(ids == V)
    p = [pc for (s, _), pc in zip(v_runs, per_chunk, strict=True) if start <= s < stop]
    part_scores = None if scores is None else scores[a0:a1]
    return ids[start:stop], embeds[start:stop], part_scores if a1 > a0 else None, p


def _runs(mask):
    out, start = [], None
    for i, on in enumerate([*mask.tolist(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((start, i - start))
            start = None
    return out


def same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), what


def audio_fields(res):
    """Per audio token, with anchors/targets as stream indices (offset by earlier calls)."""
    return res.salient, res.merge_target, res.merge_weight


# ----------------------------------------------------------------------------- (a) and (c)
def check_prefix(ids, embeds, scores, per_chunk, ends, config, windows: int):
    """Decisions on the first ``windows`` windows equal those of the truncated stream."""
    full = decide(ids, embeds, scores, per_chunk, config)
    stop = ends[windows - 1]
    p_ids, p_embeds, p_scores, p_chunk = cut(ids, embeds, scores, per_chunk, 0, stop)
    part = decide(p_ids, p_embeds, p_scores, p_chunk, config)
    n_audio = part.n_audio
    same(part.keep, full.keep[:stop], "keep")
    same(part.embeds, full.embeds[:stop], "embeds")
    same(part.salient, full.salient[:n_audio], "salient")
    same(part.merge_target, full.merge_target[:n_audio], "merge_target")
    same(part.merge_weight, full.merge_weight[:n_audio], "merge_weight")
    same(part.anchors, full.anchors[full.anchors < n_audio], "anchors")
    same(part.video_chunk_ratio, full.video_chunk_ratio[: part.video_chunks.shape[0]], "ratios")
    same(part.window_counts(), full.window_counts()[: part.window_counts().shape[0]], "counts")


@SETTINGS
@given(data=st.data())
def test_appending_windows_never_changes_decided_ones(data):
    """(a) for any layout and configuration."""
    ids, embeds, scores, per_chunk, ends = data.draw(inputs())
    config = data.draw(causal_configs())
    windows = data.draw(st.integers(1, len(ends)))
    check_prefix(ids, embeds, scores, per_chunk, ends, config, windows)


def test_the_offline_configuration_is_not_causal():
    """(c) negative control: the default configuration changes decided windows when windows
    are appended; the first such example of a fixed sequence of layouts."""
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        ids, ends = [T], []
        for _ in range(6):
            ids += [V] * 8 + [A] * int(torch.randint(5, 25, (1,), generator=gen))
            ends.append(len(ids))
        ids = torch.tensor(ids)
        embeds = torch.randn(ids.numel(), 6, generator=gen)
        scores = torch.rand(int((ids == A).sum()), generator=gen)
        try:
            check_prefix(ids, embeds, scores, [4] * 6, ends, OmniZipConfig(), 3)
        except AssertionError:
            # and the causal configuration passes on the same example
            check_prefix(ids, embeds, scores, [4] * 6, ends, OmniZipConfig(causal=True), 3)
            return
    pytest.fail("the offline configuration never looked ahead on 50 layouts")


# ----------------------------------------------------------------------------- (b)
def decide_in_groups(ids, embeds, scores, per_chunk, ends, config, bounds):
    """Decide the windows in groups (``bounds``: window counts where a call ends), each call
    with the previous call's history; results concatenated as one call's."""
    history, pieces, start = None, [], 0
    for count in [*bounds, len(ends)]:
        stop = ends[count - 1] if count < len(ends) else ids.numel()
        p_ids, p_embeds, p_scores, p_chunk = cut(ids, embeds, scores, per_chunk, start, stop)
        res = decide(p_ids, p_embeds, p_scores, p_chunk, config, history)
        assert res.history is not None and res.history.n_windows == (history.n_windows if history else 0) + res.window_counts().shape[0]
        assert res.first_window == (history.n_windows if history else 0)
        pieces.append(res)
        history, start = res.history, stop
    return pieces


@SETTINGS
@given(data=st.data())
def test_window_by_window_equals_one_call(data):
    """(b) any grouping of whole windows, the history carried between calls."""
    ids, embeds, scores, per_chunk, ends = data.draw(inputs())
    config = data.draw(causal_configs())
    bounds = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(ends) - 1)), max_size=len(ends)))))
    bounds = [b for b in bounds if b < len(ends)]
    full = decide(ids, embeds, scores, per_chunk, config)
    pieces = decide_in_groups(ids, embeds, scores, per_chunk, ends, config, bounds)
    same(torch.cat([p.keep for p in pieces]), full.keep, "keep")
    same(torch.cat([p.embeds for p in pieces]), full.embeds, "embeds")
    same(torch.cat([p.salient for p in pieces]), full.salient, "salient")
    same(torch.cat([p.merge_weight for p in pieces]), full.merge_weight, "merge_weight")
    offsets = [0]
    for p in pieces:
        offsets.append(offsets[-1] + p.n_audio)
    targets = torch.cat([torch.where(p.merge_target >= 0, p.merge_target + o, -1) for p, o in zip(pieces, offsets, strict=False)])
    same(targets, full.merge_target, "merge_target")
    same(torch.cat([p.anchors + o for p, o in zip(pieces, offsets, strict=False)]), full.anchors, "anchors")
    same(torch.cat([p.video_chunk_ratio for p in pieces]), full.video_chunk_ratio, "ratios")
    same(torch.cat([p.window_counts() for p in pieces]), full.window_counts(), "window counts")
    assert all((p.rho_audio, p.rho_video) == (full.rho_audio, full.rho_video) for p in pieces)


# ----------------------------------------------------------------------------- (f)
@settings(SETTINGS, max_examples=50)
@given(data=st.data())
def test_equals_the_plain_reference(data):
    """(f) the vectorised rules == the plain-Python reference written from the docs."""
    ids, embeds, scores, per_chunk, _ = data.draw(inputs(kinds=("random", "random", "zeros")))
    embeds = embeds.float()
    config = data.draw(causal_configs(reference_only=True))
    res = decide(ids, embeds, scores, per_chunk, config)
    ref = reference_causal_compress(
        embeds, ids, scores, A, V, per_chunk or 1, rho_audio=config.rho_audio,
        rho_video=config.rho_video, contextual_ratio=config.contextual_ratio, g=config.g,
        min_ratio=config.min_ratio, max_ratio=config.max_ratio, knn=config.knn,
        merge_scope=config.merge_scope, lookback=config.causal_lookback,
        frame_parity=config.frame_parity or "chunk", merge_anchors=config.merge_anchors,
        dynamic_ratios=config.dynamic_ratios,
    )
    assert res.salient.tolist() == ref.salient
    assert res.anchors.tolist() == ref.anchors
    assert res.merge_target.tolist() == ref.merge_target
    torch.testing.assert_close(res.merge_weight.double(), torch.tensor(ref.merge_weight, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.window_audio_retention, torch.tensor(ref.window_audio_retention, dtype=torch.float64))
    torch.testing.assert_close(res.video_chunk_ratio, torch.tensor(ref.video_chunk_ratio, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    assert torch.equal(res.keep, ref.keep)
    torch.testing.assert_close(res.embeds, ref.embeds, rtol=1e-5, atol=1e-6)


def test_stream_parity_goes_on_across_calls():
    """frame_parity="stream", one frame per window (Qwen3-Omni's layout): an odd frame whose
    previous frame was decided by the previous call is still pruned temporally against it, so
    window by window equals one call; restarting the parity in every call would not."""
    ids = torch.tensor(([V] * 4 + [A] * 6) * 6)
    gen = torch.Generator().manual_seed(0)
    embeds, scores = torch.randn(ids.numel(), 6, generator=gen), torch.rand(36, generator=gen)
    config = OmniZipConfig(causal=True, frame_parity="stream")
    full = decide(ids, embeds, scores, [4] * 6, config)
    pieces = decide_in_groups(ids, embeds, scores, [4] * 6, list(range(10, 61, 10)), config, [1, 2, 3, 4, 5])
    same(torch.cat([p.keep for p in pieces]), full.keep, "keep")
    restarted = torch.cat([decide(ids[i:i + 10], embeds[i:i + 10], scores[6 * (i // 10):6 * (i // 10) + 6],
                                  [4], config).keep for i in range(0, 60, 10)])
    assert not torch.equal(restarted, full.keep)


def test_the_budget_shift_lands_on_its_exact_solution():
    """r_min = r_max = 0.3 and rho_v = 0.5: the span shift's exact solution is r = 0.5, and with
    P = 2 a frame keeps int(2 * 0.5) = 1 token; the bisection's last-bit noise must not make it 0."""
    ids = torch.tensor([V, A, T, V, A, T, V, V, A, T])
    embeds = torch.randn(ids.numel(), 2, generator=torch.Generator().manual_seed(0))
    config = OmniZipConfig(causal=True, rho_video=0.5, min_ratio=0.3, max_ratio=0.3, causal_lookback=3)
    res = decide(ids, embeds, torch.rand(3), [2, 2, 2], config)
    assert res.video_chunk_ratio.tolist() == [0.3, 0.3, 0.5]
    assert int(res.keep[6:8].sum()) == 1


def test_random_selection_draws_from_the_stream_index():
    """audio_selection="random": token j's score is splitmix64(seed, j), as the docs say."""
    for seed in (0, 1, 2**63 - 1):
        index = torch.tensor([0, 1, 2, 1000, 2**40])
        got = counter_uniform(seed, index).tolist()
        assert got == [reference_counter_uniform(seed, int(i)) for i in index]


# ----------------------------------------------------------------------------- (d) and (e)
def realistic(seconds: int, tokens_per_frame: int, seed: int, levels=None):
    """2-s windows of 2 frames (P tokens each) and 50 audio tokens, random embeddings and
    scores; ``levels``: a per-window offset added to the window's scores."""
    windows = seconds // 2
    per_window = [V] * (2 * tokens_per_frame) + [A] * 50
    ids = torch.tensor([T] * 3 + per_window * windows + [T] * 3)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(ids.numel(), 16, generator=gen)
    scores = torch.rand(50 * windows, generator=gen)
    if levels is not None:
        scores = scores + torch.as_tensor(levels, dtype=torch.float32).repeat_interleave(50)
    return ids, embeds, scores


@pytest.mark.parametrize("preset", ["45", "35"])
def test_long_stream_keeps_the_configured_share(preset):
    """(d) 120 s, P = 64: kept share within 2% (absolute) of (1-rho_a+c) N_a + (1-rho_v) N_v."""
    ids, embeds, scores = realistic(120, 64, seed=int(preset))
    config = OmniZipConfig.preset(preset, causal=True)
    res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                            tokens_per_frame=64, config=config)
    n_audio, n_video = res.n_audio, res.n_video
    expected = ((1 - config.rho_audio + config.contextual_ratio) * n_audio
                + (1 - config.rho_video) * n_video) / (n_audio + n_video)
    assert abs(res.retention - expected) <= 0.02, (res.retention, expected)
    # the audio side on its own: salient + anchors, as configured
    assert abs(res.n_audio_kept / n_audio - (1 - config.rho_audio + config.contextual_ratio)) <= 0.02


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = torch.argsort(torch.argsort(x.double())).double()
    ry = torch.argsort(torch.argsort(y.double())).double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def test_audio_still_guides_the_video():
    """(e) across windows, more kept audio -> a lower base ratio (b is monotone, exactly) and
    not less video kept (rank correlation), and one window whose audio stands out keeps
    more video than its neighbours."""
    gen = torch.Generator().manual_seed(5)
    levels = torch.rand(40, generator=gen) * 2  # windows of louder or quieter audio
    ids, embeds, scores = realistic(80, 64, seed=5, levels=levels)
    config = OmniZipConfig.preset("45", causal=True)
    res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                            tokens_per_frame=64, config=config)
    counts = res.window_counts()
    kept_audio, kept_video = counts[:, 1].double(), counts[:, 3].double()
    base = (config.max_ratio - (config.max_ratio - config.min_ratio) * res.window_audio_retention)
    order = torch.argsort(res.window_audio_retention)
    assert (base[order].diff() <= 0).all()
    assert _spearman(kept_audio, kept_video) > 0.7
    assert _spearman(levels, kept_video) > 0.5

    flat = torch.zeros(40)
    flat[20] = 5.0  # one window's audio stands out against its span
    ids, embeds, scores = realistic(80, 64, seed=6, levels=flat)
    counts = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                               tokens_per_frame=64, config=config).window_counts()
    assert counts[20, 1] == 50  # all its audio is salient or an anchor
    assert counts[20, 3] > counts[19, 3] and counts[20, 3] > counts[21, 3]


@pytest.mark.parametrize("scope", ["global", "window"])
def test_memory_stays_linear_in_the_stream(scope):
    """No temporary beyond max(the embeddings, a few blocks): the span comparisons (salient
    ranks, own-window anchors, span video, budget shift) are padded per-window blocks, never
    a [stream, stream] or [pool, N_v] table."""
    ids, embeds, scores = realistic(240, 16, seed=9)  # 120 windows
    embeds = embeds[:, :8].contiguous()
    block = 4096
    n_pool, n_video = int(0.25 * scores.numel()), int((ids == V).sum())
    assert n_pool * n_video > 50 * max(embeds.numel(), block)
    with LargestTensor() as probe:
        compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V, tokens_per_frame=16,
                          config=OmniZipConfig(causal=True, merge_scope=scope, block_elements=block))
    assert probe.largest <= max(embeds.numel(), 4 * block)


# ----------------------------------------------------------------------------- the history
def _layout(windows: int, gen):
    ids = [T]
    for _ in range(windows):
        ids += [V] * 8 + [A] * 10
    ids = torch.tensor([*ids, T])
    return ids, torch.randn(ids.numel(), 6, generator=gen), torch.rand(10 * windows, generator=gen)


def test_history_is_bounded_and_owns_its_tensors():
    gen = torch.Generator().manual_seed(0)
    config = OmniZipConfig(causal=True, causal_lookback=3, frame_parity="stream")
    history, sizes = None, []
    for _ in range(12):
        ids, embeds, scores = _layout(1, gen)
        ids, embeds = ids[1:-1], embeds[1:-1]  # one window, no text: the stream stays open
        res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                                tokens_per_frame=4, config=config, history=history)
        history = res.history
        storages = {t.untyped_storage().data_ptr() for t in (embeds, scores)}
        for t in (history.scores, history.video_rows, history.video_scale, history.base_ratio,
                  history.stream.frame, history.stream.frame_inv_norm):
            assert t.untyped_storage().data_ptr() not in storages
        sizes.append((history.scores.numel(), history.video_rows.shape[0], len(history.video_sizes)))
    assert history.n_windows == 12 and history.audio_count == 120
    assert sizes[-1] == sizes[2] == (20, 16, 2)  # K - 1 = 2 windows, whatever the length
    moved = history.to("cpu")
    assert isinstance(moved, CausalHistory) and moved.n_windows == 12
    assert "windows=12" in repr(history)


def test_history_is_refused_where_it_has_no_meaning():
    gen = torch.Generator().manual_seed(1)
    ids, embeds, scores = _layout(3, gen)
    kwargs = dict(audio_token_id=A, video_token_id=V, tokens_per_frame=4)
    causal = OmniZipConfig(causal=True)
    history = compress_sequence(embeds, ids, scores, config=causal, **kwargs).history
    with pytest.raises(ValueError, match="causal"):
        compress_sequence(embeds, ids, scores, config=OmniZipConfig(), history=history, **kwargs)
    with pytest.raises(TypeError, match="history"):
        compress_sequence(embeds, ids, scores, config=causal, history={"windows": 3}, **kwargs)
    with pytest.raises(ValueError, match="causal_lookback"):
        compress_sequence(embeds, ids, scores, config=causal.replace(causal_lookback=3),
                          history=history, **kwargs)
    with pytest.raises(ValueError, match="width D=6"):
        compress_sequence(torch.randn(ids.numel(), 5), ids, scores, config=causal, history=history, **kwargs)
    # block_elements changes no decision: a history stays valid across it
    compress_sequence(embeds, ids, scores, config=causal.replace(block_elements=4096), history=history, **kwargs)
    # a window decided with video only cannot get its audio later
    video_only = torch.tensor([V] * 8)
    res = compress_sequence(torch.randn(8, 6), video_only, None, config=causal, **kwargs)
    with pytest.raises(ValueError, match="whole windows"):
        compress_sequence(embeds, ids, scores, config=causal, history=res.history, **kwargs)
    # but it may go on with video only
    more = compress_sequence(torch.randn(8, 6), video_only, None, config=causal, history=res.history, **kwargs)
    assert more.first_window == 1 and more.history.n_windows == 2


@pytest.mark.parametrize("budget", [dict(budget="exact"), dict(token_budget=100)])
def test_whole_stream_budgets_are_refused(budget):
    name = next(iter(budget))
    with pytest.raises(ValueError, match=f"causal.*{name}|{name}.*causal"):
        OmniZipConfig(causal=True, **budget)
    with pytest.raises(ValueError, match=name):
        OmniZipConfig.preset("45", causal=True, **budget)


def test_config_fields_validate_and_round_trip():
    config = OmniZipConfig.preset("35", causal=True, causal_lookback=4)
    assert (config.rho_audio, config.rho_video, config.causal, config.causal_lookback) == (0.4, 0.7, True, 4)
    assert OmniZipConfig.from_dict(config.to_dict()) == config
    for bad, error in ((1, ValueError), (True, TypeError), (2.0, TypeError), ("8", TypeError)):
        with pytest.raises(error, match="causal_lookback"):
            OmniZipConfig(causal_lookback=bad)
    with pytest.raises(TypeError, match="causal"):
        OmniZipConfig(causal=1)


def test_retention_resolves_from_the_first_window():
    gen = torch.Generator().manual_seed(2)
    ids, embeds, scores = _layout(6, gen)
    config = OmniZipConfig(causal=True, retention=0.3)
    res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                            tokens_per_frame=4, config=config)
    assert (res.rho_audio, res.rho_video) == config.resolve_ratios(10, 8)
    # a call of text alone decides no window: the stream's first window still resolves them
    text = compress_sequence(embeds[:1], ids[:1], None, audio_token_id=A, video_token_id=V,
                             tokens_per_frame=4, config=config)
    rest = compress_sequence(embeds[1:], ids[1:], scores, audio_token_id=A, video_token_id=V,
                             tokens_per_frame=4, config=config, history=text.history)
    assert (rest.rho_audio, rest.rho_video) == config.resolve_ratios(10, 8)
    assert torch.equal(rest.keep, res.keep[1:])


def test_window_counts_count_each_window():
    """Counts per window from the keep mask, for causal and offline results alike; windows
    missing a chunk count 0 there."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.tensor([T] + [V] * 8 + [A] * 7 + [V] * 9 + [A] * 5 + [T] + [V] * 6 + [T])
    embeds, scores = torch.randn(ids.numel(), 4, generator=gen), torch.rand(12, generator=gen)
    for config in (OmniZipConfig(), OmniZipConfig(causal=True)):
        res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                                tokens_per_frame=4, config=config)
        counts = res.window_counts()
        assert counts.dtype == torch.int64 and counts.shape == (3, 4)
        expected = []
        for w, ((a_start, a_len), (v_start, v_len)) in enumerate(
            zip([*_runs(ids == A), (0, 0)], _runs(ids == V), strict=True)
        ):
            keep = res.keep.tolist()
            expected.append([a_len, sum(keep[a_start : a_start + a_len]), v_len,
                             sum(keep[v_start : v_start + v_len])])
            assert w < 3
        assert counts.tolist() == expected
        assert int(counts[:, 1].sum()) == res.n_audio_kept and int(counts[:, 3].sum()) == res.n_video_kept


def test_gradients_reach_kept_and_merged_tokens():
    gen = torch.Generator().manual_seed(4)
    ids, embeds, scores = _layout(4, gen)
    embeds.requires_grad_(True)
    res = compress_sequence(embeds, ids, scores, audio_token_id=A, video_token_id=V,
                            tokens_per_frame=4, config=OmniZipConfig(causal=True, contextual_ratio=0.2))
    res.embeds[res.keep].sum().backward()
    assert (embeds.grad[res.keep] != 0).any(dim=1).all()
    merged = res.merge_target >= 0
    assert merged.any() and (embeds.grad[res.audio_positions[merged]] != 0).any(dim=1).all()
    assert math.isclose(float(res.merge_weight[merged].sum()),
                        float(torch.unique(res.merge_target[merged]).numel()), rel_tol=1e-5)


def test_the_vllm_plugin_refuses_causal_configs_at_start_up():
    """Streams are served by the Hugging Face integration for now: the server refuses a causal
    configuration in any form, naming the field."""
    from omnizip.vllm.settings import server_config

    for value in (OmniZipConfig(causal=True), {"causal": True}, {"preset": "45", "causal": True}):
        with pytest.raises(ValueError, match="causal"):
            server_config(value)
    assert server_config({"causal": False}).budget == "exact"
