"""The ``omnizip inspect`` report: one PNG (and an HTML page embedding it) showing what OmniZip
kept of one audio-video prompt.

Panels, top to bottom, on one time axis (seconds into the clip):

1. per 2-second window: the audio retention ``S_i`` (bars) and the video compression ratio
   ``r_i`` the window got from it (line; dashed: ``r_min``, ``r_max`` and ``rho_video``);
2. the audio track (waveform envelope) with one strip cell per audio token: salient (kept),
   anchor (kept, other tokens merged into it), merged into an anchor, dropped; the SPEC 3
   audio score of every token drawn over it;
3. the sampled frames (one per vision grid step) with the kept-token map over them: dropped
   video tokens are shaded, kept ones clear; each frame says whether ISTC pruned it spatially
   (DPC-kNN, even frames of a window) or temporally (odd frames) and how many it kept.

Drawn with matplotlib's object API on an Agg canvas (no global backend is changed).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ReportData", "render_report", "write_report"]

COLORS = {
    "salient": "#2ca02c",
    "anchor": "#ff7f0e",
    "merged": "#ffcc80",
    "dropped": "#d0d0d0",
    "S": "#1f77b4",
    "r": "#d62728",
}


@dataclass
class ReportData:
    """What the report draws. ``result`` is the core's decision for the prompt's row.

    Attributes:
        result: :class:`omnizip.CompressionResult` of the row.
        audio_scores: float ``[N_a]`` the scores audio was ranked by (or None).
        frames: uint8 ``[T, H, W, 3]`` the sampled frames given to the processor.
        grid_thw: the video's ``(t, h, w)`` vision grid (patches); ``merge`` its spatial merge.
        audio_times, video_times: seconds of every audio / video token (from the temporal
            M-RoPE positions), or None to derive them (25 audio tokens/s, ``seconds_per_step``
            per grid step).
        waveform, sampling_rate: the audio track (mono float) or None.
        title, subtitle: headline lines; ``facts``: (label, value) rows for the HTML page.
    """

    result: Any
    frames: np.ndarray
    grid_thw: tuple[int, int, int]
    merge: int = 2
    patch: int = 14
    audio_scores: torch.Tensor | None = None
    audio_times: np.ndarray | None = None
    video_times: np.ndarray | None = None
    waveform: np.ndarray | None = None
    sampling_rate: int = 16000
    seconds_per_step: float = 1.0
    audio_tokens_per_second: float = 25.0
    config: dict[str, Any] = field(default_factory=dict)
    title: str = "OmniZip"
    subtitle: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    max_frames: int = 12
    frame_parity: str = "chunk"  # ISTC parity: "chunk" (restarts per window) or "stream"


# ----------------------------------------------------------------------------- derived data
def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


@dataclass
class _Derived:
    keep_audio: np.ndarray  # bool [N_a]
    status: np.ndarray  # str [N_a]: salient / anchor / merged / dropped
    keep_video: np.ndarray  # bool [steps, gh, gw]
    step_parity: np.ndarray  # int [steps]: 0 = spatial, 1 = temporal (within its chunk)
    step_chunk: np.ndarray  # int [steps]
    audio_t: np.ndarray  # [N_a] seconds (token start)
    audio_dt: float
    step_t: np.ndarray  # [steps] seconds (grid step start)
    windows: list[dict[str, Any]]


def _derive(data: ReportData) -> _Derived:
    res = data.result
    keep = _np(res.keep).astype(bool)
    a_pos, v_pos = _np(res.audio_positions), _np(res.video_positions)
    keep_audio = keep[a_pos] if a_pos.size else np.zeros(0, bool)
    n_a = keep_audio.size
    status = np.full(n_a, "dropped", dtype=object)
    salient = _np(getattr(res, "salient", np.zeros(n_a, bool))).astype(bool)
    status[salient] = "salient"
    merge_target = _np(getattr(res, "merge_target", np.full(n_a, -1)))
    status[(merge_target >= 0) & ~keep_audio] = "merged"
    anchors = _np(getattr(res, "anchors", np.zeros(0, np.int64))).astype(int)
    status[anchors] = "anchor"

    _, h, w = (int(x) for x in data.grid_thw)
    gh, gw = h // data.merge, w // data.merge
    per_step = gh * gw
    keep_v = keep[v_pos] if v_pos.size else np.zeros(0, bool)
    steps = keep_v.size // per_step if per_step else 0
    keep_video = keep_v[: steps * per_step].reshape(steps, gh, gw) if steps else np.zeros((0, gh, gw), bool)

    # chunk of each grid step, and its parity inside the chunk (ISTC: even spatial, odd temporal)
    v_chunks = _np(getattr(res, "video_chunks", np.zeros((0, 2), np.int64))).reshape(-1, 2)
    step_chunk = np.zeros(steps, int)
    step_parity = np.zeros(steps, int)
    offset = 0
    for ci, (_, length) in enumerate(v_chunks):
        n_steps = int(length) // per_step if per_step else 0
        for j in range(n_steps):
            if offset + j < steps:
                step_chunk[offset + j] = ci
                step_parity[offset + j] = j % 2
        offset += n_steps
    if data.frame_parity == "stream":  # parity runs along the stream (Qwen3-Omni layout)
        step_parity = np.arange(steps) % 2

    audio_dt = 1.0 / data.audio_tokens_per_second
    if data.audio_times is not None and len(data.audio_times) == n_a:
        audio_t = np.asarray(data.audio_times, float)
    else:
        audio_t = np.arange(n_a) * audio_dt
    if data.video_times is not None and len(data.video_times) == keep_v.size and steps:
        step_t = np.asarray(data.video_times, float)[:: per_step][:steps]
    else:
        step_t = np.arange(steps) * data.seconds_per_step

    # windows (SPEC 1): audio chunk i with video chunk i
    a_chunks = _np(getattr(res, "audio_chunks", np.zeros((0, 2), np.int64))).reshape(-1, 2)
    retention = _np(getattr(res, "window_audio_retention", np.zeros(0)))
    ratios = _np(getattr(res, "video_chunk_ratio", np.zeros(0)))
    n_windows = max(len(a_chunks), len(v_chunks))
    windows = []
    a_off = v_off = 0
    for i in range(n_windows):
        win: dict[str, Any] = {"index": i}
        times = []
        if i < len(a_chunks):
            n = int(a_chunks[i][1])
            win["audio"] = n
            win["audio_kept"] = int(keep_audio[a_off : a_off + n].sum())
            if n:
                times += [audio_t[a_off], audio_t[a_off + n - 1] + audio_dt]
            a_off += n
        if i < len(v_chunks):
            n = int(v_chunks[i][1])
            win["video"] = n
            win["video_kept"] = int(keep_v[v_off : v_off + n].sum())
            s0 = v_off // per_step if per_step else 0
            s1 = (v_off + n) // per_step if per_step else 0
            if s1 > s0 and s0 < len(step_t):
                times += [step_t[s0], step_t[min(s1, len(step_t)) - 1] + data.seconds_per_step]
            v_off += n
        if i < len(retention):
            win["S"] = float(retention[i])
        if i < len(ratios):
            win["r"] = float(ratios[i])
        win["start"] = float(min(times)) if times else float(i * 2)
        win["end"] = float(max(times)) if times else float(i * 2 + 2)
        windows.append(win)
    return _Derived(keep_audio, status, keep_video, step_parity, step_chunk, audio_t, audio_dt,
                    step_t, windows)


def _pick_steps(d: _Derived, limit: int) -> list[int]:
    """Grid steps to draw: all if few, else whole windows (both ISTC frames) spread evenly."""
    steps = d.keep_video.shape[0]
    if steps <= limit:
        return list(range(steps))
    chunks = sorted(set(d.step_chunk.tolist()))
    want = max(1, limit // 2)
    chosen = [chunks[round(i)] for i in np.linspace(0, len(chunks) - 1, want)]
    picked = [s for s in range(steps) if d.step_chunk[s] in set(chosen)]
    return picked[:limit]


# ----------------------------------------------------------------------------- drawing
def render_report(data: ReportData) -> bytes:
    """The report as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    d = _derive(data)
    picked = _pick_steps(d, data.max_frames)
    sub_lines = textwrap.wrap(data.subtitle, 170) if data.subtitle else []
    # layout in inches, top to bottom (axes placed by hand so any frame aspect fits)
    width, left, right = 16.0, 0.75, 0.75
    cols = min(6, max(1, len(picked)))
    frame_rows = -(-len(picked) // cols) if picked else 0
    gap_x = 0.12
    cell_w = (width - left - right - gap_x * (cols - 1)) / cols
    aspect = data.frames.shape[1] / max(data.frames.shape[2], 1) if len(data.frames) else 0.75
    img_h = cell_w * aspect
    head = 0.55 + 0.24 * len(sub_lines)
    panel_h, panel_gap = 2.5, 1.25
    video_head = 0.95
    row_h = img_h + 0.5
    fig_h = head + 0.55 + panel_h + panel_gap + panel_h + video_head + frame_rows * row_h + 0.15
    fig = Figure(figsize=(width, fig_h), dpi=100)
    FigureCanvasAgg(fig)

    def box(top_in: float, height_in: float, x_in: float = left, w_in: float | None = None) -> list[float]:
        w_in = width - left - right if w_in is None else w_in
        return [x_in / width, 1 - (top_in + height_in) / fig_h, w_in / width, height_in / fig_h]

    fig.text(left / width, 1 - 0.15 / fig_h, data.title, fontsize=15, fontweight="bold",
             ha="left", va="top")
    for i, line in enumerate(sub_lines):
        fig.text(left / width, 1 - (0.55 + 0.24 * i) / fig_h, line, fontsize=10.5, ha="left",
                 va="top", color="#444444")
    y = head + 0.55
    ax_box = box(y, panel_h)
    y += panel_h + panel_gap
    ax2_box = box(y, panel_h)
    y += panel_h + video_head
    frames_top = y

    t_end = 0.0
    for win in d.windows:
        t_end = max(t_end, win["end"])
    if d.audio_t.size:
        t_end = max(t_end, float(d.audio_t[-1]) + d.audio_dt)
    if data.waveform is not None and data.sampling_rate:
        t_end = max(t_end, len(data.waveform) / data.sampling_rate)
    t_end = max(t_end, 1e-3)

    # 1. S_i and r_i per window ----------------------------------------------------------------
    ax = fig.add_axes(ax_box)
    cfg = data.config
    guided = [w for w in d.windows if "S" in w]
    for w in d.windows:
        if w["index"] % 2:
            ax.axvspan(w["start"], w["end"], color="#f3f3f3", zorder=0)
    if guided:
        centers = [(w["start"] + w["end"]) / 2 for w in guided]
        widths = [0.8 * (w["end"] - w["start"]) for w in guided]
        ax.bar(centers, [w["S"] for w in guided], width=widths, color=COLORS["S"], alpha=0.75,
               label="audio retention $S_i$ (kept audio / window audio)")
        for c, w in zip(centers, guided, strict=True):
            ax.text(c, w["S"] + 0.02, f"{w['S']:.2f}", ha="center", va="bottom", fontsize=8,
                    color=COLORS["S"])
    with_r = [w for w in d.windows if "r" in w]
    if with_r:
        xs, ys = [], []
        for w in with_r:
            xs += [w["start"], w["end"]]
            ys += [w["r"], w["r"]]
        ax.plot(xs, ys, color=COLORS["r"], lw=2.2, label="video ratio $r_i$ (fraction of the window's video dropped)")
        for w in with_r:
            ax.text((w["start"] + w["end"]) / 2, w["r"] - 0.03, f"{w['r']:.2f}", ha="center",
                    va="top", fontsize=8, color=COLORS["r"])
    for key, style, label in (("min_ratio", ":", "$r_{min}$"), ("max_ratio", ":", "$r_{max}$"),
                              ("rho_video", "--", r"$\rho_v$")):
        if key in cfg:
            ax.axhline(float(cfg[key]), color="#888888", ls=style, lw=1)
            ax.text(t_end, float(cfg[key]), f" {label}", va="center", ha="left", fontsize=8,
                    color="#666666")
    ax.set_xlim(0, t_end)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    spans = [w["end"] - w["start"] for w in d.windows]
    span = f"{float(np.median(spans)):.3g}-second " if spans else ""
    ax.set_title(f"Per {span}window: audio kept ($S_i$) and the video ratio it sets ($r_i$): "
                 "more audio kept -> less video dropped", fontsize=11.5, loc="left", pad=24)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=9, ncol=2, frameon=False,
              borderaxespad=0.1, handlelength=1.5)

    # 2. audio track with token decisions ------------------------------------------------------
    ax2 = fig.add_axes(ax2_box, sharex=ax)
    strip_h = 0.28
    if data.waveform is not None and len(data.waveform):
        wave = np.asarray(data.waveform, float)
        bins = min(4000, len(wave))
        edges = np.linspace(0, len(wave), bins + 1).astype(int)
        env = np.array([np.abs(wave[a:b]).max() if b > a else 0.0
                        for a, b in itertools.pairwise(edges)])
        env = env / (env.max() or 1.0)
        tt = edges[:-1] / data.sampling_rate
        ax2.fill_between(tt, 0.5 + 0.45 * env, 0.5 - 0.45 * env, color="#7f7f7f", alpha=0.6,
                         lw=0, label="audio waveform")
    if d.audio_t.size:
        rgb = {k: np.array([int(v[i : i + 2], 16) / 255 for i in (1, 3, 5)]) for k, v in COLORS.items()}
        # one strip cell per token, drawn as an image with the tokens' own time spans
        t0 = float(d.audio_t[0])
        t1 = float(d.audio_t[-1]) + d.audio_dt
        cells = np.stack([rgb[s] for s in d.status])[None]
        ax2.imshow(cells, aspect="auto", extent=(t0, t1, -strip_h, 0.0), interpolation="nearest",
                   zorder=2)
        if data.audio_scores is not None and len(data.audio_scores) == d.audio_t.size:
            sc = _np(data.audio_scores).astype(float)
            lo, hi = float(np.min(sc)), float(np.max(sc))
            norm = (sc - lo) / (hi - lo) if hi > lo else np.full_like(sc, 0.5)
            ax2.plot(d.audio_t + d.audio_dt / 2, 0.05 + 0.9 * norm, color="#1f3f7f", lw=1.1,
                     label="audio token score (SPEC 3, min-max scaled)", zorder=3)
        # anchors: ticks above the strip
        anchor_t = d.audio_t[d.status == "anchor"] + d.audio_dt / 2
        ax2.scatter(anchor_t, np.full(anchor_t.shape, 0.02), marker="v", s=40,
                    color=COLORS["anchor"], edgecolor="black", lw=0.5, zorder=4)
    if not d.audio_t.size:
        ax2.text(0.5, 0.5, "no audio tokens in this prompt: video-only compression (every "
                 "video chunk unguided, ratio rho_video)", transform=ax2.transAxes, ha="center",
                 va="center", fontsize=11, color="#666666")
    for w in d.windows:
        ax2.axvline(w["start"], color="#bbbbbb", lw=0.8, zorder=1)
    ax2.set_ylim(-strip_h - 0.02, 1.02)
    ax2.set_yticks([-strip_h / 2])
    ax2.set_yticklabels(["tokens"], fontsize=8)
    ax2.set_xlabel("time (s)")
    n_a = d.status.size
    counts = {k: int((d.status == k).sum()) for k in ("salient", "anchor", "merged", "dropped")}
    ax2.set_title(
        f"Audio: {int(d.keep_audio.sum())}/{n_a} tokens kept ({counts['salient']} salient + "
        f"{counts['anchor']} anchors; {counts['merged']} merged into anchors, "
        f"{counts['dropped']} dropped)", fontsize=11.5, loc="left", pad=24)
    handles = [Patch(color=COLORS[k], label=k if k != "merged" else "merged into an anchor")
               for k in ("salient", "anchor", "merged", "dropped")]
    h2, _ = ax2.get_legend_handles_labels()
    ax2.legend(handles=h2 + handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=9,
               ncol=6, frameon=False, borderaxespad=0.1, handlelength=1.5)

    # 3. frames with kept-token maps -------------------------------------------------------------
    frames = data.frames
    for k, step in enumerate(picked):
        r, c = divmod(k, cols)
        axf = fig.add_axes(box(frames_top + r * row_h + 0.45, img_h, left + c * (cell_w + gap_x), cell_w))
        f_idx = min(2 * step, len(frames) - 1)  # temporal patch 2: step s = frames 2s, 2s+1
        img = np.asarray(frames[f_idx])
        hh, ww = img.shape[:2]
        axf.imshow(img, extent=(0, ww, hh, 0), interpolation="bilinear")
        kept = d.keep_video[step]
        gh, gw = kept.shape
        shade = np.zeros((gh, gw, 4))
        shade[~kept] = (0.05, 0.05, 0.05, 0.72)
        axf.imshow(shade, extent=(0, ww, hh, 0), interpolation="nearest")
        for gx in range(1, gw):
            axf.axvline(gx * ww / gw, color="white", lw=0.25, alpha=0.35)
        for gy in range(1, gh):
            axf.axhline(gy * hh / gh, color="white", lw=0.25, alpha=0.35)
        kind = "temporal" if d.step_parity[step] else "spatial (DPC-kNN)"
        t_s = float(d.step_t[step]) if step < len(d.step_t) else step * data.seconds_per_step
        axf.set_title(f"t={t_s:.1f}s  w{d.step_chunk[step]}  {kind}\nkept {int(kept.sum())}/{kept.size}",
                      fontsize=9)
        axf.set_xticks([])
        axf.set_yticks([])
        axf.set_xlim(0, ww)
        axf.set_ylim(hh, 0)
    if picked:
        n_v = int(d.keep_video.size)
        cell = f"{data.patch * data.merge}x{data.patch * data.merge}-pixel"
        fig.text(left / width, 1 - (frames_top - 0.2) / fig_h,
                 f"Video: {int(d.keep_video.sum())}/{n_v} tokens kept (shaded cells dropped; one "
                 f"cell = one video token, a merged {cell} patch of a frame pair; "
                 f"{len(picked)} of {d.keep_video.shape[0]} grid steps shown)",
                 fontsize=11, ha="left", va="bottom")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- files
def _window_rows(d: _Derived) -> list[dict[str, Any]]:
    return [dict(w) for w in d.windows]


def write_report(data: ReportData, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.png``, ``<stem>.html`` (the PNG embedded, self-contained) and
    ``<stem>.json`` (the numbers) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = render_report(data)
    d = _derive(data)
    paths = {"png": out / f"{stem}.png", "html": out / f"{stem}.html", "json": out / f"{stem}.json"}
    paths["png"].write_bytes(png)
    res = data.result
    numbers = {
        "title": data.title,
        "subtitle": data.subtitle,
        "facts": dict(data.facts),
        "config": data.config,
        "tokens": {
            "prompt": int(_np(res.keep).size), "kept": int(_np(res.keep).sum()),
            "audio": int(d.status.size), "audio_kept": int(d.keep_audio.sum()),
            "video": int(d.keep_video.size), "video_kept": int(d.keep_video.sum()),
        },
        "audio_token_status": {k: int((d.status == k).sum())
                               for k in ("salient", "anchor", "merged", "dropped")},
        "windows": _window_rows(d),
    }
    paths["json"].write_text(json.dumps(numbers, indent=2) + "\n")
    rows = []
    for w in d.windows:
        rows.append(
            "<tr>" + "".join(
                f"<td>{html.escape(str(v))}</td>" for v in (
                    w["index"], f"{w['start']:.1f}-{w['end']:.1f}",
                    f"{w.get('audio_kept', '-')}/{w.get('audio', '-')}",
                    f"{w['S']:.2f}" if "S" in w else "-",
                    f"{w['r']:.2f}" if "r" in w else "-",
                    f"{w.get('video_kept', '-')}/{w.get('video', '-')}",
                )
            ) + "</tr>"
        )
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in data.facts)
    b64 = base64.b64encode(png).decode("ascii")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1700px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ color: #555; }}
</style></head><body>
<h1>{html.escape(data.title)}</h1>
<p class="note">{html.escape(data.subtitle)}</p>
<table>{facts}</table>
<img alt="OmniZip report" src="data:image/png;base64,{b64}">
<h2>Windows</h2>
<table><tr><th>window</th><th>time (s)</th><th>audio kept</th><th>S<sub>i</sub></th>
<th>r<sub>i</sub></th><th>video kept</th></tr>
{''.join(rows)}
</table>
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(data.config, indent=2))}</pre>
</body></html>
"""
    paths["html"].write_text(page)
    return paths
