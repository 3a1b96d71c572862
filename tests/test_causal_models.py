"""``omnizip.patch(model, OmniZipConfig(causal=True))``: the offline causal path on every family
(docs/algorithm.md section 9).

The adapter scores audio with the ``"causal"`` scope over the encoder's own attention windows,
with ``causal_lookback`` converted to encoder windows by length in seconds (checked against a
dense softmax over each span, with the window lengths read from the tiny configs), and the
decoder gets the causal core's decision.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from conftest import MODEL_SIZES, embedding_stage, expected_row, family_media, generate, make_inputs
from reference_causal import dense_causal_scores

from omnizip import OmniZipConfig
from omnizip.patch import patch

#: seconds of one OmniZip window per family: a 2-s chunk (Qwen2.5-Omni), one 1-s grid step
#: with its audio (Qwen3-Omni at 2 fps)
WINDOW_SECONDS = {"qwen2_5": 2.0, "qwen3": 1.0}


def encoder_window_seconds(model, family: str) -> float:
    audio = model.config.audio_config
    mel_frames = 2 * audio.n_window if family == "qwen2_5" else audio.n_window_infer
    return mel_frames / 100  # Whisper features: 100 mel frames per second


def pooled(frame_scores: torch.Tensor, feature_lens: torch.Tensor, family: str) -> torch.Tensor:
    """Token scores: frame pairs averaged per stream (Qwen2.5-Omni), frames as they are (Qwen3)."""
    if family == "qwen3":
        return frame_scores.float()
    tokens, start = [], 0
    for n in ((feature_lens - 1) // 2 + 1).tolist():
        tokens.append(frame_scores[start : start + (n // 2) * 2].view(-1, 2).mean(1))
        start += n
    return torch.cat(tokens).float()


#: look-backs (OmniZip windows) that make 3 encoder windows on each family's tiny model:
#: 3 x 2 s / 2 s (Qwen2.5-Omni), 6 x 1 s / 2 s (Qwen3-Omni with 2-s encoder windows)
LOOKBACK = {"qwen2_5": 3, "qwen3": 6}


def test_causal_patch_scores_audio_causally_and_decides_causally(fam):
    lookback = LOOKBACK[fam.name]
    model = fam.thinker("sdpa", **MODEL_SIZES[fam.name])
    processor, media = fam.processor(), family_media(fam.name)
    inputs, uav = make_inputs(processor, media, "long_av")
    config = OmniZipConfig(causal=True, causal_lookback=lookback)
    with patch(model, config) as handle:
        generate(model, inputs, uav)
    stage = embedding_stage(model, inputs, uav)
    encoder_windows = max(2, math.ceil(lookback * WINDOW_SECONDS[fam.name]
                                       / encoder_window_seconds(model, fam.name)))
    attn = model.model.audio_tower.layers[-1].self_attn
    with torch.no_grad():
        frames = stage["hidden"].shape[0]
        q = attn.q_proj(stage["hidden"]).view(frames, attn.num_heads, -1)
        k = attn.k_proj(stage["hidden"]).view(frames, attn.num_heads, -1)
    bounds = stage["cu_seqlens"].tolist()
    assert encoder_windows == 3 and len(bounds) > encoder_windows + 1  # spans shorter than the clip
    dense = dense_causal_scores(q, k, bounds, encoder_windows, scale=attn.scaling)
    want = pooled(dense, stage["feature_lens"], fam.name)
    torch.testing.assert_close(handle.audio_scores[0], want, rtol=1e-4, atol=1e-5)
    # the decoder got the causal core's decision on those scores
    run_as = config.replace(frame_parity="stream") if fam.stream_parity else config
    exp = expected_row(model, inputs, uav, run_as, handle.audio_scores[0])
    assert torch.equal(handle.results[0].keep, exp["res"].keep)
    assert handle.results[0].history is not None
    # and that decision is not the offline one (the rules differ)
    offline = expected_row(model, inputs, uav, fam.config(), handle.audio_scores[0])
    assert not torch.equal(offline["res"].keep, exp["res"].keep)


def test_causal_methods_keep_the_causal_score_variants(fam):
    """"windowed" and "energy" are causal already: a causal config keeps them as they are."""
    model = fam.thinker("sdpa", **MODEL_SIZES[fam.name])
    processor, media = fam.processor(), family_media(fam.name)
    inputs, uav = make_inputs(processor, media, "av")
    for scope in ("windowed", "energy"):
        got = []
        for causal in (False, True):
            with patch(model, OmniZipConfig(causal=causal, audio_score=scope)) as handle, torch.no_grad():
                model(**inputs, use_audio_in_video=uav)
            got.append(handle.audio_scores[0])
        assert torch.equal(got[0], got[1]), scope
