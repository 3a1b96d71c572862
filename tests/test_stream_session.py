"""``omnizip.stream`` on the tiny models of both families, against the one-shot offline run.

The reference never goes through the session: the same frames and audio built into processor
inputs at once (:func:`omnizip.stream.offline_inputs`), the model patched with the same causal
configuration (``omnizip.patch``) and ``generate`` called once; the decoder inputs of the
unpatched model (``capture_decoder_inputs``) for the encoders; the model's own
``get_rope_index`` for positions after the bounded-memory policy re-based them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MODEL_SIZES, VIDEO, audio_id, lm_of

import omnizip
from omnizip import OmniZipConfig
from omnizip.demo.media import synthetic_frames, synthetic_speech
from omnizip.models.capture import capture_decoder_inputs
from omnizip.stream import offline_inputs

NEW = 4
RATE = 16000
QUESTION = "What happens in the clip?"
#: a short look-back so the spans roll over within the test clips
CONFIG = OmniZipConfig.preset("45", causal=True, causal_lookback=3)


def setup(fam):
    return fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()


def clip(fam, video_seconds, audio_seconds, seed=0):
    w, h = fam.frame
    return (synthetic_frames(video_seconds, width=w, height=h, seed=seed),
            synthetic_speech(audio_seconds, 0.6 * audio_seconds, seed=seed))


def offline(model, processor, frames, audio, config=CONFIG):
    """The one-shot offline run: (new tokens, logits [n, V], the core's decision)."""
    inputs = offline_inputs(model, processor, frames, audio, QUESTION)
    with omnizip.patch(model, config) as handle, torch.no_grad():
        out = model.generate(**inputs, use_audio_in_video=True, max_new_tokens=NEW,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
        result = handle.results[0]
        result.audio_scores = handle.audio_scores[0]
    new = out.sequences[0, inputs["input_ids"].shape[1]:]
    return new.tolist(), torch.cat(out.logits), result, inputs


def feed(session, frames, audio, rng, frame_end=None, sample_end=None, at=(0, 0)):
    """Append frames[at[0]:frame_end] and audio[at[1]:sample_end] in random, unaligned chunks
    (either side may be empty in a chunk); returns where it stopped."""
    fi, ai = at
    frame_end = len(frames) if frame_end is None else frame_end
    sample_end = len(audio) if sample_end is None else sample_end
    while fi < frame_end or ai < sample_end:
        nf, na = int(rng.integers(0, 4)), int(rng.integers(0, 14000))
        session.append(frames[fi:min(fi + nf, frame_end)], audio[ai:min(ai + na, sample_end)])
        fi, ai = min(fi + nf, frame_end), min(ai + na, sample_end)
    return fi, ai


def ask(session, final=False):
    session.ask(QUESTION, final=final, max_new_tokens=NEW, do_sample=False, output_logits=True,
                return_dict_in_generate=True)
    return session.answers[-1].tokens, torch.cat(session.last_output.logits)


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_equals_the_offline_causal_run(fam, seed):
    """Any chunking (unaligned to windows, the last window partial): the same greedy tokens and
    logits as one offline run; each window decided at its commit as the offline run decides it
    seeing the whole clip (keep masks and merged embeddings)."""
    model, processor = setup(fam)
    frames, audio = clip(fam, 5.5, 5.3, seed=seed)
    tokens, logits, result, inputs = offline(model, processor, frames, audio)
    session = omnizip.stream(model, processor, CONFIG)
    scores = []
    encode_audio = session._encoders.audio

    def audio_encoder(mel):
        out = encode_audio(mel)
        scores.append(out.scores)
        return out

    session._encoders.audio = audio_encoder
    feed(session, frames, audio, np.random.default_rng(seed))
    got, got_logits = ask(session, final=True)
    # the causal audio scores (encoder windows scored with their look-back) are the offline
    # call's (up to the encoder's float rounding: it ran on other batch shapes)
    torch.testing.assert_close(torch.cat(scores), result.audio_scores, atol=1e-5, rtol=1e-6)
    assert got == tokens
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)
    counts = [[w.audio, w.kept_audio, w.video, w.kept_video] for w in session.windows]
    assert counts == result.window_counts().tolist()
    assert [w.index for w in session.windows] == list(range(len(counts)))
    ids = inputs["input_ids"][0]
    media = (ids == VIDEO) | (ids == audio_id(model))
    keep = torch.cat([w.keep for w in session.windows])
    assert torch.equal(keep, result.keep[media].cpu())
    merged = result.embeds[media][result.keep[media]]
    torch.testing.assert_close(torch.cat([w.embeds for w in session.windows]), merged,
                               atol=1e-5, rtol=1e-5)


def test_mid_stream_questions_equal_offline_runs_on_the_committed_windows(fam):
    """Asked mid-stream, the answer is the offline run's on the clip cut to the committed
    windows (their media and the 159 samples their last features read ahead, short of another
    frame); the stream goes on, and its final answer is the whole clip's."""
    model, processor = setup(fam)
    frames, audio = clip(fam, 7.0, 7.0, seed=3)
    rng = np.random.default_rng(3)
    session = omnizip.stream(model, processor, CONFIG)
    at = feed(session, frames, audio, rng, frame_end=9, sample_end=int(4.4 * RATE))
    committed = session.windows
    assert committed and not session.finished
    steps = max(w.steps[1] for w in committed)
    audio_end = max(w.audio_range[1] for w in committed)
    seconds = audio_end / session.family.positions_per_second
    tokens, logits, _, _ = offline(model, processor, frames[: steps * 2],
                                   audio[: round(seconds * RATE) + 159])
    got, got_logits = ask(session)
    assert got == tokens
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)
    assert session.windows == committed  # asking commits nothing and changes nothing
    feed(session, frames, audio, rng, at=at)
    tokens, logits, _, _ = offline(model, processor, frames, audio)
    got, got_logits = ask(session, final=True)
    assert got == tokens
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)


def test_encoders_see_only_new_media_and_match_the_whole_clip(fam):
    """Whole video steps and whole audio-encoder windows encoded as they arrive give the rows
    the unpatched model computes for the whole clip (and DeepStack features on Qwen3-Omni)."""
    model, processor = setup(fam)
    frames, audio = clip(fam, 6.0, 5.5, seed=4)
    session = omnizip.stream(model, processor, CONFIG)
    seen = {"video": [], "deep": [], "audio": []}
    video_call, audio_call = session._encoders.video, session._encoders.audio

    def video(pixels, steps, grid):
        out = video_call(pixels, steps, grid)
        seen["video"].append((steps, out.embeds))
        if out.deepstack is not None:
            seen["deep"].append(out.deepstack)
        return out

    def audio_encode(mel):
        out = audio_call(mel)
        seen["audio"].append((mel.shape[-1], out.embeds))
        return out

    session._encoders.video, session._encoders.audio = video, audio_encode
    feed(session, frames, audio, np.random.default_rng(4))
    session.finish()
    assert len(seen["video"]) > 1 and len(seen["audio"]) > 1  # encoded piece by piece
    window_mel = session.family.mel_per_encoder_window
    assert all(n == window_mel for n, _ in seen["audio"][:-1])  # whole encoder windows
    inputs = offline_inputs(model, processor, frames, audio, QUESTION)
    captured = capture_decoder_inputs(model, **inputs, use_audio_in_video=True)
    ids = inputs["input_ids"][0]
    embeds = captured["inputs_embeds"][0]
    torch.testing.assert_close(torch.cat([e for _, e in seen["video"]]), embeds[ids == VIDEO],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([e for _, e in seen["audio"]]),
                               embeds[ids == audio_id(model)], atol=1e-5, rtol=1e-5)
    if captured.get("deepstack_visual_embeds") is not None:
        for layer, reference in enumerate(captured["deepstack_visual_embeds"]):
            torch.testing.assert_close(torch.cat([d[layer] for d in seen["deep"]]), reference,
                                       atol=1e-5, rtol=1e-5)


def _rope(model, inputs):
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    return positions[:, 0]


def test_bounded_cache_stays_under_the_bound_and_equals_a_fresh_run(fam):
    """max_cache_tokens: the cache never exceeds it; after the oldest windows were dropped,
    the cache equals one fresh decoder run over the prompt prefix and the retained windows'
    kept tokens at the positions get_rope_index gives a clip that starts at the first retained
    window."""
    model, processor = setup(fam)
    frames, audio = clip(fam, 14.0, 14.0, seed=5)
    per_window = 82 if fam.name == "qwen2_5" else 29  # one uncompressed window's tokens
    bound = 16 + 3 * per_window
    session = omnizip.stream(model, processor, CONFIG, max_cache_tokens=bound)
    rng = np.random.default_rng(5)
    fi = ai = 0
    while fi < len(frames) - 1:  # all but the last frame: the last window stays uncommitted
        nf = int(rng.integers(1, 4))
        na = nf * RATE // 2 + int(rng.integers(-3000, 3000))
        session.append(frames[fi:fi + nf], audio[ai:ai + max(na, 0)])
        fi, ai = min(fi + nf, len(frames) - 1), min(ai + max(na, 0), len(audio))
        assert session.cache_tokens <= bound
    assert session.rebuilds >= 1
    retained = [w for w in session.windows if w.in_cache]
    dropped = [w for w in session.windows if not w.in_cache]
    assert dropped and dropped == session.windows[: len(dropped)]  # the oldest went
    first, last = retained[0], retained[-1]
    layout = session.family.layout
    seconds = layout.window_positions / session.family.positions_per_second
    f0, f1 = first.steps[0] * 2, last.steps[1] * 2
    a0 = round(first.audio_range[0] / layout.window_positions * seconds * RATE)
    a1 = round(last.audio_range[1] / layout.window_positions * seconds * RATE)
    cut = offline_inputs(model, processor, frames[f0:f1], audio[a0:a1], QUESTION)
    positions = _rope(model, cut)
    ids = cut["input_ids"][0]
    media = (ids == VIDEO) | (ids == audio_id(model))
    prefix = int(media.nonzero()[0])
    keep = torch.cat([w.keep for w in retained])
    assert int(media.sum()) == keep.numel()
    media_positions = positions[:, prefix : prefix + keep.numel()][:, keep]
    embed = lm_of(model).embed_tokens
    with torch.no_grad():
        embeds = torch.cat([embed(ids[:prefix]), *[w.embeds for w in retained]])
        extra = {}
        if retained[0].deepstack is not None:
            visual = torch.cat([torch.zeros(prefix, dtype=torch.bool),
                                *[(torch.arange(w.keep.numel()) < w.video)[w.keep] for w in retained]])
            extra = {"visual_pos_masks": visual[None], "deepstack_visual_embeds": [
                torch.cat([w.deepstack[i] for w in retained]) for i in range(len(retained[0].deepstack))]}
        fresh = lm_of(model)(inputs_embeds=embeds[None],
                             position_ids=torch.cat([positions[:, :prefix], media_positions], 1)[:, None],
                             use_cache=True, **extra).cache
    assert session.cache_tokens == embeds.shape[0]
    for mine, ref in zip(session._cache.cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(mine.keys, ref.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.values, ref.values, atol=1e-5, rtol=1e-4)
    session.ask(QUESTION, max_new_tokens=2)  # answers on the retained windows


def test_position_limit_drops_windows_instead_of_overflowing(fam):
    model, processor = setup(fam)
    frames, audio = clip(fam, 12.0, 12.0, seed=6)
    pps = 25 if fam.name == "qwen2_5" else 13
    limit, reserve = 16 + 8 * pps, 40  # 8 of the 12 seconds would fit
    session = omnizip.stream(model, processor, CONFIG, position_limit=limit,
                             question_positions=reserve)
    feed(session, frames, audio, np.random.default_rng(6))
    session.finish()
    assert session.rebuilds >= 1 and not session.windows[0].in_cache
    retained = [w for w in session.windows if w.in_cache]
    assert max(float(session._positions(w).max()) for w in retained) <= limit - reserve
    session.ask(QUESTION, max_new_tokens=8)
    with pytest.raises(ValueError, match=f"position_limit {limit}"):
        session.ask(QUESTION, max_new_tokens=500)


def test_a_patch_on_the_model_stays_inert_during_the_session(fam):
    """The session calls the encoders and the decoder directly and ``generate`` on its own
    cache: an OmniZip patch on the same model neither runs nor changes its answers."""
    model, processor = setup(fam)
    frames, audio = clip(fam, 4.5, 4.5, seed=9)
    answers = []
    for patched in (False, True):
        handle = omnizip.patch(model, OmniZipConfig()) if patched else None
        try:
            session = omnizip.stream(model, processor, CONFIG)
            feed(session, frames, audio, np.random.default_rng(9))
            answers.append(ask(session, final=True))
            if handle is not None:
                assert handle.results is None  # no prefill of the patch ran
        finally:
            if handle is not None:
                handle.remove()
    assert answers[0][0] == answers[1][0]
    torch.testing.assert_close(answers[0][1], answers[1][1])


# ----------------------------------------------------------------------------- bad input
def _state(session):
    return (len(session.windows), session.cache_tokens, session._frames.received,
            session._mel.samples, session.t)


def test_bad_input_is_refused_clearly_and_loses_nothing(fam):
    model, processor = setup(fam)
    frames, audio = clip(fam, 5.0, 5.0, seed=7)
    session = omnizip.stream(model, processor, CONFIG)
    with pytest.raises(ValueError, match="ask: no media yet"):
        session.ask(QUESTION)
    session.append(frames[:2], audio[:RATE])
    with pytest.raises(ValueError, match="no window is committed yet"):
        session.ask(QUESTION)
    feed(session, frames, audio, np.random.default_rng(7), frame_end=7, sample_end=3 * RATE,
         at=(2, RATE))
    before = _state(session)
    assert before[0] >= 1
    other = fam.video2
    bad_calls = [
        (ValueError, "frames: the stream's frames are", dict(frames=synthetic_frames(1.0, width=other[0], height=other[1]))),
        (TypeError, "frames must have dtype uint8", dict(frames=frames[7:8].astype(np.float32))),
        (ValueError, r"frames must have shape \[T, H, W, 3\]", dict(frames=frames[7])),
        (TypeError, "frames must be a uint8 array", dict(frames=[[1, 2, 3]])),
        (TypeError, "audio must be floating point", dict(audio=(audio[:800] * 3e4).astype(np.int16))),
        (ValueError, r"audio must be mono, shape \[S\]", dict(audio=np.stack([audio[:800]] * 2))),
        (ValueError, "NaN", dict(audio=np.full(100, np.nan, dtype=np.float32))),
        (ValueError, "sampling_rate: the stream takes audio at 16000 Hz, got 44100",
         dict(audio=audio[:800], sampling_rate=44100)),
        # a good part with a bad one: neither is kept
        (ValueError, "sampling_rate", dict(frames=frames[7:8], audio=audio[:800], sampling_rate=8000)),
    ]
    for error, message, kwargs in bad_calls:
        with pytest.raises(error, match=message):
            session.append(**kwargs)
        assert _state(session) == before, message
    with pytest.raises(ValueError, match="num_beams=2 is not supported"):
        session.ask(QUESTION, num_beams=2)
    with pytest.raises(TypeError, match="'cache' is not accepted"):
        session.ask(QUESTION, cache=None)
    with pytest.raises(TypeError, match="question must be a str"):
        session.ask(None)
    assert _state(session) == before
    feed(session, frames, audio, np.random.default_rng(8), at=(7, 3 * RATE))
    tokens, logits, _, _ = offline(model, processor, frames, audio)
    got, got_logits = ask(session, final=True)
    assert got == tokens  # nothing committed was lost by the refused calls
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="append: the stream is finished"):
        session.append(frames[:1])
    assert session.finish() == []


def test_bad_settings_are_refused_at_start(fam):
    model, processor = setup(fam)
    with pytest.raises(ValueError, match="config: causal must be True"):
        omnizip.stream(model, processor, OmniZipConfig())
    with pytest.raises(TypeError, match=r"config must be an OmniZipConfig\(causal=True\)"):
        omnizip.stream(model, processor, {"causal": True})
    with pytest.raises(ValueError, match="fps"):
        omnizip.stream(model, processor, CONFIG, fps=3.0)
    with pytest.raises(ValueError, match="max_cache_tokens must be an int >= 1"):
        omnizip.stream(model, processor, CONFIG, max_cache_tokens="100")
    with pytest.raises(ValueError, match="max_cache_tokens must exceed"):
        omnizip.stream(model, processor, CONFIG, max_cache_tokens=5)
    with pytest.raises(ValueError, match="question_positions"):
        omnizip.stream(model, processor, CONFIG, position_limit=100, question_positions=100)
    session = omnizip.stream(model, processor, CONFIG, max_cache_tokens=20)
    frames, audio = clip(fam, 1.0, 1.0)
    with pytest.raises(ValueError, match="max_cache_tokens: 20 is too small"):
        session.append(frames, audio)
    session = omnizip.stream(model, processor, CONFIG)
    session.append(frames)
    with pytest.raises(ValueError, match="finish: the stream has no audio"):
        session.finish()
