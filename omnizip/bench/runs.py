"""One forward of each kind: the full prefill to the first token, and the decoder inputs a
prompt produces (for the kept-tokens-only limit)."""

from __future__ import annotations

from typing import Any

import torch

from ..models.capture import capture_decoder_inputs as capture_model_inputs

__all__ = ["capture_decoder_inputs", "first_token", "forward", "gather_kept"]


def first_token(thinker: Any, hidden: torch.Tensor) -> torch.Tensor:
    return thinker.lm_head(hidden[:, -1:]).argmax(-1)


def forward(thinker: Any, inputs: dict, uav: bool) -> torch.Tensor:
    out = thinker.model(**inputs, use_audio_in_video=uav, use_cache=True)
    return first_token(thinker, out.last_hidden_state)


def capture_decoder_inputs(thinker: Any, inputs: dict, uav: bool) -> dict:
    """Run the encoders and stop at the decoder's entry; returns the decoder's kwargs."""
    return capture_model_inputs(thinker, **inputs, use_audio_in_video=uav, use_cache=True)


def gather_kept(kwargs: dict, kept: torch.Tensor) -> dict:
    """The decoder's kwargs restricted to the kept prompt slots (batch of one): embeddings
    gathered, original M-RoPE positions (a plain text row, if any, renumbered 0..L'-1 as the
    patch does), mask and per-token side inputs (Qwen3-Omni deepstack) gathered alike."""
    out = dict(kwargs)
    embeds = kwargs["inputs_embeds"]
    length = embeds.shape[1]
    idx = kept.to(embeds.device)
    out["inputs_embeds"] = embeds.index_select(1, idx)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[-1] == length:
        out["attention_mask"] = mask.index_select(1, idx.to(mask.device))
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor) and pos.shape[-1] == length:
        pos = pos.index_select(pos.dim() - 1, idx.to(pos.device))
        if pos.dim() == 3 and pos.shape[0] == 4:
            pos = pos.clone()
            pos[0] = torch.arange(pos.shape[-1], device=pos.device)
        out["position_ids"] = pos
    vis = kwargs.get("visual_pos_masks")
    if isinstance(vis, torch.Tensor) and vis.shape[-1] == length:
        keep = torch.zeros(length, dtype=torch.bool, device=vis.device)
        keep[idx.to(vis.device)] = True
        kept_visual = keep[vis[0]]
        out["visual_pos_masks"] = vis.index_select(1, idx.to(vis.device))
        deep = kwargs.get("deepstack_visual_embeds")
        if deep is not None:
            out["deepstack_visual_embeds"] = [f[kept_visual.to(f.device)] for f in deep]
    return out


