"""What the ``omnizip inspect`` report draws (:class:`ReportData`) and what it derives from it:
per-token status, per-step kept maps, window rows and token times."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["COLORS", "ReportData", "derive", "pick_steps", "to_numpy"]

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
def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


@dataclass
class Derived:
    keep_audio: np.ndarray  # bool [N_a]
    status: np.ndarray  # str [N_a]: salient / anchor / merged / dropped
    keep_video: np.ndarray  # bool [steps, gh, gw]
    step_parity: np.ndarray  # int [steps]: 0 = spatial, 1 = temporal (within its chunk)
    step_chunk: np.ndarray  # int [steps]
    audio_t: np.ndarray  # [N_a] seconds (token start)
    audio_dt: float
    step_t: np.ndarray  # [steps] seconds (grid step start)
    windows: list[dict[str, Any]]


def derive(data: ReportData) -> Derived:
    res = data.result
    keep = to_numpy(res.keep).astype(bool)
    a_pos, v_pos = to_numpy(res.audio_positions), to_numpy(res.video_positions)
    keep_audio = keep[a_pos] if a_pos.size else np.zeros(0, bool)
    n_a = keep_audio.size
    status = np.full(n_a, "dropped", dtype=object)
    salient = to_numpy(getattr(res, "salient", np.zeros(n_a, bool))).astype(bool)
    status[salient] = "salient"
    merge_target = to_numpy(getattr(res, "merge_target", np.full(n_a, -1)))
    status[(merge_target >= 0) & ~keep_audio] = "merged"
    anchors = to_numpy(getattr(res, "anchors", np.zeros(0, np.int64))).astype(int)
    status[anchors] = "anchor"

    _, h, w = (int(x) for x in data.grid_thw)
    gh, gw = h // data.merge, w // data.merge
    per_step = gh * gw
    keep_v = keep[v_pos] if v_pos.size else np.zeros(0, bool)
    steps = keep_v.size // per_step if per_step else 0
    keep_video = keep_v[: steps * per_step].reshape(steps, gh, gw) if steps else np.zeros((0, gh, gw), bool)

    # chunk of each grid step, and its parity inside the chunk (ISTC: even spatial, odd temporal)
    v_chunks = to_numpy(getattr(res, "video_chunks", np.zeros((0, 2), np.int64))).reshape(-1, 2)
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

    # windows (algorithm §1): audio chunk i with video chunk i
    a_chunks = to_numpy(getattr(res, "audio_chunks", np.zeros((0, 2), np.int64))).reshape(-1, 2)
    retention = to_numpy(getattr(res, "window_audio_retention", np.zeros(0)))
    ratios = to_numpy(getattr(res, "video_chunk_ratio", np.zeros(0)))
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
    return Derived(keep_audio, status, keep_video, step_parity, step_chunk, audio_t, audio_dt,
                    step_t, windows)


def pick_steps(d: Derived, limit: int) -> list[int]:
    """Grid steps to draw: all if few, else whole windows (both ISTC frames) spread evenly."""
    steps = d.keep_video.shape[0]
    if steps <= limit:
        return list(range(steps))
    chunks = sorted(set(d.step_chunk.tolist()))
    want = max(1, limit // 2)
    chosen = [chunks[round(i)] for i in np.linspace(0, len(chunks) - 1, want)]
    picked = [s for s in range(steps) if d.step_chunk[s] in set(chosen)]
    return picked[:limit]
