"""Plain, independent reference of causal OmniZip (docs/algorithm.md section 9).

A second reading of that section (and of section 4 for what it leaves unchanged), sharing no
code with the package. Naive on purpose: Python loops over windows, tokens and frames, Python
floats for every number that feeds a decision. The budget shift of rule 7 is solved exactly
(the piecewise-linear equation), not by bisection as the package does, and the causal audio
scores are dense softmaxes over each span.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from reference_omnizip import (
    clamp,
    dot,
    dpc_knn_keep,
    find_runs,
    highest_first,
    normalize_merge,
    temporal_keep,
)

BELOW_ONE = math.nextafter(1.0, 0.0)


@dataclass
class CausalReference:
    keep: torch.Tensor  # bool [L]
    embeds: torch.Tensor  # [L, D] input dtype
    salient: list[bool]
    anchors: list[int]
    merge_target: list[int]
    merge_weight: list[float]
    window_audio_retention: list[float]  # S_w, guided windows
    video_chunk_ratio: list[float]


def solve_shift(base: list[float], sizes: list[float], target: float, lo: float, hi: float) -> float:
    """The λ with sum_i clamp(b_i + λ, lo, hi) * n_i == target, from the breakpoints of the
    piecewise-linear, non-decreasing left side (the smallest such λ)."""
    def total(shift: float) -> float:
        return sum(clamp(b + shift, lo, hi) * n for b, n in zip(base, sizes, strict=True))

    points = sorted({lo - b for b in base} | {hi - b for b in base})
    if total(points[0]) >= target:
        return points[0]
    for left, right in itertools.pairwise(points):
        f_left, f_right = total(left), total(right)
        if f_right >= target:
            if f_right == f_left:
                return right
            return left + (target - f_left) * (right - left) / (f_right - f_left)
    return points[-1]


def video_streams(ids: list[int], video_chunks, audio_id: int, p_of_chunk: list[int]) -> list[int]:
    """Stream id of each video chunk: the next chunk continues a stream when only audio
    tokens lie between them and P is the same."""
    out = []
    for ci, (start, _length) in enumerate(video_chunks):
        if ci == 0:
            out.append(0)
            continue
        prev_start, prev_len = video_chunks[ci - 1]
        between = ids[prev_start + prev_len : start]
        same = all(t == audio_id for t in between) and p_of_chunk[ci] == p_of_chunk[ci - 1]
        out.append(out[-1] if same else out[-1] + 1)
    return out


def reference_causal_compress(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    audio_id: int,
    video_id: int,
    tokens_per_frame,
    *,
    rho_audio: float,
    rho_video: float,
    contextual_ratio: float,
    g: int,
    min_ratio: float,
    max_ratio: float,
    knn: int,
    merge_scope: str,
    lookback: int,
    frame_parity: str = "chunk",
    merge_anchors: bool = True,
    dynamic_ratios: bool = True,
) -> CausalReference:
    K = lookback
    ids = [int(x) for x in input_ids.tolist()]
    E = embeds.detach().to(torch.float64).tolist()
    audio_chunks = find_runs(ids, audio_id)
    video_chunks = find_runs(ids, video_id)
    n, m = len(audio_chunks), len(video_chunks)
    G = min(m, n)
    P_of = ([tokens_per_frame] * m if isinstance(tokens_per_frame, int)
            else [int(x) for x in tokens_per_frame])
    audio_pos = [p for p in range(len(ids)) if ids[p] == audio_id]
    video_pos = [p for p in range(len(ids)) if ids[p] == video_id]
    # audio / video token indices of each chunk (window index = chunk index)
    audio_of, first = [], 0
    for _, length in audio_chunks:
        audio_of.append(list(range(first, first + length)))
        first += length
    video_of, first = [], 0
    for _, length in video_chunks:
        video_of.append(list(range(first, first + length)))
        first += length
    scores = [] if audio_scores is None else [float(s) for s in audio_scores.double().tolist()]
    a = [E[p] for p in audio_pos]
    v = [E[p] for p in video_pos]
    N_a = len(audio_pos)

    # Rule 1: rank inside the span of the window's audio chunk.
    salient = [False] * N_a
    for w in range(n):
        span = [t for i in range(max(0, w - K + 1), w + 1) for t in audio_of[i]]
        n_sal = int(clamp(round((1 - rho_audio) * len(span)), 0, len(span)))
        top = {span[j] for j in highest_first([scores[t] for t in span], n_sal)}
        for t in audio_of[w]:
            salient[t] = t in top

    # Rule 2: running anchor count, stride inside the window.
    anchors_of, pool_of, seen = [], [], 0
    for w in range(n):
        before, seen = seen, seen + len(audio_of[w])
        want = round(contextual_ratio * seen) - round(contextual_ratio * before)
        rest = [t for t in audio_of[w] if not salient[t]]
        if g > 0 and rest and want > 0:
            n_ctx = min(want, len(rest))
            step = max(1, len(rest) // n_ctx)
            chosen = [rest[k * step] for k in range(n_ctx)]
            anchors_of.append(chosen)
            pool_of.append([t for t in rest if t not in chosen])
        else:
            anchors_of.append([])
            pool_of.append([])
    anchors = sorted(t for w in anchors_of for t in w)

    # Rules 3-4: own-window anchor, merge score against the span's video.
    a_hat = [normalize_merge(r) for r in a]
    v_hat = [normalize_merge(r) for r in v]
    merge_target, merge_weight = [-1] * N_a, [0.0] * N_a
    merged_rows: dict[int, list[float]] = {}
    for w in range(n):
        if not (anchors_of[w] and pool_of[w] and merge_anchors):
            continue
        assigned = {an: [] for an in anchors_of[w]}
        score = {}
        for p in pool_of[w]:
            best, best_cos = anchors_of[w][0], dot(a_hat[p], a_hat[anchors_of[w][0]])
            for an in anchors_of[w][1:]:
                cs = dot(a_hat[p], a_hat[an])
                if cs > best_cos:
                    best, best_cos = an, cs
            assigned[best].append(p)
            if merge_scope == "global":
                columns = [j for i in range(max(0, w - K + 1), w + 1) if i < m for j in video_of[i]]
            else:
                columns = video_of[w] if w < G else []
            score[p] = max(dot(a_hat[p], v_hat[j]) for j in columns) if columns else best_cos
        for an, members in assigned.items():
            chosen = [members[j] for j in highest_first([score[p] for p in members], g)]
            if not chosen:
                continue
            top = max(score[p] for p in chosen)
            ex = [math.exp(score[p] - top) for p in chosen]
            weights = [x / sum(ex) for x in ex]
            row = list(a[an])
            for wm, p in zip(weights, chosen, strict=True):
                row = [x + wm * y for x, y in zip(row, a[p], strict=True)]
                merge_target[p], merge_weight[p] = an, wm
            merged_rows[an] = [x / (1.0 + sum(weights)) for x in row]
    audio_kept = [salient[t] or t in set(anchors) for t in range(N_a)]

    # Rules 5-7.
    S = [sum(audio_kept[t] for t in audio_of[w]) / len(audio_of[w]) for w in range(G)]
    b = [clamp(max_ratio - (max_ratio - min_ratio) * s, min_ratio, max_ratio) for s in S]
    ratio = [rho_video] * m
    for w in range(G if dynamic_ratios else 0):
        span = [i for i in range(max(0, w - K + 1), w + 1) if i < G]
        if len(span) <= 2:
            ratio[w] = b[w]
            continue
        sizes = [float(len(video_of[i])) for i in span]
        target = rho_video * sum(sizes)
        inside = min_ratio * sum(sizes) <= target <= max_ratio * sum(sizes)
        lo, hi = (min_ratio, max_ratio) if inside else (0.0, BELOW_ONE)
        shift = solve_shift([b[i] for i in span], sizes, target, lo, hi)
        ratio[w] = clamp(round((b[w] + shift) * 2**40) / 2**40, lo, hi)  # snapped to 2**-40

    # Rule 8: ISTC per chunk; parity per chunk or along the stream.
    keep = [True] * len(ids)
    for t, p in enumerate(audio_pos):
        keep[p] = audio_kept[t]
    streams = video_streams(ids, video_chunks, audio_id, P_of)
    order_in_stream: dict[int, int] = {}
    previous_frame: dict[int, list[list[float]]] = {}
    for ci, (start, length) in enumerate(video_chunks):
        P = P_of[ci]
        n_keep = int(P * (1 - ratio[ci]))
        for f in range(length // P):
            pos = list(range(start + f * P, start + (f + 1) * P))
            rows = [E[p] for p in pos]
            if frame_parity == "stream":
                order = order_in_stream.get(streams[ci], 0)
                order_in_stream[streams[ci]] = order + 1
                prev = previous_frame.get(streams[ci])
                previous_frame[streams[ci]] = rows
            else:
                order, prev = f, [E[p - P] for p in pos]
            kept = dpc_knn_keep(rows, n_keep, knn) if order % 2 == 0 else temporal_keep(prev, rows, n_keep)
            for j, p in enumerate(pos):
                keep[p] = j in set(kept)

    out = embeds.detach().clone()
    for an, row in merged_rows.items():
        out[audio_pos[an]] = torch.tensor(row, dtype=torch.float64).to(embeds.dtype)
    return CausalReference(
        keep=torch.tensor(keep), embeds=out, salient=salient, anchors=anchors,
        merge_target=merge_target, merge_weight=merge_weight, window_audio_retention=S,
        video_chunk_ratio=ratio,
    )


MASK64 = (1 << 64) - 1


def reference_counter_uniform(seed: int, index: int) -> float:
    """splitmix64 of ``seed + (index + 1) * 0x9E3779B97F4A7C15`` (Python ints mod 2**64),
    top 53 bits as a float in [0, 1) (docs/algorithm.md section 9, "Ratios")."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def dense_causal_scores(q, k, bounds, lookback, streams=None, scale=None):
    """The ``"causal"`` score scope written out: for encoder window e, the span from window
    max(first window of e's stream, e - L + 1) to e; softmax of every query of the span over
    the span's keys (float64), summed over heads and queries; window e's columns kept."""
    total = q.shape[0]
    stream_starts, start = [0], 0
    for n in streams or [total]:
        start += n
        stream_starts.append(start)
    out = torch.zeros(total, dtype=torch.float64)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    for e in range(len(bounds) - 1):
        stream_start = max(s for s in stream_starts if s <= bounds[e])
        first = e
        while first > 0 and e - (first - 1) < lookback and bounds[first - 1] >= stream_start:
            first -= 1
        lo, hi = bounds[first], bounds[e + 1]
        if hi == lo:
            continue
        logits = torch.einsum("qhd,khd->hqk", q[lo:hi].double(), k[lo:hi].double()) * scale
        received = torch.softmax(logits, dim=-1).sum(dim=(0, 1))
        out[bounds[e]:hi] = received[bounds[e] - lo:]
    return out
