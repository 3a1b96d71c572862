"""Decoding over a compressed prefill's cache, and pruning a cache in place.

The caller keeps an attention mask over the *uncompressed* prompt; :class:`DecodeSession`
translates it to the compressed cache on every decode step. :func:`prune_cache_layers` cuts
the cache of the layers that ran before an in-decoder pruning (FastV) to the kept tokens.
Nothing here imports transformers.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DecodeSession", "cache_length", "prune_cache_layers"]


def cache_length(cache: Any) -> int:
    """Tokens already in a transformers ``Cache`` (0 for ``None``; StaticCache gives a tensor)."""
    if cache is None:
        return 0
    n = cache.get_seq_length()
    return int(n)


_CROPPED = (
    "The cache no longer matches the compressed prefill: assisted/speculative and prompt-lookup "
    "decoding crop the cache to uncompressed lengths and are not supported under OmniZip."
)


class DecodeSession:
    """What decode steps after a compressed prefill need (algorithm §5).

    The caller (``generate`` or a user loop) keeps an attention mask over the *uncompressed*
    prompt and appends to it; the cache holds the compressed prompt. :meth:`attention_mask`
    maps the former to the latter: the prefill part is replaced by the compressed prefill
    mask, the part after the prompt is kept as given.
    """

    def __init__(
        self,
        prompt_length: int,
        padding: torch.Tensor,
        n_dropped: torch.Tensor,
        rope_deltas: torch.Tensor | None = None,
    ) -> None:
        self.prompt_length = prompt_length  # L
        self.padding = padding  # bool [B, L']
        self.n_dropped = n_dropped  # [B]
        self.rope_deltas = rope_deltas  # [B, 1] as set on the model after the prefill

    @property
    def compressed_length(self) -> int:
        return int(self.padding.shape[1])

    def resent_tokens(self, incoming: Any, positions: Any, past: int, new_tokens: int) -> int:
        """How many leading tokens of this call the cache already holds: 0, or ``L - L'``.

        ``generate`` continuing a cache with the whole conversation (another text turn after
        a finished generation) slices off as many tokens as the cache holds, ``L - L'`` fewer
        than the uncompressed conversation it stands for, so that many old tokens come
        again. The caller's uncompressed numbering tells:

        * a 2-D mask as wide as the cache plus this call's tokens (all tokens new would make
          it ``L - L'`` columns wider);
        * without one (``generate`` drops an all-ones mask), the position ids ``[1, B, n]``
          it builds to continue a cache (text position + ``rope_deltas``): the first token
          sits at the cache length, not ``L - L'`` after it.
        """
        dropped = self.prompt_length - self.compressed_length
        if dropped <= 0 or new_tokens <= dropped:
            return 0
        if isinstance(incoming, torch.Tensor) and incoming.dim() == 2:
            return dropped if incoming.shape[1] == past + new_tokens else 0
        if (
            isinstance(positions, torch.Tensor)
            and positions.dim() == 3
            and positions.shape[0] == 1
            and self.rope_deltas is not None
        ):
            # the longest row has no padding: its text position is its column
            row = int((self.padding.sum(1) + self.n_dropped.to(self.padding.device)).argmax())
            first = positions[0, row, 0] - self.rope_deltas[row, 0].to(positions.device)
            return dropped if abs(float(first) - past) < 0.5 else 0
        return 0

    def attention_mask(self, incoming: Any, past: int, new_tokens: int, batch: int) -> torch.Tensor | None:
        """The 2-D ``[B, past + new_tokens]`` mask matching the compressed cache.

        Args:
            incoming: the caller's mask: None, 2-D over the uncompressed prompt plus the tokens
                after it (``L + past - L' + new_tokens`` long), 2-D already over the cache
                (``past + new_tokens`` long; a longer call that wide re-sends tokens the cache
                holds, see :meth:`resent_tokens`), or a prepared 4-D/dict mask (static-cache
                ``generate``; the generated part is then all ones, as ``generate`` builds it).
        Returns None when nothing is masked (so attention may use its causal fast path).
        """
        if batch != self.padding.shape[0]:
            raise ValueError(
                f"attention_mask: decoding a batch of {batch} rows on a cache compressed for "
                f"{self.padding.shape[0]} rows"
            )
        tail_len = past + new_tokens - self.compressed_length
        if tail_len < 0:
            raise ValueError(
                f"cache: it holds {past} tokens, fewer than the {self.compressed_length} of the "
                f"compressed prompt. {_CROPPED}"
            )
        device = self.padding.device
        if isinstance(incoming, torch.Tensor) and incoming.dim() == 2:
            width = incoming.shape[1]
            if width == self.prompt_length + tail_len:
                tail = incoming[:, self.prompt_length :].to(device).bool()
            elif width == past + new_tokens:
                tail = incoming[:, self.compressed_length :].to(device).bool()
            else:
                raise ValueError(
                    f"attention_mask has {width} columns; expected {self.prompt_length + tail_len} "
                    f"(uncompressed prompt {self.prompt_length} + {tail_len} later tokens) or "
                    f"{past + new_tokens} (the compressed cache + new tokens). {_CROPPED}"
                )
            dtype = incoming.dtype
        else:
            tail = torch.ones(batch, tail_len, dtype=torch.bool, device=device)
            dtype = torch.long
        mask = torch.cat([self.padding, tail], dim=1)
        if incoming is None and bool(mask.all()):
            return None
        return mask.to(dtype)


def _gather_cache(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, :, index[b, j]]`` for a ``[B, H, L, Dh]`` cache tensor; ``-1`` slots get zeros."""
    bsz, heads, _, dim = x.shape
    idx = index.to(x.device)
    out = x.gather(2, idx.clamp(min=0)[:, None, :, None].expand(bsz, heads, idx.shape[1], dim))
    return out.masked_fill((idx < 0)[:, None, :, None], 0)


def prune_cache_layers(cache: Any, layer_ids: Any, index: torch.Tensor) -> None:
    """Keep, in the cache layers ``layer_ids``, only the prompt slots ``index`` (FastV).

    Args:
        cache: a transformers ``Cache`` whose listed layers hold the whole prompt (``L`` keys).
        layer_ids: the layers to prune (those that ran before the in-decoder pruning).
        index: int64 ``[B, L']`` the original slot of each new slot, -1 for pads (zeros).

    Dynamic layers get new tensors; static layers are rewritten in place (their addresses
    stay) and their length is reduced to ``L'``. Other layer kinds (sliding-window, quantized)
    raise ``ValueError``.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"cache: {type(cache).__name__} has no per-layer storage to prune")
    new_len = int(index.shape[1])
    for i in layer_ids:
        layer = layers[i]
        kind = type(layer).__name__
        if kind not in ("DynamicLayer", "StaticLayer"):
            raise ValueError(
                f"cache: pruning inside the decoder (fastv) supports dynamic and static caches, "
                f"not {kind} (layer {i}); use a DynamicCache or StaticCache"
            )
        if not getattr(layer, "is_initialized", True) or layer.keys is None:
            continue
        length = int(layer.get_seq_length())
        keys = _gather_cache(layer.keys[:, :, :length], index)
        values = _gather_cache(layer.values[:, :, :length], index)
        if kind == "StaticLayer":
            layer.keys[:, :, :new_len].copy_(keys)
            layer.values[:, :, :new_len].copy_(values)
            layer.keys[:, :, new_len:length].zero_()
            layer.values[:, :, new_len:length].zero_()
            layer.cumulative_length.sub_(length - new_len)
        else:
            layer.keys, layer.values = keys, values
