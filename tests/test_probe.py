"""The accuracy probe (docs/probe.md): its clips, its processor, its committed weights, its CLI.

The committed model is evaluated on held-out clips: with all tokens it must answer (almost)
everything, and pruning by ``random`` at 25% retention must cost it clearly (the probe
discriminates). Everything else checks the task against independent readings of the media.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


def squares_in(frames: np.ndarray, frames_of_window: slice = slice(0, FPS)) -> list[tuple[int, int, int]]:
    """(window, cell row, cell col) of every cell whose top pixel row, averaged over the given
    frames of each window, is one of the answer colours: the squares, read back from the
    pixels."""
    t, h, w, _ = frames.shape
    rows = frames.reshape(t // FRAMES_PER_WINDOW, FRAMES_PER_WINDOW, h // CELL, CELL, w // CELL,
                          CELL, 3)[:, frames_of_window, :, 0].astype(float).mean(axis=(1, 4))
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
    assert squares_in(sample.frames, slice(FPS, None)) == [], "the square flashes for 1 s only"
    w, r, c = next(s for s in squares if s[0] == sample.target)
    block = sample.frames[w * FRAMES_PER_WINDOW, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
    assert nearest_colour(block[1].astype(float)) == sample.answer  # the edge row: its colour
    ring = (block[CELL // 2, CELL // 2] > 230).all()
    assert ring == (variant == "visual")
    energy = window_energy(sample.audio)
    assert int(np.argmax(energy)) == sample.tone
    assert energy.max() > 20 * np.median(energy), "one loud tone, low noise elsewhere"
    per_second = (sample.audio.reshape(-1, SAMPLING_RATE).astype(np.float64) ** 2).mean(axis=1)
    loud = np.flatnonzero(per_second > 20 * np.median(per_second)).tolist()
    assert loud == [SECONDS_PER_WINDOW * sample.tone], "the tone sounds with the flash (1 s)"
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
    with pytest.raises(ValueError, match="tone_seconds must be 1 or 2, got 3"):
        ProbeTask(tone_seconds=3)
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


# ----------------------------------------------------------------------------- committed weights

HELDOUT_PER_VARIANT = 24


@pytest.fixture(scope="module")
def probe():
    from omnizip.probe.model import load_probe

    return load_probe()


@pytest.fixture(scope="module")
def heldout(probe):
    from omnizip.probe.evaluate import heldout_set

    return heldout_set(probe, HELDOUT_PER_VARIANT)


@pytest.fixture(scope="module")
def full_row(probe, heldout):
    from omnizip.probe.evaluate import evaluate

    return evaluate(probe, heldout)


def test_committed_weights_answer_the_heldout_clips(full_row):
    assert full_row["n"] == 2 * HELDOUT_PER_VARIANT
    assert full_row["kept"] == full_row["kept_audio"] == full_row["kept_video"] == 1.0
    assert full_row["accuracy"] >= 0.95, full_row
    for variant, accuracy in full_row["accuracy_by_variant"].items():
        assert accuracy >= 0.9, (variant, full_row)


@pytest.fixture(scope="module")
def random_row(probe, heldout):
    from omnizip.probe.evaluate import evaluate, probe_method

    return evaluate(probe, heldout, probe_method("random", 0.25), "random", 0.25)


def test_the_probe_discriminates_random_pruning(random_row, full_row):
    """Random pruning to 25% loses the flashed square often enough to cost clearly."""
    assert random_row["kept"] == pytest.approx(0.25, abs=0.01)
    assert random_row["kept_audio"] == pytest.approx(0.25, abs=0.01)
    assert random_row["accuracy"] <= full_row["accuracy"] - RANDOM_MARGIN, (random_row, full_row)


def test_flops_count_what_the_decoder_saw(probe, heldout, random_row):
    """A pre-decoder method's measured cost is its kept prompt's (every clip: text + kept audio
    and video), and the count model's prediction agrees with it; FastV's prediction counts its
    full first layer."""
    from omnizip.flops import run_macs
    from omnizip.probe.evaluate import predicted_flops

    def lengths(variant: str) -> tuple[int, int]:  # (prompt, kept prompt) of a variant's rows
        ids = heldout.batches[variant][0][0]["input_ids"][0]
        n_media = int(((ids == 151646) | (ids == 151656)).sum())
        return int(ids.numel()), int(ids.numel()) - n_media + round(0.25 * n_media)

    macs = {v: [run_macs(probe.model, n) for n in lengths(v)] for v in heldout.batches}
    measured = sum(k for _, k in macs.values()) / sum(f for f, _ in macs.values())
    assert random_row["flops_ratio"] == pytest.approx(measured, rel=1e-3)
    length, kept = lengths("audio")
    layers = probe.model.config.text_config.num_hidden_layers
    expected = run_macs(probe.model, kept) / run_macs(probe.model, length)
    assert predicted_flops(probe, heldout, "random", 0.25) == pytest.approx(expected, rel=1e-9)
    fastv = (run_macs(probe.model, length) + (layers - 1) * run_macs(probe.model, kept)
             ) / layers / run_macs(probe.model, length)
    assert predicted_flops(probe, heldout, "fastv", 0.25) == pytest.approx(fastv, rel=0.02)


RANDOM_MARGIN = 0.2


def test_the_weights_file_holds_only_the_trained_parameters(probe):
    from safetensors import safe_open

    from omnizip.probe.model import ASSETS

    path = ASSETS / "probe.safetensors"
    assert path.stat().st_size < 8_000_000
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    assert not any("embed_tokens" in n for n in names)
    assert "lm_head.weight" in names
    assert probe.model.lm_head.weight.shape == (4, probe.record["sizes"]["text_hidden"])
    # the frozen table is rebuilt from the seed: the same as a fresh seeded model's
    from omnizip.probe.model import build_probe_model

    fresh = build_probe_model(probe.record["seed"], probe.record["answer_token_ids"],
                              probe.record["sizes"])
    assert torch.equal(fresh.get_input_embeddings().weight,
                       probe.model.get_input_embeddings().weight)


def test_load_probe_refuses_missing_or_mismatched_files(tmp_path):
    import shutil

    from omnizip.probe.model import ASSETS, load_probe

    with pytest.raises(FileNotFoundError, match=r"missing probe\.safetensors"):
        load_probe(tmp_path)
    shutil.copy(ASSETS / "probe.json", tmp_path / "probe.json")
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(4, 8)}, str(tmp_path / "probe.safetensors"))
    with pytest.raises(ValueError, match="do not match the model"):
        load_probe(tmp_path)


# ----------------------------------------------------------------------------- the command

def test_probe_command_prints_the_rows_as_json(capsys, tmp_path):
    from omnizip import cli
    from omnizip.probe.report import JSON_KEYS

    code = cli.main(["probe", "--methods", "random,omnizip", "--retentions", "0.25", "--samples",
                     "2", "--json", "--quiet", "-o", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)
    assert [(r["method"], r["retention"]) for r in rows] == [
        ("full", 1.0), ("random", 0.25), ("omnizip", 0.25)]
    for row in rows:
        assert tuple(row) == JSON_KEYS
        assert 0.0 <= row["accuracy"] <= 1.0
    assert rows[0]["kept"] == 1.0 and abs(rows[1]["kept"] - 0.25) < 0.01
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["full", "random", "omnizip"]
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "nope"], "--methods: unknown method 'nope'; known methods: omnizip"),
    (["--retentions", "0.3,1.5"], "--retentions: each retention must lie in (0, 1], got 1.5"),
    (["--retentions", "x"], "--retentions: 'x' is not a number"),
    (["--samples", "0"], "--samples must be >= 1, got 0"),
])
def test_probe_command_refuses_bad_options_in_one_line(capsys, tmp_path, args, message):
    from omnizip import cli

    code = cli.main(["probe", "--quiet", "-o", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


# ----------------------------------------------------------------------------- training

def test_the_auxiliary_loss_wants_each_windows_audio_to_name_its_square():
    """audio_colour_loss: every audio token names the colour of its window's square. Logits
    that say exactly that cost ~0; the same colours one window off cost more; a window
    without a square (curriculum clips) is left out."""
    from types import SimpleNamespace

    from omnizip.probe.train import audio_colour_loss

    audio_id, per_window = 7, 50
    samples = [make_sample(TASK, "audio", 11), make_sample(TASK, "visual", 12, distractors=False)]
    model = SimpleNamespace(config=SimpleNamespace(audio_token_id=audio_id),
                            lm_head=lambda h: h)  # hidden size 4: the logits themselves
    ids = torch.tensor([[1, 2] + [audio_id] * (per_window * TASK.windows) + [3]] * 2)

    def loss_with_colours(shift: int) -> float:
        hidden = torch.zeros(2, ids.shape[1], 4)
        for row, sample in enumerate(samples):
            for w in range(TASK.windows):
                colour = sample.colours[(w + shift) % TASK.windows]
                span = slice(2 + w * per_window, 2 + (w + 1) * per_window)
                hidden[row, span, max(colour, 0)] = 60.0  # softmax ~ one-hot
        return float(audio_colour_loss(model, hidden, ids, samples))

    assert samples[1].colours.count(-1) == TASK.windows - 1
    assert loss_with_colours(0) < 1e-6
    assert loss_with_colours(1) > 1.0


def test_the_tone_target_wants_only_the_tones_audio_to_name_a_colour():
    """audio_colour_loss with ``loud_tokens`` (the committed recipe): the tone's audio tokens
    name their window's colour, every other audio token names none (uniform answer logits).
    Those logits cost ~0; naming every window's colour (the window target's optimum), or the
    tone's colour one window off, costs more; a tone window without a square names nothing."""
    from types import SimpleNamespace

    from omnizip.probe.train import audio_colour_loss

    audio_id, per_window, loud = 7, 50, 25
    samples = [make_sample(TASK, "audio", 11), make_sample(TASK, "visual", 12)]
    model = SimpleNamespace(config=SimpleNamespace(audio_token_id=audio_id),
                            lm_head=lambda h: h)  # hidden size 4: the logits themselves
    ids = torch.tensor([[1, 2] + [audio_id] * (per_window * TASK.windows) + [3]] * 2)

    def loss(fill) -> float:
        hidden = torch.zeros(2, ids.shape[1], 4)
        for row, sample in enumerate(samples):
            fill(hidden[row], sample)
        return float(audio_colour_loss(model, hidden, ids, samples, loud_tokens=loud))

    def tone_only(h, s, window=None):
        w = s.tone if window is None else window
        h[2 + w * per_window: 2 + w * per_window + loud, s.colours[s.tone]] = 60.0

    def every_window(h, s):
        for w in range(TASK.windows):
            h[2 + w * per_window: 2 + (w + 1) * per_window, s.colours[w]] = 60.0

    assert loss(tone_only) < 1e-6
    assert loss(lambda h, s: tone_only(h, s, (s.tone + 1) % TASK.windows)) > 1.0
    assert loss(every_window) > 1.0
    assert abs(loss(lambda h, s: None) - float(torch.log(torch.tensor(4.0)))) < 1e-6
    # curriculum clip: the tone's window shows no square -> every token should name nothing
    plain = make_sample(TASK, "visual", 12, distractors=False)
    assert plain.colours[plain.tone] == -1 and plain.tone != plain.target
    hidden = torch.zeros(1, ids.shape[1], 4)
    assert float(audio_colour_loss(model, hidden, ids[:1], [plain], loud_tokens=loud)) < 1e-6
