"""OmniZip for Hugging Face transformers' Qwen2.5-Omni (thinker path), by forward hooks.

Where the hooks sit (module paths of ``Qwen2_5OmniThinkerForConditionalGeneration``; the full
``Qwen2_5OmniForConditionalGeneration`` holds it as ``.thinker``):

====================================  =======================================================
``thinker`` (pre)                     refuse ``labels`` (a loss over a compressed sequence)
``thinker.model`` (pre)               prefill: remember the padding and the ids the encoders
                                      fill (stray placeholders are text); decode steps and
                                      text turns on a compressed cache: drop re-sent tokens,
                                      mask and text positions to the compressed layout
``thinker.model.visual`` (pre)        remember ``grid_thw`` (tokens-per-frame fallback)
``thinker.model.audio_tower`` (pre)   frames per audio stream (``feature_lens``)
``audio_tower.layers[-1].self_attn``  its input after the pre-attention LayerNorm: recompute
(pre)                                 q/k and score the frames (algorithm §3), pooled to tokens
``thinker.model.language_model``      the multimodal embeddings and position ids are built:
(pre)                                 compress every row (core), re-pad, keep original M-RoPE
                                      positions, renumber the text row, set ``rope_deltas``
``thinker.model.language_model``      bind the decode bookkeeping to the cache just written
(post)
``thinker.model`` (post, always)      drop per-call state, also after an error
====================================  =======================================================

Methods that need hooks of their own (VisionZip's vision-encoder scores, FastV's pruning
inside the decoder) register them through :meth:`CompressionMethod.model_hooks
<omnizip.method.CompressionMethod.model_hooks>`, given the :class:`ModelContext` built here
(:meth:`Qwen2_5OmniAdapter._context`); the adapter calls those hooks at fixed points of each
call (``video_scores`` before compressing, ``begin_prefill``/``end_prefill`` around the
decoder for in-decoder methods, ``end_call`` at the end).

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
from typing import Any, ClassVar, NamedTuple

import torch

from ..method import CompressionMethod, FamilyLayout, MethodHooks
from .audio_hooks import AudioScoring
from .base import ModelAdapter
from .batch import Repadded, compress_batch, gather_tokens
from .context import LayerFeatures, ModelContext, Prefill
from .decode import DecodeSession, cache_length
from .prefill import (
    PrefillCall,
    decode_inputs,
    fills_media,
    keyword_arguments,
    position_rows,
    prefill_mask,
    start_call,
    tokens_per_frame,
)

__all__ = ["Qwen2_5OmniAdapter", "QwenOmniModules"]

logger = logging.getLogger("omnizip")


class QwenOmniModules(NamedTuple):
    """Where the hooked modules of a Qwen-Omni model live."""

    thinker: Any  # the thinker (the model itself, or ``model.thinker``)
    inner: Any  # ``thinker.model``
    decoder: Any  # ``thinker.model.language_model``
    audio_tower: Any  # ``thinker.model.audio_tower``
    score_attn: Any  # ``audio_tower.layers[-1].self_attn``


class Qwen2_5OmniAdapter(AudioScoring, ModelAdapter):
    """Hooks for ``Qwen2_5OmniForConditionalGeneration`` and its thinker (algorithm §3, 5).

    The base of the Qwen-Omni shape. A family of the same shape (Qwen3-Omni) is a subclass
    setting the data (:attr:`name`, :attr:`layout`, :attr:`model_classes`,
    :attr:`audio_pool`) and, where its modules differ, :meth:`_stream_frames` (last-layer
    audio frames per stream), :meth:`_extra_decoder_inputs` and :meth:`_hold_back_features`
    (per-token side inputs such as DeepStack) and :meth:`_side_feature_layers`.
    """

    name = "qwen2_5_omni"
    #: the family's token layout (its name is how error messages name the family)
    layout: ClassVar[FamilyLayout] = FamilyLayout("Qwen2.5-Omni")
    model_classes = (
        "Qwen2_5OmniForConditionalGeneration",
        "Qwen2_5OmniThinkerForConditionalGeneration",
    )
    #: the audio encoder average-pools frame pairs into LLM tokens (algorithm §3)
    audio_pool = 2

    def __init__(self, model: torch.nn.Module, handle: Any) -> None:
        super().__init__(model, handle)
        self.thinker, self.inner, self.decoder, self.audio_tower, self.score_attn = self.locate(model)
        cfg = self.thinker.config
        self.audio_token_id = int(cfg.audio_token_id)
        self.video_token_id = int(cfg.video_token_id)
        self.image_token_id = int(cfg.image_token_id)
        self.merge_size = int(cfg.vision_config.spatial_merge_size)
        #: the method as run on this family's layout (layout-dependent fields resolved)
        self.method: CompressionMethod = handle.config.for_model(self.layout)
        #: the method's own hooks (a no-op :class:`MethodHooks` when it needs none)
        self.hooks: MethodHooks = MethodHooks()
        self._signature = inspect.signature(self.inner.forward)
        self._thinker_signature = inspect.signature(self.thinker.forward)
        self._call: PrefillCall | None = None
        self._pending: DecodeSession | None = None
        # (caller's prompt length, pre-decoder compression) of the prefill in flight, for
        # methods that prune inside the decoder after it (SEATS)
        self._before: tuple[int, Any] | None = None
        # cache object -> decode bookkeeping; weak keys: a finished generation frees its entry
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned: set[str] = set()
        # grid_thw of the latest vision-encoder calls: under 5.x generate the encoder runs
        # before the thinker, whose call then carries no video_grid_thw (fallback only)
        self._visual_grids: list[torch.Tensor] = []

    @property
    def family(self) -> str:
        """The model family, as error messages name it."""
        return self.layout.name

    @property
    def effective_method(self) -> CompressionMethod:
        """The compression method as this adapter runs it (``handle.config`` with the
        family's layout defaults applied, e.g. ``frame_parity="stream"`` on Qwen3-Omni)."""
        return self.method

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def locate(cls, model: torch.nn.Module) -> QwenOmniModules:
        """The family's modules on ``model`` (the full model or its thinker)."""
        thinker = getattr(model, "thinker", model)
        try:
            inner = thinker.model
            decoder = inner.language_model
            audio_tower = inner.audio_tower
            score_attn = audio_tower.layers[-1].self_attn
        except (AttributeError, IndexError) as exc:
            raise ValueError(
                f"model: {type(model).__name__} does not have the {cls.layout.name} layout "
                "thinker.model.{language_model, audio_tower.layers[-1].self_attn}: "
                f"{exc}"
            ) from exc
        for attr in ("q_proj", "k_proj", "num_heads", "scaling"):
            if not hasattr(score_attn, attr):
                raise ValueError(f"model: the last audio attention layer has no `{attr}`")
        return QwenOmniModules(thinker, inner, decoder, audio_tower, score_attn)

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
        hooks = self.method.model_hooks(self._context(visual))
        if hooks is not None:
            hooks.attach()
            self.hooks = hooks
        if getattr(self.model, "has_talker", False):
            logger.warning(
                "omnizip: the talker (audio output) is loaded; OmniZip serves the text path "
                "only, call generate(..., generation_mode='text') or model.disable_talker()"
            )

    def _context(self, visual: torch.nn.Module | None) -> ModelContext:
        """What the method's own hooks get (the extension point, :mod:`.context`)."""
        return ModelContext(
            method=self.method,
            family=self.layout,
            vision_encoder=visual,
            decoder=self.decoder,
            audio_token_id=self.audio_token_id,
            video_token_id=self.video_token_id,
            image_token_id=self.image_token_id,
            merge_size=self.merge_size,
            side_feature_layers=self._side_feature_layers(),
            pre_hook=self._pre_hook,
            post_hook=self._post_hook,
            embedding_dtype=lambda: self.inner.get_input_embeddings().weight.dtype,
            record=self.handle._record,
            begin_decode=self._begin_decode,
            hold_back_features=self._hold_back_features,
        )

    def detach(self) -> None:
        self._visual_grids = []
        self.hooks.detach()
        self._call = None
        self._pending = None
        self._sessions = weakref.WeakKeyDictionary()

    # -- hooks ---------------------------------------------------------------------------------
    def _on_thinker(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Refuse a loss over media: labels are laid out over the uncompressed sequence."""
        if args:
            kwargs = keyword_arguments(self._thinker_signature, args, kwargs)
        if kwargs.get("labels") is not None and fills_media(kwargs):
            raise ValueError(
                "labels: OmniZip compresses the prompt, so a loss over `labels` is not "
                "supported while the model is patched (call handle.remove() for training)"
            )
        return None

    def _on_model(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Start of ``thinker.model``: prefill bookkeeping, or decode mask translation."""
        if args:  # move positional arguments to keywords once, so later lookups are uniform
            kwargs = keyword_arguments(self._signature, args, kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache_length(cache)
        if past == 0:
            self._call = self._start_call(kwargs)
            return ((), kwargs) if args else None
        self._call = None
        session = self._sessions.get(cache) if cache is not None else None
        if session is None:
            return ((), kwargs) if args else None
        if fills_media(kwargs):  # another text turn may continue the compressed cache
            raise ValueError(
                "input_features/pixel_values_videos: new audio/video on top of a compressed "
                "cache (chunked prefill, or a later turn with media) is not supported; start a "
                "fresh prefill"
            )
        return (), decode_inputs(kwargs, past, session)

    def _on_visual(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Remember the grids the vision encoder is called with (images and videos alike)."""
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if isinstance(grid, torch.Tensor):
            self._visual_grids = [*self._visual_grids[-3:], grid.detach().to("cpu")]
        return None

    def _on_decoder(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """algorithm §5: compress the prefill between the multimodal merge and the first layer;
        in-decoder methods then get the (compressed) prefill through their hooks."""
        call, self._call = self._call, None
        grids, self._visual_grids = self._visual_grids, []
        hook_seconds = self.hooks.take_seconds()
        embeds = kwargs.get("inputs_embeds")
        if call is None or embeds is None or embeds.dim() != 3:
            return None
        # overhead = scoring (audio, vision) + compression
        started = time.perf_counter() - call.score_seconds - hook_seconds
        ids = call.input_ids.to(embeds.device)
        bsz, length = embeds.shape[:2]
        if tuple(ids.shape) != (bsz, length):
            raise RuntimeError(
                f"omnizip: decoder got {bsz}x{length} embeddings for {tuple(ids.shape)} input ids"
            )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._forget(cache)
        self._before = None
        padding = call.padding.to(embeds.device)
        given = kwargs.get("position_ids")
        positions, text_row = position_rows(given, bsz, length, padding)
        new_kwargs, batch = kwargs, None
        if self.method.decides_before_decoder:
            is_audio = ids == self.audio_token_id
            if not bool((is_audio | (ids == self.video_token_id)).any()):
                self.handle._record([], [], [], started, (length, length))
                return None
            mrope = positions[1:] if text_row else positions
            batch = compress_batch(
                embeds=embeds,
                input_ids=ids,
                padding=padding,
                position_ids=positions,
                audio_scores=self._audio_scores(call, embeds, is_audio),
                video_scores=self.hooks.video_scores(embeds, ids == self.video_token_id),
                tokens_per_frame=tokens_per_frame(
                    call, grids, ids, padding, mrope, self.video_token_id, self.merge_size
                ),
                method=self.method,
                audio_token_id=self.audio_token_id,
                video_token_id=self.video_token_id,
                text_row=text_row,
            )
            self.handle._record(
                batch.results, batch.kept_indices, batch.audio_scores, started,
                (int(padding.sum()), int(batch.padding.sum())), video_scores=batch.video_scores,
            )
            if batch.changed:
                new_kwargs = dict(kwargs)
                new_kwargs["inputs_embeds"] = batch.embeds
                new_kwargs["attention_mask"] = prefill_mask(kwargs.get("attention_mask"), batch.padding)
                new_positions = batch.position_ids
                if given is not None and given.dim() == 2:
                    new_positions = new_positions[0]
                new_kwargs["position_ids"] = new_positions
                new_kwargs.update(self._extra_decoder_inputs(kwargs, batch))
                # callers that decode without position_ids continue from the cache length + rope_deltas
                self.inner.rope_deltas = batch.rope_deltas
                self._pending = DecodeSession(length, batch.padding, batch.n_dropped, batch.rope_deltas)
                # in-decoder steps after this one compose with it (_begin_decode)
                self._before = (length, batch)
                ids = gather_tokens(ids, batch.index.to(ids.device), fill=-1)
                padding, positions = batch.padding, batch.position_ids
        if self.method.prunes_in_decoder:
            prefill = Prefill(ids, padding, positions, text_row, new_kwargs, started, before=batch,
                              caller_padding=call.padding.to(embeds.device))
            update = self.hooks.begin_prefill(prefill)
            if update:
                new_kwargs = {**new_kwargs, **update}
        return (args, new_kwargs) if new_kwargs is not kwargs else None

    def _after_decoder(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """Bind the decode bookkeeping to the cache the compressed prefill was written to
        (in-decoder methods first finish their prefill, e.g. FastV prunes the cache)."""
        self.hooks.end_prefill(kwargs, output)
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
        self._before = None
        self.hooks.end_call()
        return None

    # -- services for the method hooks ----------------------------------------------------------
    def _begin_decode(self, prompt_length: int, layout: Repadded) -> None:
        """A prefill of ``prompt_length`` slots was pruned to ``layout`` (in the decoder),
        after the method's own pre-decoder compression, if any (then counted from the
        caller's prompt)."""
        n_dropped = layout.n_dropped
        if self._before is not None:
            prompt_length, batch = self._before
            n_dropped = n_dropped + batch.n_dropped.to(n_dropped.device)
        self.inner.rope_deltas = layout.rope_deltas
        self._pending = DecodeSession(prompt_length, layout.padding, n_dropped, layout.rope_deltas)

    def _side_feature_layers(self) -> int:
        """Decoder layers after which the family adds side features (none here)."""
        return 0

    def _hold_back_features(self, kwargs: dict, first_layer: int) -> tuple[dict, LayerFeatures | None]:
        """Decoder inputs without the side features of layers >= ``first_layer``, and those
        features (none here; Qwen3-Omni: DeepStack)."""
        return {}, None

    def _extra_decoder_inputs(self, kwargs: dict, batch: Any) -> dict:
        """Per-token side inputs of the decoder to prune like the embeddings (none here;
        Qwen3-Omni: ``visual_pos_masks`` and the deepstack features)."""
        return {}

    # -- helpers -------------------------------------------------------------------------------
    def _start_call(self, kwargs: dict) -> PrefillCall | None:
        token_ids = {"audio": self.audio_token_id, "video": self.video_token_id,
                     "image": self.image_token_id}
        return start_call(kwargs, token_ids, self.inner.get_input_embeddings().weight)

    def _forget(self, cache: Any) -> None:
        if cache is not None:
            self._sessions.pop(cache, None)
