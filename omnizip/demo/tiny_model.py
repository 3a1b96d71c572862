"""Random-weight Qwen2.5-Omni and Qwen3-Omni thinkers built in code (nothing is downloaded).

The architecture is the real one (transformers' ``Qwen2_5OmniThinkerForConditionalGeneration``:
Whisper-style audio encoder, Qwen2.5-VL vision encoder, M-RoPE decoder), only the widths and
depths are scaled down. Token ids, chunking constants (25 position ids per second, 2-second
chunks), the 128 mel bins, the 14-pixel patches, temporal patch 2 and the 2x2 spatial merge are
the real checkpoint's values, so a processor built for the real model produces inputs this model
accepts and that exercise the same code paths as Qwen/Qwen2.5-Omni-7B.

The Qwen3-Omni builders (:func:`build_tiny_qwen3_omni_thinker`, :func:`build_tiny_qwen3_omni`) do
the same for transformers' ``Qwen3OmniMoeThinkerForConditionalGeneration``: the audio encoder
with its three stride-2 convolutions (no pooling after the layers, one LLM token per last-layer
frame), the Qwen3-VL vision encoder with deepstack mergers, the MoE decoder with interleaved
M-RoPE, the real token ids of Qwen/Qwen3-Omni-30B-A3B (``<|audio_pad|>`` = 151675,
``<|audio_start|>`` = 151669, ...), 13 position ids per second, 16-pixel patches, ``n_window`` 50
and ``n_window_infer`` 800 (``audio_window_infer`` overrides it), with few experts.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "QWEN2_5_OMNI_SPECIAL_TOKENS",
    "QWEN3_OMNI_SPECIAL_TOKENS",
    "build_tiny_qwen2_5_omni",
    "build_tiny_qwen2_5_omni_thinker",
    "build_tiny_qwen3_omni",
    "build_tiny_qwen3_omni_thinker",
    "tiny_qwen3_omni_thinker_config",
    "tiny_thinker_config",
]

# Special token ids of the real Qwen/Qwen2.5-Omni checkpoints (Qwen2 tokenizer). The multimodal
# ids are the defaults of transformers' Qwen2_5OmniThinkerConfig / Qwen2_5OmniTalkerConfig
# (audio_token_index, image_token_index, video_token_index, audio_start/end_token_id,
# vision_start/end_token_id); the chat ids are those of the Qwen2 tokenizer.
QWEN2_5_OMNI_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|vision_pad|>": 151654,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
}

# The real vocabulary size: the embedding table must cover the special ids above.
_REAL_VOCAB_SIZE = 152064


def tiny_thinker_config(
    *,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    audio_hidden: int = 32,
    audio_layers: int = 2,
    audio_heads: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    attn_implementation: str = "sdpa",
) -> Any:
    """A ``Qwen2_5OmniThinkerConfig`` of the real architecture with small widths/depths.

    ``text_hidden // text_heads`` is the decoder head dim; its half is split into the three
    M-RoPE sections (temporal, height, width) in the real 2:3:3 proportion.
    """
    from transformers import Qwen2_5OmniThinkerConfig

    head_dim = text_hidden // text_heads
    half = head_dim // 2
    if head_dim % 2 or half < 3:
        raise ValueError(f"text_hidden // text_heads must be even and >= 6, got {head_dim}")
    # real model: head_dim 128 -> mrope_section [16, 24, 24] (2:3:3 of 64)
    t = max(1, round(half * 2 / 8))
    h = (half - t) // 2
    mrope_section = [t, h, half - t - h]
    tok = QWEN2_5_OMNI_SPECIAL_TOKENS
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": audio_layers,
            "encoder_attention_heads": audio_heads,
            "encoder_ffn_dim": 2 * audio_hidden,
            "d_model": audio_hidden,
            "max_source_positions": 1500,
            "n_window": 100,
            "output_dim": text_hidden,
        },
        vision_config={
            "depth": vision_layers,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": vision_heads,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": text_hidden,
            "fullatt_block_indexes": [vision_layers - 1],
        },
        text_config={
            "vocab_size": _REAL_VOCAB_SIZE,
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": text_kv_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": mrope_section,
            },
            "pad_token_id": tok["<|endoftext|>"],
            "bos_token_id": tok["<|im_start|>"],
            "eos_token_id": tok["<|im_end|>"],
        },
        audio_token_index=tok["<|AUDIO|>"],
        image_token_index=tok["<|IMAGE|>"],
        video_token_index=tok["<|VIDEO|>"],
        audio_start_token_id=tok["<|audio_bos|>"],
        audio_end_token_id=tok["<|audio_eos|>"],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        user_token_id=872,
        # Present in the real checkpoint's config.json (not class defaults of the thinker config);
        # get_rope_index reads vision_start_token_id.
        vision_start_token_id=tok["<|vision_bos|>"],
        vision_end_token_id=tok["<|vision_eos|>"],
        vision_token_id=tok["<|vision_pad|>"],
        pad_token_id=tok["<|endoftext|>"],
        bos_token_id=tok["<|im_start|>"],
        eos_token_id=tok["<|im_end|>"],
    )
    return _with_attention(cfg, attn_implementation)


def _with_attention(cfg: Any, attn_implementation: str) -> Any:
    """``cfg`` with the attention implementation set on it and its three sub-configs."""
    for sub in (cfg, cfg.audio_config, cfg.vision_config, cfg.text_config):
        sub._attn_implementation = attn_implementation
    return cfg


def _finish(
    model: torch.nn.Module, seed: int, tokens: dict[str, int] = QWEN2_5_OMNI_SPECIAL_TOKENS
) -> torch.nn.Module:
    # Re-draw every parameter from a seeded generator so the weights depend on `seed` only (not
    # on the global RNG state or on transformers' init order). Norm weights stay at 1 and biases
    # small, so activations keep a sane scale through the tiny stacks.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                if "norm" in name or "ln" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        gc.pad_token_id = tokens["<|endoftext|>"]
        gc.eos_token_id = tokens["<|im_end|>"]
        gc.bos_token_id = tokens["<|im_start|>"]
        # a random model would stop at eos by chance; deterministic lengths make tests simpler
        gc.do_sample = False
    return model


def build_tiny_qwen2_5_omni_thinker(
    seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, **sizes: Any
) -> Any:
    """A random-weight ``Qwen2_5OmniThinkerForConditionalGeneration`` (eval mode, CPU).

    Args:
        seed: weights are a function of this seed only.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flash_attention_2"`` (GPU only).
        dtype: parameter dtype.
        **sizes: forwarded to :func:`tiny_thinker_config` (``text_hidden``, ``text_layers``, ...).
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    cfg = tiny_thinker_config(attn_implementation=attn_implementation, **sizes)
    return _finish(Qwen2_5OmniThinkerForConditionalGeneration(cfg), seed).to(dtype)


def build_tiny_qwen2_5_omni(
    seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, **sizes: Any
) -> Any:
    """A random-weight full ``Qwen2_5OmniForConditionalGeneration`` with audio output disabled.

    Only the thinker exists (``enable_audio_output=False``), which is the path OmniZip serves.
    """
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker_cfg = tiny_thinker_config(attn_implementation=attn_implementation, **sizes)
    return _full_model(
        Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, thinker_cfg,
        attn_implementation, seed, dtype, QWEN2_5_OMNI_SPECIAL_TOKENS,
    )


def _full_model(config_cls, model_cls, thinker_cfg, attn_implementation, seed, dtype, tokens):
    """A full Qwen-Omni model around a thinker config, audio output disabled, random weights."""
    from transformers.utils import logging as hf_logging

    # the (unused) default talker config's text ids lie outside its codec vocabulary, which
    # transformers reports as warnings; they say nothing about this model
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        cfg = config_cls(thinker_config=thinker_cfg.to_dict(), enable_audio_output=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    cfg._attn_implementation = attn_implementation
    model = model_cls(cfg)
    model = _finish(model, seed, tokens)
    _finish(model.thinker, seed, tokens)
    return model.to(dtype)


# ------------------------------------------------------------------------------ Qwen3-Omni
# Special token ids of the real Qwen/Qwen3-Omni-30B-A3B checkpoints (Qwen3 tokenizer): the thinker
# config.json has audio_token_id 151675, audio_start_token_id 151669, audio_end_token_id 151670,
# image_token_id 151655, video_token_id 151656, vision_start/end_token_id 151652/151653 (some of
# these differ from the transformers class defaults, e.g. audio_token_id 151646).
QWEN3_OMNI_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151675,
}


def tiny_qwen3_omni_thinker_config(
    *,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    num_experts: int = 4,
    experts_per_token: int = 2,
    audio_hidden: int = 32,
    audio_layers: int = 2,
    audio_heads: int = 4,
    audio_window_infer: int = 800,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    deepstack_layers: tuple[int, ...] | None = None,
    attn_implementation: str = "sdpa",
) -> Any:
    """A ``Qwen3OmniMoeThinkerConfig`` of the real architecture with small widths/depths.

    ``text_hidden // text_heads`` is the decoder head dim; its half is split into the three
    interleaved M-RoPE sections in roughly the real 24:20:20 proportion. ``deepstack_layers``
    (vision blocks whose features are added to the first decoder layers; default: every block
    up to ``text_layers``) mirrors the real ``[8, 16, 24]``. ``audio_window_infer`` is the audio
    encoder's attention window in mel frames (a multiple of 100; real: 800 = 8 s).
    """
    from transformers import Qwen3OmniMoeThinkerConfig

    head_dim = text_hidden // text_heads
    half = head_dim // 2
    if head_dim % 2 or half < 4:
        raise ValueError(f"text_hidden // text_heads must be even and >= 8, got {head_dim}")
    # interleaved M-RoPE: height/width take every third frequency up to 3 * section
    h = w = max(1, min(half // 3, round(half * 20 / 64)))
    mrope_section = [half - h - w, h, w]
    if deepstack_layers is None:
        deepstack_layers = tuple(range(min(vision_layers, text_layers)))
    tok = QWEN3_OMNI_SPECIAL_TOKENS
    cfg = Qwen3OmniMoeThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": audio_layers,
            "encoder_attention_heads": audio_heads,
            "encoder_ffn_dim": 2 * audio_hidden,
            "d_model": audio_hidden,
            "max_source_positions": 1500,
            "n_window": 50,
            "n_window_infer": audio_window_infer,
            "conv_chunksize": 500,
            "downsample_hidden_size": 16,
            "output_dim": text_hidden,
        },
        vision_config={
            "depth": vision_layers,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": vision_heads,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": text_hidden,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": list(deepstack_layers),
        },
        text_config={
            "vocab_size": _REAL_VOCAB_SIZE,
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "moe_intermediate_size": text_hidden // 2,
            "num_experts": num_experts,
            "num_experts_per_tok": experts_per_token,
            "decoder_sparse_step": 1,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": text_kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": mrope_section,
                "interleaved": True,
                "mrope_interleaved": True,
            },
            "pad_token_id": tok["<|endoftext|>"],
            "bos_token_id": tok["<|im_start|>"],
            "eos_token_id": tok["<|im_end|>"],
        },
        audio_token_id=tok["<|audio_pad|>"],
        image_token_id=tok["<|image_pad|>"],
        video_token_id=tok["<|video_pad|>"],
        audio_start_token_id=tok["<|audio_start|>"],
        # the real checkpoint: 13 position ids per second (the class default 25 is Qwen2.5's);
        # the processor interleaves audio and video with the same 13
        position_id_per_seconds=13,
        user_token_id=872,
        # in the real config.json, not fields of the thinker config class; get_rope_index reads
        # vision_start_token_id
        audio_end_token_id=tok["<|audio_end|>"],
        vision_start_token_id=tok["<|vision_start|>"],
        vision_end_token_id=tok["<|vision_end|>"],
        seconds_per_chunk=2,
        pad_token_id=tok["<|endoftext|>"],
        bos_token_id=tok["<|im_start|>"],
        eos_token_id=tok["<|im_end|>"],
    )
    return _with_attention(cfg, attn_implementation)


def build_tiny_qwen3_omni_thinker(
    seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, **sizes: Any
) -> Any:
    """A random-weight ``Qwen3OmniMoeThinkerForConditionalGeneration`` (eval mode, CPU).

    Args:
        seed: weights are a function of this seed only.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flash_attention_2"`` (GPU only).
        dtype: parameter dtype.
        **sizes: forwarded to :func:`tiny_qwen3_omni_thinker_config` (``text_hidden``,
            ``num_experts``, ``audio_window_infer``, ...).
    """
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    cfg = tiny_qwen3_omni_thinker_config(attn_implementation=attn_implementation, **sizes)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(cfg)
    return _finish(model, seed, QWEN3_OMNI_SPECIAL_TOKENS).to(dtype)


def build_tiny_qwen3_omni(
    seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, **sizes: Any
) -> Any:
    """A random-weight full ``Qwen3OmniMoeForConditionalGeneration`` with audio output disabled.

    Only the thinker exists (``enable_audio_output=False``), which is the path OmniZip serves.
    """
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    thinker_cfg = tiny_qwen3_omni_thinker_config(attn_implementation=attn_implementation, **sizes)
    return _full_model(
        Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration, thinker_cfg,
        attn_implementation, seed, dtype, QWEN3_OMNI_SPECIAL_TOKENS,
    )
