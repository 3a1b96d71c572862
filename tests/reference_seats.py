"""A deliberately plain SEATS, written from the method's description (docs/seats.md and the
issue's reading of the release), with Python loops over windows, tokens and steps, for the
tests to compare the package's vectorised code against. Nothing here imports omnizip.

Stage I: per window, keep ``max(1, min(n, round(r * n)))`` tokens by greedy max-min
diversity on ``dist(i, j) = (1 - cos(x_i, x_j)) * w_j`` (cosine of ``x / (|x| + 1e-8)``):
the first pick maximises the distance to the nearest other token, every next pick the
distance to the nearest pick. Ties: lower index.

Stage II: windows pair the i-th video run with the i-th audio run; per modality
``total = max(1, round(ratio * count))``; window weights ``softmax(mean score / T)`` per
modality, averaged; budget ``round(weight * total)`` clamped to [1, capacity], then units
taken from the largest / given to the smallest (first index) until the total is met; the
split by modality demand with the release's repairs; top-k per window (ties: lower index).
One window or one modality: top-k over the row.

The schedule: per-layer levels of one modality, bisection on the total drop.
"""

from __future__ import annotations

import math


def window_count(n: int, ratio: float) -> int:
    return max(1, min(n, round(ratio * n)))


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(c * c for c in v))
    return [c / (norm + 1e-8) for c in v]


def divprune(features: list[list[float]], weights: list[float], count: int) -> list[bool]:
    """One window: the greedy max-min pick of ``count`` of its tokens (rows of ``features``)."""
    n = len(features)
    if count >= n:
        return [True] * n
    units = [_unit(f) for f in features]

    def dist(i: int, j: int) -> float:
        return (1.0 - sum(a * b for a, b in zip(units[i], units[j], strict=True))) * weights[j]

    best_j, best = -1, -math.inf
    for j in range(n):
        nearest = min(dist(i, j) for i in range(n) if i != j)
        if nearest > best:
            best_j, best = j, nearest
    chosen = [best_j]
    while len(chosen) < count:
        best_j, best = -1, -math.inf
        for j in range(n):
            if j in chosen:
                continue
            value = min(dist(s, j) for s in chosen)
            if value > best:
                best_j, best = j, value
        chosen.append(best_j)
    return [j in chosen for j in range(n)]


def stage1(ids: list[int], embeds: list[list[float]], audio_scores: list[float],
           video_scores: list[float], *, audio: int, video: int, per_frame: int,
           grid_in_window: int, audio_window: int, ratio_v: float, ratio_a: float) -> list[bool]:
    """Stage I on a row: video frames = ``per_frame`` tokens of each video run (a run's tail
    is a shorter frame), counted over the row, ``grid_in_window`` frames a window; audio
    windows of ``audio_window`` tokens over the row's audio."""
    keep = [True] * len(ids)
    v_pos = [i for i, t in enumerate(ids) if t == video]
    a_pos = [i for i, t in enumerate(ids) if t == audio]
    frames: list[list[int]] = []  # indices into v_pos
    k = 0
    while k < len(v_pos):
        run = [k]
        while k + 1 < len(v_pos) and v_pos[k + 1] == v_pos[k] + 1:
            k += 1
            run.append(k)
        k += 1
        for s in range(0, len(run), per_frame):
            frames.append(run[s:s + per_frame])
    v_windows = [[t for frame in frames[w:w + grid_in_window] for t in frame]
                 for w in range(0, len(frames), grid_in_window)]
    a_windows = [list(range(s, min(s + audio_window, len(a_pos)))) for s in range(0, len(a_pos), audio_window)]
    for windows, pos, scores, ratio in ((v_windows, v_pos, video_scores, ratio_v),
                                        (a_windows, a_pos, audio_scores, ratio_a)):
        for window in windows:
            picks = divprune([embeds[pos[t]] for t in window], [scores[t] for t in window],
                             window_count(len(window), ratio))
            for t, kept in zip(window, picks, strict=True):
                keep[pos[t]] = kept
    return keep


# -------------------------------------------------------------------------------- Stage II
def shave(budget: list[int], excess: int) -> list[int]:
    """The release's loop: one unit at a time off the first largest entry above 1."""
    b = list(budget)
    for _ in range(excess):
        eligible = [i for i in range(len(b)) if b[i] > 1]
        if not eligible:
            break
        top = max(b[i] for i in eligible)
        b[next(i for i in eligible if b[i] == top)] -= 1
    return b


def fill(budget: list[int], deficit: int, cap: list[int]) -> list[int]:
    """The release's loop: one unit at a time onto the first smallest entry below its cap."""
    b = list(budget)
    for _ in range(deficit):
        eligible = [i for i in range(len(b)) if b[i] < cap[i]]
        if not eligible:
            break
        low = min(b[i] for i in eligible)
        b[next(i for i in eligible if b[i] == low)] += 1
    return b


def _runs(flags: list[bool]) -> list[list[int]]:
    """Maximal runs of True as lists of indices into the flagged tokens (0, 1, ...)."""
    runs, k, prev = [], 0, False
    for f in flags:
        if f:
            if not prev:
                runs.append([])
            runs[-1].append(k)
            k += 1
        prev = f
    return runs


def _top(scores: list[float], count: int) -> list[bool]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen = set(order[:count])
    return [i in chosen for i in range(len(scores))]


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def inner_keep(scores: list[float], is_video: list[bool], is_audio: list[bool],
               video_keep: float, audio_keep: float, temperature: float) -> list[bool]:
    """One Stage II step on a row (see the module docstring)."""
    sv = [s for s, v in zip(scores, is_video, strict=True) if v]
    sa = [s for s, a in zip(scores, is_audio, strict=True) if a]
    total_v = max(1, round(video_keep * len(sv))) if sv else 0
    total_a = max(1, round(audio_keep * len(sa))) if sa else 0
    v_runs, a_runs = _runs(is_video), _runs(is_audio)
    n_win = max(len(v_runs), len(a_runs))
    if n_win <= 1 or not sv or not sa:
        kv, ka = _top(sv, total_v), _top(sa, total_a)
    else:
        v_runs += [[]] * (n_win - len(v_runs))
        a_runs += [[]] * (n_win - len(a_runs))
        t = max(temperature, 1e-4)
        v_mean = [sum(sv[i] for i in r) / max(len(r), 1) for r in v_runs]
        a_mean = [sum(sa[i] for i in r) / max(len(r), 1) for r in a_runs]
        wv = _softmax([m / t for m in v_mean])
        wa = _softmax([m / t for m in a_mean])
        vs, as_ = [len(r) for r in v_runs], [len(r) for r in a_runs]
        cap = [x + y for x, y in zip(vs, as_, strict=True)]
        total = total_v + total_a
        budget = [min(max(1, round((x + y) / 2 * total)), c) for x, y, c in zip(wv, wa, cap, strict=True)]
        diff = sum(budget) - total
        budget = shave(budget, diff) if diff > 0 else fill(budget, -diff, cap)
        vb, ab = [], []
        for w in range(n_win):
            v_share, a_share = wv[w] * total_v, wa[w] * total_a
            frac = v_share / (v_share + a_share + 1e-12)
            v = min(max(0, round(budget[w] * frac)), vs[w])
            a = min(max(0, budget[w] - v), as_[w])
            rest = budget[w] - v - a
            extra = min(max(0, rest), max(0, vs[w] - v))
            v, rest = v + extra, rest - extra
            a += min(max(0, rest), max(0, as_[w] - a))
            if vs[w] > 0 and v < 1:
                v = 1
                if a > 1:
                    a = max(1, min(as_[w], max(0, budget[w] - v)))
            if as_[w] > 0 and a < 1:
                a = 1
                if v > 1:
                    v = max(1, min(vs[w], max(0, budget[w] - a)))
            vb.append(v)
            ab.append(a)
        kv, ka = [False] * len(sv), [False] * len(sa)
        for runs, flat, budgets, out in ((v_runs, sv, vb, kv), (a_runs, sa, ab, ka)):
            for run, count in zip(runs, budgets, strict=True):
                for i, kept in zip(run, _top([flat[i] for i in run], count), strict=True):
                    out[i] = kept
    keep, iv, ia = [], iter(kv), iter(ka)
    for v, a in zip(is_video, is_audio, strict=True):
        keep.append(next(iv) if v else next(ia) if a else True)
    return keep


# -------------------------------------------------------------------------------- schedule
def keep_ratios(n_layers: int, drops: list[int], removal: int | None, target: float,
                start: float) -> list[float]:
    """Per-drop keep ratios: layer ``l`` holds the level of the last drop at or below it;
    the total drop ``x * start`` is shared 1 : e : e^2 ...; bisection on ``x``."""
    end = n_layers if removal is None else min(removal, n_layers)
    drops = [d for d in drops if d < end]
    if not drops:
        return []
    raw = [math.exp(i) for i in range(len(drops))]
    share = [r / sum(raw) for r in raw]

    def level_after(step: int, x: float, floor: float) -> float:
        level = start
        for i in range(step):
            level = max(level - x * start * share[i], floor)
        return level

    def total(x: float) -> float:
        out = 0.0
        for layer in range(end):  # one term per layer
            done = sum(1 for d in drops if d <= layer)
            out += level_after(done, x, 0.0)
        return out

    goal = target * n_layers
    if goal >= total(0.0):
        x = 0.0
    elif goal <= total(1.0):
        x = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) > goal else (lo, mid)
        x = (lo + hi) / 2
    levels = [level_after(i, x, 1e-12) for i in range(len(drops) + 1)]
    return [round(levels[i + 1] / levels[i], 4) if levels[i] > 1e-12 else 0.0 for i in range(len(drops))]
