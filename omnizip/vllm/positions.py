"""M-RoPE positions of a compressed vLLM prompt, equal to transformers' for every kept token.

OmniZip keeps each kept token's original position (docs/algorithm.md), and text after a media
block continues from the *uncompressed* block's last position + 1. So every text position is
known when the request arrives (:func:`prompt_positions`); only the slots of a compressed block
wait for the encoder's decision: they hold the block's base position until
:func:`fill_slot_positions` adds each kept token's relative position, carried in the extra
embedding channels (:mod:`omnizip.vllm.layout`).

transformers' rules reproduced (``Qwen2_5OmniThinkerForConditionalGeneration.get_rope_index``):
text tokens count up by one; a block starts right after its ``<|vision_bos|>`` /
``<|audio_bos|>``; with ``use_audio_in_video`` the pair ``<|vision_bos|><|audio_bos|>`` shares
one position and so does ``<|audio_eos|><|vision_eos|>`` after the block (vLLM's own code
starts that block at ``<|audio_bos|>``, one position off). Pure torch; no vllm import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .layout import POSITION_CHANNELS, decode_positions

__all__ = ["BlockSpec", "fill_slot_positions", "prompt_positions"]


@dataclass(frozen=True)
class BlockSpec:
    """A media item's slots in the (compressed) prompt.

    Attributes:
        offset, length: the slots ``[offset, offset + length)``.
        extent: position ids the uncompressed block spans (the next token is at base + extent).
        joint: a video with its own audio: the two markers before and the two after the
            block share a position each (transformers' ``use_audio_in_video`` layout).
        exact: int64 ``[3, length]`` relative positions when known now (uncompressed items,
            e.g. images), else None: the slots hold the base until the encoder has decided.
    """

    offset: int
    length: int
    extent: int
    joint: bool = False
    exact: torch.Tensor | None = None


def _run(n: int, start: int) -> torch.Tensor:
    return (torch.arange(n) + start).view(1, -1).expand(3, -1)


def prompt_positions(n_tokens: int, blocks: Sequence[BlockSpec]) -> tuple[torch.Tensor, int]:
    """int64 ``[3, n_tokens]`` positions of a prompt and its M-RoPE delta
    (``max + 1 - n_tokens``), compressed slots at their block's base.

    Raises:
        ValueError: when blocks overlap, run past the prompt, or a joint block lacks room for
            its shared markers.
    """
    pieces: list[torch.Tensor] = []
    cursor, next_pos = 0, 0
    for block in sorted(blocks, key=lambda b: b.offset):
        text = block.offset - cursor
        if text < (1 if block.joint else 0) or block.offset + block.length > n_tokens:
            raise ValueError(
                f"media block at [{block.offset}, {block.offset + block.length}) does not fit "
                f"the prompt ({n_tokens} tokens, previous block ends at {cursor})"
            )
        if block.joint:  # <|audio_bos|> takes the position of <|vision_bos|> before it
            pieces.append(_run(text - 1, next_pos))
            next_pos += text - 1
            pieces.append(_run(1, next_pos - 1))
        else:
            pieces.append(_run(text, next_pos))
            next_pos += text
        base = next_pos
        if block.exact is not None:
            pieces.append(block.exact.to(torch.int64) + base)
        else:
            pieces.append(torch.full((3, block.length), base, dtype=torch.int64))
        next_pos = base + block.extent
        cursor = block.offset + block.length
        if block.joint:  # <|audio_eos|><|vision_eos|> share the position after the block
            shared = min(2, n_tokens - cursor)
            pieces.append(torch.full((3, shared), next_pos, dtype=torch.int64))
            next_pos += 1 if shared else 0
            cursor += shared
    pieces.append(_run(n_tokens - cursor, next_pos))
    positions = torch.cat(pieces, dim=1)
    delta = int(positions.max()) + 1 - n_tokens if n_tokens else 0
    return positions, delta


def fill_slot_positions(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    embeddings: Sequence[torch.Tensor],
    num_computed_tokens: int,
    slot_token_ids: Sequence[int],
    feature_widths: Sequence[int],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Write the kept tokens' positions and strip their position channels.

    Args:
        input_ids: int64 ``[N]`` the whole prompt.
        positions: int64 ``[3, N]`` from :func:`prompt_positions` (not modified).
        embeddings: the media embeddings of this prefill step, in prompt order, filling the
            placeholder slots at and after ``num_computed_tokens`` one after the other
            (``[n_i, W]`` for uncompressed items, ``[n_i, W + POSITION_CHANNELS]`` for
            compressed ones).
        slot_token_ids: the placeholder token ids (image, video, audio).
        feature_widths: the widths ``W`` media embeddings have for the decoder (its hidden
            size; video on Qwen3-Omni adds DeepStack features).

    Returns:
        (embeddings without the channels, new ``[3, N]`` positions). A slot's position is its
        block's base (the position after the token before the block) plus its relative
        position, so calling this again for the same slots gives the same result.
    """
    new_positions = positions.clone()
    ids = input_ids.to(positions.device)
    is_slot = torch.isin(ids, torch.tensor(list(slot_token_ids), device=ids.device))
    index = torch.arange(ids.numel(), device=ids.device)
    # first slot of each slot's contiguous run (its block), from the run starts
    starts = is_slot.clone()
    starts[1:] &= ~is_slot[:-1]
    block_start = torch.cummax(torch.where(starts, index, 0), dim=0).values
    base = torch.where(block_start > 0, positions[0, (block_start - 1).clamp(min=0)] + 1, 0)
    slots = torch.nonzero(is_slot & (index >= num_computed_tokens)).flatten()
    out: list[torch.Tensor] = []
    cursor = 0
    for emb in embeddings:  # one entry per media item in this step (never per token)
        n, width = emb.shape[0], emb.shape[-1] - POSITION_CHANNELS
        if width in feature_widths:
            where = slots[cursor : cursor + n]
            if where.numel() != n:
                raise RuntimeError(
                    f"omnizip: {n} compressed media embeddings for {where.numel()} prompt slots"
                )
            rel = decode_positions(emb[:, width:]).to(positions.device)
            new_positions[:, where] = base[where].view(1, -1) + rel
            emb = emb[:, :width]
        cursor += n
        out.append(emb)
    return out, new_positions
