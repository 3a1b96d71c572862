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
from ..patch import ModelAdapter
from ._common import (
    DecodeSession,
    cache_length,
    compress_batch,
    padding_mask_2d,
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
                f"model: {type(model).__name__} does not have the Qwen2.5-Omni layout "
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
        if getattr(self.model, "has_talker", False):
            logger.warning(
                "omnizip: the talker (audio output) is loaded; OmniZip serves the text path "
                "only, call generate(..., generation_mode='text') or model.disable_talker()"
            )

    def detach(self) -> None:
        self._visual_grids = []
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
        """Remember the grids the vision encoder is called with (images and videos alike)."""
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if isinstance(grid, torch.Tensor):
            self._visual_grids = [*self._visual_grids[-3:], grid.detach().to("cpu")]
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
        embeds = kwargs.get("inputs_embeds")
        if call is None or embeds is None or embeds.dim() != 3:
            return None
        started = time.perf_counter() - call.score_seconds  # overhead = scoring + compression
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
                batch.results, batch.kept_indices, batch.audio_scores, started, (before, after)
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
            batch.results, batch.kept_indices, batch.audio_scores, started, (before, after)
        )
        return args, new_kwargs

    def _after_decoder(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """Bind the decode bookkeeping to the cache the compressed prefill was written to."""
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
        return None

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
