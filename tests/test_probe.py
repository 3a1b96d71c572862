"""The accuracy probe (docs/probe.md): its clips, its processor, its committed weights, its CLI.

The committed model is evaluated on held-out clips: with all tokens it must answer (almost)
everything, and pruning by ``random`` at 25% retention must cost it clearly (the probe
discriminates). Everything else checks the task against independent readings of the media.
"""

from __future__ import annotations

import numpy as np
import pytest

from omnizip.probe.task import (
    CELL,
    COLOURS,
    FPS,
    SAMPLING_RATE,
    SECONDS_PER_WINDOW,
    ProbeTask,
    build_batch,
    build_probe_processor,
    make_sample,
)

TASK = ProbeTask()
FRAMES_PER_WINDOW = SECONDS_PER_WINDOW * FPS


def squares_in(frames: np.ndarray) -> list[tuple[int, int, int]]:
    """(window, cell row, cell col) of every cell whose top pixel row, averaged over the
    window's frames, is one of the answer colours: the squares, read back from the pixels."""
    t, h, w, _ = frames.shape
    rows = frames.reshape(t // FRAMES_PER_WINDOW, FRAMES_PER_WINDOW, h // CELL, CELL, w // CELL,
                          CELL, 3)[:, :, :, 0].astype(float).mean(axis=(1, 4))  # [W, rows, cols, 3]
    palette = np.array([c for _, c in COLOURS], dtype=float)
    distance = np.abs(rows[..., None, :] - palette).sum(-1).min(-1)
    return [tuple(int(i) for i in idx) for idx in np.argwhere(distance < 30)]


def nearest_colour(rgb: np.ndarray) -> int:
    return int(np.argmin([np.abs(np.array(c) - rgb).sum() for _, c in COLOURS]))


def window_energy(audio: np.ndarray) -> np.ndarray:
    per_window = SECONDS_PER_WINDOW * SAMPLING_RATE
    return (audio.reshape(-1, per_window).astype(np.float64) ** 2).mean(axis=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("variant", ["audio", "visual"])
def test_a_clip_holds_what_its_answer_says(variant, seed):
    sample = make_sample(TASK, variant, seed)
    assert sample.frames.shape == (TASK.windows * FRAMES_PER_WINDOW, 168, 168, 3)
    assert sample.frames.dtype == np.uint8 and sample.audio.dtype == np.float32
    squares = squares_in(sample.frames)
    assert sorted(w for w, _, _ in squares) == list(range(TASK.windows)), "one square per window"
    w, r, c = next(s for s in squares if s[0] == sample.target)
    block = sample.frames[w * FRAMES_PER_WINDOW, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
    assert nearest_colour(block[1].astype(float)) == sample.answer  # the edge row: its colour
    ring = (block[CELL // 2, CELL // 2] > 230).all()
    assert ring == (variant == "visual")
    energy = window_energy(sample.audio)
    assert int(np.argmax(energy)) == sample.tone
    assert energy.max() > 20 * np.median(energy), "one loud tone, low noise elsewhere"
    if variant == "audio":
        assert sample.tone == sample.target
    again = make_sample(TASK, variant, seed)
    assert np.array_equal(again.frames, sample.frames) and np.array_equal(again.audio, sample.audio)


def test_curriculum_clips_show_only_the_target_on_a_plain_background():
    sample = make_sample(TASK, "audio", 3, distractors=False, plain=True)
    assert [w for w, _, _ in squares_in(sample.frames)] == [sample.target]
    background = sample.frames[:, :CELL, :CELL].astype(float).mean(axis=(0, 1, 2))
    assert np.abs(background - 115).max() < 25  # noise only, unless the square sits there


def test_bad_task_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="frame_size must be a multiple of 28"):
        ProbeTask(frame_size=100)
    with pytest.raises(ValueError, match="windows must be an int >= 1"):
        ProbeTask(windows=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        make_sample(TASK, "speech", 0)


def test_the_processor_lays_out_the_token_mix_of_the_task():
    """Real processor: 50 audio tokens and 2 grid steps of (168/28)^2 video tokens per window,
    video the majority of the audio + video tokens (as at real resolutions)."""
    processor = build_probe_processor(TASK)
    inputs, answers = build_batch(processor, [make_sample(TASK, "audio", 0),
                                              make_sample(TASK, "audio", 1)])
    ids = inputs["input_ids"]
    n_audio = int((ids[0] == 151646).sum())
    n_video = int((ids[0] == 151656).sum())
    assert n_audio == TASK.audio_tokens == 4 * 50
    assert n_video == TASK.video_tokens == 4 * 2 * 36
    assert n_video / (n_audio + n_video) > 0.5
    assert inputs["video_grid_thw"].tolist() == [[8, 12, 12]] * 2
    assert answers.tolist() == [make_sample(TASK, "audio", s).answer for s in (0, 1)]


def test_clip_length_feature_window_gives_the_checkpoints_features():
    """The probe's Whisper extractor pads to the clip, the checkpoint's to 300 s: the features of
    the clip agree except the last frame (its centred window sees the reflected end)."""
    from transformers import WhisperFeatureExtractor

    audio = make_sample(TASK, "audio", 5).audio
    ours = build_probe_processor(TASK).feature_extractor
    real = WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLING_RATE, hop_length=160,
                                   chunk_length=300, n_fft=400, padding_value=0.0)
    a = ours([audio], sampling_rate=SAMPLING_RATE, padding="max_length",
             return_tensors="np")["input_features"][0]
    b = real([audio], sampling_rate=SAMPLING_RATE, padding="max_length",
             return_tensors="np")["input_features"][0, :, : a.shape[1]]
    assert a.shape == (128, TASK.seconds * 100)
    assert np.array_equal(a[:, :-1], b[:, :-1])
    assert np.abs(a[:, -1] - b[:, -1]).max() < 0.1
