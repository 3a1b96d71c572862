"""A stream's media before the encoders: checked, buffered, cut into the encoders' units.

* :func:`check_frames` / :func:`check_audio` validate what a caller appends (nothing is
  buffered until both parts of an append passed).
* :class:`FrameBuffer` holds frames until a video step (``temporal_patch_size`` frames) is
  whole and turns whole steps into the vision encoder's pixel patches with the processor's own
  video processor (:func:`video_patches`), at one resolution fixed by the first frame: the
  processor's per-frame rule (its min/max pixels) with no pixel cap that depends on the clip
  length, so a step's patches are the same whether it is encoded alone or in a whole clip.
* :class:`MelBuffer` turns audio samples into causal log-mel frames
  (:class:`omnizip.audio_features.CausalLogMel`) and holds them until an audio-encoder
  attention window is whole.

The offline causal path (:func:`omnizip.stream.offline_inputs`) uses the same two functions,
so a clip given at once and the same clip streamed see identical encoder inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

__all__ = ["FrameBuffer", "MelBuffer", "check_audio", "check_frames", "video_patches"]


def check_frames(frames: Any) -> np.ndarray:
    """``frames`` as a uint8 numpy array ``[T, H, W, 3]`` (``T`` may be 0); ValueError or
    TypeError naming ``frames`` otherwise. A torch tensor is accepted (copied to the host)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a uint8 array [T, H, W, 3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must have dtype uint8 (RGB 0-255), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {list(frames.shape)}")
    if frames.shape[0] and (frames.shape[1] < 1 or frames.shape[2] < 1):
        raise ValueError(f"frames must have a positive height and width, got {list(frames.shape)}")
    return frames


def check_audio(audio: Any, sampling_rate: int | None, expected_rate: int) -> np.ndarray:
    """``audio`` as float32 numpy ``[S]`` (mono samples in [-1, 1] at ``expected_rate``);
    ValueError/TypeError naming ``audio`` or ``sampling_rate`` otherwise. Floating arrays of
    another width are converted; integer PCM is refused (its scale is not [-1, 1])."""
    if sampling_rate is not None and (isinstance(sampling_rate, bool) or sampling_rate != expected_rate):
        raise ValueError(f"sampling_rate: the stream takes audio at {expected_rate} Hz, got "
                         f"{sampling_rate!r} (resample it first)")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"audio must be a float32 array [S], got {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be floating point samples in [-1, 1] (float32), got {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape [S], got {list(audio.shape)}")
    if audio.size and not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def _video_kwargs(processor: Any, fps: float) -> dict[str, Any]:
    """The processor's own video settings (its size bounds), frames taken as sampled, and no
    per-frame pixel cap that depends on the number of frames (where the processor has one)."""
    kwargs: dict[str, Any] = dict(getattr(processor, "videos_kwargs", None) or {})
    kwargs.update(fps=fps, do_sample_frames=False, return_tensors="pt")
    video_processor = processor.video_processor
    valid = getattr(getattr(video_processor, "valid_kwargs", None), "__annotations__", {})
    if "cap_pixels_per_frame" in valid or "cap_pixels_per_frame" in inspect.signature(
            video_processor._preprocess).parameters:
        kwargs["cap_pixels_per_frame"] = False
    return kwargs


def video_patches(processor: Any, frames: np.ndarray, fps: float) -> tuple[torch.Tensor, list[int]]:
    """The vision encoder's input for ``frames`` (uint8 ``[T, H, W, 3]``, one video):
    ``pixel_values_videos`` ``[steps * h * w, C * t * p * p]`` and its grid ``[steps, h, w]``
    (an odd last frame is repeated, as the processor does for a whole clip)."""
    out = processor.video_processor(videos=[frames], **_video_kwargs(processor, fps))
    grid = [int(x) for x in out["video_grid_thw"][0].tolist()]
    return out["pixel_values_videos"], grid


class FrameBuffer:
    """Frames of one stream, cut into whole video steps (see the module docstring).

    Attributes:
        received: frames appended so far.
        size: (H, W) of the frames (fixed by the first frame), None before it.
        grid: (h, w) patches per frame after resizing (fixed by the first step).
    """

    def __init__(self, processor: Any, fps: float, temporal_patch: int) -> None:
        self.processor = processor
        self.fps = fps
        self.temporal_patch = temporal_patch
        self.received = 0
        self.size: tuple[int, int] | None = None
        self.grid: tuple[int, int] | None = None
        self._pending: list[np.ndarray] = []

    @property
    def pending(self) -> int:
        return sum(len(f) for f in self._pending)

    def check(self, frames: np.ndarray) -> None:
        """Refuse frames of another size than the stream's (before anything is buffered)."""
        if frames.shape[0] and self.size is not None and tuple(frames.shape[1:3]) != self.size:
            raise ValueError(
                f"frames: the stream's frames are {self.size[1]}x{self.size[0]} (W x H), got "
                f"{frames.shape[2]}x{frames.shape[1]}; every frame of a stream must have the "
                "size of the first one"
            )

    def push(self, frames: np.ndarray, final: bool = False) -> tuple[torch.Tensor | None, int]:
        """Buffer ``frames`` (checked) and return the pixel patches of the video steps made
        whole, and how many steps that is; ``final``: the last partial step too (its last frame
        repeated)."""
        if frames.shape[0]:
            if self.size is None:
                self.size = (int(frames.shape[1]), int(frames.shape[2]))
            self._pending.append(frames)
            self.received += int(frames.shape[0])
        pending = self.pending
        whole = pending // self.temporal_patch * self.temporal_patch
        if final:
            whole = pending
        if whole == 0:
            return None, 0
        buffered = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        take, rest = buffered[:whole], buffered[whole:]
        self._pending = [rest] if len(rest) else []
        patches, grid = video_patches(self.processor, take, self.fps)
        if self.grid is None:
            self.grid = (grid[1], grid[2])
        elif (grid[1], grid[2]) != self.grid:
            raise RuntimeError(
                f"the processor resized frames to a {grid[1]}x{grid[2]} patch grid after "
                f"{self.grid[0]}x{self.grid[1]} for earlier ones; a stream needs one resolution"
            )
        return patches, grid[0]


class MelBuffer:
    """Audio samples -> causal log-mel frames, released in whole encoder windows.

    Attributes:
        samples: samples appended so far.
        released: mel frames handed to the encoder so far.
    """

    def __init__(self, feature_extractor: Any, frames_per_window: int, end: str) -> None:
        from ..audio_features import CausalLogMel

        self.features = CausalLogMel(feature_extractor, end=end)
        self.frames_per_window = frames_per_window
        self.samples = 0
        self.released = 0
        self._pending: list[torch.Tensor] = []  # [n_mels, n] each

    def _keep(self, frames: Any) -> None:
        frames = torch.as_tensor(frames, dtype=torch.float32)
        if frames.shape[-1]:
            self._pending.append(frames)

    def push(self, samples: np.ndarray, final: bool = False) -> torch.Tensor | None:
        """Add ``samples``; return the mel frames ``[n_mels, n]`` of the encoder windows made
        whole (``final``: everything left, the input's end padded as the offline features
        pad it), or None."""
        if samples.size:
            self._keep(self.features.push(samples))
            self.samples += int(samples.size)
        if final:
            self._keep(self.features.finish())
        pending = sum(int(f.shape[-1]) for f in self._pending)
        take = pending if final else pending // self.frames_per_window * self.frames_per_window
        if take == 0:
            return None
        frames = torch.cat(self._pending, dim=-1)
        out, rest = frames[:, :take], frames[:, take:]
        self._pending = [rest] if rest.shape[-1] else []
        self.released += take
        return out
