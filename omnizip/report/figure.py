"""The report's figure: windows' S_i and r_i, the audio track with per-token status, the kept-token
maps over the sampled frames; matplotlib's object API on an Agg canvas."""

from __future__ import annotations

import io
import itertools
import textwrap

import numpy as np

from .data import COLORS, ReportData, derive, pick_steps, to_numpy

__all__ = ["render_report"]


def render_report(data: ReportData) -> bytes:
    """The report as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    d = derive(data)
    picked = pick_steps(d, data.max_frames)
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
            sc = to_numpy(data.audio_scores).astype(float)
            lo, hi = float(np.min(sc)), float(np.max(sc))
            norm = (sc - lo) / (hi - lo) if hi > lo else np.full_like(sc, 0.5)
            ax2.plot(d.audio_t + d.audio_dt / 2, 0.05 + 0.9 * norm, color="#1f3f7f", lw=1.1,
                     label="audio token score (algorithm §3, min-max scaled)", zorder=3)
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
