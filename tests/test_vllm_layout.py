"""The vLLM plugin's pure parts, checked in the main environment (no vLLM needed).

- block layouts and prompt positions equal what transformers' own processor and
  ``get_rope_index`` produce for the uncompressed prompt (an independent implementation);
- the slot counts declared up front equal the counts the core actually keeps;
- positions filled chunk by chunk (chunked prefill) equal the positions computed at once, and
  filling is idempotent;
- the server settings and ``hf_overrides`` refuse bad input with the setting named.
"""

from __future__ import annotations

import json

import pytest
import torch

from omnizip.config import OmniZipConfig
from omnizip.core import compress_sequence
from omnizip.demo.media import build_inputs, synthetic_frames, synthetic_speech
from omnizip.demo.processor import build_offline_processor
from omnizip.demo.tiny_model import build_tiny_qwen2_5_omni_thinker
from omnizip.vllm import QWEN2_5_OMNI_ARCH, hf_overrides
from omnizip.vllm.layout import (
    POSITION_CHANNELS,
    audio_block,
    decode_positions,
    encode_positions,
    joint_block,
    kept_counts,
    video_block,
    video_rel_positions,
)
from omnizip.vllm.positions import BlockSpec, fill_slot_positions, prompt_positions
from omnizip.vllm.settings import server_config

AUDIO, VIDEO, IMAGE = 151646, 151656, 151655


@pytest.fixture(scope="module")
def thinker():
    return build_tiny_qwen2_5_omni_thinker(seed=0)


@pytest.fixture(scope="module")
def processor():
    return build_offline_processor()


def _audio_tokens(feature_length: int) -> int:
    return ((feature_length - 1) // 2 + 1 - 2) // 2 + 1


def _hf_case(processor, thinker, items, uav):
    inputs = build_inputs(processor, [items], use_audio_in_video=uav, fps=2.0)
    ids = inputs["input_ids"][0]
    audio_lens = inputs.get("feature_attention_mask")
    audio_lens = None if audio_lens is None else audio_lens.sum(-1)
    positions, delta = thinker.get_rope_index(
        inputs["input_ids"], inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
        inputs["attention_mask"], uav, audio_lens, inputs.get("video_second_per_grid"),
    )
    return inputs, ids, audio_lens, positions[:, 0], int(delta)


def _our_block(inputs, audio_lens, uav):
    grid = inputs.get("video_grid_thw")
    if grid is not None:
        t, h, w = grid[0].tolist()
        spg = float(inputs["video_second_per_grid"][0])
        pos = video_rel_positions(t, h // 2, w // 2, spg, 25)
        if uav and audio_lens is not None:
            n_audio = _audio_tokens(int(audio_lens[0]))
            return joint_block(pos, (h // 2) * (w // 2), n_audio, 50,
                               audio_token_id=AUDIO, video_token_id=VIDEO), True
        return video_block(pos, (h // 2) * (w // 2), VIDEO), False
    return audio_block(_audio_tokens(int(audio_lens[0])), AUDIO), False


CASES = {
    "av": (4.0, 4.0, True),
    "video_longer": (6.0, 3.0, True),
    "audio_longer": (3.0, 5.0, True),
    # same number of 2-s chunks, the audio ends before the last frame's time: text continues
    # after the last audio chunk, below the block's largest position
    "audio_ends_in_last_chunk": (4.0, 2.6, True),
    "video_only": (4.0, None, False),
    "audio_only": (None, 3.0, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocks_and_positions_equal_transformers(case, processor, thinker):
    video_s, audio_s, uav = CASES[case]
    items = []
    if video_s is not None:
        audio = synthetic_speech(audio_s, 1.5, seed=1) if (uav and audio_s) else None
        items.append({"type": "video", "video": synthetic_frames(video_s, seed=0), "audio": audio})
    elif audio_s is not None:
        items.append({"type": "audio", "audio": synthetic_speech(audio_s, 1.5, seed=1)})
    items.append({"type": "text", "text": "What happens?"})
    inputs, ids, audio_lens, hf_positions, hf_delta = _hf_case(processor, thinker, items, uav)
    block, joint = _our_block(inputs, audio_lens, uav)
    media = (ids == AUDIO) | (ids == VIDEO)
    start = int(media.nonzero()[0])
    length = block.ids.numel()
    assert int(media.sum()) == length
    assert torch.equal(ids[start : start + length], block.ids)  # transformers' token order
    spec = BlockSpec(start, length, block.extent, joint=joint, exact=block.rel_positions)
    positions, delta = prompt_positions(ids.numel(), [spec])
    assert torch.equal(positions, hf_positions)
    assert delta == hf_delta


def _random_block(kind: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    t, h, w = (int(x) for x in torch.randint(2, 7, (3,), generator=gen))
    pos = video_rel_positions(t, h, w, 1.0, 25)
    n_audio = int(torch.randint(10, 160, (1,), generator=gen))
    if kind == "joint":
        return joint_block(pos, h * w, n_audio, 50, audio_token_id=AUDIO, video_token_id=VIDEO)
    if kind == "video":
        return video_block(pos, h * w, VIDEO)
    return audio_block(n_audio, AUDIO)


CONFIGS = {
    "45": OmniZipConfig.preset("45", budget="exact"),
    "35": OmniZipConfig.preset("35", budget="exact"),
    "g0": OmniZipConfig(budget="exact", g=0),
    "retention": OmniZipConfig(budget="exact", retention=0.3),
    "token_budget": OmniZipConfig(budget="exact", token_budget=60),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["joint", "video", "audio"])
def test_declared_slots_equal_tokens_the_core_keeps(kind, config):
    cfg = CONFIGS[config]
    for seed in range(4):
        block = _random_block(kind, seed)
        n = block.ids.numel()
        gen = torch.Generator().manual_seed(100 + seed)
        embeds = torch.randn(n, 16, generator=gen)
        n_audio = int((block.ids == AUDIO).sum())
        scores = torch.rand(n_audio, generator=gen) if n_audio else None
        result = compress_sequence(
            embeds, block.ids, scores, audio_token_id=AUDIO, video_token_id=VIDEO,
            tokens_per_frame=max(block.tokens_per_frame, 1), config=cfg,
        )
        audio, video = kept_counts(block, cfg, audio_token_id=AUDIO, video_token_id=VIDEO)
        assert audio == result.n_audio_kept
        assert video == result.n_video_kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_position_channels_round_trip(dtype):
    pos = torch.randint(0, 64**3, (3, 257))
    channels = encode_positions(pos, dtype)
    assert channels.shape == (257, POSITION_CHANNELS) and channels.dtype == dtype
    assert torch.equal(decode_positions(channels), pos)
    with pytest.raises(ValueError, match="position ids"):
        encode_positions(torch.tensor([[64**3]] * 3), dtype)


def test_chunked_filling_equals_positions_computed_at_once():
    """Slots filled per prefill chunk (embeddings sliced as vLLM slices them) give the same
    positions as a prompt whose kept positions are known up front; refilling changes nothing."""
    hidden = 8
    block = _random_block("joint", 0)
    keep = torch.zeros(block.ids.numel(), dtype=torch.bool)
    keep[torch.randperm(block.ids.numel(), generator=torch.Generator().manual_seed(0))[:70]] = True
    kept_rel = block.rel_positions[:, keep]
    k = int(keep.sum())
    # <vision_bos><audio_bos> [k slots] <audio_eos><vision_eos> text, after 5 text tokens
    n = 5 + 2 + k + 2 + 4
    ids = torch.full((n,), 7)
    ids[7 : 7 + k] = VIDEO
    spec = BlockSpec(7, k, block.extent, joint=True)
    waiting, delta = prompt_positions(n, [spec])
    expected, expected_delta = prompt_positions(n, [BlockSpec(7, k, block.extent, True, kept_rel)])
    assert delta == expected_delta
    embeds = torch.cat([torch.randn(k, hidden), encode_positions(kept_rel, torch.float32)], 1)
    positions = waiting
    for start in range(0, n, 16):  # chunks of 16 prompt tokens
        lo, hi = max(start - 7, 0), min(start + 16 - 7, k)
        chunk = [embeds[lo:hi]] if hi > lo else []
        out, positions = fill_slot_positions(ids, positions, chunk, start, [IMAGE, VIDEO, AUDIO], (hidden,))
        assert all(e.shape[-1] == hidden for e in out)
    assert torch.equal(positions, expected)
    _, again = fill_slot_positions(ids, positions, [embeds], 0, [IMAGE, VIDEO, AUDIO], (hidden,))
    assert torch.equal(again, expected)


def test_server_settings_and_overrides():
    assert server_config(None) == OmniZipConfig(budget="exact")
    assert server_config({"preset": "35"}) == OmniZipConfig.preset("35", budget="exact")
    with pytest.raises(ValueError, match="budget must be 'exact'"):
        server_config({"budget": "reference"})
    with pytest.raises(ValueError, match="rho_audio"):
        server_config({"rho_audio": 1.5})
    with pytest.raises(ValueError, match="unknown OmniZipConfig fields"):
        server_config({"rho": 0.3})
    with pytest.raises(ValueError, match="preset"):
        server_config({"preset": "50"})
    with pytest.raises(TypeError, match="omnizip settings"):
        server_config([0.3])
    overrides = hf_overrides("Qwen2.5-Omni", {"preset": "45"})
    assert overrides["architectures"] == [QWEN2_5_OMNI_ARCH]
    assert OmniZipConfig.from_dict(json.loads(json.dumps(overrides["omnizip"]))) == OmniZipConfig.preset("45", budget="exact")
    with pytest.raises(ValueError, match="model_type_or_family"):
        hf_overrides("llava", None)


# ------------------------------------------------------------------ Qwen3-Omni (layout only)
Q3_AUDIO, Q3_VIDEO = 151675, 151656


def _q3_audio_tokens(feature_length: int, n_window: int = 50) -> int:
    chunk = 2 * n_window
    tail = feature_length % chunk
    frames = (tail - 1) // 2 + 1
    return ((frames - 1) // 2 + 1 - 1) // 2 + 1 + (feature_length // chunk) * 13


Q3_CASES = {
    "av": (4.0, 4.0, True),
    "video_longer": (5.0, 2.5, True),
    "audio_longer": (3.0, 4.5, True),
    "video_only": (4.0, None, False),
    "audio_only": (None, 3.0, False),
}


@pytest.mark.parametrize("case", sorted(Q3_CASES))
def test_qwen3_timeline_blocks_and_positions_equal_transformers(case):
    """Qwen3-Omni's time-merged layout (:func:`timeline_block`) is its processor's token order
    and, with its start/end markers counted as text (they take consecutive positions there),
    the positions are ``get_rope_index``'s."""
    from omnizip.demo.processor import build_offline_qwen3_omni_processor
    from omnizip.demo.tiny_model import build_tiny_qwen3_omni_thinker
    from omnizip.vllm.layout import timeline_block

    processor = build_offline_qwen3_omni_processor(max_pixels=128 * 128, min_pixels=64 * 64)
    thinker = build_tiny_qwen3_omni_thinker(seed=0)
    video_s, audio_s, uav = Q3_CASES[case]
    items = []
    if video_s is not None:
        audio = synthetic_speech(audio_s, 1.5, seed=1) if uav else None
        items.append({"type": "video", "video": synthetic_frames(video_s, seed=0, width=128, height=128),
                      "audio": audio})
    else:
        items.append({"type": "audio", "audio": synthetic_speech(audio_s, 1.5, seed=1)})
    items.append({"type": "text", "text": "What happens?"})
    inputs, ids, audio_lens, hf_positions, hf_delta = _hf_case(processor, thinker, items, uav)
    grid = inputs.get("video_grid_thw")
    if grid is not None:
        t, h, w = grid[0].tolist()
        spg = float(inputs["video_second_per_grid"][0])
        assert float(spg * 13).is_integer()  # vLLM positions are integers; transformers' floats
        pos = video_rel_positions(t, h // 2, w // 2, spg, 13)
        if uav:
            block = timeline_block(pos, (h // 2) * (w // 2), _q3_audio_tokens(int(audio_lens[0])),
                                   audio_token_id=Q3_AUDIO, video_token_id=Q3_VIDEO)
        else:
            block = video_block(pos, (h // 2) * (w // 2), Q3_VIDEO)
    else:
        block = audio_block(_q3_audio_tokens(int(audio_lens[0])), Q3_AUDIO)
    media = (ids == Q3_AUDIO) | (ids == Q3_VIDEO)
    start = int(media.nonzero()[0])
    length = block.ids.numel()
    assert int(media.sum()) == length
    assert torch.equal(ids[start : start + length], block.ids)
    spec = BlockSpec(start, length, block.extent, exact=block.rel_positions)
    positions, delta = prompt_positions(ids.numel(), [spec])
    assert torch.equal(positions.float(), hf_positions)
    assert delta == int(hf_delta)
