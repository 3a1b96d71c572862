"""Real media for demos and tests: a speech-then-silence clip over a moving test pattern.

The clip is made by the standard tools (``espeak-ng`` for the speech, ``ffmpeg`` for the moving
``testsrc2`` pattern, the silence padding and the MP4 mux) and read back with the ecosystem's
decoders: PyAV for the audio track, transformers' processors (PyAV backend) for the frames.
Nothing here hand-decodes a container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

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
) -> Path:
    """Write an MP4 (H.264 + AAC, 16 kHz mono) of ``seconds`` length.

    Video: ffmpeg's moving ``testsrc2`` pattern at ``width`` x ``height``, ``fps``. Audio:
    ``speech`` spoken by espeak-ng, then silence up to ``seconds`` (the speech is cut if longer),
    so the audio-guided compression sees dense audio first and silence later.

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


def load_audio_track(path: str | os.PathLike, sampling_rate: int = 16000) -> np.ndarray | None:
    """Decode the first audio stream of a media file to mono float32 at ``sampling_rate`` (PyAV).

    Returns ``None`` when the file has no audio stream (a silent video).
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


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

    Args:
        processor: a ``Qwen2_5OmniProcessor`` or ``Qwen3OmniMoeProcessor`` (real, or
            :func:`build_offline_processor` / :func:`build_offline_qwen3_omni_processor`).
        conversations: one list of items per batch row, in prompt order:
            ``{"type": "video", "video": frames [T,H,W,3] uint8 or a file path,
            "audio": waveform or None}`` (a file's own track is used when "audio" is absent),
            ``{"type": "audio", "audio": waveform}`` (16 kHz mono float),
            ``{"type": "image", "image": array [H,W,3]}``, ``{"type": "text", "text": str}``.
        use_audio_in_video: lay a video's audio out interleaved with its frames (Qwen2.5-Omni:
            2-second chunks; Qwen3-Omni: each temporal grid step followed by its audio);
            otherwise the track becomes a separate audio block right after the video. Pass
            the same flag to ``generate``.
        fps: frames per second sampled from files; for arrays, the rate they were sampled at.

    Returns the processor's ``BatchFeature`` (left-padded when rows differ in length).
    Files are read with transformers' ``load_video`` (PyAV backend) and PyAV (audio track).
    """
    from transformers.video_utils import load_video

    sampling_rate = processor.feature_extractor.sampling_rate
    texts: list[str] = []
    images: list[Any] = []
    videos: list[Any] = []
    audio: list[np.ndarray] = []
    from_video: list[int | None] = []
    for items in conversations:
        content: list[dict[str, Any]] = []
        for item in items:
            kind = item.get("type")
            if kind == "video":
                video = item["video"]
                track = item.get("audio", "file")
                if isinstance(video, (str, os.PathLike)):
                    if isinstance(track, str) and track == "file":
                        track = load_audio_track(video, sampling_rate)
                    video, _ = load_video(str(video), fps=fps, backend="pyav")
                elif isinstance(track, str):
                    track = None
                content.append({"type": "video"})
                videos.append(video)
                if track is not None and np.asarray(track).size:
                    audio.append(np.asarray(track, dtype=np.float32))
                    if use_audio_in_video:
                        from_video.append(len(videos) - 1)
                    else:
                        from_video.append(None)
                        content.append({"type": "audio"})
            elif kind == "audio":
                content.append({"type": "audio"})
                audio.append(np.asarray(item["audio"], dtype=np.float32))
                from_video.append(None)
            elif kind == "image":
                content.append({"type": "image"})
                images.append(item["image"])
            elif kind == "text":
                content.append({"type": "text", "text": item["text"]})
            else:
                raise ValueError(f"conversations: unknown item type {kind!r}")
        texts.append(
            processor.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        )
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        # frames are already sampled; `fps` sets the time per frame (second_per_grid = 2 / fps)
        kwargs["videos_kwargs"] = {"fps": fps, "do_sample_frames": False}
    if audio:
        kwargs["audio"] = audio
        if use_audio_in_video and videos:
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = from_video
    return processor(**kwargs)


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
