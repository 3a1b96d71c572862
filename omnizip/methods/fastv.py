"""``fastv``: FastV's in-decoder pruning by the last token's attention, without attention maps.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024) runs the first
``K`` decoder layers on the whole prompt, then ranks the image/video tokens by the attention
the **last prompt token** pays them in layer ``K`` (averaged over heads) and drops the lowest
ranked for all later layers (its defaults: K = 2, half of the visual tokens dropped; the
OmniZip paper runs it with K = 5). FastV reads that attention from the full attention
matrix, which sdpa and FlashAttention never materialise; here the one row that matters is
recomputed from the layer's queries and keys: ``softmax(q_last . K^T * scale)`` over all keys
per head (a ``[H, L]`` tensor, no ``[L, L]`` matrix), grouped-query aware
(:func:`fastv_select`).

Budget: ``retention`` / ``token_budget`` count the audio + video (+ image) tokens kept after
layer ``K`` (as every method here). Candidates for pruning are the tokens of ``modalities``
(default: video and image, FastV's visual tokens); multimodal tokens that are not candidates
stay and count against the budget, so candidates keep ``total - (non-candidate multimodal)``
(0 when the budget is below that). With ``modalities=("audio", "video", "image")`` all of them
compete in one ranking. Text is never dropped.

Counting layers (FastV's ``K``): layers ``0 .. K-1`` (0-based) run on every token; the
ranking comes from the attention of layer ``K-1``, the last full layer (FastV's "attention
of layer K" in 1-based counting); layers ``K ..`` run on the kept tokens only.

Model-side contract (what must happen on a model for ``in_decoder_layer = K``; model paths
for Qwen2.5-Omni's thinker, ``decoder = thinker.model.language_model``). FastV's own hooks
implement it, option (a) of step 4, on every family an adapter locates the decoder of
(:mod:`omnizip.methods.fastv_hooks`, returned by :meth:`FastVConfig.model_hooks`):

1. **Scores at layer K-1.** Register a forward pre-hook (``with_kwargs=True``) on
   ``decoder.layers[K-1].self_attn`` for the prefill call (the one whose ``hidden_states``
   cover the whole prompt; skip decode steps). From its ``hidden_states`` ``[B, L, D]`` (the
   layer's input after ``input_layernorm``) and ``position_embeddings`` ``(cos, sin)``:

   - ``q = self_attn.q_proj(h[:, last])`` -> ``[B, H, Dh]`` for each row's last real token
     (index ``L-1`` with left padding, the last non-pad index with right padding), and
     ``k = self_attn.k_proj(h)`` -> ``[B, L, H_kv, Dh]``;
   - apply the model's rotary embedding to both exactly as the attention does (transformers
     5.x: the rotary module already folds the M-RoPE sections into ``cos``/``sin``, so it is
     ``x * cos + rotate_half(x) * sin``, with ``cos``/``sin`` of the last position for ``q``;
     Qwen3-Omni applies ``q_norm``/``k_norm`` per head first). Equivalently, take the keys from the KV cache after layer
     ``K-1`` ran (``cache.layers[K-1].keys``, ``[B, H_kv, L, Dh]``: transpose to
     ``[B, L, H_kv, Dh]``; they are stored post-rotary) and only recompute ``q``;
   - ``scale = self_attn.scaling``.

2. **Decide.** Per row (padding removed), call
   :meth:`FastVConfig.decide` ``(hidden_states_row [L, D], input_ids_row [L], query [H, Dh],
   keys [L, H_kv, Dh], audio_token_id=, video_token_id=, image_token_id=, scale=)``; it
   returns a :class:`~omnizip.TokenDecision` whose ``keep`` is the mask (text always True).
   Batched rows can instead call :func:`fastv_select` once with ``[B, ...]`` tensors and a
   ``key_mask`` marking the pads.

3. **Prune before layer K.** A forward pre-hook on ``decoder.layers[K]`` (prefill only)
   replaces, with the kept tokens of each row (re-padded on the same side as the input):
   ``hidden_states``, ``position_embeddings`` (``cos``/``sin``: gather along the token dim),
   ``position_ids`` (all rows), ``attention_mask`` (rebuild the 4-D causal mask over the kept
   tokens, or pass the 2-D padding mask when the attention builds its own) and
   ``cache_position`` (``arange(L')``; transformers 5.x passes none: caches track their
   own lengths). Layers ``>= K`` then write only kept tokens to the
   cache. Transformers' ``create_causal_mask`` is called once per forward in
   ``decoder.forward`` (before the layers), so the pre-hook must hand each later layer the
   pruned mask itself, e.g. by wrapping the layers' forward through the hook's kwargs.

4. **Cache and decoding.** After the prefill, layers ``< K`` hold ``L`` keys, layers ``>= K``
   hold ``L'``. Either (a) prune layers ``< K``'s cache entries to the kept tokens as well
   (``cache.layers[i].keys/values = ...[:, :, kept]``), so every layer holds ``L'`` and decode
   masks/positions follow OmniZip's decode bookkeeping unchanged (``rope_deltas`` from the
   kept tokens' positions, the uncompressed 2-D mask translated), at the cost that decode
   steps in the first ``K`` layers no longer see the dropped tokens (FastV's own released
   code with a cache behaves the same way, as it keeps one mask for all layers); or (b) keep
   per-layer lengths and give every layer a mask of its own length in decode. (a) is
   recommended. Decode positions continue from ``max(position) + 1`` as without pruning.

5. **FLOPs.** :func:`omnizip.flops.flops_ratio` takes ``prune_layer=K`` for FastV runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core import TokenDecision
from ..models.context import ModelContext
from ._common import BudgetedMethod, check_int, keep_highest
from .fastv_hooks import FastVHooks

__all__ = ["FASTV_MODALITIES", "FastVConfig", "fastv_attention", "fastv_select"]

FASTV_MODALITIES = ("audio", "video", "image")


def fastv_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one query token over all keys, averaged over heads (FastV's ranking).

    Args:
        query: ``[H, Dh]`` or ``[B, H, Dh]`` the last token's post-rotary query.
        keys: ``[L, H_kv, Dh]`` or ``[B, L, H_kv, Dh]`` post-rotary keys of the same layer
            (the last token's own key included). ``H`` must be a multiple of ``H_kv``; query
            head ``h`` reads key head ``h // (H / H_kv)`` (grouped-query attention).
        key_mask: bool ``[L]`` / ``[B, L]`` keys the query may attend (pads False); default all.
        scale: logits scale, default ``Dh ** -0.5``.
    Returns:
        float32 ``[L]`` / ``[B, L]``: ``mean_h softmax_j(q_h . k_j * scale)``; masked keys 0.
    """
    batched = query.dim() == 3
    if not batched:
        if query.dim() != 2 or keys.dim() != 3:
            raise ValueError(
                f"query must be [H, Dh] with keys [L, H_kv, Dh] (or batched [B, H, Dh] with "
                f"[B, L, H_kv, Dh]), got query {tuple(query.shape)} and keys {tuple(keys.shape)}"
            )
        query, keys = query.unsqueeze(0), keys.unsqueeze(0)
        key_mask = None if key_mask is None else key_mask.unsqueeze(0)
    elif keys.dim() != 4:
        raise ValueError(f"batched query [B, H, Dh] needs keys [B, L, H_kv, Dh], got {tuple(keys.shape)}")
    bsz, heads, head_dim = query.shape
    _, length, kv_heads, k_dim = keys.shape
    if keys.shape[0] != bsz or k_dim != head_dim:
        raise ValueError(
            f"query {tuple(query.shape)} and keys {tuple(keys.shape)} disagree on batch or head dim"
        )
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key heads ({kv_heads})")
    scale = head_dim**-0.5 if scale is None else float(scale)
    group = heads // kv_heads
    q = query.float().view(bsz, kv_heads, group, head_dim)
    logits = torch.einsum("bkgd,blkd->bkgl", q, keys.float()) * scale  # [B, H_kv, g, L]
    if key_mask is not None:
        if tuple(key_mask.shape) != (bsz, length):
            raise ValueError(f"key_mask must have shape {(bsz, length)}, got {tuple(key_mask.shape)}")
        logits = logits.masked_fill(~key_mask.to(logits.device)[:, None, None, :], float("-inf"))
    attn = torch.softmax(logits, dim=-1).mean(dim=(1, 2))  # [B, L]
    return attn if batched else attn[0]


def fastv_select(
    query: torch.Tensor,
    keys: torch.Tensor,
    candidates: torch.Tensor,
    n_keep: int | torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """FastV's keep mask: all non-candidates, plus the ``n_keep`` candidates the last token
    attends to most (ties: the lower index).

    Args:
        query, keys, key_mask, scale: as :func:`fastv_attention` (softmax over all keys).
        candidates: bool ``[L]`` / ``[B, L]`` prunable tokens (image/video tokens).
        n_keep: candidates kept: an int, or int64 ``[B]`` per row; clamped to the candidates.
    Returns:
        bool ``[L]`` / ``[B, L]`` on ``keys``' device. Inputs are not modified.
    """
    attn = fastv_attention(query, keys, key_mask=key_mask, scale=scale)
    candidates = candidates.to(attn.device, torch.bool)
    if candidates.shape != attn.shape:
        raise ValueError(f"candidates must have shape {tuple(attn.shape)}, got {tuple(candidates.shape)}")
    scores = attn.masked_fill(~candidates, float("-inf"))
    n_cand = candidates.sum(-1)
    if isinstance(n_keep, torch.Tensor):
        counts = torch.minimum(n_keep.to(attn.device, torch.int64), n_cand)
    else:
        counts = n_cand.clamp(max=max(0, int(n_keep)))
    chosen = keep_highest(scores, counts) & candidates
    return chosen | ~candidates


@dataclass(frozen=True)
class FastVConfig(BudgetedMethod):
    """FastV: prune visual tokens after decoder layer ``layer`` (K).

    Attributes:
        retention, token_budget: the budget (multimodal tokens kept after layer K).
        layer: K >= 1; the first K decoder layers see every token (OmniZip paper: 5).
        modalities: which tokens may be pruned, a subset of ("audio", "video", "image")
            (default ("video", "image"): FastV's visual tokens).
    """

    name: ClassVar[str] = "fastv"

    layer: int = 5
    modalities: tuple[str, ...] = ("video", "image")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("layer", self.layer, 1)
        mods = self.modalities
        if isinstance(mods, str):
            mods = tuple(m.strip() for m in mods.split(",") if m.strip())
        if isinstance(mods, list):
            mods = tuple(mods)
        if not isinstance(mods, tuple) or not mods or any(m not in FASTV_MODALITIES for m in mods):
            raise ValueError(
                f"modalities must be a non-empty subset of {FASTV_MODALITIES}, got {self.modalities!r}"
            )
        object.__setattr__(self, "modalities", tuple(dict.fromkeys(mods)))

    @property
    def in_decoder_layer(self) -> int:
        """K: the hooks prune before decoder layer K (0-based), see the module docs."""
        return self.layer

    def model_hooks(self, ctx: ModelContext) -> FastVHooks:
        """FastV's hooks on the decoder the adapter located (:mod:`omnizip.methods.fastv_hooks`)."""
        return FastVHooks(ctx, self)

    def candidate_counts(self, input_ids: torch.Tensor, ids: dict[str, int | None]) -> tuple[torch.Tensor, int, int]:
        """(candidate mask, multimodal token count, candidates to keep) for one row."""
        multimodal = torch.zeros_like(input_ids, dtype=torch.bool)
        candidates = torch.zeros_like(input_ids, dtype=torch.bool)
        for modality, token in ids.items():
            if token is None:
                continue
            is_mod = input_ids == token
            multimodal |= is_mod
            if modality in self.modalities:
                candidates |= is_mod
        n_multi = int(multimodal.sum())
        n_cand = int(candidates.sum())
        total = self.kept_total(n_multi)
        fixed = n_multi - n_cand
        return candidates, n_multi, max(0, min(total - fixed, n_cand))

    def decide(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        *,
        audio_token_id: int,
        video_token_id: int,
        image_token_id: int | None = None,
        key_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> TokenDecision:
        """The keep mask of one row at layer K (see the module docstring for the tensors).

        Args:
            hidden_states: ``[L, D]`` the row's hidden states entering layer K (returned as
                ``embeds`` unchanged: FastV does not alter hidden states; no copy is made).
            input_ids: integer ``[L]`` the row's prompt ids (padding removed).
            query: ``[H, Dh]`` post-rotary query of the last token in layer K-1.
            keys: ``[L, H_kv, Dh]`` post-rotary keys of layer K-1.
        Returns:
            :class:`~omnizip.TokenDecision` (``audio_positions``/``video_positions`` as for the
            other methods; image tokens, when candidates, are pruned but not listed there).
        """
        if hidden_states.dim() != 2 or input_ids.dim() != 1 or hidden_states.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"hidden_states must be [L, D] and input_ids [L], got {tuple(hidden_states.shape)} "
                f"and {tuple(input_ids.shape)}"
            )
        if keys.dim() != 3 or keys.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"keys must be [L, H_kv, Dh] with L={input_ids.shape[0]}, got {tuple(keys.shape)}"
            )
        ids: dict[str, Any] = {"audio": audio_token_id, "video": video_token_id, "image": image_token_id}
        candidates, _, n_keep = self.candidate_counts(input_ids, ids)
        keep = fastv_select(query, keys, candidates, n_keep, key_mask=key_mask, scale=scale)
        return TokenDecision(
            keep=keep.to(hidden_states.device),
            embeds=hidden_states,
            audio_positions=torch.nonzero(input_ids == audio_token_id).flatten().to(hidden_states.device),
            video_positions=torch.nonzero(input_ids == video_token_id).flatten().to(hidden_states.device),
        )
