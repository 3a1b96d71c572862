"""OmniZip for Hugging Face transformers' Qwen2.5-Omni (thinker path), by forward hooks.

Where the hooks sit (module paths of ``Qwen2_5OmniThinkerForConditionalGeneration``; the full
``Qwen2_5OmniForConditionalGeneration`` holds it as ``.thinker``):

====================================  =======================================================
``thinker`` (pre)                     refuse ``labels`` (a loss over a compressed sequence)
``thinker.model`` (pre)               start of every call: remember the ids and padding of a
                                      prefill; on decode steps over a compressed cache,
                                      rewrite the attention mask (and the text position row)
                                      to the compressed layout (SPEC 5)
``thinker.model.visual`` (pre)        remember ``grid_thw`` (tokens-per-frame fallback)
``thinker.model.audio_tower`` (pre)   frames per audio stream (``feature_lens``)
``audio_tower.layers[-1].self_attn``  its input after the pre-attention LayerNorm: recompute
(pre)                                 q/k and score the frames (SPEC 3), pooled to tokens
``thinker.model.language_model``      the multimodal embeddings and position ids are built:
(pre)                                 compress every row (core), re-pad, keep original M-RoPE
                                      positions, renumber the text row, set ``rope_deltas``
``thinker.model.language_model``      bind the decode bookkeeping to the cache just written
(post)
``thinker.model`` (post, always)      drop per-call state, also after an error
====================================  =======================================================

Baselines that need more (only registered when the method asks for it):

====================================  =======================================================
``visual.blocks[-1].attn`` (pre)      VisionZip: recompute the last vision block's post-rotary
                                      q/k, attention received per patch inside the block's
                                      ``cu_seqlens`` spans, pooled per LLM token, back in LLM
                                      order (``window_index``)
``visual`` (post, always)             VisionZip: file the call's scores with a fingerprint of
                                      its output rows; the decoder pre-hook matches the
                                      prompt's video tokens to them (video calls only)
``language_model.layers[K-1]          FastV: the last real token's attention over the layer's
.self_attn`` (pre)                    keys (recomputed q/k, no attention matrix); decide rows
``language_model.layers[K..]`` (pre)  FastV: hidden states (layer K), rotary embeddings, text
                                      positions and causal mask of the kept tokens
``language_model`` (post)             FastV: prune the cache of layers < K to the kept tokens
``language_model.layers[K..n_ds-1]``  FastV on Qwen3-Omni with K below the DeepStack layers:
(post)                                add those layers' DeepStack features at the kept tokens
====================================  =======================================================

In transformers 5.x ``generate`` runs the vision encoder before the thinker and hands it
``mm_encoder_outputs`` (no ``video_grid_thw``), so tokens per frame are read from the M-RoPE
position ids (one frame = the run of video tokens from one ``(h, w)`` origin cell to the next);
``video_grid_thw`` is the fallback when the positions are not M-RoPE.
"""

from __future__ import annotations

import inspect
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import audio_attention_scores, audio_energy_scores, pool_audio_scores
from ..methods.visionzip import vision_token_scores
from ..patch import ModelAdapter
from ._baselines import (
    FastVPrefill,
    VisionRun,
    VisionScoreBook,
    decoder_query_keys,
    last_real_index,
    vision_query_key,
)
from ._common import (
    DecodeSession,
    cache_length,
    compress_batch,
    gather_tokens,
    padding_mask_2d,
    prune_cache_layers,
    repad_rows,
    select_flat,
    tokens_per_frame_from_grid,
    tokens_per_frame_from_positions,
)

__all__ = ["Qwen2_5OmniAdapter"]

logger = logging.getLogger("omnizip")


@dataclass
class _Call:
    """What one prefill call of ``thinker.model`` has shown so far (cleared after use)."""

    input_ids: torch.Tensor  # [B, L]
    padding: torch.Tensor  # bool [B, L]
    video_grid_thw: torch.Tensor | None = None
    video_sizes: list[int] | None = None  # tokens per video, from pre-computed encoder outputs
    stream_frames: torch.Tensor | None = None  # frames per audio stream after the conv stem
    scores: list[torch.Tensor] = field(default_factory=list)  # pooled token scores per tower call
    score_seconds: float = 0.0  # wall time spent scoring audio (counted in the overhead)


class Qwen2_5OmniAdapter(ModelAdapter):
    """Hooks for ``Qwen2_5OmniForConditionalGeneration`` and its thinker (SPEC 3, 5).

    Subclass hooks for other families of the same shape (Qwen3-Omni): :attr:`audio_pool`
    (frames pooled per audio token), :meth:`_locate` (module paths), :meth:`_stream_frames`
    (last-layer audio frames per stream), :meth:`_method` (the method as run on this family's
    token layout) and :meth:`_extra_decoder_inputs` (per-token side inputs pruned with the
    same keep mask).
    """

    name = "qwen2_5_omni"
    #: the model family, as error messages name it
    family = "Qwen2.5-Omni"
    model_classes = (
        "Qwen2_5OmniForConditionalGeneration",
        "Qwen2_5OmniThinkerForConditionalGeneration",
    )
    #: the audio encoder average-pools frame pairs into LLM tokens (SPEC 3)
    audio_pool = 2

    def __init__(self, model: torch.nn.Module, handle: Any) -> None:
        super().__init__(model, handle)
        self.thinker, self.inner, self.decoder, self.audio_tower, self.score_attn = self._locate(model)
        cfg = self.thinker.config
        self.audio_token_id = int(cfg.audio_token_id)
        self.video_token_id = int(cfg.video_token_id)
        self.image_token_id = int(cfg.image_token_id)
        self.merge_size = int(cfg.vision_config.spatial_merge_size)
        self._signature = inspect.signature(self.inner.forward)
        self._call: _Call | None = None
        self._pending: DecodeSession | None = None
        # cache object -> decode bookkeeping; weak keys: a finished generation frees its entry
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned: set[str] = set()
        # grid_thw of the latest vision-encoder calls: under 5.x generate the encoder runs
        # before the thinker, whose call then carries no video_grid_thw (fallback only)
        self._visual_grids: list[torch.Tensor] = []
        # VisionZip: scores of the latest vision-encoder calls, and the call in flight
        self._vision_book = VisionScoreBook()
        self._vision_call: dict[str, Any] | None = None
        self._vision_seconds = 0.0
        # FastV: K (prune before decoder layer K) and the prefill in flight
        self._prune_layer: int | None = None
        self._fastv: FastVPrefill | None = None
        self._layer_ids: dict[int, int] = {}

    # -- setup ---------------------------------------------------------------------------------
    def _locate(self, model: torch.nn.Module) -> tuple[Any, Any, Any, Any, Any]:
        """(thinker, thinker.model, language model, audio tower, last audio attention)."""
        thinker = getattr(model, "thinker", model)
        try:
            inner = thinker.model
            decoder = inner.language_model
            audio_tower = inner.audio_tower
            score_attn = audio_tower.layers[-1].self_attn
        except (AttributeError, IndexError) as exc:
            raise ValueError(
                f"model: {type(model).__name__} does not have the {self.family} layout "
                "thinker.model.{language_model, audio_tower.layers[-1].self_attn}: "
                f"{exc}"
            ) from exc
        for attr in ("q_proj", "k_proj", "num_heads", "scaling"):
            if not hasattr(score_attn, attr):
                raise ValueError(f"model: the last audio attention layer has no `{attr}`")
        return thinker, inner, decoder, audio_tower, score_attn

    def attach(self) -> None:
        self._pre_hook(self.thinker, self._on_thinker)
        self._pre_hook(self.inner, self._on_model)
        self._pre_hook(self.audio_tower, self._on_audio_tower)
        visual = getattr(self.inner, "visual", None)
        if visual is not None:
            self._pre_hook(visual, self._on_visual)
        self._pre_hook(self.score_attn, self._on_audio_last_attention)
        self._pre_hook(self.decoder, self._on_decoder)
        self._post_hook(self.decoder, self._after_decoder)
        self._post_hook(self.inner, self._after_model, always_call=True)
        method = self.handle.config
        if bool(getattr(method, "needs_video_scores", False)):
            self._attach_vision_scores(visual)
        if getattr(method, "in_decoder_layer", None) is not None:
            self._attach_fastv(int(method.in_decoder_layer))
        if getattr(self.model, "has_talker", False):
            logger.warning(
                "omnizip: the talker (audio output) is loaded; OmniZip serves the text path "
                "only, call generate(..., generation_mode='text') or model.disable_talker()"
            )

    def _attach_vision_scores(self, visual: Any) -> None:
        """VisionZip: score the vision encoder's last block (its attention's input)."""
        try:
            last_attn = visual.blocks[-1].attn
        except (AttributeError, IndexError, TypeError) as exc:
            raise ValueError(
                f"config: method {self.handle.config.name!r} needs vision-encoder scores, but "
                f"the model has no vision encoder with blocks[-1].attn ({exc})"
            ) from exc
        self._post_hook(visual, self._after_visual, always_call=True)
        self._pre_hook(last_attn, self._on_vision_last_attention)

    def _attach_fastv(self, layer: int) -> None:
        """FastV: score at decoder layer K-1, prune the inputs of layers K.. (contract in
        :mod:`omnizip.methods.fastv`)."""
        layers = self.decoder.layers
        n_layers = len(layers)
        if not 1 <= layer < n_layers:
            raise ValueError(
                f"config: method {self.handle.config.name!r} prunes after decoder layer {layer} "
                f"(layer={layer}), but this model's decoder has {n_layers} layers; choose a "
                f"layer between 1 and {n_layers - 1}"
            )
        kinds = set(getattr(self.decoder.config, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise ValueError(
                f"config: method {self.handle.config.name!r} supports decoders with full "
                f"attention only; this one has layer types {sorted(kinds)}"
            )
        self._prune_layer = layer
        self._layer_ids = {id(m): i for i, m in enumerate(layers)}
        self._pre_hook(layers[layer - 1].self_attn, self._on_fastv_scores)
        for i in range(layer, n_layers):
            self._pre_hook(layers[i], self._on_fastv_layer)
        for i in range(layer, min(self._deepstack_layers(), n_layers)):
            self._post_hook(layers[i], self._after_fastv_layer)

    def _deepstack_layers(self) -> int:
        """Decoder layers after which vision features are added (Qwen3-Omni DeepStack; 0)."""
        return 0

    def detach(self) -> None:
        self._visual_grids = []
        self._vision_book.clear()
        self._vision_call = None
        self._fastv = None
        self._call = None
        self._pending = None
        self._sessions = weakref.WeakKeyDictionary()

    # -- hooks ---------------------------------------------------------------------------------
    def _on_thinker(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Refuse a loss: labels are laid out over the uncompressed sequence."""
        if kwargs.get("labels") is None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or bool(
            ((ids == self.audio_token_id) | (ids == self.video_token_id)).any()
        ):
            raise ValueError(
                "labels: OmniZip compresses the prompt, so a loss over `labels` is not "
                "supported while the model is patched (call handle.remove() for training)"
            )
        return None

    def _on_model(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Start of ``thinker.model``: prefill bookkeeping, or decode mask translation."""
        if args:  # move positional arguments to keywords once, so later lookups are uniform
            kwargs = dict(self._signature.bind_partial(*args, **kwargs).arguments)
            extra = kwargs.pop("kwargs", None)
            if extra:
                kwargs.update(extra)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache_length(cache)
        if past == 0:
            self._call = self._start_call(kwargs)
            return ((), kwargs) if args else None
        self._call = None
        session = self._sessions.get(cache) if cache is not None else None
        if session is None:
            return ((), kwargs) if args else None
        ids = kwargs.get("input_ids")
        if ids is not None and bool(
            ((ids == self.audio_token_id) | (ids == self.video_token_id)).any()
        ):
            raise ValueError(
                "input_ids: new audio/video tokens on top of a compressed cache (chunked "
                "prefill, or a later turn with media) are not supported; start a fresh prefill"
            )
        return (), self._decode_inputs(kwargs, past, session)

    def _on_visual(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Remember the grids the vision encoder is called with (images and videos alike);
        VisionZip: prepare the scoring of this call (its window order)."""
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if isinstance(grid, torch.Tensor):
            self._visual_grids = [*self._visual_grids[-3:], grid.detach().to("cpu")]
            if bool(getattr(self.handle.config, "needs_video_scores", False)):
                started = time.perf_counter()
                self._vision_call = {
                    "grid": grid,
                    "window_index": self._vision_window_index(module, grid, kwargs),
                    "scores": None,
                }
                self._vision_seconds += time.perf_counter() - started
        return None

    def _vision_window_index(self, visual: Any, grid: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """The encoder's merged-token window permutation (Qwen2.5-VL window attention), or
        None when its blocks keep the patch order (no ``window_size``, e.g. Qwen3-Omni).

        Computed by the encoder's own module function ``get_vision_window_index`` (or taken
        from a precomputed ``window_index`` kwarg, as the encoder itself does)."""
        if getattr(visual, "window_size", None) is None:
            return None
        given = kwargs.get("window_index")
        if isinstance(given, torch.Tensor) and kwargs.get("cu_window_seqlens") is not None:
            return given
        import sys

        fn = getattr(sys.modules.get(type(visual).__module__), "get_vision_window_index", None)
        if fn is None:
            raise RuntimeError(
                f"omnizip: cannot find the window order of {type(visual).__name__} "
                "(get_vision_window_index); VisionZip scores need it"
            )
        window_index, _ = fn(
            grid,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        return window_index

    def _on_vision_last_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """VisionZip: attention received in the encoder's last block, per LLM token."""
        pending = self._vision_call
        if pending is None:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        rotary = kwargs.get("position_embeddings")
        if hidden is None or cu_seqlens is None or rotary is None:
            return None
        started = time.perf_counter()
        with torch.no_grad():
            query, key = vision_query_key(module, hidden, rotary)
            pending["scores"] = vision_token_scores(
                query,
                key,
                cu_seqlens,
                merge_unit=self.merge_size**2,
                window_index=pending["window_index"],
                scale=float(module.scaling),
                block_elements=int(getattr(self.handle.config, "block_elements", 1 << 24)),
            )
        self._vision_seconds += time.perf_counter() - started
        return None

    def _after_visual(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """VisionZip: file the call's scores with a fingerprint of its output rows."""
        pending, self._vision_call = self._vision_call, None
        if pending is None or pending["scores"] is None or output is None:
            return None
        pooled = getattr(output, "pooler_output", None)
        if pooled is None and isinstance(output, (tuple, list)) and len(output) > 1:
            pooled = output[1]
        scores = pending["scores"]
        if not isinstance(pooled, torch.Tensor) or pooled.shape[0] != scores.numel():
            return None
        started = time.perf_counter()
        grid = pending["grid"].to("cpu", torch.int64)
        sizes = (grid.prod(-1) // self.merge_size**2).tolist()
        dtype = self.inner.get_input_embeddings().weight.dtype
        with torch.no_grad():
            fingerprints = self._vision_book.fingerprint(pooled, dtype)
        self._vision_book.add(VisionRun(fingerprints, scores, sizes))
        self._vision_seconds += time.perf_counter() - started
        return None

    def _on_audio_tower(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Frames per audio stream after the stride-2 conv stem (the last layer's ``T_s``)."""
        call = self._call
        if call is None or not self._encoder_scores():
            return None
        feature_lens = kwargs.get("feature_lens", args[1] if len(args) > 1 else None)
        if feature_lens is not None:
            lens = torch.as_tensor(feature_lens).to("cpu", torch.int64).flatten()
            call.stream_frames = self._stream_frames(lens)
        return None

    @staticmethod
    def _stream_frames(feature_lens: torch.Tensor) -> torch.Tensor:
        """Frames per stream in the encoder layers: mel frames after the stride-2 conv stem
        (per 2*n_window chunk, which sums to the same count for a whole stream)."""
        return (feature_lens - 1) // 2 + 1

    def _on_audio_last_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """SPEC 3: q/k of the last audio layer from its (LayerNorm-ed) input -> token scores."""
        call = self._call
        method = self.handle.config
        if call is None or not self._encoder_scores():
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        if hidden is None or hidden.dim() != 2:
            return None
        frames = hidden.shape[0]
        streams = call.stream_frames
        if streams is None or int(streams.sum()) != frames:
            self._warn_once(
                "streams",
                "omnizip: audio stream lengths unknown; scoring all audio frames as one stream",
            )
            streams = torch.tensor([frames])
        heads = int(module.num_heads)
        started = time.perf_counter()
        with torch.no_grad():
            query = module.q_proj(hidden).reshape(frames, heads, -1)
            key = module.k_proj(hidden).reshape(frames, heads, -1)
            frame_scores = audio_attention_scores(
                query,
                key,
                scope=self._score_mode(),
                stream_lengths=streams,
                cu_seqlens=cu_seqlens if self._score_mode() == "windowed" else None,
                scale=float(module.scaling),
                block_elements=int(getattr(method, "block_elements", 1 << 24)),
            )
            call.scores.append(pool_audio_scores(frame_scores, streams, pool=self.audio_pool))
        call.score_seconds += time.perf_counter() - started
        return None

    def _on_decoder(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """SPEC 5: compress the prefill between the multimodal merge and the first layer."""
        call, self._call = self._call, None
        grids, self._visual_grids = self._visual_grids, []
        vision_seconds, self._vision_seconds = self._vision_seconds, 0.0
        embeds = kwargs.get("inputs_embeds")
        if call is None or embeds is None or embeds.dim() != 3:
            return None
        # overhead = scoring (audio, vision) + compression
        started = time.perf_counter() - call.score_seconds - vision_seconds
        if self._prune_layer is not None:
            return self._fastv_begin(call, args, kwargs, embeds, started)
        ids = call.input_ids.to(embeds.device)
        bsz, length = embeds.shape[:2]
        if tuple(ids.shape) != (bsz, length):
            raise RuntimeError(
                f"omnizip: decoder got {bsz}x{length} embeddings for {tuple(ids.shape)} input ids"
            )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        is_audio = ids == self.audio_token_id
        if not bool((is_audio | (ids == self.video_token_id)).any()):
            self._forget(cache)
            self.handle._record([], [], [], started, (length, length))
            return None
        padding = call.padding.to(embeds.device)
        given = kwargs.get("position_ids")
        positions, text_row = self._positions(given, bsz, length, padding)
        mrope = positions[1:] if text_row else positions
        batch = compress_batch(
            embeds=embeds,
            input_ids=ids,
            padding=padding,
            position_ids=positions,
            audio_scores=self._audio_scores(call, embeds, is_audio),
            video_scores=self._video_scores(embeds, ids == self.video_token_id),
            tokens_per_frame=self._tokens_per_frame(call, grids, ids, padding, mrope),
            method=self._method(),
            audio_token_id=self.audio_token_id,
            video_token_id=self.video_token_id,
            text_row=text_row,
        )
        before, after = int(padding.sum()), int(batch.padding.sum())
        if not batch.changed:
            self._forget(cache)
            self.handle._record(
                batch.results, batch.kept_indices, batch.audio_scores, started, (before, after),
                video_scores=batch.video_scores,
            )
            return None
        new_kwargs = dict(kwargs)
        new_kwargs["inputs_embeds"] = batch.embeds
        new_kwargs["attention_mask"] = self._prefill_mask(kwargs.get("attention_mask"), batch.padding)
        new_positions = batch.position_ids
        if given is not None and given.dim() == 2:
            new_positions = new_positions[0]
        new_kwargs["position_ids"] = new_positions
        new_kwargs.update(self._extra_decoder_inputs(kwargs, batch))
        # callers that decode without position_ids continue from the cache length + rope_deltas
        self.inner.rope_deltas = batch.rope_deltas
        self._pending = DecodeSession(length, batch.padding, batch.n_dropped)
        self._forget(cache)
        self.handle._record(
            batch.results, batch.kept_indices, batch.audio_scores, started, (before, after),
            video_scores=batch.video_scores,
        )
        return args, new_kwargs

    def _after_decoder(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """Bind the decode bookkeeping to the cache the compressed prefill was written to
        (FastV: first prune the cache of the layers before K to the kept tokens)."""
        state, self._fastv = self._fastv, None
        if state is not None:
            self._fastv_finish(state, kwargs, output)
        session, self._pending = self._pending, None
        if session is None:
            return None
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            self._sessions[cache] = session
        return None

    def _after_model(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """End of ``thinker.model`` (also after an error): no per-call state outlives it."""
        self._call = None
        self._pending = None
        self._fastv = None
        self._vision_call = None
        return None

    # -- FastV (in-decoder pruning) ------------------------------------------------------------
    def _fastv_begin(
        self, call: _Call, args: tuple, kwargs: dict, embeds: torch.Tensor, started: float
    ) -> tuple | None:
        """Prefill start under FastV: remember what layers K-1 and K need; nothing is pruned
        before the decoder (Qwen3-Omni: DeepStack features of layers >= K are held back)."""
        ids = call.input_ids.to(embeds.device)
        bsz, length = embeds.shape[:2]
        if tuple(ids.shape) != (bsz, length):
            raise RuntimeError(
                f"omnizip: decoder got {bsz}x{length} embeddings for {tuple(ids.shape)} input ids"
            )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._forget(cache)
        multimodal = (
            (ids == self.audio_token_id) | (ids == self.video_token_id) | (ids == self.image_token_id)
        )
        if not bool(multimodal.any()):
            self.handle._record([], [], [], started, (length, length))
            return None
        padding = call.padding.to(embeds.device)
        positions, text_row = self._positions(kwargs.get("position_ids"), bsz, length, padding)
        state = FastVPrefill(ids, padding, positions, text_row)
        state.seconds = time.perf_counter() - started
        self._fastv = state
        extra = self._fastv_side_inputs(kwargs, state)
        if not extra:
            return None
        return args, {**kwargs, **extra}

    def _fastv_side_inputs(self, kwargs: dict, state: FastVPrefill) -> dict:
        """Decoder inputs to replace at the start of a FastV prefill (none here; Qwen3-Omni
        keeps the DeepStack features of layers >= K to add them pruned)."""
        return {}

    def _on_fastv_scores(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Layer K-1's attention: the last real token's attention over all keys, from the
        layer's own q/k (no attention matrix); decide every row (FastVConfig.decide)."""
        state = self._fastv
        if state is None or state.layout is not None:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        rotary = kwargs.get("position_embeddings")
        if hidden is None or rotary is None or hidden.dim() != 3 or hidden.shape[1] != state.length:
            raise RuntimeError(
                f"omnizip: fastv expected the whole prompt ({state.length} tokens) and its rotary "
                f"embeddings in decoder layer {self._prune_layer - 1}'s attention, got "
                f"{None if hidden is None else tuple(hidden.shape)}"
            )
        started = time.perf_counter()
        method = self.handle.config
        padding = state.padding.to(hidden.device)
        ids = state.input_ids.to(hidden.device)
        with torch.no_grad():
            query, keys = decoder_query_keys(module, hidden, rotary[0], rotary[1], last_real_index(padding))
            for b in range(hidden.shape[0]):
                valid = padding[b].nonzero().squeeze(1)
                decision = method.decide(
                    hidden[b, valid],
                    ids[b, valid],
                    query[b],
                    keys[b, valid],
                    audio_token_id=self.audio_token_id,
                    video_token_id=self.video_token_id,
                    image_token_id=self.image_token_id,
                    scale=float(module.scaling),
                )
                state.results.append(decision)
                state.kept_rows.append(valid[decision.keep.to(valid.device)])
        state.layout = repad_rows(state.kept_rows, padding, state.positions, state.text_row)
        if state.deepstack_tail:
            mask = state.deepstack_full_mask
            state.deepstack_mask = gather_tokens(mask, state.layout.index.to(mask.device), fill=False)
            keep = state.layout.keep.to(mask.device)
            state.deepstack = {
                i: select_flat(f, mask, keep) for i, f in state.deepstack_tail.items()
            }
        state.seconds += time.perf_counter() - started
        return None

    def _on_fastv_layer(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Layers K..: the kept tokens only. Layer K gathers the hidden states; every layer
        gets the pruned mask, rotary embeddings and text positions (the decoder builds those
        once for the whole prompt and hands the same ones to every layer)."""
        state = self._fastv
        if state is None or not state.changed:
            return None
        layout = state.layout
        hidden = args[0] if args else kwargs.get("hidden_states")
        new_kwargs = dict(kwargs)
        if state.inputs is None:  # layer K: prune
            if hidden is None or hidden.shape[1] != state.length:
                raise RuntimeError(
                    "omnizip: fastv expected the whole prompt entering decoder layer "
                    f"{self._prune_layer}, got {None if hidden is None else tuple(hidden.shape)}"
                )
            started = time.perf_counter()
            index = layout.index.to(hidden.device)
            hidden = gather_tokens(hidden, index, fill=0, dim=1)
            state.inputs = self._fastv_layer_inputs(kwargs, hidden, index, layout.padding)
            # decode bookkeeping, exactly as for the methods that prune before the decoder
            self.inner.rope_deltas = layout.rope_deltas
            self._pending = DecodeSession(state.length, layout.padding, layout.n_dropped)
            state.seconds += time.perf_counter() - started
            if args:
                args = (hidden, *args[1:])
            else:
                new_kwargs["hidden_states"] = hidden
        new_kwargs.update(state.inputs)
        return args, new_kwargs

    def _fastv_layer_inputs(
        self, kwargs: dict, hidden: torch.Tensor, index: torch.Tensor, padding: torch.Tensor
    ) -> dict:
        """Mask, rotary embeddings and text positions of the pruned layout for layers K.."""
        from transformers.masking_utils import create_causal_mask

        out: dict[str, Any] = {}
        bsz = hidden.shape[0]
        padding = padding.to(hidden.device)
        rotary = kwargs.get("position_embeddings")
        if rotary is not None:
            out["position_embeddings"] = tuple(
                gather_tokens(t.expand(bsz, *t.shape[1:]), index.to(t.device), fill=0, dim=1)
                for t in rotary
            )
        text = kwargs.get("position_ids")
        if isinstance(text, torch.Tensor):
            # the plain text row numbers tokens contiguously (gaps read as packed sequences)
            text = text.expand(bsz, -1)
            first = self._fastv.padding.to(text.device).float().argmax(1)
            start = text.gather(1, first[:, None])
            renumbered = start + padding.to(text.device, text.dtype).cumsum(1) - 1
            text = renumbered.masked_fill(~padding.to(text.device), 0)
            out["position_ids"] = text
        mask2d = None if bool(padding.all()) else padding.long()
        out["attention_mask"] = create_causal_mask(
            config=self.decoder.config,
            inputs_embeds=hidden,
            attention_mask=mask2d,
            cache=kwargs.get("cache", kwargs.get("past_key_values")),
            position_ids=text if isinstance(text, torch.Tensor) else None,
            layer_idx=self._prune_layer,
        )
        return out

    def _after_fastv_layer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """Qwen3-Omni DeepStack after a layer >= K: add its features at the kept visual tokens
        (the decoder's own addition was withheld: it would use the unpruned mask)."""
        state = self._fastv
        if state is None or not state.deepstack:
            return None
        features = state.deepstack.get(self._layer_ids.get(id(module), -1))
        if features is None or not isinstance(output, torch.Tensor):
            return None
        mask = state.deepstack_mask.to(output.device)
        out = output.clone()
        out[mask, :] = out[mask, :] + features.to(out.device, out.dtype)
        return out

    def _fastv_finish(self, state: FastVPrefill, kwargs: dict, output: Any) -> None:
        """End of a FastV prefill: prune the cache of layers < K to the kept tokens (so every
        layer holds the same L' tokens and decoding is bookkept as for the other methods),
        and publish the per-row decisions."""
        layout = state.layout
        if layout is None:
            return
        started = time.perf_counter()
        if state.changed:
            cache = getattr(output, "cache", None)
            if cache is None:
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and getattr(cache, "layers", None):
                prune_cache_layers(cache, range(self._prune_layer), layout.index)
        before, after = int(state.padding.sum()), int(layout.padding.sum())
        state.seconds += time.perf_counter() - started
        self.handle._record(
            state.results, state.kept_rows, [None] * len(state.results),
            time.perf_counter() - state.seconds, (before, after),
        )

    def _video_scores(self, embeds: torch.Tensor, is_video: torch.Tensor) -> torch.Tensor | None:
        """VisionZip: one vision-encoder score per video token of the batch, row-major, read
        from the scored encoder calls whose output rows sit at those tokens."""
        if not bool(getattr(self.handle.config, "needs_video_scores", False)):
            return None
        n_video = int(is_video.sum())
        if n_video == 0:
            return None
        started = time.perf_counter()
        with torch.no_grad():
            scores = self._vision_book.match(embeds[is_video], embeds.dtype)
        if scores is None:
            raise ValueError(
                f"video_scores: method {self.handle.config.name!r} ranks video tokens by the "
                f"vision encoder's attention, but the {n_video} video tokens of this prompt do "
                "not match any vision-encoder call seen by the patch (pre-computed video "
                "embeddings?); run the model on pixel values, or use video_score='energy'"
            )
        logger.debug("omnizip: vision scores matched in %.1f ms", (time.perf_counter() - started) * 1e3)
        return scores

    # -- helpers -------------------------------------------------------------------------------
    def _start_call(self, kwargs: dict) -> _Call | None:
        ids = kwargs.get("input_ids")
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return None
            ids = self._ids_from_embeds(embeds)
        if ids.dim() != 2:
            return None
        bsz, length = ids.shape
        padding = padding_mask_2d(kwargs.get("attention_mask"), bsz, length, ids.device)
        sizes = None
        video_out = (kwargs.get("mm_encoder_outputs") or {}).get("video")
        pooled = getattr(video_out, "pooler_output", None)
        if isinstance(pooled, (tuple, list)):
            sizes = [int(p.shape[0]) for p in pooled]
        return _Call(
            input_ids=ids,
            padding=padding,
            video_grid_thw=kwargs.get("video_grid_thw"),
            video_sizes=sizes,
        )

    def _ids_from_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """Placeholder ids from embeddings, as the model itself finds them without ids."""
        table = self.inner.get_input_embeddings().weight
        ids = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
        for token in (self.audio_token_id, self.video_token_id, self.image_token_id):
            row = table[token].to(embeds.device, embeds.dtype)
            ids = ids.masked_fill((embeds == row).all(-1), token)
        return ids

    def _positions(
        self, given: torch.Tensor | None, bsz: int, length: int, padding: torch.Tensor
    ) -> tuple[torch.Tensor, bool]:
        """``[R, B, L]`` positions and whether row 0 is the plain text row (R == 4)."""
        if given is None:  # the decoder's own default: one arange for all rows
            pos = torch.arange(length, device=padding.device).view(1, 1, -1).expand(3, bsz, -1)
            return pos, False
        if given.dim() == 2:
            return given.unsqueeze(0).expand(3, -1, -1), False
        if given.dim() != 3 or given.shape[0] not in (3, 4) or given.shape[-1] != length:
            raise ValueError(
                f"position_ids must be [B, L], [3, B, L] or [4, B, L] with L={length}, got "
                f"{tuple(given.shape)}"
            )
        return given.expand(-1, bsz, -1), given.shape[0] == 4

    def _audio_scores(
        self, call: _Call, embeds: torch.Tensor, is_audio: torch.Tensor
    ) -> torch.Tensor | None:
        """One score per audio token of the batch, row-major (the order the model scatters
        the audio features in), from the encoder (SPEC 3) or the ``energy`` variant."""
        n_audio = int(is_audio.sum())
        if n_audio == 0:
            return None
        if self._score_mode() != "energy" and not self._encoder_scores():
            return None  # the method ranks audio without scores (e.g. random selection)
        if self._encoder_scores():
            scores = torch.cat(call.scores) if call.scores else None
            if scores is not None and scores.numel() == n_audio:
                return scores.to(embeds.device)
            got = 0 if scores is None else scores.numel()
            self._warn_once(
                "energy",
                f"omnizip: audio encoder gave {got} scores for {n_audio} audio tokens (audio "
                "features not computed in this call?); using the `energy` scores instead",
            )
        return audio_energy_scores(embeds[is_audio])

    def _tokens_per_frame(
        self,
        call: _Call,
        grids: list[torch.Tensor],
        ids: torch.Tensor,
        padding: torch.Tensor,
        mrope: torch.Tensor,
    ) -> list[Any]:
        """Per row, P of every video chunk: from M-RoPE positions, else the vision grid."""
        out: list[Any] = []
        for b in range(ids.shape[0]):
            valid = padding[b]
            per_chunk = tokens_per_frame_from_positions(
                ids[b, valid], mrope[:, b, valid], self.video_token_id
            )
            if per_chunk is None:
                # e.g. use_audio_in_video=True on a silent video: transformers then gives the
                # whole prompt text positions, so frames must come from the vision grid
                grid = self._video_grid(call, grids)
                if grid is None:
                    raise ValueError(
                        "position_ids: cannot tell the video tokens per frame (positions are "
                        "not M-RoPE and no video_grid_thw was seen)"
                    )
                return tokens_per_frame_from_grid(
                    ids, padding, grid, self.video_token_id, self.merge_size
                )
            out.append(per_chunk)
        return out

    def _video_grid(self, call: _Call, grids: list[torch.Tensor]) -> torch.Tensor | None:
        """The videos' ``grid_thw``: given to the thinker, or the latest vision-encoder call
        whose grids match the pre-computed video outputs' token counts."""
        if call.video_grid_thw is not None:
            return call.video_grid_thw
        if call.video_sizes is None:
            return None
        for grid in reversed(grids):
            sizes = (grid.prod(-1) // self.merge_size**2).tolist()
            if sizes == call.video_sizes:
                return grid
        return None

    @staticmethod
    def _prefill_mask(given: Any, padding: torch.Tensor) -> torch.Tensor | None:
        """The re-padded batch's 2-D mask, in the caller's form (None stays None if possible).

        A 4-D/dict mask prepared by ``generate`` (static cache) is replaced by the 2-D mask;
        the decoder then prepares its own for the compressed length.
        """
        if isinstance(given, torch.Tensor) and given.dim() == 2:
            return padding.to(given.dtype)
        if bool(padding.all()):
            return None
        return padding.long()

    def _decode_inputs(self, kwargs: dict, past: int, session: DecodeSession) -> dict:
        """Decode step over a compressed cache: mask (and text position row) to its layout."""
        ids = kwargs.get("input_ids")
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            return kwargs
        new = dict(kwargs)
        new["attention_mask"] = session.attention_mask(
            kwargs.get("attention_mask"), past, int(ref.shape[1]), int(ref.shape[0])
        )
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[0] == 4:
            # the text row numbers tokens contiguously; the compressed prefill ended earlier
            pos = pos.clone()
            pos[0] = pos[0] - session.n_dropped.to(pos.device, pos.dtype)[:, None]
            new["position_ids"] = pos
        return new

    @property
    def effective_method(self) -> Any:
        """The compression method as this adapter runs it (``handle.config`` with any
        layout-dependent fields adapted, e.g. ``frame_parity="stream"`` on Qwen3-Omni)."""
        return self._method()

    def _method(self) -> Any:
        """The compression method as run on this family's token layout (the handle's config
        here; a subclass may adapt layout-dependent fields, e.g. Qwen3-Omni's frame parity)."""
        return self.handle.config

    def _extra_decoder_inputs(self, kwargs: dict, batch: Any) -> dict:
        """Per-token side inputs of the decoder to prune like the embeddings (none here;
        Qwen3-Omni: ``visual_pos_masks`` and the deepstack features)."""
        return {}

    def _score_mode(self) -> str:
        """SPEC 3 variant: the method's ``audio_score`` ("global" / "windowed" / "energy")."""
        return str(getattr(self.handle.config, "audio_score", "global"))

    def _encoder_scores(self) -> bool:
        """Whether the audio encoder's last layer must be scored for this method."""
        return bool(getattr(self.handle.config, "needs_audio_scores", False)) and (
            self._score_mode() != "energy"
        )

    def _forget(self, cache: Any) -> None:
        if cache is not None:
            self._sessions.pop(cache, None)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
