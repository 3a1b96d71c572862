"""SEATS on plain tensors: every stage equals the plain reference (tests/reference_seats.py)
on random inputs, the schedule meets its target, the depth rule and the configuration."""

from __future__ import annotations

import itertools
import math

import pytest
import reference_seats as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip.methods import SEATSConfig, get_method, method_name
from omnizip.methods.seats_result import SEATSDecision
from omnizip.methods.seats_schedule import (
    REFERENCE_SCHEDULES,
    LayerSchedule,
    derive_schedule,
    keep_ratios,
    ratio_pair,
)
from omnizip.methods.seats_select import divprune_windows, fill_budget, inner_keep, shave_budget

A, V, T = 7, 9, 1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- Stage I
@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    ratio=st.floats(0.05, 1.0),
    dim=st.integers(2, 4),
    coarse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_divprune_windows_equals_the_plain_greedy(lengths, ratio, dim, coarse, seed):
    """Random windows; ``coarse``: tokens drawn from three signed axis vectors and two weights,
    so duplicates and exactly tied distances occur, computed without rounding in either code
    (ties go to the lower index). Continuous inputs have no near-ties; collinear but unequal
    vectors would leave the tie to the order of float rounding."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.05
    if coarse:
        pool = torch.eye(dim, dtype=torch.float64)[:2]
        pool = torch.cat([pool, -pool[:1]])  # e0, e1, -e0: distances 0, 1 and 2 exactly
        x = pool[torch.randint(3, (n,), generator=gen)]
        w = torch.tensor([0.5, 1.0], dtype=torch.float64)[torch.randint(2, (n,), generator=gen)]
    lens = torch.tensor(lengths)
    counts = torch.tensor([ref.window_count(m, ratio) for m in lengths])
    got = divprune_windows(x, w, lens, counts, block_elements=1024)
    want, start = [], 0
    for m, c in zip(lengths, counts.tolist(), strict=True):
        want += ref.divprune(x[start:start + m].tolist(), w[start:start + m].tolist(), c)
        start += m
    assert got.tolist() == want
    assert int(got.sum()) == int(counts.sum())


def test_divprune_blocks_do_not_change_the_result():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([30, 30, 17, 30, 5])
    x = torch.randn(int(lengths.sum()), 6, generator=gen)
    w = torch.rand(x.shape[0], generator=gen)
    counts = torch.tensor([12, 12, 7, 30, 2])
    whole = divprune_windows(x, w, lengths, counts)
    blocked = divprune_windows(x, w, lengths, counts, block_elements=1024)
    assert torch.equal(whole, blocked)


def seats_row(windows=3, p=6, frames=2, audio=7, tail_video=0, text=3, dim=5, seed=0):
    ids = [T] * text
    for _ in range(windows):
        ids += [V] * (frames * p) + [A] * audio
    ids += [V] * tail_video + [T] * text
    ids = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(len(ids), dim, generator=gen, dtype=torch.float64)
    a = torch.rand(int((ids == A).sum()), generator=gen, dtype=torch.float64) + 0.1
    v = torch.rand(int((ids == V).sum()), generator=gen, dtype=torch.float64) + 0.1
    return embeds, ids, a, v


@pytest.mark.parametrize("layout", [dict(), dict(frames=1, windows=5), dict(tail_video=4),
                                    dict(audio=0), dict(windows=0, text=4), dict(frames=3, audio=13)])
@pytest.mark.parametrize("setting", [dict(retention=0.35), dict(video_ratio=0.2, audio_ratio=0.9),
                                     dict(retention=0.1, grid_in_window=3, audio_window_seconds=1)])
def test_stage1_equals_the_reference(layout, setting):
    embeds, ids, a, v = seats_row(**layout)
    method = SEATSConfig(audio_frame_tokens=5, **setting)
    res = method.compress(embeds, ids, audio_token_id=A, video_token_id=V, tokens_per_frame=6,
                          audio_scores=a if a.numel() else None, video_scores=v if v.numel() else None)
    ratio_v, ratio_a = method.encoder_ratios
    want = ref.stage1(ids.tolist(), embeds.tolist(), a.tolist(), v.tolist(), audio=A, video=V,
                      per_frame=6, grid_in_window=method.grid_in_window,
                      audio_window=method.audio_window_seconds * 5, ratio_v=ratio_v, ratio_a=ratio_a)
    assert res.keep.tolist() == want
    assert isinstance(res, SEATSDecision) and res.embeds is embeds  # nothing merged, no copy
    assert bool(res.keep[(ids != A) & (ids != V)].all())


def test_stage1_needs_scores_and_checks_them():
    embeds, ids, a, v = seats_row()
    kw = dict(audio_token_id=A, video_token_id=V, tokens_per_frame=6)
    with pytest.raises(ValueError, match="video_scores: seats weighs its 36 video tokens"):
        SEATSConfig().compress(embeds, ids, audio_scores=a, **kw)
    with pytest.raises(ValueError, match=r"audio_scores must hold one score per audio token: expected shape \[21\]"):
        SEATSConfig().compress(embeds, ids, audio_scores=a[:-1], video_scores=v, **kw)
    text_only = torch.full((5,), T)
    assert bool(SEATSConfig().compress(torch.randn(5, 3), text_only, **kw).keep.all())


# ------------------------------------------------------------------------------- Stage II
@settings(max_examples=200, deadline=None)
@given(budget=st.lists(st.integers(1, 12), min_size=1, max_size=8), change=st.integers(0, 40),
       room=st.lists(st.integers(0, 6), min_size=8, max_size=8))
def test_budget_fixups_equal_the_release_loops(budget, change, room):
    b = torch.tensor(budget)
    cap = b + torch.tensor(room[: len(budget)])
    assert shave_budget(b, change).tolist() == ref.shave(budget, change)
    assert fill_budget(b, change, cap).tolist() == ref.fill(budget, change, cap.tolist())


@st.composite
def stage2_rows(draw):
    """A row of text / video runs / audio runs in any order, scores with ties."""
    kinds = draw(st.lists(st.sampled_from("tva"), min_size=1, max_size=10))
    ids = []
    for kind in kinds:
        ids += [{"t": T, "v": V, "a": A}[kind]] * draw(st.integers(1, 6))
    ids.append(T)
    levels = draw(st.integers(2, 50))
    scores = [draw(st.integers(0, levels)) / levels for _ in ids]
    return torch.tensor(ids), torch.tensor(scores, dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(row=stage2_rows(), rv=st.floats(0.0, 1.0), ra=st.floats(0.0, 1.0),
       temperature=st.sampled_from([0.1, 0.3, 1e-5, 2.0]))
def test_inner_keep_equals_the_reference(row, rv, ra, temperature):
    ids, scores = row
    got = inner_keep(scores, ids == V, ids == A, rv, ra, temperature)
    want = ref.inner_keep(scores.tolist(), (ids == V).tolist(), (ids == A).tolist(), rv, ra, temperature)
    assert got.tolist() == want
    assert bool(got[(ids != V) & (ids != A)].all())


# ------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("family", list(REFERENCE_SCHEDULES))
@pytest.mark.parametrize("target", [0.06, 0.1, 0.3, 0.45, 0.65, 0.7, 0.95])
def test_keep_ratios_equal_the_reference_and_meet_the_target(family, target):
    depth, drops, removal = REFERENCE_SCHEDULES[family]
    start = min(1.0, 1.4 * target)
    layers = LayerSchedule(depth, drops, removal)
    got = keep_ratios(layers, target, start)
    assert list(got) == ref.keep_ratios(depth, list(drops), removal, target, start)
    # the layer-averaged level the ratios give is the target (to the 4-decimal rounding),
    # unless even keeping everything inside the decoder stays below it
    level, total = start, 0.0
    for layer in range(depth):
        if layer == removal:
            level = 0.0
        elif layer in drops:
            level *= got[drops.index(layer)]
        total += level
    ceiling = start * min(removal, depth) / depth
    assert total / depth == pytest.approx(min(target, ceiling), abs=2e-3)
    if target < ceiling:
        assert all(0 < r < 1 for r in got)
        drop_sizes = [1 - r for r in got]  # later steps drop a larger share (1 : e : e^2)
        assert drop_sizes == sorted(drop_sizes)


def test_keep_ratios_edge_cases():
    assert keep_ratios(LayerSchedule(6, (), 5), 0.3, 0.42) == ()
    assert keep_ratios(LayerSchedule(6, (5,), 5), 0.3, 0.42) == ()  # a drop at the removal is moot
    with pytest.raises(ValueError, match="schedule must be 'exp'"):
        keep_ratios(LayerSchedule(6, (2,), 5), 0.3, 0.42, "linear")


def test_derived_schedules():
    for family, (depth, drops, removal) in REFERENCE_SCHEDULES.items():
        got = derive_schedule(depth, family)
        assert (got.drops, got.removal) == (drops, removal)
    cases = {6: ((2, 3, 4), 5), 4: ((1, 2), 3), 3: ((1,), 2), 2: ((), 1), 1: ((), None)}
    for n, want in cases.items():
        got = derive_schedule(n, "Qwen2.5-Omni")
        assert (got.drops, got.removal) == want
    assert derive_schedule(14, "Qwen2.5-Omni").drops == (8, 9, 10)
    for family in REFERENCE_SCHEDULES:
        for n in range(1, 120):
            s = derive_schedule(n, family)
            steps = [*s.drops, *([s.removal] if s.removal is not None else [])]
            assert steps == sorted(set(steps)) and all(1 <= k <= n - 1 for k in steps)
            assert len(steps) == min(4, n - 1)


def test_ratio_pairs():
    assert ratio_pair(0.35) == pytest.approx((0.30, 0.65))
    assert ratio_pair(0.25, "Qwen3-Omni") == pytest.approx((0.22, 0.60))
    assert ratio_pair(1.0) == (1.0, 1.0)
    pairs = [ratio_pair(r / 100) for r in range(1, 101)]
    assert all(a <= b for a, b in itertools.pairwise(pairs)) and pairs[0] > (0, 0)
    assert SEATSConfig().targets == pytest.approx((0.30, 0.65))  # the release's defaults
    assert SEATSConfig(family="Qwen3-Omni").targets == pytest.approx((0.32, 0.70))
    assert SEATSConfig(video_ratio=0.5, audio_ratio=0.8).encoder_ratios == pytest.approx((0.7, 1.0))


# ------------------------------------------------------------------------------- config
def test_config_defaults_and_registry():
    m = get_method("seats")
    assert isinstance(m, SEATSConfig) and method_name(m) == "seats"
    assert (m.encoder_ratio_scale, m.grid_in_window, m.audio_window_seconds, m.schedule) == (1.4, 2, 2, "exp")
    assert m.temperature == 0.1 and SEATSConfig(family="Qwen3-Omni").temperature == 0.3
    assert m.audio_score == "windowed" and m.audio_score_window == 50
    assert SEATSConfig(audio_frame_tokens=13).audio_score_window == 26
    assert m.decides_before_decoder and m.prunes_in_decoder and m.in_decoder_layer is None
    assert SEATSConfig(drop_layers="16-18-20", late_block_layer=24).layer_schedule(28) == \
        LayerSchedule(28, (16, 18, 20), 23)
    assert get_method("seats", drop_layers=[3, 1], late_block_layer=5).drop_layers == (1, 3)
    from omnizip.methods import coerce_option

    for text in ("16-18-20", "16,18,20"):  # the release's spelling and a list
        layers = coerce_option("seats", "drop_layers", text)
        assert SEATSConfig(drop_layers=layers, late_block_layer=24).drop_layers == (16, 18, 20)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(retention=0.0), ValueError, "retention must lie in"),
    (dict(retention=0.3, video_ratio=0.2, audio_ratio=0.5), ValueError, "not a mix"),
    (dict(video_ratio=0.2), ValueError, "not a mix"),
    (dict(video_ratio=0.2, audio_ratio=1.5), ValueError, "audio_ratio must lie in"),
    (dict(encoder_ratio_scale=0), ValueError, "encoder_ratio_scale must be a finite float > 0"),
    (dict(encoder_ratio_scale="1.4"), TypeError, "encoder_ratio_scale must be a float"),
    (dict(grid_in_window=0), ValueError, "grid_in_window must be an int >= 1"),
    (dict(drop_layers=(2, 3)), ValueError, "give drop_layers and late_block_layer together"),
    (dict(drop_layers="a-b", late_block_layer=5), ValueError, "drop_layers must be layer numbers"),
    (dict(drop_layers=(0, 2), late_block_layer=5), ValueError, "drop_layers must be layer numbers"),
    (dict(drop_layers=(2,), late_block_layer=1), ValueError, "late_block_layer must be an int >= 2"),
    (dict(window_temperature=-1.0), ValueError, "window_temperature must be a finite float > 0"),
    (dict(schedule="linear"), ValueError, "schedule must be one of"),
])
def test_config_errors_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        SEATSConfig(**kwargs)


def test_decision_layer_views():
    keep = torch.tensor([True, True, True, True, True])
    steps = ((1, torch.tensor([True, False, True, True, True])), (3, torch.tensor([True, False, False, False, True])))
    d = SEATSDecision(keep=keep, embeds=torch.zeros(5, 2), audio_positions=torch.tensor([1, 2]),
                      video_positions=torch.tensor([3]), steps=steps, n_layers=4)
    assert d.layer_tokens == [5, 4, 4, 2]
    assert d.layer_retention == pytest.approx((3 + 2 + 2 + 0) / (3 * 4))
    assert torch.equal(d.layer_keep(2), steps[0][1]) and torch.equal(d.layer_keep(0), keep)
    assert math.isclose(SEATSDecision(keep=keep, embeds=torch.zeros(5, 2), audio_positions=torch.tensor([1]),
                                      video_positions=torch.tensor([], dtype=torch.long)).layer_retention, 1.0)
