"""A stream's token layout against the processor's ids and the model's own ``get_rope_index``.

omnizip/stream/layout.py builds the audio-in-video prompt window by window from counts; here
the processor (the real ``Qwen2_5OmniProcessor`` / ``Qwen3OmniMoeProcessor``) lays out the
same clip and the unpatched model numbers it (``get_rope_index``), independently of that code.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, MODEL_SIZES

from omnizip.demo.media import synthetic_frames, synthetic_speech
from omnizip.inputs import conversation_inputs
from omnizip.stream.family import stream_family
from omnizip.stream.offline import media_ids
from omnizip.stream.prompt import prompt_pieces

# (video seconds, audio seconds): whole windows, partial last windows, audio longer (its tail
# joins the last window), video longer (trailing video steps), an odd frame count
CLIPS = [(4, 4), (5, 5), (3, 3.7), (6, 3.2), (2.5, 6.3), (1, 1), (0.5, 3), (7.5, 2), (4.5, 4.5)]


def processor_prompt(fam, frames, audio, question="What?"):
    inputs, _ = conversation_inputs(
        fam.processor(), [[{"role": "user", "content": [
            {"type": "video", "video": frames, "audio": audio},
            {"type": "text", "text": question}]}]], fps=2.0)
    return dict(inputs)


def rope(model, inputs):
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    return positions[:, 0]


def stream_prompt(family, pieces, steps, n_audio, grid, question="What?", base=(0, 0)):
    """ids and positions as the session builds them: prefix, the media in prompt order,
    the closing markers and the question."""
    layout = family.layout
    start = layout.media_start(pieces.n_text)
    tokens = layout.window((base[0], steps), (base[1], n_audio), grid, start, base)
    order = layout.prompt_order((base[0], steps), (base[1], n_audio), grid)
    closing = pieces.closing_ids(question)
    first = start + layout.closing_base(n_audio - base[1], steps - base[0], grid)
    ids = torch.cat([pieces.prefix_ids, tokens.input_ids[order], closing])
    positions = torch.cat([layout.prefix_positions(pieces.n_text), tokens.positions[:, order],
                           layout.closing_positions(first, closing.numel())], dim=1)
    return ids, positions


@pytest.mark.parametrize("clip", CLIPS, ids=[f"v{v}-a{a}" for v, a in CLIPS])
def test_stream_layout_is_the_processors_and_get_rope_index(fam, clip):
    model = fam.thinker(**MODEL_SIZES[fam.name])
    (w, h), (vs, as_) = fam.frame, clip
    frames = synthetic_frames(vs, width=w, height=h, seed=1)
    audio = synthetic_speech(as_, min(as_, 2.0), seed=1)
    inputs = processor_prompt(fam, frames, audio)
    family = stream_family(model, 2.0)
    grid_thw = inputs["video_grid_thw"][0].tolist()
    grid = (grid_thw[1] // 2, grid_thw[2] // 2)
    n_audio = family.audio_tokens(int(inputs["feature_attention_mask"].sum()))
    ids, positions = stream_prompt(family, prompt_pieces(fam.processor()), grid_thw[0], n_audio, grid)
    assert torch.equal(ids, inputs["input_ids"][0])
    assert torch.equal(positions.to(torch.float64), rope(model, inputs).to(torch.float64))
    # offline_inputs' media block is the same
    media = media_ids(family.layout, grid_thw[0], n_audio, grid)
    start = prompt_pieces(fam.processor()).prefix_ids.numel()
    assert torch.equal(media, inputs["input_ids"][0, start : start + media.numel()])


def test_w_windows_are_a_prefix_of_w_plus_one(fam):
    """The property streams rely on, read from the model alone: the media positions of a clip
    of W whole windows are a prefix of those of W + 1 windows (only the closing moves)."""
    model = fam.thinker(**MODEL_SIZES[fam.name])
    w, h = fam.frame
    per_window = 2.0 if fam.name == "qwen2_5" else 1.0
    frames = synthetic_frames(4 * per_window, width=w, height=h, seed=2)
    audio = synthetic_speech(4 * per_window, 2.0, seed=2)
    rate = 16000
    previous = None
    for windows in (2, 3, 4):
        n_frames = round(windows * per_window * 2)
        inputs = processor_prompt(fam, frames[:n_frames], audio[: round(windows * per_window * rate)])
        ids = inputs["input_ids"][0]
        media_end = int((ids == fam.audio).nonzero().max()) + 1
        current = (ids[:media_end], rope(model, inputs)[:, :media_end])
        if previous is not None:
            n = previous[0].numel()
            assert torch.equal(current[0][:n], previous[0])
            assert torch.equal(current[1][:, :n], previous[1])
            assert current[0].numel() > n
        previous = current


def test_rebased_positions_are_those_of_the_clip_cut_at_the_first_retained_window(fam):
    """What the bounded session re-prefills: windows f.. at the positions of a fresh offline
    run over a clip that starts at window f (get_rope_index of that clip)."""
    model = fam.thinker(**MODEL_SIZES[fam.name])
    family = stream_family(model, 2.0)
    layout = family.layout
    w, h = fam.frame
    seconds_per_window = layout.window_positions / family.positions_per_second
    frames = synthetic_frames(5 * seconds_per_window, width=w, height=h, seed=3)
    audio = synthetic_speech(5 * seconds_per_window, 2.0, seed=3)
    first = 2
    frames_per_window = round(2 * seconds_per_window)
    cut = processor_prompt(fam, frames[first * frames_per_window:],
                           audio[round(first * seconds_per_window * 16000):])
    grid_thw = cut["video_grid_thw"][0].tolist()
    grid = (grid_thw[1] // 2, grid_thw[2] // 2)
    steps = first * layout.steps_per_window + grid_thw[0]
    n_audio = first * layout.window_positions + family.audio_tokens(
        int(cut["feature_attention_mask"].sum()))
    base = (first * layout.steps_per_window, first * layout.window_positions)
    ids, positions = stream_prompt(family, prompt_pieces(fam.processor()), steps, n_audio, grid,
                                   base=base)
    assert torch.equal(ids, cut["input_ids"][0])
    assert torch.equal(positions.to(torch.float64), rope(model, cut).to(torch.float64))


def test_frame_rates_that_miss_the_position_clock_are_refused(fam):
    model = fam.thinker(**MODEL_SIZES[fam.name])
    with pytest.raises(ValueError, match="fps"):
        stream_family(model, 3.0)  # Qwen2.5: 16.7 positions per step; Qwen3: 8.67
    with pytest.raises(ValueError, match="fps"):
        stream_family(model, float("nan"))
    assert stream_family(model, 1.0).layout.step_positions == 2 * stream_family(model, 2.0).layout.step_positions


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match=r"model: omnizip\.stream does not support Linear"):
        stream_family(torch.nn.Linear(2, 2), 2.0)


def test_families_are_read_from_the_config():
    q25 = stream_family(FAMILIES["qwen2_5"].thinker(), 2.0)
    q3 = stream_family(FAMILIES["qwen3"].thinker(**MODEL_SIZES["qwen3"]), 2.0)
    assert (q25.layout.window_positions, q25.layout.steps_per_window, q25.audio_pool) == (50, 2, 2)
    assert (q3.layout.window_positions, q3.layout.steps_per_window, q3.audio_pool) == (13, 1, 1)
    assert q25.mel_per_encoder_window == 200 and q3.mel_per_encoder_window == 200  # tiny: 2 s
    assert q25.audio_tokens(200) == 50 and q3.audio_tokens(100) == 13
    assert q25.position_limit == 32768
