"""An offline ``Qwen2_5OmniProcessor`` (no download) matching the real checkpoint's input format.

The real processor is ``WhisperFeatureExtractor(feature_size=128)`` for audio, the Qwen2-VL
image and video processors (14-pixel patches, temporal patch 2, 2x2 merge) and the Qwen2
tokenizer with a chat template. Here everything is the real class with the real settings except
the tokenizer: a tiny byte-level BPE trained in memory on a few sentences, whose special tokens
sit at the real ids (``<|AUDIO|>`` = 151646, ``<|VIDEO|>`` = 151656, ...). Token ids of ordinary
words therefore differ from the real tokenizer, but the placeholder layout the processor builds
(audio/video interleaving in 2-second chunks, ``<|vision_bos|><|audio_bos|> ... ``) and every
multimodal tensor are exactly those of the real pipeline.

:func:`build_offline_qwen3_omni_processor` is the same for Qwen3-Omni: a real
``Qwen3OmniMoeProcessor`` (``WhisperFeatureExtractor(feature_size=128)``, Qwen2-VL image/video
processors with 16-pixel patches, ``n_window`` 50, 13 position ids per second) over a tiny BPE
whose special tokens sit at the real Qwen3-Omni ids (``<|audio_pad|>`` = 151675,
``<|video_pad|>`` = 151656, ``<|audio_start|>`` = 151669, ...).
"""

from __future__ import annotations

import json
from typing import Any

from .tiny_model import QWEN2_5_OMNI_SPECIAL_TOKENS, QWEN3_OMNI_SPECIAL_TOKENS

__all__ = [
    "CHAT_TEMPLATE",
    "QWEN3_OMNI_CHAT_TEMPLATE",
    "build_offline_processor",
    "build_offline_qwen3_omni_processor",
    "build_offline_qwen3_omni_tokenizer",
    "build_offline_tokenizer",
]

# Same layout as the Qwen2.5-Omni chat template: a default system turn, one placeholder block per
# medium (<|vision_bos|><|VIDEO|><|vision_eos|> is expanded by the processor, into the
# interleaved audio/video layout when the video's audio track is used).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif item['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.",
    "Describe what happens in the video and what the speaker says.",
    "What is the person saying? Summarise the audio.",
    "The quick brown fox jumps over the lazy dog.",
    "Please answer the question about the picture, the sound and the clip.",
    "system user assistant hello world test pattern moving colour bars speech silence",
]


def build_offline_tokenizer(vocab_size: int = 800) -> Any:
    """A tiny byte-level BPE tokenizer with the real Qwen2.5-Omni special tokens and ids.

    Returns a transformers ``TokenizersBackend`` (the v5 fast tokenizer) whose
    ``image_token``/``audio_token``/``video_token`` (+ ``*_id``) and ``vision_bos_token`` etc.
    attributes are what ``Qwen2_5OmniProcessor`` reads. Any text encodes (byte fallback through
    the byte-level alphabet); ids the BPE does not know decode to nothing.
    """
    return _bpe_tokenizer(
        vocab_size,
        QWEN2_5_OMNI_SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        {
            "image_token": "<|IMAGE|>",
            "audio_token": "<|AUDIO|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )


def _bpe_tokenizer(
    vocab_size: int, special: dict[str, int], chat_template: str, roles: dict[str, str]
) -> Any:
    """A byte-level BPE trained on ``_CORPUS`` with ``special`` tokens at the given ids and the
    processor-facing attributes ``roles`` (``image_token``, ``audio_bos_token``, ...)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    # Put the special tokens at their real ids: the BPE vocabulary is a map, so ids may be sparse.
    spec = json.loads(bpe.to_str())
    spec["model"]["vocab"].update(special)
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        chat_template=chat_template,
        extra_special_tokens=dict(roles),
    )


def _assemble_processor(
    processor_cls: Any, tokenizer: Any, chat_template: str, *, pixel_unit: int,
    image_min_edge: int, max_pixels: int | None, min_pixels: int | None,
) -> Any:
    """A Qwen-Omni processor from the real sub-processors (Whisper features with 128 mel bins,
    the Qwen2-VL image and video processors), offline.

    Args:
        pixel_unit: 28 (Qwen2.5-Omni: 14-pixel patches, 2x2 merge) or 32 (Qwen3-Omni: 16).
        image_min_edge: the image processor's default shortest edge (pixels per side).
        max_pixels / min_pixels: optional per-frame pixel bounds for images and video frames.
    """
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400,
        padding_value=0.0, return_attention_mask=True,
    )
    size: dict[str, int] = {}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    img_kw: dict[str, Any] = dict(patch_size=pixel_unit // 2, temporal_patch_size=2, merge_size=2)
    vid_kw: dict[str, Any] = dict(img_kw)
    area = pixel_unit * pixel_unit
    if size:
        img_kw["size"] = {"shortest_edge": image_min_edge**2, "longest_edge": area * 1280, **size}
        vid_kw["size"] = {"shortest_edge": 128 * area, "longest_edge": 768 * area, **size}
    image_processor = Qwen2VLImageProcessor(**img_kw)
    # transformers' current default (no extra per-frame pixel cap), stated to silence its notice
    video_processor = Qwen2VLVideoProcessor(cap_pixels_per_frame=False, **vid_kw)
    processor = processor_cls(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chat_template,
    )
    if size:
        # The processors' class-level video defaults (128..768 * unit^2 pixels per frame)
        # override the video processor's own size; set ours on this instance instead.
        processor.videos_kwargs = {"size": dict(vid_kw["size"])}
    return processor


def build_offline_processor(*, max_pixels: int | None = None, min_pixels: int | None = None) -> Any:
    """A ``Qwen2_5OmniProcessor`` built offline with the real checkpoint's processing settings.

    Args:
        max_pixels / min_pixels: optional per-frame pixel bounds for images and video frames
            (the real defaults are 768*28*28 / 128*28*28 for video); tests pass small values to
            keep token counts low.
    """
    from transformers import Qwen2_5OmniProcessor

    return _assemble_processor(
        Qwen2_5OmniProcessor, build_offline_tokenizer(), CHAT_TEMPLATE, pixel_unit=28,
        image_min_edge=56, max_pixels=max_pixels, min_pixels=min_pixels,
    )


# The Qwen3-Omni chat template's placeholder blocks (no default system turn, as in Qwen3):
# <|vision_start|><|video_pad|><|vision_end|> is expanded by the processor, into the
# timestamp-interleaved audio/video layout when the video's audio track is used.
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_offline_qwen3_omni_tokenizer(vocab_size: int = 800) -> Any:
    """A tiny byte-level BPE tokenizer with the real Qwen3-Omni special tokens and ids.

    Same as :func:`build_offline_tokenizer`, with Qwen3-Omni's token names (``<|audio_pad|>``,
    ``<|audio_start|>``, ``<|vision_start|>``, ...) at their real ids, exposed under the
    attribute names ``Qwen3OmniMoeProcessor`` reads (``audio_token``, ``audio_bos_token``, ...).
    """
    return _bpe_tokenizer(
        vocab_size,
        QWEN3_OMNI_SPECIAL_TOKENS,
        QWEN3_OMNI_CHAT_TEMPLATE,
        {
            "image_token": "<|image_pad|>",
            "audio_token": "<|audio_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )


def build_offline_qwen3_omni_processor(
    *, max_pixels: int | None = None, min_pixels: int | None = None
) -> Any:
    """A ``Qwen3OmniMoeProcessor`` built offline with the real checkpoint's processing settings.

    Args:
        max_pixels / min_pixels: optional per-frame pixel bounds for images and video frames
            (the processor's video defaults are 128*32*32 .. 768*32*32); tests pass small values
            to keep token counts low. Frames are resized to multiples of 32 (16-pixel patches,
            2x2 merge), so 128x128 frames give 4x4 = 16 tokens per frame.
    """
    from transformers import Qwen3OmniMoeProcessor

    return _assemble_processor(
        Qwen3OmniMoeProcessor, build_offline_qwen3_omni_tokenizer(), QWEN3_OMNI_CHAT_TEMPLATE,
        pixel_unit=32, image_min_edge=64, max_pixels=max_pixels, min_pixels=min_pixels,
    )
