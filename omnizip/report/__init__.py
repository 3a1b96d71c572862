"""The ``omnizip inspect`` report: one PNG (and an HTML page embedding it) showing what OmniZip
kept of one audio-video prompt.

Panels, top to bottom, on one time axis (seconds into the clip):

1. per 2-second window: the audio retention ``S_i`` (bars) and the video compression ratio
   ``r_i`` the window got from it (line; dashed: ``r_min``, ``r_max`` and ``rho_video``);
2. the audio track (waveform envelope) with one strip cell per audio token: salient (kept),
   anchor (kept, other tokens merged into it), merged into an anchor, dropped; the algorithm §3
   audio score of every token drawn over it;
3. the sampled frames (one per vision grid step) with the kept-token map over them: dropped
   video tokens are shaded, kept ones clear; each frame says whether ISTC pruned it spatially
   (DPC-kNN, even frames of a window) or temporally (odd frames) and how many it kept.

Drawn with matplotlib's object API on an Agg canvas (no global backend is changed).

Modules: :mod:`~omnizip.report.data` (what is drawn, derived per token and window),
:mod:`~omnizip.report.figure` (the PNG), :mod:`~omnizip.report.page` (the files).
"""

from __future__ import annotations

from .data import ReportData
from .figure import render_report
from .page import write_report

__all__ = ["ReportData", "render_report", "write_report"]
