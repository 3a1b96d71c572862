"""A question on top of a stream's cache: prefill it, ``generate``, drop it again.

The closing markers and the question (all but their last token) are prefilled at their offline
positions (Qwen2.5-Omni's two closing markers share one position, so they cannot be numbered
from the cache length as ``generate`` numbers continued text). ``generate`` then runs on the
cache with the last token: it numbers new tokens from the cache length plus the model's
``rope_deltas``, which is set so the last token lands at its offline position and the answer
continues from there, exactly as after a compressed offline prefill (algorithm §5). The cache
is cropped back afterwards, so the stream continues as if the question had not been asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .cache import CachePiece, StreamCache

__all__ = ["REFUSED_GENERATE_KWARGS", "Answer", "answer_on_cache", "generate_on_cache"]

#: generate arguments the session sets itself or cannot honour on a shared cache
REFUSED_GENERATE_KWARGS = {
    "input_ids": "the session builds the prompt",
    "inputs_embeds": "the session builds the prompt",
    "attention_mask": "the session builds the prompt",
    "position_ids": "the session sets the positions",
    "cache": "the session's cache is used",
    "past_key_values": "the session's cache is used",
    "use_cache": "the session's cache is used",
    "assistant_model": "assisted decoding crops the cache to other lengths",
    "prompt_lookup_num_tokens": "prompt-lookup decoding crops the cache to other lengths",
}


@dataclass(frozen=True)
class Answer:
    """One answered question: ``t`` (stream seconds when asked), ``question``, ``text``,
    ``tokens`` (the generated ids), ``latency_ms`` (wall time of the session's ``ask``)."""

    t: float
    question: str
    text: str
    tokens: list[int]
    latency_ms: float


def _check_kwargs(kwargs: dict) -> None:
    for key, why in REFUSED_GENERATE_KWARGS.items():
        if key in kwargs:
            raise TypeError(f"ask: generate argument {key!r} is not accepted ({why})")
    for key in ("num_beams", "num_return_sequences"):
        value = kwargs.get(key, 1)
        if value not in (None, 1):
            raise ValueError(f"ask: {key}={value!r} is not supported (the stream's cache holds one "
                             "sequence); use greedy decoding or sampling")


def max_new_tokens(thinker: Any, kwargs: dict, prompt_tokens: int) -> int:
    """The most tokens ``generate`` may add with these arguments (for the position check)."""
    if kwargs.get("max_new_tokens") is not None:
        return int(kwargs["max_new_tokens"])
    config = getattr(thinker, "generation_config", None)
    if getattr(config, "max_new_tokens", None) is not None:
        return int(config.max_new_tokens)
    if kwargs.get("max_length") is not None:
        return max(int(kwargs["max_length"]) - prompt_tokens, 0)
    return int(getattr(config, "max_length", 20) or 20)


def generate_on_cache(
    thinker: Any,
    cache: StreamCache,
    embed: Any,
    ids: torch.Tensor,
    positions: torch.Tensor,
    kwargs: dict,
) -> tuple[torch.Tensor, Any]:
    """Answer ``ids`` (int64 ``[n]``, at ``positions`` ``[3, n]``) on top of ``cache`` and crop
    the cache back. Returns (the new token ids ``[m]``, ``generate``'s raw output).

    Args:
        thinker: the thinker (its ``generate`` and ``model.rope_deltas`` are used).
        embed: the decoder's input embedding module.
    """
    _check_kwargs(kwargs)
    committed = cache.tokens
    inner = thinker.model
    saved_deltas = inner.rope_deltas
    device = embed.weight.device
    try:
        with torch.no_grad():
            head = ids[:-1].to(device)
            cache.prefill(CachePiece(embeds=embed(head), positions=positions[:, :-1]))
        past = cache.tokens
        last = positions[0, -1]
        inner.rope_deltas = (last - past).reshape(1, 1).to(device)
        # generate slices off the tokens the cache holds; only the last one is read
        prompt = torch.zeros(1, past + 1, dtype=torch.long, device=device)
        prompt[0, -1] = ids[-1]
        with torch.no_grad():
            out = thinker.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                   cache=cache.cache, **kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        return sequences[0, past + 1:].detach().cpu(), out
    finally:
        inner.rope_deltas = saved_deltas
        cache.crop(committed)


def answer_on_cache(thinker: Any, cache: StreamCache, embed: Any, tokenizer: Any, question: str,
                    ids: torch.Tensor, positions: torch.Tensor, kwargs: dict, *, t: float,
                    started: float) -> tuple[Answer, Any]:
    """A session's ``ask`` once its prompt is built: :func:`generate_on_cache`, the new tokens
    decoded, and the :class:`Answer` (asked at stream second ``t``; its latency from
    ``started``, a ``time.perf_counter()`` reading). Returns (the answer, ``generate``'s raw
    output)."""
    new, output = generate_on_cache(thinker, cache, embed, ids, positions, kwargs)
    text = tokenizer.batch_decode(new[None], skip_special_tokens=True)[0].strip()
    return Answer(round(t, 3), question, text, new.tolist(),
                  (time.perf_counter() - started) * 1e3), output
