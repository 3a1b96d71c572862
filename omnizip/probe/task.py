"""The probe's task: short clips made in code, one question, four answers (docs/probe.md).

A clip is ``windows`` Qwen2.5-Omni chunks of 2 seconds (2 frames per second, 16 kHz mono audio),
over a muted random gradient. In every window a coloured square flashes for the window's first
second (its first two frames: the first temporal grid step), always exactly one merged vision
token in size (a 28 x 28-pixel cell of the 2 x 2-merged 14-pixel patch grid). The audio is low
noise plus one loud tone that sounds during the first second of one window, with that window's
flash. Two variants ask about one *target* window:

* ``"audio"`` (audio-led): "What colour is the square when the tone sounds?" The tone sounds in
  the target window; every window shows a solid square, so only the sound says where to look.
* ``"visual"`` (visual-only): "What colour is the ring?" The target's square is a ring (white
  centre), the others are solid; the tone sounds in a window drawn independently of the target,
  so the loudest sound is no cue (and audio guidance can only spend budget in the wrong place).

The answer is the target's colour, one of :data:`COLOURS` (chance 25%). Distractor colours are
drawn independently (they may repeat the answer), so the answer cannot be inferred by
elimination from the other windows. The curriculum's easy clips have no distractors
(``distractors=False``: only the target window shows a square) and a plain background.

Samples are drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same clip.
:func:`build_batch` turns samples into model inputs through the real processor
(:func:`omnizip.inputs.conversation_inputs`, video with its audio track interleaved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COLOURS",
    "QUESTIONS",
    "VARIANTS",
    "ProbeSample",
    "ProbeTask",
    "build_batch",
    "build_probe_processor",
    "make_sample",
]

#: answer index -> (name, RGB): four well separated hues
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 190, 60)),
    ("blue", (40, 80, 230)),
    ("yellow", (235, 210, 40)),
)
VARIANTS = ("audio", "visual")
QUESTIONS = {
    "audio": "What colour is the square when the tone sounds? Answer red, green, blue or yellow.",
    "visual": "What colour is the ring? Answer red, green, blue or yellow.",
}
SECONDS_PER_WINDOW = 2  # Qwen2.5-Omni's interleaving chunk
FPS = 2  # Qwen2.5-Omni's default sampling rate
SAMPLING_RATE = 16000
CELL = 28  # pixels of one merged vision token (14-pixel patches, 2 x 2 merge)
FLASH_SECONDS = 1  # the square, and the tone with it, in the first second of a window
AUDIO_TOKENS_PER_SECOND = 25


@dataclass(frozen=True)
class ProbeTask:
    """The clip format. ``frame_size`` must be a multiple of 28 (one merged token per cell).

    Tokens of one clip (Qwen2.5-Omni): ``windows * 50`` audio and
    ``windows * 2 * (frame_size / 28) ** 2`` video (two temporal grid steps per window).
    """

    windows: int = 4
    frame_size: int = 168
    noise: float = 0.02
    tone_amplitude: float = 0.3
    tone_seconds: int = 1  # from the window's start: 1 (with the flash) or 2 (the whole window)

    def __post_init__(self) -> None:
        if isinstance(self.windows, bool) or not isinstance(self.windows, int) or self.windows < 1:
            raise ValueError(f"windows must be an int >= 1, got {self.windows!r}")
        if (isinstance(self.frame_size, bool) or not isinstance(self.frame_size, int)
                or self.frame_size < 2 * CELL or self.frame_size % CELL):
            raise ValueError(f"frame_size must be a multiple of {CELL} >= {2 * CELL}, got "
                             f"{self.frame_size!r}")
        if self.tone_seconds not in (1, 2):
            raise ValueError(f"tone_seconds must be 1 or 2, got {self.tone_seconds!r}")

    @property
    def cells(self) -> int:
        """Merged tokens per side of a frame."""
        return self.frame_size // CELL

    @property
    def seconds(self) -> int:
        return self.windows * SECONDS_PER_WINDOW

    @property
    def audio_tokens(self) -> int:
        return self.seconds * AUDIO_TOKENS_PER_SECOND

    @property
    def video_tokens(self) -> int:
        """Two temporal grid steps per window (2 fps, temporal patch 2), ``cells**2`` each."""
        return self.windows * 2 * self.cells**2

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProbeSample:
    """One clip: ``frames`` uint8 ``[T, H, W, 3]`` at 2 fps, ``audio`` float32 ``[S]`` at 16 kHz,
    the question, the answer index into :data:`COLOURS`, and what was drawn."""

    frames: np.ndarray
    audio: np.ndarray
    question: str
    answer: int
    variant: str
    target: int  # the window asked about
    tone: int  # the window the tone sounds in
    colours: tuple[int, ...] = ()  # per window: colour index of its square, -1 without one


def _background(rng: np.random.Generator, size: int, n_frames: int, plain: bool) -> np.ndarray:
    """A muted gradient between two random colours in a random direction, plus pixel noise
    (``plain``: one mid grey, plus the noise)."""
    ends = rng.uniform(60, 170, size=(2, 3))
    if plain:
        ends[:] = 115
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    mix = (np.cos(angle) * xs + np.sin(angle) * ys)
    mix = (mix - mix.min()) / max(np.ptp(mix), 1e-9)
    image = ends[0] + mix[..., None] * (ends[1] - ends[0])
    # uniform integer noise: cheap to draw, and a clip is 1.4 M pixels
    noise = rng.integers(-10, 11, size=(n_frames, size, size, 3), dtype=np.int16)
    return np.clip(image[None].astype(np.int16) + noise, 0, 255)


def make_sample(task: ProbeTask, variant: str, seed: int, *, distractors: float = 1.0,
                plain: bool = False) -> ProbeSample:
    """Draw one clip of ``variant`` (see the module docstring) from ``seed``.

    Args:
        distractors: opacity of the distractor squares over the background, in [0, 1]: 1 the
            full task, 0 (or False) only the target window shows a square; the curriculum
            could fade the distractors in (the committed curriculum does not: docs/probe.md).
        plain: a plain grey background instead of the random gradient (curriculum).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    rng = np.random.default_rng(seed)
    n_win, cells, size = task.windows, task.cells, task.frame_size
    frames_per_window = SECONDS_PER_WINDOW * FPS
    target = int(rng.integers(n_win))
    tone = target if variant == "audio" else int(rng.integers(n_win))
    colours = rng.integers(len(COLOURS), size=n_win)
    places = rng.integers(cells, size=(n_win, 2))
    frames = _background(rng, size, n_win * frames_per_window, plain)
    opacity = float(distractors)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"distractors must lie in [0, 1], got {distractors!r}")
    for w in range(n_win):  # a handful of windows per clip: building media, not a hot path
        alpha = 1.0 if w == target else opacity
        if alpha == 0.0:
            continue
        r, c = places[w] * CELL
        first = w * frames_per_window
        block = frames[first:first + FLASH_SECONDS * FPS, r:r + CELL, c:c + CELL]
        block[:] = alpha * np.array(COLOURS[colours[w]][1]) + (1.0 - alpha) * block
        if variant == "visual" and w == target:
            inner = CELL // 4
            block[:, inner:CELL - inner, inner:CELL - inner] = 245
    n_samples = task.seconds * SAMPLING_RATE
    audio = rng.standard_normal(n_samples, dtype=np.float32) * task.noise
    tone_len = task.tone_seconds * SAMPLING_RATE
    start = tone * SECONDS_PER_WINDOW * SAMPLING_RATE
    pitch = rng.uniform(500, 1500)
    t = np.arange(tone_len) / SAMPLING_RATE
    audio[start:start + tone_len] += task.tone_amplitude * np.sin(2 * np.pi * pitch * t)
    return ProbeSample(
        frames=frames.astype(np.uint8), audio=audio.astype(np.float32),
        question=QUESTIONS[variant], answer=int(colours[target]), variant=variant,
        target=target, tone=tone,
        colours=tuple(int(colours[w]) if opacity > 0 or w == target else -1 for w in range(n_win)),
    )


def build_probe_processor(task: ProbeTask) -> Any:
    """The offline ``Qwen2_5OmniProcessor`` (real classes and settings) for ``task``'s clips.

    Frames are fixed at ``frame_size`` pixels (``min_pixels = max_pixels``). The Whisper
    feature extractor pads to the clip length instead of the checkpoint's 300 s: the padding
    is masked out by the model, and the features of the clip are the same except the last
    frame, whose centred window reflects the clip's end instead of reading zeros
    (tests/test_probe.py checks this).
    """
    from transformers import WhisperFeatureExtractor

    from ..demo.processor import build_offline_processor

    processor = build_offline_processor(min_pixels=task.frame_size**2,
                                        max_pixels=task.frame_size**2)
    processor.feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=task.seconds,
        n_fft=400, padding_value=0.0, return_attention_mask=True,
    )
    return processor


def build_batch(processor: Any, samples: list[ProbeSample]) -> tuple[Any, np.ndarray]:
    """Processor inputs (video with its audio track interleaved) and the answers ``[B]``."""
    from ..inputs import conversation_inputs

    conversations = [[{"role": "user", "content": [
        {"type": "video", "video": s.frames, "audio": s.audio},
        {"type": "text", "text": s.question},
    ]}] for s in samples]
    inputs, _ = conversation_inputs(processor, conversations, use_audio_in_video=True, fps=FPS)
    return inputs, np.array([s.answer for s in samples], dtype=np.int64)
