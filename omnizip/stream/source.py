"""Media for a stream from a file, a live URL or stdin, decoded by FFmpeg's libraries (PyAV).

:class:`LiveSource` demuxes the container once, in order, and yields :class:`Chunk` s of a
fixed length of media time: the frames sampled on a fixed clock of ``fps`` (the first frame at
or after each tick, the rule :func:`omnizip.inputs.read_clip` uses) and the first audio track
as float32 mono at 16 kHz. With ``pace=True`` a chunk is released no earlier than its media
time after the first one (a file plays as a live feed would); a live source paces itself.

Stdin (``"-"``) must carry a streamable container (MPEG-TS, Matroska, NUT, ...: e.g.
``ffmpeg -i clip.mp4 -c copy -f mpegts - | omnizip stream -``); MP4 needs seeking.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..inputs import MediaError

__all__ = ["Chunk", "FixedClock", "LiveSource", "read_stream"]


@dataclass
class Chunk:
    """``frames`` uint8 ``[n, H, W, 3]``, ``audio`` float32 ``[s]``, and ``t``: the media time
    (seconds) the source has reached after this chunk."""

    frames: np.ndarray
    audio: np.ndarray
    t: float


class FixedClock:
    """Which decoded frames a fixed clock of ``fps`` samples: at ticks 0, 1/fps, 2/fps, ...
    the first frame at or after the tick (within half a frame of the source's rate); a gap in
    the source skips ticks instead of repeating frames."""

    def __init__(self, fps: float, source_rate: float) -> None:
        self.step = 1.0 / fps
        self.tolerance = 0.5 / source_rate
        self.target = 0.0

    def take(self, t: float) -> bool:
        """Whether the frame at ``t`` seconds (from the first frame) is sampled."""
        if t + self.tolerance < self.target:
            return False
        self.target += self.step
        while self.target <= t:
            self.target += self.step
        return True


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class LiveSource:
    """A media source read as a stream (see the module docstring).

    Args:
        source: a file path, an FFmpeg URL (``rtsp://``, ``http://``, ...) or ``"-"`` (stdin).
        fps: the stream's frame clock.
        sampling_rate: audio rate (the processor's, 16 kHz).
        pace: release chunks at real-time pace.
        chunk_seconds: media time per chunk.

    Raises :class:`omnizip.inputs.MediaError` (one line naming the source) when it cannot be
    opened or has no video or no audio stream.
    """

    def __init__(self, source: str, *, fps: float = 2.0, sampling_rate: int = 16000,
                 pace: bool = True, chunk_seconds: float = 0.5) -> None:
        self.source = source
        self.fps = float(fps)
        self.sampling_rate = int(sampling_rate)
        self.pace = pace
        self.chunk_seconds = float(chunk_seconds)

    def _open(self) -> Any:
        import av

        name = "stdin" if self.source == "-" else self.source
        try:
            target = sys.stdin.buffer if self.source == "-" else self.source
            container = av.open(target, mode="r")
        except Exception as exc:  # av.error.*: missing file, bad URL, not a container
            hint = " (pipe a streamable format, e.g. ffmpeg -i clip.mp4 -f mpegts -)" if name == "stdin" else ""
            raise MediaError(f"{name}: cannot open it as media ({_one_line(exc)}){hint}") from exc
        if not container.streams.video:
            container.close()
            raise MediaError(f"{name}: no video stream")
        if not container.streams.audio:
            container.close()
            raise MediaError(f"{name}: no audio track; omnizip stream needs audio and video")
        return container

    def chunks(self) -> Iterator[Chunk]:
        """Decode the source to its end, yielding chunks in media order."""
        import av

        container = self._open()
        video, audio = container.streams.video[0], container.streams.audio[0]
        clock = FixedClock(self.fps, float(video.average_rate or 25))
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sampling_rate)
        frames: list[np.ndarray] = []
        samples: list[np.ndarray] = []
        first_time: float | None = None
        last_video = 0.0
        n_samples = 0
        released = 0.0
        wall_start = time.perf_counter()
        rate = float(video.average_rate or 25)

        def media_time() -> float:
            return max(last_video, n_samples / self.sampling_rate)

        def release() -> Chunk:
            nonlocal frames, samples, released
            t = media_time()
            if self.pace:
                wait = wall_start + t - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            chunk = Chunk(np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8),
                          np.concatenate(samples) if samples else np.zeros(0, np.float32), t)
            frames, samples, released = [], [], t
            return chunk

        try:
            for packet in container.demux(video, audio):
                for frame in packet.decode():
                    if packet.stream is video:
                        t = frame.time if frame.time is not None else last_video + 1.0 / rate
                        first_time = t if first_time is None else first_time
                        t -= first_time
                        if clock.take(t):
                            frames.append(frame.to_ndarray(format="rgb24"))
                        last_video = max(last_video, t)
                    else:
                        for out in resampler.resample(frame):
                            data = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                            samples.append(data)
                            n_samples += data.size
                if media_time() - released >= self.chunk_seconds:
                    yield release()
            for out in resampler.resample(None):  # flush
                data = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                samples.append(data)
                n_samples += data.size
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.source}: cannot decode it ({_one_line(exc)})") from exc
        finally:
            container.close()
        yield release()


def read_stream(source: str, *, fps: float = 2.0, sampling_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """All of ``source`` at once, as a stream of it sees it: (frames uint8 ``[T, H, W, 3]``,
    audio float32 ``[S]``) with no pacing (the offline causal path of ``omnizip run --causal``)."""
    frames: list[np.ndarray] = []
    audio: list[np.ndarray] = []
    for chunk in LiveSource(source, fps=fps, sampling_rate=sampling_rate, pace=False,
                            chunk_seconds=3600.0).chunks():
        if chunk.frames.shape[0]:
            frames.append(chunk.frames)
        audio.append(chunk.audio)
    if not frames:
        raise MediaError(f"{source}: no decodable video frames")
    return np.concatenate(frames), np.concatenate(audio)
