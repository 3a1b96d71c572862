"""Plain, independent reference implementation of OmniZip (algorithm §3 and 4).

Written from /work/shared/docs/algorithm.md (and the tie rules of docs/core_api.md) alone, without
looking at the package sources, so that the equivalence tests compare two independent
readings of the docs/algorithm.md.  Everything here is deliberately naive: Python loops, one token or
one frame at a time, Python floats (IEEE double) for every number that feeds a decision.
Speed is irrelevant; clarity is the point.

Covered:
- algorithm §4 steps 1-9 for one sequence, with the algorithm §6 deviations (inputs never modified,
  trailing partial frames kept, min/max window counted once in step 7, no audio / no video
  handled) and the algorithm §7 option ``merge_scope="window"``.
- algorithm §3 audio scores: full softmax matrix per head (global per stream, or per
  ``cu_seqlens`` window), stride-``pool`` pair pooling per stream, and energy scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INF = float("inf")


# --------------------------------------------------------------------------------------
# small helpers (plain Python floats)
# --------------------------------------------------------------------------------------


def dot(a: list[float], b: list[float]) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        total += x * y
    return total


def l2norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def normalize_merge(row: list[float]) -> list[float]:
    """algorithm §4 step 3: x / (||x|| + 1e-6)."""
    n = l2norm(row) + 1e-6
    return [x / n for x in row]


def normalize_safe(row: list[float]) -> list[float]:
    """algorithm §4 step 8: x / max(||x||, 1e-12)."""
    n = max(l2norm(row), 1e-12)
    return [x / n for x in row]


def highest_first(values: list[float], n: int) -> list[int]:
    """Indices of the n highest values; ties go to the lower index."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return order[: max(n, 0)]


def lowest_first(values: list[float], n: int) -> list[int]:
    """Indices of the n lowest values; ties go to the lower index."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return order[: max(n, 0)]


def find_runs(ids: list[int], token_id: int) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positions holding token_id, as (start, length)."""
    runs = []
    p = 0
    while p < len(ids):
        if ids[p] == token_id:
            start = p
            while p < len(ids) and ids[p] == token_id:
                p += 1
            runs.append((start, p - start))
        else:
            p += 1
    return runs


# --------------------------------------------------------------------------------------
# algorithm §4 step 8: ISTC on one frame
# --------------------------------------------------------------------------------------


def dpc_knn_keep(frame: list[list[float]], n_keep: int, k: int) -> list[int]:
    """Even frame: spatial pruning by DPC-kNN. Returns kept positions inside the frame."""
    P = len(frame)
    if n_keep >= P:
        return list(range(P))
    if n_keep <= 0:
        return []
    xh = [normalize_safe(row) for row in frame]
    d = [[INF if i == j else 1.0 - dot(xh[i], xh[j]) for j in range(P)] for i in range(P)]
    kk = min(k, P - 1)
    rho = []
    for i in range(P):
        row = sorted(d[i][j] for j in range(P) if j != i)
        smallest = row[:kk]
        rho.append(math.exp(-(sum(smallest) / kk)))
    delta = []
    for i in range(P):
        denser = [d[i][j] for j in range(P) if rho[j] > rho[i]]
        if denser:
            delta.append(min(denser))
        else:
            delta.append(max(0.0 if j == i else d[i][j] for j in range(P)))
    score = [rho[i] * delta[i] for i in range(P)]
    return sorted(highest_first(score, n_keep))


def temporal_keep(prev: list[list[float]], cur: list[list[float]], n_keep: int) -> list[int]:
    """Odd frame: keep the n_keep positions least similar to the previous (unpruned) frame."""
    P = len(cur)
    if n_keep >= P:
        return list(range(P))
    if n_keep <= 0:
        return []
    sim = [dot(normalize_safe(cur[p]), normalize_safe(prev[p])) for p in range(P)]
    return sorted(lowest_first(sim, n_keep))


# --------------------------------------------------------------------------------------
# algorithm §4: the whole algorithm for one sequence
# --------------------------------------------------------------------------------------


@dataclass
class ReferenceResult:
    keep: torch.Tensor  # bool [L]
    embeds: torch.Tensor  # [L, D], input dtype
    audio_positions: list[int]
    video_positions: list[int]
    audio_chunks: list[tuple[int, int]]
    video_chunks: list[tuple[int, int]]
    num_guided: int
    salient: list[bool]  # [N_a]
    anchors: list[int]  # audio indices, ascending
    merge_target: list[int]  # [N_a], -1 when not merged
    merge_weight: list[float]  # [N_a], 0.0 when not merged
    merge_score: list[float]  # [N_a], merge score of pool tokens (nan elsewhere)
    window_audio_retention: list[float]  # S_i, [G]
    base_ratio: list[float]  # b_i, [G]
    video_chunk_ratio: list[float]  # r per video chunk, [m]
    frame_keep_count: list[int]  # n_keep per video chunk (-1 when the chunk is kept whole)


def reference_compress(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_scores: torch.Tensor | None,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame,
    rho_audio: float = 0.3,
    rho_video: float = 0.6,
    contextual_ratio: float = 0.05,
    g: int = 3,
    min_ratio: float = 0.35,
    max_ratio: float = 0.75,
    knn: int = 5,
    merge_scope: str = "global",
) -> ReferenceResult:
    rho_a = float(rho_audio)
    rho_v = float(rho_video)
    c = float(contextual_ratio)
    r_min = float(min_ratio)
    r_max = float(max_ratio)
    assert merge_scope in ("global", "window")

    ids = [int(x) for x in input_ids.tolist()]
    L = len(ids)
    E = embeds.detach().to(torch.float64).tolist()  # exact upcast of fp32/fp16/bf16

    audio_positions = [p for p in range(L) if ids[p] == audio_token_id]
    video_positions = [p for p in range(L) if ids[p] == video_token_id]
    N_a = len(audio_positions)
    N_v = len(video_positions)
    audio_chunks = find_runs(ids, audio_token_id)
    video_chunks = find_runs(ids, video_token_id)
    n_achunks = len(audio_chunks)
    m = len(video_chunks)
    G = min(m, n_achunks)

    # audio index -> audio chunk index
    chunk_of_audio = []
    for ci, (_start, length) in enumerate(audio_chunks):
        chunk_of_audio.extend([ci] * length)
    assert len(chunk_of_audio) == N_a

    # tokens per frame for every video chunk
    if isinstance(tokens_per_frame, int):
        P_of_chunk = [tokens_per_frame] * m
    else:
        vals = tokens_per_frame.tolist() if torch.is_tensor(tokens_per_frame) else tokens_per_frame
        P_of_chunk = [int(x) for x in vals]
        assert len(P_of_chunk) == m

    a = [E[p] for p in audio_positions]
    v = [E[p] for p in video_positions]

    # ---- step 1: salient audio ------------------------------------------------------
    if N_a > 0:
        scores = [float(s) for s in audio_scores.detach().to(torch.float64).tolist()]
        assert len(scores) == N_a
    else:
        scores = []
    n_dom = int(clamp(round((1 - rho_a) * N_a), 0, N_a))
    salient = [False] * N_a
    for i in highest_first(scores, n_dom):
        salient[i] = True

    # ---- step 2: anchors --------------------------------------------------------------
    R = [i for i in range(N_a) if not salient[i]]
    r_count = len(R)
    n_ctx = round(c * N_a)
    anchors: list[int] = []
    if r_count > 0 and n_ctx > 0 and g > 0:
        n_ctx = min(n_ctx, r_count)
        step = max(1, r_count // n_ctx)
        candidates = [R[j] for j in range(0, r_count, step)]
        anchors = candidates[:n_ctx]
    anchor_set = set(anchors)
    pool = [i for i in R if i not in anchor_set]

    # ---- step 3: merge plan -----------------------------------------------------------
    a_hat = [normalize_merge(row) for row in a]
    v_hat = [normalize_merge(row) for row in v]
    merge_target = [-1] * N_a
    merge_weight = [0.0] * N_a
    merge_score = [math.nan] * N_a
    merged_rows: dict[int, list[float]] = {}
    if anchors:
        assigned: dict[int, list[int]] = {an: [] for an in anchors}
        for p in pool:
            best_anchor = anchors[0]
            best_cos = dot(a_hat[p], a_hat[anchors[0]])
            for an in anchors[1:]:
                cs = dot(a_hat[p], a_hat[an])
                if cs > best_cos:  # strictly greater: ties stay with the earlier anchor
                    best_cos = cs
                    best_anchor = an
            assigned[best_anchor].append(p)

            # merge score
            if merge_scope == "global":
                targets = list(range(N_v))
            else:
                ci = chunk_of_audio[p]
                targets = []
                if ci < G:
                    v_start, v_len = video_chunks[ci]
                    first = video_positions.index(v_start)
                    targets = list(range(first, first + v_len))
            if targets:
                merge_score[p] = max(dot(a_hat[p], v_hat[j]) for j in targets)
            else:
                merge_score[p] = max(dot(a_hat[p], a_hat[an]) for an in anchors)

        # ---- step 4: merge --------------------------------------------------------------
        for an in anchors:
            members = assigned[an]
            member_scores = [merge_score[p] for p in members]
            chosen = [members[j] for j in highest_first(member_scores, g)]
            if not chosen:
                continue
            s = [merge_score[p] for p in chosen]
            mx = max(s)
            ex = [math.exp(x - mx) for x in s]
            tot = sum(ex)
            w = [x / tot for x in ex]
            num = list(a[an])
            for wm, p in zip(w, chosen, strict=True):
                for dd in range(len(num)):
                    num[dd] += wm * a[p][dd]
            den = 1.0 + sum(w)
            merged_rows[an] = [x / den for x in num]
            for wm, p in zip(w, chosen, strict=True):
                merge_target[p] = an
                merge_weight[p] = wm

    audio_kept = [salient[i] or (i in anchor_set) for i in range(N_a)]

    # ---- step 5: audio retention per guided window ------------------------------------
    S = []
    for i in range(G):
        members = [ai for ai in range(N_a) if chunk_of_audio[ai] == i]
        kept = sum(1 for ai in members if audio_kept[ai])
        S.append(kept / len(members))

    # ---- step 6: base ratios ----------------------------------------------------------
    b = [clamp(r_max - (r_max - r_min) * S[i], r_min, r_max) for i in range(G)]

    # ---- step 7: budget normalisation -------------------------------------------------
    r_guided = list(b)
    n_win = [video_chunks[i][1] for i in range(G)]
    if G > 2 and sum(n_win) > 0:
        unguided = sum(video_chunks[i][1] for i in range(G, m))
        T_g = rho_v * N_v - rho_v * unguided
        B = 0.0
        for i in range(G):
            B += b[i] * n_win[i]
        if abs(B - T_g) > 1e-3 and B > 0:
            i_min = min(range(G), key=lambda i: (b[i], i))
            i_max = max(range(G), key=lambda i: (b[i], -i))
            frozen = sorted({i_min, i_max})
            others = [i for i in range(G) if i not in frozen]
            o_sum = 0.0  # the the algorithm's O
            for i in others:
                o_sum += b[i] * n_win[i]
            if others and o_sum > 0:
                F = 0.0
                for i in frozen:
                    F += b[i] * n_win[i]
                r_new = list(b)
                for i in others:
                    r_new[i] = clamp(b[i] * (T_g - F) / o_sum, r_min, r_max)
                total = 0.0
                for i in range(G):
                    total += r_new[i] * n_win[i]
                D = T_g - total
                if abs(D) > 1e-3:
                    n_others = sum(n_win[i] for i in others)
                    for i in others:
                        r_new[i] = clamp(r_new[i] + D / n_others, r_min, r_max)
                r_guided = r_new
    chunk_ratio = [r_guided[i] if i < G else rho_v for i in range(m)]

    # ---- step 8: ISTC -----------------------------------------------------------------
    keep = [True] * L
    for p in audio_positions:
        keep[p] = False
    for ai, p in enumerate(audio_positions):
        keep[p] = audio_kept[ai]
    frame_keep_count = []
    for ci, (start, length) in enumerate(video_chunks):
        P = P_of_chunk[ci]
        n_frames = length // P
        if n_frames == 0:
            frame_keep_count.append(-1)
            continue  # kept whole
        n_keep = int(P * (1 - chunk_ratio[ci]))
        frame_keep_count.append(n_keep)
        for f in range(n_frames):
            pos = list(range(start + f * P, start + (f + 1) * P))
            rows = [E[p] for p in pos]
            if f % 2 == 0:
                kept_local = dpc_knn_keep(rows, n_keep, knn)
            else:
                prev_rows = [E[p - P] for p in pos]
                kept_local = temporal_keep(prev_rows, rows, n_keep)
            kept_local = set(kept_local)
            for j, p in enumerate(pos):
                keep[p] = j in kept_local
        # positions start + n_frames * P .. start + length - 1: trailing partial frame, kept

    # ---- step 9: output -----------------------------------------------------------------
    out = embeds.detach().clone()
    for an, row in merged_rows.items():
        out[audio_positions[an]] = torch.tensor(row, dtype=torch.float64).to(embeds.dtype)

    return ReferenceResult(
        keep=torch.tensor(keep, dtype=torch.bool),
        embeds=out,
        audio_positions=audio_positions,
        video_positions=video_positions,
        audio_chunks=audio_chunks,
        video_chunks=video_chunks,
        num_guided=G,
        salient=salient,
        anchors=anchors,
        merge_target=merge_target,
        merge_weight=merge_weight,
        merge_score=merge_score,
        window_audio_retention=S,
        base_ratio=b,
        video_chunk_ratio=chunk_ratio,
        frame_keep_count=frame_keep_count,
    )


# --------------------------------------------------------------------------------------
# algorithm §3: audio scores
# --------------------------------------------------------------------------------------


def _segments_from_lengths(lengths: list[int]) -> list[tuple[int, int]]:
    segs = []
    start = 0
    for n in lengths:
        segs.append((start, start + n))
        start += n
    return segs


def reference_audio_attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scope: str = "global",
    stream_lengths=None,
    cu_seqlens=None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention received by each frame, summed over heads and queries (full matrices)."""
    T, H, Dh = query.shape
    if scale is None:
        scale = Dh**-0.5
    if scope == "global":
        lengths = [T] if stream_lengths is None else [int(x) for x in stream_lengths]
        segs = _segments_from_lengths(lengths)
    elif scope == "windowed":
        cu = [int(x) for x in cu_seqlens]
        segs = [(cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    else:
        raise ValueError(scope)
    q = query.detach().to(torch.float64)
    k = key.detach().to(torch.float64)
    out = [0.0] * T
    for s, e in segs:
        if e <= s:
            continue
        for h in range(H):
            logits = (q[s:e, h, :] @ k[s:e, h, :].T) * scale  # full [n, n] matrix
            for i in range(e - s):
                row = logits[i].tolist()
                mx = max(row)
                ex = [math.exp(x - mx) for x in row]
                tot = sum(ex)
                for j in range(e - s):
                    out[s + j] += ex[j] / tot
    return torch.tensor(out, dtype=torch.float64)


def reference_pool_audio_scores(frame_scores: torch.Tensor, stream_lengths=None, pool: int = 2):
    vals = [float(x) for x in frame_scores.detach().to(torch.float64).tolist()]
    lengths = [len(vals)] if stream_lengths is None else [int(x) for x in stream_lengths]
    out = []
    for s, e in _segments_from_lengths(lengths):
        n_tok = (e - s) // pool
        for t in range(n_tok):
            group = vals[s + t * pool : s + (t + 1) * pool]
            out.append(sum(group) / pool)
    return torch.tensor(out, dtype=torch.float64)


def reference_audio_energy_scores(audio_embeds: torch.Tensor) -> torch.Tensor:
    rows = audio_embeds.detach().to(torch.float64).tolist()
    return torch.tensor([l2norm(r) for r in rows], dtype=torch.float64)
