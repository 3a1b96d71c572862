"""Qwen's input path: chat messages read by the real ``qwen-omni-utils`` into processor inputs
that work with omnizip on transformers 5.x (omnizip.hf.messages), on real generated clips."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
qwen_omni_utils = pytest.importorskip("qwen_omni_utils")

from omnizip.demo.media import have_media_tools, make_test_clip  # noqa: E402
from omnizip.hf.messages import audio_from_video_indices, inputs_from_messages  # noqa: E402

needs_media = pytest.mark.skipif(not have_media_tools(), reason="needs ffmpeg and espeak-ng")


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_audio_from_video_indices_follows_the_messages():
    batch = [
        _user({"type": "video", "video": "a.mp4"}, {"type": "audio", "audio": "x.wav"},
              {"type": "text", "text": "?"}),
        [{"role": "system", "content": "plain text"},
         *_user({"type": "image", "image": "i.png"}, {"type": "video", "video": "b.mp4"})],
    ]
    assert audio_from_video_indices(batch) == [0, None, 1]
    assert audio_from_video_indices(batch, use_audio_in_video=False) == [None]
    assert audio_from_video_indices(batch[0]) == [0, None]  # one conversation
    with pytest.raises(TypeError, match="messages must be a non-empty list"):
        audio_from_video_indices([])


# ----------------------------------------------------------------------------- real clips
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    clip = make_test_clip(root / "talk.mp4", seconds=2.0, width=112, height=112, fps=4,
                          speech="The bar moves.")
    wav = root / "note.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "One two three four five six."], check=True,
                   capture_output=True)
    return str(clip), str(wav)


@pytest.fixture(scope="module")
def tiny():
    from omnizip.eval.generation import load_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("tiny")
    torch.set_num_threads(before)


def _track_seconds(path: str) -> float:
    """Duration of a file's audio track, decoded with PyAV (independent of qwen-omni-utils)."""
    import av

    with av.open(path) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


def _audio_tokens(seconds: float) -> int:
    """Qwen2.5-Omni's audio tokens for ``seconds`` of audio: 100 mel frames per second, two
    stride-2 stages (the encoder's conv and its pooling)."""
    mel = round(seconds * 16000) // 160
    return ((mel - 1) // 2 + 1 - 2) // 2 + 1


@needs_media
def test_process_mm_info_order_matches_the_indices(media):
    clip, wav = media
    messages = _user({"type": "audio", "audio": wav}, {"type": "video", "video": clip},
                     {"type": "text", "text": "?"})
    audios, _, videos = qwen_omni_utils.process_mm_info(messages, use_audio_in_video=True)
    indices = audio_from_video_indices(messages)
    assert indices == [None, 0] and len(audios) == 2 and len(videos) == 1
    # each slot holds the audio the index says: the wav alone, then the clip's track
    for audio, index in zip(audios, indices, strict=True):
        expected = _track_seconds(clip) if index == 0 else _track_seconds(wav)
        assert abs(audio.size / 16000 - expected) < 0.05


@needs_media
def test_model_card_call_fails_on_transformers_5(media, tiny):
    """Why the helper exists: the model cards' call, verbatim, fails before any model runs."""
    clip, _ = media
    _, processor = tiny
    messages = _user({"type": "video", "video": clip}, {"type": "text", "text": "?"})
    audios, images, videos = qwen_omni_utils.process_mm_info(messages, use_audio_in_video=True)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with pytest.raises(ValueError, match="audio"):
        processor(text=text, audio=audios, images=images, videos=videos, return_tensors="pt",
                  padding=True, use_audio_in_video=True)


@needs_media
@pytest.mark.parametrize("use_audio_in_video", [True, False])
def test_messages_to_compressed_generation(media, tiny, use_audio_in_video):
    import omnizip
    from omnizip.methods import get_method

    clip, _ = media
    model, processor = tiny
    parts = [{"type": "video", "video": clip}]
    if not use_audio_in_video:  # the track as its own audio item (qwen-omni-utils decodes it)
        parts.append({"type": "audio", "audio": clip})
    messages = _user(*parts, {"type": "text", "text": "What moves?"})
    inputs = inputs_from_messages(processor, messages, use_audio_in_video=use_audio_in_video)

    cfg = model.config
    ids = inputs["input_ids"][0]
    is_audio, is_video = ids == cfg.audio_token_id, ids == cfg.video_token_id
    n_audio, n_video = int(is_audio.sum()), int(is_video.sum())
    assert n_audio == _audio_tokens(_track_seconds(clip))
    assert n_video == int(inputs["video_grid_thw"].prod()) // 4  # 2x2 merge
    audio_pos, video_pos = torch.nonzero(is_audio).flatten(), torch.nonzero(is_video).flatten()
    if use_audio_in_video:  # interleaved: audio inside the video's block (2-s chunks)
        assert audio_pos.min() > video_pos.min()
    else:  # its own block after the video
        assert audio_pos.min() > video_pos.max()

    with omnizip.patch(model, get_method("omnizip", retention=0.5)) as handle:
        out = model.generate(**inputs, use_audio_in_video=use_audio_in_video, max_new_tokens=2,
                             do_sample=False)
        (decision,) = handle.results
    assert out.shape[1] > ids.numel()
    assert (decision.n_audio, decision.n_video) == (n_audio, n_video)
    kept = decision.n_audio_kept + decision.n_video_kept
    assert abs(kept - round(0.5 * (n_audio + n_video))) <= 1  # OmniZip meets a target to ~1 token
    assert decision.n_audio_kept < n_audio and decision.n_video_kept < n_video


def test_missing_package_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "qwen_omni_utils", None)
    with pytest.raises(ImportError, match="needs qwen-omni-utils"):
        inputs_from_messages(object(), _user({"type": "text", "text": "?"}))


def test_frames_need_no_video_decoder(tmp_path, tiny):
    """The decoder-free route of the docs: frames as images, audio as its own item."""
    from PIL import Image

    _, processor = tiny
    frames = []
    for i in range(4):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(np.full((56, 56, 3), 60 * i, dtype=np.uint8)).save(path)
        frames.append(str(path))
    tone = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    messages = _user({"type": "video", "video": frames, "sample_fps": 2.0},
                     {"type": "audio", "audio": tone}, {"type": "text", "text": "?"})
    inputs = inputs_from_messages(processor, messages, use_audio_in_video=False)
    ids = inputs["input_ids"][0]
    assert int((ids == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum()) == _audio_tokens(1.0)
    assert int(inputs["video_grid_thw"][0, 0]) == 2  # 4 frames, temporal patch 2


@needs_media
def test_qwen3_omni_messages_to_compressed_generation(media):
    """The same path on Qwen3-Omni (tiny random-weight thinker, offline processor)."""
    import omnizip
    from omnizip.demo.processor import build_offline_qwen3_omni_processor
    from omnizip.demo.tiny_model import build_tiny_qwen3_omni_thinker
    from omnizip.methods import get_method

    clip, _ = media
    model = build_tiny_qwen3_omni_thinker()
    processor = build_offline_qwen3_omni_processor(max_pixels=128 * 128, min_pixels=64 * 64)
    inputs = inputs_from_messages(
        processor, _user({"type": "video", "video": clip}, {"type": "text", "text": "?"}))
    ids = inputs["input_ids"][0]
    is_audio = ids == model.config.audio_token_id
    is_video = ids == model.config.video_token_id
    n_audio, n_video = int(is_audio.sum()), int(is_video.sum())
    assert n_audio > 0 and n_video == int(inputs["video_grid_thw"].prod()) // 4
    audio_pos, video_pos = torch.nonzero(is_audio).flatten(), torch.nonzero(is_video).flatten()
    assert video_pos.min() < audio_pos.min() < video_pos.max()  # interleaved with the frames
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with omnizip.patch(model, get_method("omnizip", retention=0.5)) as handle:
            model.generate(**inputs, use_audio_in_video=True, max_new_tokens=2, do_sample=False)
            (decision,) = handle.results
    finally:
        torch.set_num_threads(before)
    assert (decision.n_audio, decision.n_video) == (n_audio, n_video)
    assert abs(decision.n_audio_kept + decision.n_video_kept - round(0.5 * (n_audio + n_video))) <= 1
