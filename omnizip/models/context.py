"""What an adapter hands to a method's own hooks (the extension point of the adapters).

:meth:`omnizip.method.CompressionMethod.model_hooks` receives a :class:`ModelContext`: the
modules the family adapter located, the family's token ids and layout, and the few adapter
services a hook may need (register a hook, publish a prefill's results, start the decode
bookkeeping, hold back per-layer side features). A :class:`Prefill` describes one prefill
entering the decoder, for methods that prune inside it. Tensors only; no transformers import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..method import CompressionMethod, FamilyLayout
from .batch import Repadded, gather_tokens, select_flat

__all__ = ["LayerFeatures", "ModelContext", "Prefill"]


@dataclass
class LayerFeatures:
    """Features a family adds to the hidden states after some decoder layers, at the tokens
    of ``mask`` (Qwen3-Omni DeepStack: vision features after layers 0, 1, 2).

    Attributes:
        mask: bool ``[B, L]`` the tokens the features belong to (``visual_pos_masks``).
        per_layer: decoder layer index -> ``[N, D]`` one row per True of ``mask``, row-major.
    """

    mask: torch.Tensor
    per_layer: dict[int, torch.Tensor]

    def pruned(self, layout: Repadded) -> LayerFeatures:
        """The features of the kept tokens, on the re-padded layout ``[B, L']``."""
        mask = self.mask
        keep = layout.keep.to(mask.device)
        return LayerFeatures(
            mask=gather_tokens(mask, layout.index.to(mask.device), fill=False),
            per_layer={i: select_flat(f, mask, keep) for i, f in self.per_layer.items()},
        )

    def add_after(self, layer: int, output: Any) -> Any:
        """``output`` ``[B, L, D]`` of decoder layer ``layer`` plus its features (a new
        tensor), or None when that layer has none."""
        features = self.per_layer.get(layer)
        if features is None or not isinstance(output, torch.Tensor):
            return None
        mask = self.mask.to(output.device)
        out = output.clone()
        out[mask, :] = out[mask, :] + features.to(out.device, out.dtype)
        return out


@dataclass
class Prefill:
    """One prefill entering the decoder (handed to ``MethodHooks.begin_prefill``).

    Attributes:
        input_ids, padding: ``[B, L]`` the prompt and its real slots.
        positions: ``[R, B, L]`` position ids; ``text_row`` when row 0 is the plain text row.
        kwargs: the decoder's keyword arguments.
        started: ``time.perf_counter()`` value the patch's overhead is counted from.
        before: the method's own pre-decoder compression of this prefill (a
            :class:`~omnizip.models.batch.BatchCompression`, SEATS Stage I) when it decides
            before the decoder too: the tensors above are then the compressed prompt's, and
            ``before.index`` maps their slots to the caller's (when ``before.changed``),
            ``caller_padding`` (bool ``[B, L]``) holds the caller's real slots.
    """

    input_ids: torch.Tensor
    padding: torch.Tensor
    positions: torch.Tensor
    text_row: bool
    kwargs: dict
    started: float
    before: Any = None
    caller_padding: torch.Tensor | None = None


@dataclass
class ModelContext:
    """What the adapter located on one model, for a method's hooks.

    Attributes:
        method: the method as run on this family (:meth:`CompressionMethod.for_model`).
        family: the family's :class:`~omnizip.method.FamilyLayout`.
        vision_encoder: the vision encoder module (``thinker.model.visual``) or None.
        decoder: the language model (its ``.layers`` and ``.config``).
        audio_token_id, video_token_id, image_token_id: placeholder ids.
        merge_size: vision patches merged per LLM token along each side.
        side_feature_layers: decoder layers after which the family adds :class:`LayerFeatures`
            (Qwen3-Omni DeepStack: 3; 0 elsewhere).
        pre_hook, post_hook: register a forward (pre-)hook (``with_kwargs=True``; removed by
            the patch handle): ``pre_hook(module, fn)``, ``post_hook(module, fn, always_call)``.
        embedding_dtype: ``() -> dtype`` of the decoder input embeddings.
        record: publish a prefill's results (``OmniZipHandle._record``'s arguments, with
            ``layer_tokens``: per row, the tokens each decoder layer saw).
        begin_decode: ``(prompt_length, layout)``: a prefill was compressed to the re-padded
            ``layout``; decode steps on its cache are translated (``rope_deltas`` included).
        hold_back_features: ``(kwargs, first_layer) -> (kwargs update, LayerFeatures | None)``:
            take the family's side features of layers ``>= first_layer`` out of the decoder
            inputs, for the hooks to add (pruned) themselves.
    """

    method: CompressionMethod
    family: FamilyLayout
    vision_encoder: torch.nn.Module | None
    decoder: torch.nn.Module
    audio_token_id: int
    video_token_id: int
    image_token_id: int
    merge_size: int
    side_feature_layers: int
    pre_hook: Callable[..., None]
    post_hook: Callable[..., None]
    embedding_dtype: Callable[[], torch.dtype]
    record: Callable[..., None]
    begin_decode: Callable[[int, Repadded], None]
    hold_back_features: Callable[[dict, int], tuple[dict, LayerFeatures | None]]
