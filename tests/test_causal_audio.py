"""Causal audio (docs/algorithm.md section 9): the ``"causal"`` attention-score scope and the
causal Whisper log-mel features.

Scores: equal to a dense softmax over each window's look-back span (written out below), a
stream's scores (the previous windows' q/k passed along) equal the offline call's bit for bit,
temporaries bounded, bad arguments named. Features: any chunking of pushes equals the offline
function exactly; a plain numpy STFT/mel reference; equal to Whisper's where the running
maximum is the whole clip's; shaped like the processor's output; decided frames never change
when audio is appended; bad input named.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import LargestTensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_causal import dense_causal_scores

from omnizip import audio_attention_scores
from omnizip.audio_features import CausalLogMel, causal_audio_inputs, causal_log_mel

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- scores
@st.composite
def windowed_frames(draw):
    windows = draw(st.lists(st.integers(1, 12), min_size=1, max_size=7))
    bounds = [0]
    for n in windows:
        bounds.append(bounds[-1] + n)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(windows)), max_size=2))) - {len(windows)})
    edges = [0, *(bounds[c] for c in cuts), bounds[-1]]
    streams = [b - a for a, b in itertools.pairwise(edges)]
    heads, dim = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(bounds[-1], heads, dim, generator=gen) * 2
    k = torch.randn(bounds[-1], heads, dim, generator=gen) * 2
    return q, k, bounds, streams


@SETTINGS
@given(data=st.data())
def test_causal_scores_equal_the_dense_spans(data):
    q, k, bounds, streams = data.draw(windowed_frames())
    lookback = data.draw(st.integers(1, 4))
    block = data.draw(st.sampled_from([1024, 1 << 22]))
    got = audio_attention_scores(q, k, scope="causal", cu_seqlens=bounds, lookback=lookback,
                                 stream_lengths=streams, block_elements=block)
    assert got.dtype == torch.float32 and got.shape == (q.shape[0],)
    torch.testing.assert_close(got.double(), dense_causal_scores(q, k, bounds, lookback, streams),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lookback", [2, 3, 8])
def test_a_stream_gets_the_offline_scores_bit_for_bit(lookback):
    """Pass the previous L-1 windows' q/k with the new windows: the new frames' scores are
    the offline call's exactly (any number of new windows, a short last window)."""
    gen = torch.Generator().manual_seed(lookback)
    sizes = [25] * 11 + [13]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    q, k = torch.randn(bounds[-1], 4, 8, generator=gen), torch.randn(bounds[-1], 4, 8, generator=gen)
    offline = audio_attention_scores(q, k, scope="causal", cu_seqlens=bounds, lookback=lookback,
                                     block_elements=1 << 16)
    for first_new in (1, 2, lookback, 9, len(sizes) - 1):
        for count in (1, 3):
            last = min(first_new + count, len(sizes))
            first = max(0, first_new - lookback + 1)
            lo, hi = bounds[first], bounds[last]
            part = audio_attention_scores(
                q[lo:hi], k[lo:hi], scope="causal", lookback=lookback, block_elements=1 << 16,
                cu_seqlens=[b - lo for b in bounds[first : last + 1]],
            )
            assert torch.equal(part[bounds[first_new] - lo :], offline[bounds[first_new] : hi])


def test_causal_scope_with_lookback_one_is_the_windowed_scope():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(40, 2, 4, generator=gen), torch.randn(40, 2, 4, generator=gen)
    bounds = [0, 10, 25, 40]
    torch.testing.assert_close(
        audio_attention_scores(q, k, scope="causal", cu_seqlens=bounds, lookback=1),
        audio_attention_scores(q, k, scope="windowed", cu_seqlens=bounds), rtol=1e-6, atol=1e-6,
    )


def test_causal_temporaries_stay_bounded():
    """Each span's tiles stay under the cap (or the span's own size): no [H, T, T] tensor."""
    gen = torch.Generator().manual_seed(1)
    windows, width, heads = 12, 40, 4
    q = torch.randn(windows * width, heads, 16, generator=gen)
    k = torch.randn(windows * width, heads, 16, generator=gen)
    bounds = list(range(0, windows * width + 1, width))
    with LargestTensor() as probe:
        audio_attention_scores(q, k, scope="causal", cu_seqlens=bounds, lookback=3, block_elements=1 << 16)
    span = 3 * width
    assert probe.largest <= max(1 << 16, heads * span * span, q.numel())
    assert probe.largest < heads * (windows * width) ** 2 // 10


def test_causal_scope_arguments_are_checked():
    q = k = torch.randn(20, 2, 4)
    with pytest.raises(ValueError, match="lookback"):
        audio_attention_scores(q, k, scope="causal", cu_seqlens=[0, 10, 20])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="lookback"):
            audio_attention_scores(q, k, scope="causal", cu_seqlens=[0, 10, 20], lookback=bad)
    with pytest.raises(ValueError, match="cu_seqlens"):
        audio_attention_scores(q, k, scope="causal", lookback=2)
    with pytest.raises(ValueError, match="stream_lengths"):
        audio_attention_scores(q, k, scope="causal", cu_seqlens=[0, 10, 20], lookback=2, stream_lengths=[5, 15])
    with pytest.raises(ValueError, match="lookback"):
        audio_attention_scores(q, k, scope="windowed", cu_seqlens=[0, 10, 20], lookback=2)


# ----------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    # Qwen2.5-Omni's / Qwen3-Omni's settings (the processors of omnizip.demo use the same)
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                   chunk_length=300, n_fft=400)


def numpy_log_mel(x: np.ndarray, extractor, end: str) -> np.ndarray:
    """Independent float64 reference: reflect-pad n_fft/2 at the start, the end padded as
    ``end`` says, Hann-windowed frames every hop, |rfft|^2, Slaney mel, log10 floored at 1e-10,
    the running maximum minus 8, then (x + 4) / 4."""
    n_fft, hop = extractor.n_fft, extractor.hop_length
    half = n_fft // 2
    n = len(x)
    frames = n // hop if end == "reflect" else -(-n // hop)
    tail = x[-2 : -half - 2 : -1] if end == "reflect" else np.zeros(half + hop)
    padded = np.concatenate([x[half:0:-1], x, tail, np.zeros(n_fft)]).astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    out = np.empty((extractor.mel_filters.shape[1], frames))
    running = -np.inf
    for t in range(frames):
        spectrum = np.abs(np.fft.rfft(padded[t * hop : t * hop + n_fft] * window)) ** 2
        log_spec = np.log10(np.maximum(extractor.mel_filters.T @ spectrum, 1e-10))
        running = max(running, log_spec.max())
        out[:, t] = (np.maximum(log_spec, running - 8.0) + 4.0) / 4.0
    return out


def speech_like(n: int, seed: int, quiet_first: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(3 * t)) * t) * (1 + np.sin(7 * t)) + 0.02 * rng.standard_normal(n)
    if quiet_first:
        x[: n // 2] *= 0.003
    return x.astype(np.float32)


@settings(SETTINGS, max_examples=30)
@given(n=st.integers(201, 9000), chunks=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
       end=st.sampled_from(["reflect", "silence"]), seed=st.integers(0, 100), quiet=st.booleans())
def test_any_chunking_equals_the_offline_features(extractor, n, chunks, end, seed, quiet):
    x = speech_like(n, seed, quiet)
    offline = causal_log_mel(x, extractor, end=end)
    stream, pieces, at = CausalLogMel(extractor, end=end), [], 0
    for size in [*chunks, n]:
        if at >= n:
            break
        pieces.append(stream.push(x[at : at + size]))
        # a frame is out as soon as its window's samples are in, not before
        assert stream.frames_emitted == min(max((min(at + size, n) - 200) // 160 + 1, 0),
                                            offline.shape[1] + 2) or stream.frames_emitted <= offline.shape[1]
        at += size
    pieces.append(stream.finish())
    assert torch.equal(torch.cat(pieces, dim=1), offline)
    expected_frames = n // 160 if end == "reflect" else -(-n // 160)
    assert offline.shape == (128, expected_frames) and offline.dtype == torch.float32


@pytest.mark.parametrize("end", ["reflect", "silence"])
def test_features_equal_a_plain_numpy_stft(extractor, end):
    x = speech_like(7777, 3, quiet_first=True)
    ref = numpy_log_mel(x.astype(np.float64), extractor, end)
    got = causal_log_mel(x, extractor, end=end).double().numpy()
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)


def test_equal_to_whisper_where_the_running_maximum_is_the_whole_clips(extractor):
    x = speech_like(16000 * 4 + 33, 5)
    x[:1600] *= 4  # the loudest frames first: the running maximum is the global one early
    whisper = extractor(x, sampling_rate=16000, padding="longest", return_tensors="pt")["input_features"][0]
    ours = causal_log_mel(x, extractor)
    raw = (whisper * 4 - 4)
    first_global = int(torch.nonzero(raw.amax(dim=0) >= raw.max() - 1e-6)[0])
    torch.testing.assert_close(ours[:, first_global:], whisper[:, first_global:], rtol=0, atol=1e-6)
    # quiet then loud: Whisper's early frames are clamped by the later maximum, ours are not
    quiet = speech_like(16000 * 4, 6, quiet_first=True)
    whisper = extractor(quiet, sampling_rate=16000, padding="longest", return_tensors="pt")["input_features"][0]
    ours = causal_log_mel(quiet, extractor)
    assert (ours[:, :150] - whisper[:, :150]).abs().max() > 0.1
    raw = (whisper * 4 - 4)
    first_global = int(torch.nonzero(raw.amax(dim=0) >= raw.max() - 1e-6)[0])
    torch.testing.assert_close(ours[:, first_global:], whisper[:, first_global:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_processor_shaped_inputs(extractor, padding):
    x = speech_like(16000 * 3 + 77, 7)
    x[:800] *= 4
    got = causal_audio_inputs(x, extractor, padding=padding)
    kwargs = {"truncation": False} if padding == "longest" else {}
    want = extractor(x, sampling_rate=16000, padding=padding, return_attention_mask=True,
                     return_tensors="pt", **kwargs)
    assert torch.equal(got["feature_attention_mask"], want["attention_mask"])
    assert got["input_features"].shape == want["input_features"].shape
    valid = int(want["attention_mask"].sum())
    torch.testing.assert_close(got["input_features"][..., 10:valid], want["input_features"][..., 10:valid],
                               rtol=0, atol=1e-6)


def test_decided_frames_never_change_when_audio_is_appended(extractor):
    x = speech_like(16000 * 3, 8, quiet_first=True)
    full = causal_log_mel(x, extractor)
    for n in (4000, 16000, 30001):
        final = (n - 200) // 160 + 1  # frames whose window ends inside the first n samples
        assert torch.equal(causal_log_mel(x[:n], extractor)[:, :final], full[:, :final])


def test_bad_feature_input_is_named(extractor):
    from transformers import WhisperFeatureExtractor

    with pytest.raises(ValueError, match="dither"):
        CausalLogMel(WhisperFeatureExtractor(feature_size=128, dither=0.1))
    with pytest.raises(TypeError, match="feature_extractor"):
        CausalLogMel(object())
    with pytest.raises(ValueError, match="end"):
        CausalLogMel(extractor, end="zeros")
    stream = CausalLogMel(extractor)
    with pytest.raises(ValueError, match="samples"):
        stream.push(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(TypeError, match="samples"):
        stream.push(np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError, match="finite"):
        stream.push(np.full(10, np.nan, dtype=np.float32))
    with pytest.raises(TypeError, match="samples"):
        stream.push([0.0] * 10)
    stream.push(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="more than 200 samples"):
        stream.finish()
    done = CausalLogMel(extractor, end="silence")
    done.push(np.zeros(100, dtype=np.float32))
    assert done.finish().shape == (128, 1)
    with pytest.raises(RuntimeError, match="after finish"):
        done.push(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="padding"):
        causal_audio_inputs(np.zeros(1000, dtype=np.float32), extractor, padding="right")
