"""Equivalence of ``omnizip.compress_sequence`` (and the algorithm §3 audio scores) with the plain
reference in ``tests/reference_omnizip.py``, over many random interleaved layouts.

The reference is written from the docs/algorithm.md alone. Discrete outputs (keep mask, salient audio,
anchors, merge targets) must match exactly; ratios to 1e-9; embeddings to float tolerance.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_omnizip import (
    find_runs,
    reference_audio_attention_scores,
    reference_audio_energy_scores,
    reference_compress,
    reference_pool_audio_scores,
)

import omnizip

AUDIO_ID = 151646
VIDEO_ID = 151656
PRESETS = [(0.3, 0.6), (0.4, 0.7)]


# --------------------------------------------------------------------------------------
# random cases
# --------------------------------------------------------------------------------------


@dataclass
class Case:
    embeds: torch.Tensor
    ids: torch.Tensor
    scores: torch.Tensor | None
    tokens_per_frame: object
    rho_audio: float = 0.3
    rho_video: float = 0.6
    contextual_ratio: float = 0.05
    g: int = 3
    min_ratio: float = 0.35
    max_ratio: float = 0.75
    knn: int = 5
    merge_scope: str = "global"
    label: str = ""

    def params(self) -> dict:
        return dict(
            rho_audio=self.rho_audio,
            rho_video=self.rho_video,
            contextual_ratio=self.contextual_ratio,
            g=self.g,
            min_ratio=self.min_ratio,
            max_ratio=self.max_ratio,
            knn=self.knn,
            merge_scope=self.merge_scope,
        )


def ri(gen: torch.Generator, lo: int, hi: int) -> int:
    """Random int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen).item())


def pick(gen: torch.Generator, options):
    return options[ri(gen, 0, len(options) - 1)]


def video_len(gen, P, allow_partial=False):
    n = P * ri(gen, 1, 3)
    if allow_partial and ri(gen, 0, 1):
        n = P * ri(gen, 0, 2) + ri(gen, 1, P - 1) if P > 1 else n
    return n


def audio_len(gen):
    return ri(gen, 2, 12)


def text(gen, lo=1, hi=4):
    return ("t", ri(gen, lo, hi))


def interleave(gen, n_win, P, audio_first=False):
    segs = []
    for _ in range(n_win):
        pair = [("v", video_len(gen, P)), ("a", audio_len(gen))]
        segs.extend(reversed(pair) if audio_first else pair)
    return segs


def make_layout(kind: str, gen: torch.Generator, P: int) -> list[tuple[str, int]]:
    if kind == "interleaved":
        return [text(gen), *interleave(gen, ri(gen, 1, 5), P), text(gen)]
    if kind == "many_windows":  # G > 2: step 7 runs
        return [text(gen), *interleave(gen, ri(gen, 3, 7), P), text(gen)]
    if kind == "few_windows":  # G <= 2: no step 7
        return [text(gen), *interleave(gen, ri(gen, 1, 2), P), text(gen)]
    if kind == "partial_last":
        segs = [text(gen), *interleave(gen, ri(gen, 1, 5), P)]
        # last video chunk: not a whole number of frames (maybe shorter than one frame)
        segs.append(("v", P * ri(gen, 0, 2) + ri(gen, 1, max(P - 1, 1))))
        segs.append(("a", ri(gen, 1, 3)))  # short last audio chunk
        return [*segs, text(gen)]
    if kind == "more_audio":
        segs = [text(gen), *interleave(gen, ri(gen, 1, 4), P)]
        for _ in range(ri(gen, 1, 3)):
            segs += [text(gen), ("a", audio_len(gen))]
        return [*segs, text(gen)]
    if kind == "more_video":
        segs = [text(gen), *interleave(gen, ri(gen, 1, 4), P)]
        for _ in range(ri(gen, 1, 3)):
            segs += [text(gen), ("v", video_len(gen, P, allow_partial=True))]
        return [*segs, text(gen)]
    if kind == "more_video_adjacent":  # V0 A0 V1 A1 V2 V?: trailing unguided chunk right after
        segs = [text(gen), *interleave(gen, ri(gen, 1, 4), P)]
        segs += [("v", video_len(gen, P)), text(gen)]
        return segs
    if kind == "no_audio":
        segs = [text(gen)]
        for _ in range(ri(gen, 1, 4)):
            segs += [("v", video_len(gen, P, allow_partial=True)), text(gen)]
        return segs
    if kind == "no_video":
        segs = [text(gen)]
        for _ in range(ri(gen, 1, 4)):
            segs += [("a", audio_len(gen)), text(gen)]
        return segs
    if kind == "no_text":
        return interleave(gen, ri(gen, 1, 5), P)
    if kind == "only_text":
        return [text(gen, 1, 20)]
    if kind == "single_frame":
        segs = [text(gen)]
        for _ in range(ri(gen, 1, 5)):
            segs += [("v", P), ("a", audio_len(gen))]
        return [*segs, text(gen)]
    if kind == "short_chunks":  # some chunks shorter than one frame (kept whole)
        segs = [text(gen)]
        for _ in range(ri(gen, 2, 5)):
            segs += [("v", ri(gen, 1, 3 * P)), ("a", audio_len(gen))]
        return [*segs, text(gen)]
    if kind == "audio_first":
        return [text(gen), *interleave(gen, ri(gen, 1, 5), P, audio_first=True), text(gen)]
    if kind == "two_groups":
        return [
            text(gen),
            *interleave(gen, ri(gen, 1, 3), P),
            text(gen),
            *interleave(gen, ri(gen, 1, 3), P),
            ("v", video_len(gen, P)),
            text(gen),
        ]
    if kind == "per_chunk_P":  # handled by the caller (tokens_per_frame list)
        return [text(gen), *interleave(gen, ri(gen, 2, 6), P), text(gen)]
    raise ValueError(kind)


KINDS = [
    "interleaved",
    "many_windows",
    "few_windows",
    "partial_last",
    "more_audio",
    "more_video",
    "more_video_adjacent",
    "no_audio",
    "no_video",
    "no_text",
    "only_text",
    "single_frame",
    "short_chunks",
    "audio_first",
    "two_groups",
    "per_chunk_P",
]


def build(segs, D, gen, dtype=torch.float32):
    ids = []
    for kind, n in segs:
        if kind == "t":
            ids += [ri(gen, 0, 999) for _ in range(n)]
        elif kind == "a":
            ids += [AUDIO_ID] * n
        else:
            ids += [VIDEO_ID] * n
    ids_t = torch.tensor(ids, dtype=torch.long)
    embeds = torch.randn(len(ids), D, generator=gen).to(dtype)
    return ids_t, embeds


def random_case(kind: str, seed: int, dtype=torch.float32, scope=None) -> Case:
    gen = torch.Generator().manual_seed(1000 * seed + KINDS.index(kind) if kind in KINDS else seed)
    P = pick(gen, [4, 6, 9, 4, 6, 9, 2, 3])
    D = pick(gen, [8, 16, 32])
    segs = make_layout(kind, gen, P)
    ids, embeds = build(segs, D, gen, dtype)
    ids_list = ids.tolist()
    n_vchunks = len(find_runs(ids_list, VIDEO_ID))
    n_audio = ids_list.count(AUDIO_ID)
    if kind == "per_chunk_P":
        # re-layout so that each chunk's length fits its own P
        tpf = [pick(gen, [2, 3, 4, 6, 9]) for _ in range(n_vchunks)]
        segs2, vi = [], 0
        for s in segs:
            if s[0] == "v":
                Pi = tpf[vi]
                segs2.append(
                    ("v", Pi * ri(gen, 1, 3) + (ri(gen, 0, Pi - 1) if vi == n_vchunks - 1 else 0))
                )
                vi += 1
            else:
                segs2.append(s)
        ids, embeds = build(segs2, D, gen, dtype)
        tokens_per_frame = tpf if ri(gen, 0, 1) else torch.tensor(tpf, dtype=torch.long)
    else:
        tokens_per_frame = P
    scores = torch.rand(n_audio, generator=gen) if n_audio else None
    rho_a, rho_v = pick(gen, PRESETS)
    min_r, max_r = pick(gen, [(0.35, 0.75), (0.35, 0.75), (0.35, 0.75), (0.2, 0.9), (0.5, 0.6)])
    return Case(
        embeds=embeds,
        ids=ids,
        scores=scores,
        tokens_per_frame=tokens_per_frame,
        rho_audio=rho_a,
        rho_video=rho_v,
        contextual_ratio=pick(gen, [0.05, 0.1, 0.2, 0.3]),
        g=pick(gen, [3, 3, 0, 1, 2, 15]),
        min_ratio=min_r,
        max_ratio=max_r,
        knn=pick(gen, [5, 5, 1, 2, 3, 50]),
        merge_scope=scope or "global",
        label=f"{kind}/seed{seed}",
    )


# --------------------------------------------------------------------------------------
# running both sides and comparing
# --------------------------------------------------------------------------------------


def run_core(case: Case):
    cfg = omnizip.OmniZipConfig(**case.params())
    return omnizip.compress_sequence(
        case.embeds,
        case.ids,
        case.scores,
        audio_token_id=AUDIO_ID,
        video_token_id=VIDEO_ID,
        tokens_per_frame=case.tokens_per_frame,
        config=cfg,
    )


def run_ref(case: Case):
    return reference_compress(
        case.embeds,
        case.ids,
        case.scores,
        AUDIO_ID,
        VIDEO_ID,
        case.tokens_per_frame,
        **case.params(),
    )


def describe(case: Case, ref, positions) -> str:
    ids = case.ids.tolist()
    out = []
    for p in positions[:12]:
        kind = "audio" if ids[p] == AUDIO_ID else "video" if ids[p] == VIDEO_ID else "text"
        out.append(f"pos {p} ({kind})")
    return (
        f"[{case.label}] params={case.params()} tpf={case.tokens_per_frame} "
        f"video_chunks={ref.video_chunks} audio_chunks={ref.audio_chunks} "
        f"ref r={ref.video_chunk_ratio} ref S={ref.window_audio_retention}; differing: "
        + ", ".join(out)
    )


def tolerances(dtype):
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6)
    if dtype == torch.float16:
        return dict(rtol=2e-3, atol=2e-3)
    if dtype == torch.bfloat16:
        return dict(rtol=1.6e-2, atol=1.6e-2)
    return dict(rtol=1e-7, atol=1e-9)


def check_equivalent(case: Case):
    before = (
        case.embeds.clone(),
        case.ids.clone(),
        None if case.scores is None else case.scores.clone(),
    )
    tpf_before = case.tokens_per_frame.clone() if torch.is_tensor(case.tokens_per_frame) else None
    res = run_core(case)
    ref = run_ref(case)

    # inputs never modified (algorithm §6.2)
    assert torch.equal(case.embeds, before[0])
    assert torch.equal(case.ids, before[1])
    if before[2] is not None:
        assert torch.equal(case.scores, before[2])
    if tpf_before is not None:
        assert torch.equal(case.tokens_per_frame, tpf_before)

    L = case.embeds.shape[0]
    # layout
    assert res.audio_positions.tolist() == ref.audio_positions, case.label
    assert res.video_positions.tolist() == ref.video_positions, case.label
    assert [tuple(x) for x in res.audio_chunks.tolist()] == ref.audio_chunks, case.label
    assert [tuple(x) for x in res.video_chunks.tolist()] == ref.video_chunks, case.label
    assert int(res.num_guided) == ref.num_guided, case.label

    # audio decisions
    assert res.salient.dtype == torch.bool
    assert res.salient.tolist() == ref.salient, f"salient differs {case.label}"
    assert res.anchors.tolist() == ref.anchors, f"anchors differ {case.label}"
    assert res.merge_target.tolist() == ref.merge_target, (
        f"merge_target differs {case.label}: core={res.merge_target.tolist()} "
        f"ref={ref.merge_target} anchors={ref.anchors}"
    )
    mw = res.merge_weight.double()
    assert torch.allclose(mw, torch.tensor(ref.merge_weight, dtype=torch.float64), atol=1e-5), (
        f"merge_weight differs {case.label}"
    )

    # ratios
    S = res.window_audio_retention
    assert S.dtype == torch.float64
    assert S.shape == (ref.num_guided,)
    assert torch.allclose(
        S, torch.tensor(ref.window_audio_retention, dtype=torch.float64), rtol=0, atol=1e-9
    ), f"S_i differs {case.label}"
    r = res.video_chunk_ratio
    assert r.dtype == torch.float64
    assert r.shape == (len(ref.video_chunks),)
    assert torch.allclose(
        r, torch.tensor(ref.video_chunk_ratio, dtype=torch.float64), rtol=0, atol=1e-9
    ), f"r differs {case.label}: core={r.tolist()} ref={ref.video_chunk_ratio}"

    # keep mask
    assert res.keep.dtype == torch.bool and res.keep.shape == (L,)
    if not torch.equal(res.keep.cpu(), ref.keep):
        diff = (res.keep.cpu() != ref.keep).nonzero().flatten().tolist()
        pytest.fail("keep mask differs: " + describe(case, ref, diff))

    # counts
    n_ak = sum(1 for p in ref.audio_positions if ref.keep[p])
    n_vk = sum(1 for p in ref.video_positions if ref.keep[p])
    assert res.n_audio == len(ref.audio_positions)
    assert res.n_video == len(ref.video_positions)
    assert res.n_audio_kept == n_ak
    assert res.n_video_kept == n_vk
    tot = len(ref.audio_positions) + len(ref.video_positions)
    expect_ret = 1.0 if tot == 0 else (n_ak + n_vk) / tot
    assert math.isclose(float(res.retention), expect_ret, rel_tol=1e-12, abs_tol=1e-12)
    assert isinstance(res.summary(), str)

    # embeddings
    out = res.embeds
    assert out.dtype == case.embeds.dtype and out.shape == case.embeds.shape
    assert out.data_ptr() != case.embeds.data_ptr(), "result embeds must be a new tensor"
    anchor_pos = {ref.audio_positions[a] for a in ref.anchors}
    other = [p for p in range(L) if p not in anchor_pos]
    if other:
        assert torch.equal(out[other], case.embeds[other]), (
            f"embeds changed outside anchors {case.label}"
        )
    if anchor_pos:
        ap = sorted(anchor_pos)
        torch.testing.assert_close(
            out[ap].float(),
            ref.embeds[ap].float(),
            **tolerances(case.embeds.dtype),
            msg=lambda m: f"anchor embeds differ {case.label}: {m}",
        )
    return res, ref


# --------------------------------------------------------------------------------------
# the reference itself: hand-worked examples and invariants (no core needed)
# --------------------------------------------------------------------------------------


def assert_close_list(got, want, tol=1e-9):
    assert len(got) == len(want), (got, want)
    for x, y in zip(got, want, strict=True):
        assert math.isclose(x, y, rel_tol=0, abs_tol=tol), (got, want)


def _seq(segs, rows_by_pos, D):
    ids = []
    for kind, n in segs:
        ids += {"t": [7], "a": [AUDIO_ID], "v": [VIDEO_ID]}[kind] * n
    E = torch.zeros(len(ids), D)
    for p, row in rows_by_pos.items():
        E[p] = torch.tensor(row, dtype=torch.float32)
    return torch.tensor(ids), E


def hand_case_two_windows():
    # layout: T T | V0: 8 (2 frames of P=4) | A0: 4 | V1: 4 (1 frame) | A1: 6 | T T
    segs = [("t", 2), ("v", 8), ("a", 4), ("v", 4), ("a", 6), ("t", 2)]
    e1, e2, e3, e4 = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]
    rows = {
        0: [0.3, 0.1, 0.2, 0.5],
        1: [0.7, 0.2, 0.1, 0.9],
        # V0 frame 0 (positions 2..5): e1, e1+e2, e2, e3
        2: e1,
        3: [1, 1, 0, 0],
        4: e2,
        5: e3,
        # V0 frame 1 (6..9): e1 (cos 1), e4 (cos 0), -e2 (cos -1), 2*e3 (cos 1)
        6: e1,
        7: e4,
        8: [0, -1, 0, 0],
        9: [0, 0, 2, 0],
        # A0: audio 0..3 (positions 10..13)
        10: [0.5, 0.5, 0.1, 0.0],
        11: [0, 1, 0, 0],
        12: [0.2, 0.3, 0.4, 0.1],
        13: [2, 0, 0, 0],
        # V1 (14..17): e4, e1, e1+e2, e2
        14: e4,
        15: e1,
        16: [1, 1, 0, 0],
        17: e2,
        # A1: audio 4..9 (positions 18..23)
        18: [0.1, 0.1, 0.1, 0.1],
        19: [0.3, 0.0, 0.3, 0.0],
        20: [0.9, 0.1, 0.0, 0.0],
        21: [0.0, 0.2, 0.0, 0.7],
        22: [0, 0, 1, 1],
        23: [0.4, 0.4, 0.4, 0.4],
        24: [1, 2, 3, 4],
        25: [4, 3, 2, 1],
    }
    ids, E = _seq(segs, rows, 4)
    # audio 1, 3, 8 are the three lowest -> non-salient (n_dom = round(0.7 * 10) = 7)
    scores = torch.tensor([9.0, 1.0, 8.0, 2.0, 7.0, 6.0, 5.0, 4.0, 0.5, 3.0])
    return ids, E, scores


def test_reference_hand_worked_two_windows():
    ids, E, scores = hand_case_two_windows()
    ref = reference_compress(
        E,
        ids,
        scores,
        AUDIO_ID,
        VIDEO_ID,
        4,
        rho_audio=0.3,
        rho_video=0.6,
        contextual_ratio=0.1,
        g=3,
        knn=2,
    )
    assert ref.num_guided == 2
    assert ref.salient == [True, False, True, False, True, True, True, True, False, True]
    # R = [1, 3, 8], n_ctx = round(0.1 * 10) = 1, step = 3 -> anchors [1], pool [3, 8]
    assert ref.anchors == [1]
    assert ref.merge_target == [-1, -1, -1, 1, -1, -1, -1, -1, 1, -1]
    # merge scores: audio 3 = 2*e1 best matches e1 (norm 1); audio 8 = e3+e4 best matches 2*e3
    s3 = (2 / (2 + 1e-6)) * (1 / (1 + 1e-6))
    s8 = (1 / (math.sqrt(2) + 1e-6)) * (2 / (2 + 1e-6))
    assert math.isclose(ref.merge_score[3], s3, rel_tol=1e-12)
    assert math.isclose(ref.merge_score[8], s8, rel_tol=1e-12)
    w3 = math.exp(s3) / (math.exp(s3) + math.exp(s8))
    w8 = 1 - w3
    assert math.isclose(ref.merge_weight[3], w3, rel_tol=1e-12)
    assert math.isclose(ref.merge_weight[8], w8, rel_tol=1e-12)
    a1, a3, a8 = E[11].double(), E[13].double(), E[22].double()
    merged = (a1 + w3 * a3 + w8 * a8) / (1 + w3 + w8)
    assert torch.allclose(ref.embeds[11].double(), merged, atol=1e-6)
    # S_0 = 3/4 (audio 0, 1(anchor), 2 kept; 3 dropped), S_1 = 5/6 (audio 8 dropped)
    assert ref.window_audio_retention == [0.75, 5 / 6]
    b0 = 0.75 - 0.4 * 0.75
    b1 = 0.75 - 0.4 * (5 / 6)
    assert_close_list(ref.video_chunk_ratio, [b0, b1])
    assert ref.frame_keep_count == [2, 2]  # int(4 * 0.55) = 2, int(4 * 0.5833) = 2
    expect = [True] * 26
    # V0 frame 0: densest e1+e2 (pos 3) and isolated e3 (pos 5) kept; e1, e2 dropped
    expect[2] = expect[4] = False
    # V0 frame 1: lowest cosine to frame 0 at local 2 (-1) and local 1 (0): pos 8, 7 kept
    expect[6] = expect[9] = False
    # A0: audio 3 (pos 13) dropped; V1: e4 (pos 14) and e1+e2 (pos 16) kept
    expect[13] = False
    expect[15] = expect[17] = False
    # A1: audio 8 (pos 22) dropped
    expect[22] = False
    assert ref.keep.tolist() == expect


def _three_plus_window_case(kept_per_window, n_video=8, P=4, extra_unguided=0, seed=0):
    """Windows of n_video video tokens and 4 audio tokens; the audio scores make exactly
    kept_per_window[i] tokens of window i salient (contextual ratio 0: no anchors)."""
    gen = torch.Generator().manual_seed(seed)
    segs = [("t", 1)]
    for _ in kept_per_window:
        segs += [("v", n_video), ("a", 4)]
    if extra_unguided:
        segs += [("t", 1), ("v", extra_unguided)]
    segs += [("t", 1)]
    ids, E = build(segs, 8, gen)
    scores = []
    for k in kept_per_window:
        scores += [10.0 + x for x in range(k)] + [0.1 * x for x in range(4 - k)]
    n_dom = sum(kept_per_window)
    n_a = 4 * len(kept_per_window)
    rho_a = 1 - n_dom / n_a
    return ids, E, torch.tensor(scores), rho_a


def test_reference_hand_worked_step7_basic():
    ids, E, scores, rho_a = _three_plus_window_case([4, 2, 0])
    ref = reference_compress(
        E, ids, scores, AUDIO_ID, VIDEO_ID, 4, rho_audio=rho_a, rho_video=0.6, contextual_ratio=0.0
    )
    assert ref.window_audio_retention == [1.0, 0.5, 0.0]
    # b = [0.35, 0.55, 0.75]; T_g = 14.4; B = 13.2; frozen 0 and 2 (F = 8.8); O = 4.4;
    # r_1 = 0.55 * 5.6 / 4.4 = 0.7; D = 0
    assert_close_list(ref.video_chunk_ratio, [0.35, 0.7, 0.75])
    assert ref.frame_keep_count == [2, 1, 1]
    for (start, length), n_keep in zip(ref.video_chunks, ref.frame_keep_count, strict=True):
        for f in range(length // 4):
            assert sum(ref.keep[start + 4 * f : start + 4 * f + 4].tolist()) == n_keep


def test_reference_hand_worked_step7_second_pass():
    ids, E, scores, rho_a = _three_plus_window_case([4, 3, 1, 0])
    ref = reference_compress(
        E,
        ids,
        scores,
        AUDIO_ID,
        VIDEO_ID,
        4,
        rho_audio=rho_a,
        rho_video=0.6325,
        contextual_ratio=0.0,
    )
    # b = [0.35, 0.45, 0.65, 0.75]; T_g = 20.24; F = 8.8; O = 8.8;
    # first pass: 0.585, 0.845 -> 0.75; D = 0.76 -> +0.0475: 0.6325, 0.75
    assert_close_list(ref.video_chunk_ratio, [0.35, 0.6325, 0.75, 0.75])


def test_reference_hand_worked_step7_same_window_counted_once():
    # all windows equal: b = 0.55 everywhere; min and max are both window 0 (counted once)
    ids, E, scores, rho_a = _three_plus_window_case([2, 2, 2])
    ref = reference_compress(
        E, ids, scores, AUDIO_ID, VIDEO_ID, 4, rho_audio=rho_a, rho_video=0.6, contextual_ratio=0.0
    )
    # T_g = 14.4, F = 4.4, O = 8.8 -> others 0.55 * 10 / 8.8 = 0.625 (0.35 if counted twice)
    assert_close_list(ref.video_chunk_ratio, [0.55, 0.625, 0.625])


def test_reference_hand_worked_unguided():
    # 3 guided windows + one unguided chunk of 8: T_g = 0.6*32 - 0.6*8 = 14.4 as before
    ids, E, scores, rho_a = _three_plus_window_case([4, 2, 0], extra_unguided=8)
    ref = reference_compress(
        E, ids, scores, AUDIO_ID, VIDEO_ID, 4, rho_audio=rho_a, rho_video=0.6, contextual_ratio=0.0
    )
    assert_close_list(ref.video_chunk_ratio, [0.35, 0.7, 0.75, 0.6])


@pytest.mark.parametrize("seed", range(12))
def test_reference_invariants(seed):
    kind = KINDS[seed % len(KINDS)]
    case = random_case(kind, seed + 500)
    ref = run_ref(case)
    n_a = len(ref.audio_positions)
    n_dom = min(max(round((1 - case.rho_audio) * n_a), 0), n_a)
    kept_audio = sum(1 for p in ref.audio_positions if ref.keep[p])
    assert sum(ref.salient) == n_dom
    assert kept_audio == n_dom + len(ref.anchors)
    # merged tokens: never kept, at most g per anchor
    for a in ref.anchors:
        assert sum(1 for t in ref.merge_target if t == a) <= case.g
    for i, t in enumerate(ref.merge_target):
        if t >= 0:
            assert not ref.keep[ref.audio_positions[i]]
    tpf = case.tokens_per_frame
    for ci, (start, length) in enumerate(ref.video_chunks):
        P = tpf if isinstance(tpf, int) else int(list(tpf)[ci])
        F = length // P
        kept = ref.keep[start : start + length].tolist()
        if F == 0:
            assert all(kept)
            continue
        n_keep = min(int(P * (1 - ref.video_chunk_ratio[ci])), P)
        for f in range(F):
            assert sum(kept[f * P : (f + 1) * P]) == n_keep
        assert all(kept[F * P :])
    for p in range(len(case.ids)):
        if int(case.ids[p]) not in (AUDIO_ID, VIDEO_ID):
            assert ref.keep[p]


# --------------------------------------------------------------------------------------
# equivalence: core vs reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", KINDS)
def test_equivalence_layouts(kind, seed):
    check_equivalent(random_case(kind, seed))


@pytest.mark.parametrize("seed", range(48))
def test_equivalence_random_sweep(seed):
    gen = torch.Generator().manual_seed(77_000 + seed)
    kind = pick(gen, KINDS)
    check_equivalent(random_case(kind, 10_000 + seed))


@pytest.mark.parametrize("seed", range(16))
def test_equivalence_merge_scope_window(seed):
    kinds = [
        "interleaved",
        "many_windows",
        "more_audio",
        "more_video",
        "audio_first",
        "no_video",
        "two_groups",
        "partial_last",
    ]
    case = random_case(kinds[seed % len(kinds)], 20_000 + seed, scope="window")
    case.contextual_ratio = max(case.contextual_ratio, 0.1)
    case.g = max(case.g, 2)
    check_equivalent(case)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_equivalence_low_precision(dtype, seed):
    kinds = ["interleaved", "many_windows", "partial_last", "more_video"]
    case = random_case(kinds[seed], 30_000 + seed, dtype=dtype)
    assert case.embeds.dtype == dtype
    check_equivalent(case)


def test_only_text_is_noop():
    gen = torch.Generator().manual_seed(5)
    ids, E = build([("t", 17)], 16, gen)
    case = Case(embeds=E, ids=ids, scores=None, tokens_per_frame=4, label="only_text")
    res, _ = check_equivalent(case)
    assert res.keep.all()
    assert torch.equal(res.embeds, E)
    assert res.salient.numel() == 0 and res.anchors.numel() == 0
    assert res.num_guided == 0 and res.video_chunk_ratio.numel() == 0
    assert float(res.retention) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_equivalence_extreme_configs(seed):
    gen = torch.Generator().manual_seed(40_000 + seed)
    kind = pick(gen, ["interleaved", "many_windows", "more_video", "partial_last"])
    case = random_case(kind, 40_000 + seed)
    configs = [
        dict(rho_audio=0.0, rho_video=0.0),  # everything audio salient; unguided keep all
        dict(rho_audio=0.95, rho_video=0.95, contextual_ratio=0.5, g=15),
        dict(min_ratio=0.5, max_ratio=0.5),  # r_min == r_max
        dict(min_ratio=0.0, max_ratio=0.99, knn=1),
        dict(contextual_ratio=0.0),  # no anchors
        dict(contextual_ratio=0.9, g=1, knn=100),  # n_ctx capped by |R|
    ]
    for k, v in configs[seed].items():
        setattr(case, k, v)
    check_equivalent(case)


@pytest.mark.parametrize("P", [1, 2, 3])
def test_equivalence_tiny_frames(P):
    gen = torch.Generator().manual_seed(50 + P)
    segs = [("t", 2), *interleave(gen, 4, P), ("v", P * 3), ("t", 1)]
    ids, E = build(segs, 8, gen)
    n_a = ids.tolist().count(AUDIO_ID)
    case = Case(
        embeds=E,
        ids=ids,
        scores=torch.rand(n_a, generator=gen),
        tokens_per_frame=P,
        contextual_ratio=0.2,
        label=f"tiny P={P}",
    )
    check_equivalent(case)


def test_equivalence_long_sequence():
    """A bigger case (more tokens per frame, longer audio) so blocked code paths are used."""
    gen = torch.Generator().manual_seed(99)
    P = 36
    segs = [("t", 5)]
    for _ in range(6):
        segs += [("v", 2 * P), ("a", 50)]
    segs += [("v", P + 7), ("t", 5)]
    ids, E = build(segs, 64, gen)
    n_a = ids.tolist().count(AUDIO_ID)
    case = Case(
        embeds=E,
        ids=ids,
        scores=torch.rand(n_a, generator=gen),
        tokens_per_frame=P,
        contextual_ratio=0.1,
        g=3,
        label="long",
    )
    check_equivalent(case)


# --------------------------------------------------------------------------------------
# tie rules: exact duplicates and exactly representable cosines
# --------------------------------------------------------------------------------------


def lattice_rows(gen, n, D):
    """Rows with four entries +-1 and the rest 0: norm exactly 2, every cosine between two
    rows an exact multiple of 0.25 in any float format, so ties are exact on both sides."""
    rows = torch.zeros(n, D)
    for i in range(n):
        idx = torch.randperm(D, generator=gen)[:4]
        signs = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
        rows[i, idx] = signs
    return rows


def tie_case(seed: int) -> Case:
    gen = torch.Generator().manual_seed(60_000 + seed)
    P = pick(gen, [4, 6, 9])
    D = 8
    n_win = ri(gen, 1, 6)
    segs = [text(gen), *interleave(gen, n_win, P)]
    if ri(gen, 0, 1):
        segs += [text(gen), ("v", video_len(gen, P, allow_partial=True))]
    segs.append(text(gen))
    ids, E = build(segs, D, gen)
    ids_l = ids.tolist()
    # video: lattice rows, with duplicated frames, duplicated positions, duplicated tokens
    for start, length in find_runs(ids_l, VIDEO_ID):
        E[start : start + length] = lattice_rows(gen, length, D)
        F = length // P
        for f in range(1, F):
            if ri(gen, 0, 2) == 0:  # exact duplicate of the previous frame
                E[start + f * P : start + (f + 1) * P] = E[start + (f - 1) * P : start + f * P]
        if P >= 2 and ri(gen, 0, 1):  # position q mirrors position p in every frame
            p, q = 0, ri(gen, 1, P - 1)
            for f in range(F):
                E[start + f * P + q] = E[start + f * P + p]
        for f in range(F):  # a duplicated token inside a frame
            if ri(gen, 0, 1):
                i, j = ri(gen, 0, P - 1), ri(gen, 0, P - 1)
                E[start + f * P + j] = E[start + f * P + i]
    # audio: drawn from a small set of random vectors -> identical pool tokens and anchors
    a_pos = [p for p, t in enumerate(ids_l) if t == AUDIO_ID]
    base = torch.randn(3, D, generator=gen)
    for p in a_pos:
        E[p] = base[ri(gen, 0, 2)]
    # quantised scores: many exact ties across the salient boundary
    scores = torch.randint(0, 3, (len(a_pos),), generator=gen).float() if a_pos else None
    rho_a, rho_v = pick(gen, PRESETS)
    return Case(
        embeds=E,
        ids=ids,
        scores=scores,
        tokens_per_frame=P,
        rho_audio=rho_a,
        rho_video=rho_v,
        contextual_ratio=pick(gen, [0.1, 0.2, 0.3]),
        g=pick(gen, [1, 2, 3]),
        knn=pick(gen, [1, 2, 5]),
        merge_scope=pick(gen, ["global", "window"]),
        label=f"ties/seed{seed}",
    )


@pytest.mark.parametrize("seed", range(16))
def test_equivalence_ties(seed):
    check_equivalent(tie_case(seed))


def test_ties_duplicate_frames_reference_rules():
    """A chunk whose odd frame duplicates the even one: every cosine is exactly 1, so the
    temporal step keeps the first n_keep positions (lower index first)."""
    P = 6
    gen = torch.Generator().manual_seed(3)
    ids, E = build([("t", 1), ("v", 2 * P), ("t", 1)], 8, gen)
    E[1 : 1 + P] = lattice_rows(gen, P, 8)
    E[1 + P : 1 + 2 * P] = E[1 : 1 + P]
    ref = reference_compress(E, ids, None, AUDIO_ID, VIDEO_ID, P, rho_video=0.6)
    n_keep = int(P * (1 - 0.6))
    assert ref.keep[1 + P : 1 + 2 * P].tolist() == [True] * n_keep + [False] * (P - n_keep)
    check_equivalent(Case(embeds=E, ids=ids, scores=None, tokens_per_frame=P, label="dup-frames"))


def test_ties_identical_frame_tokens():
    """All tokens of a frame identical: every rho*delta is equal, the lowest positions win."""
    P = 6
    gen = torch.Generator().manual_seed(4)
    ids, E = build([("t", 1), ("v", P), ("t", 1)], 8, gen)
    E[1 : 1 + P] = lattice_rows(gen, 1, 8).expand(P, 8)
    ref = reference_compress(E, ids, None, AUDIO_ID, VIDEO_ID, P, rho_video=0.6)
    n_keep = int(P * (1 - 0.6))
    assert ref.keep[1 : 1 + P].tolist() == [True] * n_keep + [False] * (P - n_keep)
    check_equivalent(
        Case(embeds=E, ids=ids, scores=None, tokens_per_frame=P, label="identical-frame")
    )


@pytest.mark.parametrize("seed", range(8))
def test_dpc_knn1_mutual_nearest_neighbours_tie(seed):
    """knn=1: two mutual nearest neighbours have exactly the same density rho = exp(-d_01)
    (d is symmetric: d_ij = 1 - x̂_i . x̂_j). Neither is strictly denser, so both get
    delta = max_j d_ij (algorithm §4 step 8) and, being a tight pair far from everything else,
    both are the top-2 of rho * delta. A distance matrix that is not bitwise symmetric
    (e.g. scaling the raw dot products by 1/||x_i|| and 1/||x_j|| in different orders)
    makes one of them 'strictly denser' by a rounding error and drops the other."""
    gen = torch.Generator().manual_seed(700 + seed)
    P, D = 6, 16
    u = torch.randn(D, generator=gen)
    frame = torch.randn(P, D, generator=gen) * 3
    frame[0] = u + 0.05 * torch.randn(D, generator=gen)
    frame[1] = u + 0.05 * torch.randn(D, generator=gen)
    E = torch.cat([torch.randn(1, D, generator=gen), frame, torch.randn(1, D, generator=gen)])
    ids = torch.tensor([5] + [VIDEO_ID] * P + [5])
    ref = reference_compress(E, ids, None, AUDIO_ID, VIDEO_ID, P, rho_video=0.6, knn=1)
    assert ref.keep[1 : 1 + P].tolist() == [True, True, False, False, False, False]
    check_equivalent(
        Case(embeds=E, ids=ids, scores=None, tokens_per_frame=P, knn=1, label=f"mutual-nn/{seed}")
    )


def test_ties_salient_scores_all_equal():
    """Equal audio scores: the lowest audio indices are salient; identical audio embeddings:
    assignment goes to the earliest anchor and top-g to the lowest indices."""
    gen = torch.Generator().manual_seed(8)
    segs = [("t", 1), ("v", 8), ("a", 10), ("v", 8), ("a", 10), ("t", 1)]
    ids, E = build(segs, 8, gen)
    a_pos = [p for p, t in enumerate(ids.tolist()) if t == AUDIO_ID]
    E[a_pos] = torch.randn(1, 8, generator=gen).expand(len(a_pos), 8)
    scores = torch.ones(len(a_pos))
    case = Case(
        embeds=E,
        ids=ids,
        scores=scores,
        tokens_per_frame=4,
        contextual_ratio=0.1,
        g=2,
        label="equal-scores",
    )
    ref = run_ref(case)
    n_dom = round(0.7 * 20)
    assert ref.salient == [True] * n_dom + [False] * (20 - n_dom)
    # R = 14..19, n_ctx = 2, step 3: anchors 14, 17; all pool tokens go to anchor 14
    assert ref.anchors == [14, 17]
    assert ref.merge_target[15] == 14 and ref.merge_target[16] == 14
    assert ref.merge_target[18] == -1 and ref.merge_target[19] == -1
    check_equivalent(case)


# --------------------------------------------------------------------------------------
# algorithm §3: audio scores
# --------------------------------------------------------------------------------------


def qk(T, H, Dh, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(T, H, Dh, generator=gen) * 1.5
    k = torch.randn(T, H, Dh, generator=gen) * 1.5
    return q, k


def _check_scores(got, want, T):
    assert got.dtype == torch.float32 and got.shape == (T,)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("T,H,Dh", [(1, 1, 4), (37, 3, 8), (257, 2, 16)])
def test_audio_attention_scores_global_single_stream(T, H, Dh):
    q, k = qk(T, H, Dh, T)
    qc, kc = q.clone(), k.clone()
    got = omnizip.audio_attention_scores(q, k)
    want = reference_audio_attention_scores(q, k)
    _check_scores(got, want, T)
    # every query row sums to one: total attention = H * T
    assert math.isclose(float(got.double().sum()), H * T, rel_tol=1e-5)
    assert torch.equal(q, qc) and torch.equal(k, kc)


def test_audio_attention_scores_global_streams():
    lengths = [10, 7, 1, 25]
    T = sum(lengths)
    q, k = qk(T, 4, 8, 1)
    got = omnizip.audio_attention_scores(q, k, scope="global", stream_lengths=lengths)
    want = reference_audio_attention_scores(q, k, stream_lengths=lengths)
    _check_scores(got, want, T)
    # each stream's total is H * T_s: nothing leaks between streams
    start = 0
    for n in lengths:
        assert math.isclose(float(got[start : start + n].double().sum()), 4 * n, rel_tol=1e-5)
        start += n
    # a tensor of stream lengths behaves the same
    got_t = omnizip.audio_attention_scores(
        q, k, scope="global", stream_lengths=torch.tensor(lengths)
    )
    torch.testing.assert_close(got_t, got)


def test_audio_attention_scores_windowed():
    T = 61
    q, k = qk(T, 2, 8, 2)
    cu = torch.tensor([0, 8, 16, 20, 40, 61], dtype=torch.int32)
    got = omnizip.audio_attention_scores(q, k, scope="windowed", cu_seqlens=cu)
    want = reference_audio_attention_scores(q, k, scope="windowed", cu_seqlens=cu.tolist())
    _check_scores(got, want, T)
    glob = reference_audio_attention_scores(q, k)
    assert not torch.allclose(want, glob, rtol=1e-3)  # the scope matters


@pytest.mark.parametrize("scope", ["global", "windowed"])
def test_audio_attention_scores_custom_scale(scope):
    T = 45
    q, k = qk(T, 3, 8, 3)
    cu = torch.tensor([0, 20, 45], dtype=torch.int32)
    kw = dict(cu_seqlens=cu) if scope == "windowed" else {}
    got = omnizip.audio_attention_scores(q, k, scope=scope, scale=0.37, **kw)
    want = reference_audio_attention_scores(q, k, scope=scope, scale=0.37, cu_seqlens=cu.tolist())
    _check_scores(got, want, T)
    default = omnizip.audio_attention_scores(q, k, scope=scope, **kw)
    assert not torch.allclose(default, got, rtol=1e-3)


def test_audio_attention_scores_half_inputs():
    T = 50
    q, k = qk(T, 2, 8, 4)
    qh, kh = q.half(), k.half()
    got = omnizip.audio_attention_scores(qh, kh)
    want = reference_audio_attention_scores(qh, kh)  # on the exact upcast of the fp16 values
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("lengths", [None, [7], [7, 10, 5], [1, 2, 3, 9], [0, 4]])
def test_pool_audio_scores(lengths):
    gen = torch.Generator().manual_seed(11)
    T = 13 if lengths is None else sum(lengths)
    frames = torch.rand(T, generator=gen)
    fc = frames.clone()
    got = omnizip.pool_audio_scores(frames, stream_lengths=lengths)
    want = reference_pool_audio_scores(frames, stream_lengths=lengths)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(frames, fc)
    # pool=1: frames map 1:1 to tokens (Qwen3-Omni)
    same = omnizip.pool_audio_scores(frames, stream_lengths=lengths, pool=1)
    torch.testing.assert_close(same.double(), frames.double())


def test_pool_audio_scores_plain_loop_pairs():
    frames = torch.tensor([1.0, 3.0, 5.0, 7.0, 100.0, 2.0, 4.0, 6.0])
    got = omnizip.pool_audio_scores(frames, stream_lengths=[5, 3])
    # stream 1: (1,3) (5,7), frame 100 dropped; stream 2: (2,4), frame 6 dropped
    assert got.tolist() == [2.0, 6.0, 3.0]


def test_audio_energy_scores():
    gen = torch.Generator().manual_seed(12)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = (torch.randn(23, 16, generator=gen) * 3).to(dtype)
        ac = a.clone()
        got = omnizip.audio_energy_scores(a)
        assert got.dtype == torch.float32 and got.shape == (23,)
        want = reference_audio_energy_scores(a)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, ac)
    assert omnizip.audio_energy_scores(torch.zeros(0, 16)).shape == (0,)
