"""From a video file to the model's inputs: the one path the CLI, ``omnizip eval`` and the
demo helpers share.

* :func:`read_clip` decodes a file with PyAV: frames sampled uniformly at ``fps`` and the first
  audio track (mono float32 at the processor's rate).
* :func:`conversation_inputs` turns chat conversations whose content holds videos (frames or
  files), audio, images and text into the processor's tensors, laying a video's audio track out
  interleaved with its frames (``use_audio_in_video``) or as a separate audio block.
* :func:`to_device` moves those tensors to the model's device, floating ones to its dtype.

Bad media raise :class:`MediaError` (a ValueError) with a one-line message naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Clip",
    "MediaError",
    "conversation_inputs",
    "load_audio_track",
    "loop_clip",
    "read_clip",
    "to_device",
]

AUDIO_MODES = ("required", "optional", "ignore")


class MediaError(ValueError):
    """A media file that cannot be used (missing, unreadable, no video, no audio track)."""


@dataclass
class Clip:
    """A decoded clip. ``frames``: uint8 ``[T, H, W, 3]`` sampled at ``fps``; ``audio``: float32
    mono ``[S]`` at ``sampling_rate`` or None; ``duration``: seconds of the file."""

    path: Path
    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    sampling_rate: int
    duration: float


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def check_fps(fps: Any, name: str = "fps") -> float:
    """``fps`` as a float if it is a positive finite number, else ValueError naming ``name``
    (``inf`` would make the sampling step 0, ``nan`` would sample a single frame)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(fps, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {fps!r}")
    return value


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


def _decode_frames(p: Path, fps: float, progress: bool) -> tuple[list[np.ndarray], float | None]:
    """Frames at times 0, 1/fps, 2/fps, ... (the first frame at or after each), and the video
    stream's duration in seconds when the file states it."""
    import av
    from tqdm.auto import tqdm

    frames: list[np.ndarray] = []
    with av.open(str(p)) as container:
        if not container.streams.video:
            raise MediaError(f"{p}: no video stream in this file")
        stream = container.streams.video[0]
        duration = None  # what the file states: the container's (all streams), else the video's
        if container.duration is not None:
            duration = container.duration / 1e6
        elif stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        rate = float(stream.average_rate or 25)
        step = 1.0 / fps
        target = 0.0
        bar = tqdm(total=round(duration, 1) if duration else None, unit="s", leave=False,
                   desc=f"decoding {p.name}", disable=None if progress else True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s")
        last = 0.0
        first_time = None
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else last + 1.0 / rate
            if first_time is None:
                first_time = t
            t -= first_time
            if t + 0.5 / rate >= target:
                frames.append(frame.to_ndarray(format="rgb24"))
                target += step
                while target <= t:  # a gap in the stream: do not repeat frames
                    target += step
            if progress and duration:
                bar.update(max(0.0, min(t, duration) - last))
            last = max(last, t)
        bar.close()
    return frames, duration


def read_clip(
    path: str | os.PathLike,
    *,
    fps: float = 2.0,
    sampling_rate: int = 16000,
    audio: str = "required",
    max_frames: int | None = None,
    progress: bool = False,
) -> Clip:
    """Decode a video file with PyAV: frames sampled uniformly at ``fps`` (as transformers'
    ``load_video``; a progress bar with ``progress``) and its first audio track (mono,
    ``sampling_rate``).

    Args:
        audio: ``"required"`` (a file without an audio track is an error), ``"optional"``
            (None then) or ``"ignore"`` (not read).
        max_frames: keep at most this many frames, uniformly over the clip.

    Raises :class:`MediaError` for an empty path, a missing or unreadable file, no video stream
    or (``audio="required"``) no audio track; ValueError for a bad ``fps``.
    """
    fps = check_fps(fps)
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_MODES)}, got {audio!r}")
    if not str(path).strip():
        raise MediaError(f"empty video path {str(path)!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if not p.is_file():
        raise MediaError(f"{p}: not a file")
    try:
        frames, duration = _decode_frames(p, fps, progress)
    except MediaError:
        raise
    except Exception as exc:  # av.error.*: not a media file, corrupt data
        raise MediaError(f"{p}: cannot read it as a video ({_one_line(exc)})") from exc
    if not frames:
        raise MediaError(f"{p}: no decodable video frames")
    if max_frames is not None and len(frames) > max_frames:
        pick = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in pick]
    track = None
    if audio != "ignore":
        try:
            track = load_audio_track(p, sampling_rate)
        except Exception as exc:
            raise MediaError(f"{p}: cannot read its audio track ({_one_line(exc)})") from exc
        if track is not None and track.size == 0:
            track = None
        if track is None and audio == "required":
            raise MediaError(
                f"{p}: the video has no audio track; OmniZip is audio-guided (pass --video-only "
                "to compress the video alone)"
            )
    # the duration the file states (a 0.12 s clip is 0.12 s, not one frame's 1/fps); a file that
    # states none: what was decoded
    if duration is None or duration <= 0:
        duration = len(frames) / fps
        if track is not None:
            duration = max(duration, track.size / sampling_rate)
    return Clip(p, np.stack(frames), fps, track, sampling_rate, float(duration))


def loop_clip(clip: Clip, seconds: float) -> Clip:
    """The clip repeated (and cut) to ``seconds``: frames and audio tiled alike."""
    n_frames = max(2, round(seconds * clip.fps))
    reps = -(-n_frames // len(clip.frames))
    frames = np.concatenate([clip.frames] * reps)[:n_frames]
    audio = None
    if clip.audio is not None:
        n = round(seconds * clip.sampling_rate)
        audio = np.tile(clip.audio, -(-n // max(clip.audio.size, 1)))[:n]
    return Clip(clip.path, frames, clip.fps, audio, clip.sampling_rate, float(seconds))


def _content(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content", [])
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def conversation_inputs(
    processor: Any,
    conversations: list[list[dict[str, Any]]],
    *,
    use_audio_in_video: bool = True,
    fps: float = 2.0,
    videos_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, bool]:
    """Processor inputs for a batch of chat conversations with media, and whether any video's
    audio track is interleaved with it (pass that as ``use_audio_in_video`` to the model).

    Args:
        processor: a ``Qwen2_5OmniProcessor`` or ``Qwen3OmniMoeProcessor``.
        conversations: one list of messages per batch row (``{"role": ..., "content": str or
            [items]}``), items in prompt order: ``{"type": "video", "video": frames [T,H,W,3]
            uint8 or a file path, "audio": waveform or None}`` (a file's own track is used when
            "audio" is absent), ``{"type": "audio", "audio": waveform}`` (mono float at the
            feature extractor's rate), ``{"type": "image", "image": array [H,W,3]}``,
            ``{"type": "text", "text": str}``.
        use_audio_in_video: lay a video's audio out interleaved with its frames (Qwen2.5-Omni:
            2-second chunks; Qwen3-Omni: each temporal grid step followed by its audio);
            otherwise the track becomes a separate audio block right after the video.
        fps: frames per second sampled from files (:func:`read_clip`); for arrays, the rate they
            were sampled at (the processor's time per frame).
        videos_kwargs: more video-processor settings (e.g. ``{"size": ...}``).

    Returns the processor's ``BatchFeature`` (left-padded when rows differ in length) and the
    flag.
    """
    sampling_rate = processor.feature_extractor.sampling_rate
    texts: list[str] = []
    images: list[Any] = []
    videos: list[Any] = []
    audio: list[np.ndarray] = []
    from_video: list[int | None] = []
    for messages in conversations:
        rendered: list[dict[str, Any]] = []
        for message in messages:
            content: list[dict[str, Any]] = []
            for item in _content(message):
                kind = item.get("type")
                if kind == "video":
                    video, track = item["video"], item.get("audio", "file")
                    if isinstance(video, (str, os.PathLike)):
                        mode = "optional" if isinstance(track, str) and track == "file" else "ignore"
                        clip = read_clip(video, fps=fps, sampling_rate=sampling_rate, audio=mode)
                        video = clip.frames
                        if mode == "optional":
                            track = clip.audio
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
            rendered.append({"role": message.get("role", "user"), "content": content})
        texts.append(processor.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True))
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        # frames are already sampled; `fps` sets the time per frame (second_per_grid = 2 / fps)
        kwargs["videos_kwargs"] = {"fps": fps, "do_sample_frames": False, **(videos_kwargs or {})}
    interleaved = bool(use_audio_in_video and videos and any(i is not None for i in from_video))
    if audio:
        kwargs["audio"] = audio
        if use_audio_in_video and videos:
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = from_video
    return processor(**kwargs), interleaved


def to_device(inputs: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """The processor's outputs as a dict on ``device``: floating tensors cast to ``dtype`` (the
    model's), integer tensors (ids, masks, grids) moved as they are, other values untouched."""
    import torch

    return {
        k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
        if isinstance(v, torch.Tensor) else v
        for k, v in dict(inputs).items()
    }
