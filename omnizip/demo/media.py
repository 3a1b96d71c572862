"""Real media for demos and tests: a speech-then-silence clip over a moving test pattern.

The clip is made by the standard tools (``espeak-ng`` for the speech, ``ffmpeg`` for the moving
``testsrc2`` pattern, the silence padding and the MP4 mux) and read back with the ecosystem's
decoders (PyAV, through :mod:`omnizip.inputs`, the one path from a file to the processor).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..inputs import conversation_inputs, load_audio_track

__all__ = [
    "DEFAULT_SPEECH",
    "build_inputs",
    "have_media_tools",
    "load_audio_track",
    "make_test_clip",
    "prepare_video_inputs",
    "synthetic_frames",
    "synthetic_speech",
]

DEFAULT_SPEECH = "Hello. The red square moves to the right while I am talking."


def have_media_tools() -> bool:
    """True when ``ffmpeg`` and ``espeak-ng`` are on ``PATH``."""
    return shutil.which("ffmpeg") is not None and shutil.which("espeak-ng") is not None


def make_test_clip(
    path: str | os.PathLike,
    *,
    seconds: float = 5.0,
    speech: str = DEFAULT_SPEECH,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    with_audio: bool = True,
    texture: bool = False,
) -> Path:
    """Write an MP4 (H.264 + AAC, 16 kHz mono) of ``seconds`` length.

    Video: ffmpeg's moving ``testsrc2`` pattern at ``width`` x ``height``, ``fps``. Audio:
    ``speech`` spoken by espeak-ng, then silence up to ``seconds`` (the speech is cut if longer),
    so the audio-guided compression sees dense audio first and silence later.
    ``texture=True`` adds per-frame noise to the picture: the plain pattern's flat areas give
    patches whose spatial scores tie exactly, and two implementations whose vision encoders
    agree only to ~1e-6 (Hugging Face and vLLM) may break such ties differently.

    Raises:
        RuntimeError: when ffmpeg or espeak-ng is missing or fails.
        ValueError: for non-positive ``seconds``/``width``/``height``/``fps``.
    """
    if seconds <= 0 or width <= 0 or height <= 0 or fps <= 0:
        raise ValueError("seconds, width, height and fps must be positive")
    if shutil.which("ffmpeg") is None or (with_audio and shutil.which("espeak-ng") is None):
        raise RuntimeError("make_test_clip needs ffmpeg and espeak-ng on PATH")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    video_src = f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video_src]
        if with_audio:
            speech_wav = os.path.join(tmp, "speech.wav")
            _run(["espeak-ng", "-s", "170", "-w", speech_wav, speech])
            # pad with silence to the clip length (apad), then cut exactly at `seconds`
            cmd += ["-i", speech_wav, "-filter:a", f"apad=whole_dur={seconds}", "-ar", "16000",
                    "-ac", "1", "-c:a", "aac"]
        if texture:
            cmd += ["-vf", "noise=alls=40:allf=t"]
        cmd += ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
                str(out)]
        _run(cmd)
    return out


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:  # pragma: no cover - env issue
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeError(f"{cmd[0]} failed: {detail.strip()}") from exc


def synthetic_frames(
    seconds: float = 4.0, fps: float = 2.0, width: int = 112, height: int = 112, seed: int = 0
) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` frames of a square moving over a colour gradient (no ffmpeg)."""
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                     np.full_like(xs, 96)], -1).astype(np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    side = max(4, min(width, height) // 4)
    for t in range(n):  # a handful of frames: building the test clip, not a hot path
        x0 = int((width - side) * t / max(n - 1, 1))
        y0 = int(rng.integers(0, height - side + 1))
        frames[t, y0 : y0 + side, x0 : x0 + side] = (255, 32, 32)
    return frames


def synthetic_speech(
    seconds: float = 4.0, speech_seconds: float = 2.0, sampling_rate: int = 16000, seed: int = 0
) -> np.ndarray:
    """float32 mono: a speech-like harmonic signal with syllable-rate envelope, then silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None)
    wave = 0.3 * voice * envelope * (t < speech_seconds)
    wave += 1e-4 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def build_inputs(
    processor: Any,
    conversations: list[list[dict[str, Any]]],
    *,
    use_audio_in_video: bool = True,
    fps: float = 2.0,
) -> Any:
    """Processor inputs for a batch of one-turn user prompts with in-memory or file media.

    ``conversations``: one list of items per batch row, in prompt order (the item format of
    :func:`omnizip.inputs.conversation_inputs`, which this calls with one user turn per row).
    Returns the processor's ``BatchFeature`` (left-padded when rows differ in length).
    """
    inputs, _ = conversation_inputs(
        processor, [[{"role": "user", "content": items}] for items in conversations],
        use_audio_in_video=use_audio_in_video, fps=fps,
    )
    return inputs


def prepare_video_inputs(
    processor: Any,
    video: str | os.PathLike,
    prompt: str = "Describe the video and what is said.",
    *,
    use_audio_in_video: bool = True,
    fps: float = 2.0,
) -> Any:
    """Processor inputs for one user turn ``[video file (+ its audio track)] + prompt``.

    The same call a user makes with the real checkpoint's processor (see :func:`build_inputs`).
    """
    return build_inputs(
        processor,
        [[{"type": "video", "video": str(video)}, {"type": "text", "text": prompt}]],
        use_audio_in_video=use_audio_in_video,
        fps=fps,
    )
