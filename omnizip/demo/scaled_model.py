"""The "scaled" random-weight Qwen2.5-Omni thinker ``omnizip bench`` uses by default.

Real architecture with a decoder sized like the released checkpoints' proportions (head width
128, FFN/hidden ratio about 5.3, grouped-query attention); the encoders stay tiny (the same in
every configuration a benchmark compares).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SCALED_SIZES", "build_scaled_thinker"]

#: CPU: small enough for a few minutes on a laptop-class CPU; CUDA: wider and deeper so the GPU
#: is not launch-bound.
SCALED_SIZES: dict[str, dict[str, int]] = {
    "cpu": dict(text_hidden=768, text_layers=6, text_heads=6, text_kv_heads=2, intermediate=4096),
    "cuda": dict(text_hidden=2048, text_layers=12, text_heads=16, text_kv_heads=2,
                 intermediate=11008),
}


def build_scaled_thinker(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sizes: dict[str, int] | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Any:
    """A random-weight ``Qwen2_5OmniThinkerForConditionalGeneration`` on ``device``.

    ``sizes`` (default ``SCALED_SIZES["cuda" or "cpu"]``): ``text_hidden``, ``text_layers``,
    ``text_heads``, ``text_kv_heads``, ``intermediate``. Same real architecture, token ids and
    processor format as :func:`omnizip.demo.tiny_model.build_tiny_qwen2_5_omni_thinker`.
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from .tiny_model import _finish, tiny_thinker_config

    device = torch.device(device)
    sizes = dict(sizes or SCALED_SIZES["cuda" if device.type == "cuda" else "cpu"])
    intermediate = sizes.pop("intermediate", None)
    cfg = tiny_thinker_config(attn_implementation=attn_implementation, **sizes)
    if intermediate:
        cfg.text_config.intermediate_size = int(intermediate)
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    model = _finish(model, seed)
    return model.to(device=device, dtype=dtype)
