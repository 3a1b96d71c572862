"""``omnizip.stream(..., chunk_seconds=L)``: a live stream as chunk items, each decided alone.

Reference (tests/reference_items.py): the same chunks as one multi-item prompt built by the
processor at once, run by transformers with ``omnizip.patch`` and a configuration that decides
each media item of the prompt alone; the session never goes through it. Both families, asked
after every chunk: the decoder's prefill rows and positions, the greedy tokens and their
log-probabilities are the reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MODEL_SIZES
from reference_items import chunk_session_runs, per_item_reference

import omnizip
from omnizip import OmniZipConfig
from omnizip.demo.media import synthetic_frames, synthetic_speech
from omnizip.stream import ChunkStreamSession, StreamChunk

QUESTION = "What happens in the stream?"
CONFIG = OmniZipConfig.preset("45")
CHUNK_SECONDS = 4.0  # ends on both tiny models' audio-encoder spans (2 s)
N_CHUNKS = 3
NEW = 3
RATE = 16000


def _clip(fam, seconds: float, seed: int = 0):
    w, h = fam.frame
    return (synthetic_frames(seconds, width=w, height=h, seed=seed),
            synthetic_speech(seconds, 0.6 * seconds, seed=seed))


def _chunks(frames, audio, seconds=CHUNK_SECONDS):
    nf, na = int(2 * seconds), int(RATE * seconds)
    return [(frames[i * nf:(i + 1) * nf], audio[i * na:(i + 1) * na])
            for i in range(len(frames) // nf)]


@pytest.fixture(scope="module")
def runs(fam):
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    chunks = _chunks(*_clip(fam, CHUNK_SECONDS * N_CHUNKS))
    session = chunk_session_runs(model, processor, chunks, QUESTION, CONFIG, CHUNK_SECONDS, NEW,
                                 ask_after=list(range(1, N_CHUNKS + 1)))
    reference = {}
    for n in range(1, N_CHUNKS + 1):
        items = [{"type": "video", "video": f, "audio": a} for f, a in chunks[:n]]
        reference[n] = per_item_reference(model, processor, [*items, {"type": "text", "text": QUESTION}],
                                          CONFIG, NEW)
    return {"session": session, "reference": reference}


@pytest.mark.parametrize("n", range(1, N_CHUNKS + 1))
def test_chunk_stream_equals_the_per_item_prompt(runs, n):
    """After n chunks, the session's cache holds the rows the whole n-item prompt prefills, at
    the same positions, and the question gets the same greedy tokens."""
    got, ref = runs["session"][n], runs["reference"][n]
    assert got["embeds"].shape == ref["embeds"].shape
    assert torch.equal(got["positions"], ref["positions"].to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], ref["embeds"], atol=1e-5, rtol=1e-5), (
        f"max |diff| {(got['embeds'] - ref['embeds']).abs().max():.3g}")
    assert got["tokens"] == ref["tokens"]
    assert np.allclose(got["logprobs"], ref["logprobs"], atol=1e-4, rtol=0)


def test_earlier_chunks_never_change(runs, fam):
    """Every later prompt starts with the earlier prompt's rows up to its last chunk (all but
    the question's rows): a chunk's decision, slots and positions never change."""
    from omnizip.stream.prompt import item_prompt_pieces

    n_question = int(item_prompt_pieces(fam.processor()).question_ids(QUESTION).numel())
    session = runs["session"]
    for n in range(2, N_CHUNKS + 1):
        before, after = session[n - 1], session[n]
        common = before["embeds"].shape[0] - n_question
        assert after["embeds"].shape[0] > before["embeds"].shape[0]
        assert torch.equal(after["embeds"][:common], before["embeds"][:common])
        assert torch.equal(after["positions"][:, :common], before["positions"][:, :common])


def test_a_short_last_chunk_is_committed_by_finish(fam):
    """A 10-s stream in 4-s chunks: two whole chunks as they arrive (in uneven appends), the
    last 2 s at ``ask(final=True)``; the answer is the three-item prompt's (4 + 4 + 2 s)."""
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    frames, audio = _clip(fam, 10.0, seed=1)
    session = omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
    assert isinstance(session, ChunkStreamSession)
    committed = []
    for lo, hi in ((0, 3), (3, 11), (11, 20)):  # frames; the audio follows a second later
        committed += session.append(frames[lo:hi], audio[RATE * lo // 2: RATE * hi // 2])
    assert [c.index for c in committed] == [0, 1]
    session.ask(QUESTION, final=True, max_new_tokens=NEW, do_sample=False)
    chunks = session.chunks
    assert all(isinstance(c, StreamChunk) for c in chunks)
    assert [(c.t, c.end) for c in chunks] == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert all(c.kept_audio < c.audio and c.kept_video < c.video for c in chunks)
    assert chunks[-1].cache_tokens == session.cache_tokens
    items = [{"type": "video", "video": frames[lo:hi], "audio": audio[RATE * lo // 2: RATE * hi // 2]}
             for lo, hi in ((0, 8), (8, 16), (16, 20))]
    ref = per_item_reference(model, processor, [*items, {"type": "text", "text": QUESTION}], CONFIG, NEW)
    assert session.answers[-1].tokens == ref["tokens"]
    # the cache holds the prompt up to the question: the reference's rows less the question's
    from omnizip.stream.prompt import item_prompt_pieces

    n_question = int(item_prompt_pieces(processor).question_ids(QUESTION).numel())
    assert session.cache_tokens == ref["embeds"].shape[0] - n_question
    with pytest.raises(ValueError, match="finished"):
        session.append(frames[:2], audio[:RATE])


def _state(session):
    return (session.cache_tokens, len(session.chunks), session.t, session._n_frames,
            session._n_samples)


def test_bad_input_is_refused_clearly_and_loses_nothing(fam):
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    frames, audio = _clip(fam, 6.0)
    session = omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
    with pytest.raises(ValueError, match="no chunk is committed yet"):
        session.ask(QUESTION)
    session.append(frames[:9], audio[: 4 * RATE])  # one chunk and a frame
    before = _state(session)
    w, h = fam.frame
    other = synthetic_frames(1.0, width=w + 28, height=h, seed=5)
    with pytest.raises(ValueError, match="frames: every frame of a stream has one size"):
        session.append(other, audio[:RATE])
    with pytest.raises(ValueError, match="frames"):
        session.append(frames[:2, :, :, :2])  # two channels
    with pytest.raises(TypeError, match="question must be a str"):
        session.ask(3)
    assert _state(session) == before
    session.ask(QUESTION, max_new_tokens=2, do_sample=False)
    assert _state(session) == before  # the question left the cache as it was
    with pytest.raises(ValueError, match="finish: 1 frames and no audio left"):
        session.finish()
    assert _state(session) == before
    session.append(frames[9:12], audio[4 * RATE:])
    assert len(session.finish()) == 1


@pytest.mark.parametrize("options, error, message", [
    ({"chunk_seconds": 0}, ValueError, "chunk_seconds must be a number of seconds > 0, got 0"),
    ({"chunk_seconds": True}, ValueError, "chunk_seconds must be a number of seconds > 0, got True"),
    ({"chunk_seconds": "4"}, ValueError, "chunk_seconds must be a number of seconds > 0, got '4'"),
    ({"chunk_seconds": 4.3}, ValueError, "chunk_seconds must hold whole frames at fps=2"),
    ({"chunk_seconds": 1.5}, ValueError, "chunk_seconds must hold whole video steps of 2 frames"),
    ({"chunk_seconds": 4.0, "fps": 3.0}, ValueError, "fps"),
    ({"chunk_seconds": 4.0, "max_cache_tokens": 100}, TypeError, "max_cache_tokens"),
])
def test_bad_settings_are_refused_at_start(fam, options, error, message):
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    with pytest.raises(error, match=message):
        omnizip.stream(model, processor, CONFIG, **options)


def test_configurations_of_the_other_kind_are_refused(fam):
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    with pytest.raises(ValueError, match="config: causal must be False with chunk_seconds"):
        omnizip.stream(model, processor, OmniZipConfig.preset("45", causal=True), chunk_seconds=4)
    with pytest.raises(TypeError, match="config must be an OmniZipConfig, got dict"):
        omnizip.stream(model, processor, {"preset": "45"}, chunk_seconds=4)
    with pytest.raises(ValueError, match="config: causal must be True"):  # window by window
        omnizip.stream(model, processor, CONFIG)


def test_a_patched_model_is_refused_and_its_patch_kept(fam):
    """The session patches the model for each chunk itself; a user's patch is not removed
    behind their back."""
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    frames, audio = _clip(fam, 4.0)
    with omnizip.patch(model, CONFIG) as handle:
        with pytest.raises(ValueError, match="model: it is patched"):
            omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
        assert handle.active
    session = omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
    with omnizip.patch(model, CONFIG) as handle:
        with pytest.raises(ValueError, match="model: it is patched"):
            session.append(frames, audio)
        assert handle.active
    assert session.append(frames, audio)[0].index == 0


def test_an_unpaired_tail_is_dropped_on_request(fam):
    """``pending`` counts what no chunk holds yet; ``finish(drop_unpaired=True)`` drops a tail
    of one kind only (here one frame past the audio) where ``finish()`` refuses it, and commits
    a tail of both kinds as usual."""
    model, processor = fam.thinker(**MODEL_SIZES[fam.name]), fam.processor()
    frames, audio = _clip(fam, 6.0)
    session = omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
    assert session.pending == (0, 0)
    session.append(frames[:9], audio[: 4 * RATE])
    assert session.pending == (1, 0) and len(session.chunks) == 1
    with pytest.raises(ValueError, match="finish: 1 frames and no audio left"):
        session.finish()
    assert session.finish(drop_unpaired=True) == [] and session.finished
    assert session.pending == (0, 0) and len(session.chunks) == 1
    reported = session.chunks[0].as_dict()
    assert set(reported) == {"index", "t", "end", "audio", "kept_audio", "video", "kept_video"}
    assert (reported["index"], reported["t"], reported["end"]) == (0, 0.0, 4.0)
    both = omnizip.stream(model, processor, CONFIG, chunk_seconds=CHUNK_SECONDS)
    both.append(frames[:10], audio[: 5 * RATE])
    assert both.pending == (2, RATE)
    assert [(c.t, c.end) for c in both.finish(drop_unpaired=True)] == [(4.0, 5.0)]
