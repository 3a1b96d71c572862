"""OmniZip for Hugging Face transformers' Qwen3-Omni (MoE thinker path), by forward hooks.

The thinker has the Qwen2.5-Omni shape (``thinker.model.{audio_tower, visual, language_model}``,
M-RoPE positions built before the decoder, the same placeholders and chat layout), so this
adapter is :class:`~omnizip.models.qwen2_5_omni.Qwen2_5OmniAdapter` with its own data and
three overrides:

``audio_pool = 1``
    The audio encoder downsamples with three stride-2 convolutions *before* its layers and has
    no pooling after them: every frame of the last layer is one LLM audio token (about 13 per
    second). Token scores are the frame scores (algorithm §3).
:meth:`~Qwen3OmniAdapter._stream_frames`
    Frames per audio stream: mel frames in chunks of ``2 * n_window`` (100), each full chunk
    giving 13 frames, the tail chunk ``ceil`` halved three times, as the encoder computes them.
    The encoder's attention windows (``n_window_infer`` mel frames) are its ``cu_seqlens``,
    which ``audio_score="windowed"`` uses as given.
:meth:`~Qwen3OmniAdapter._extra_decoder_inputs`
    DeepStack: the decoder adds vision-encoder features to the hidden states of its first
    layers at ``visual_pos_masks`` (image *and* video tokens, row-major). Both are pruned with
    the sequence's keep mask: the mask is gathered to the re-padded layout, each feature tensor
    keeps the rows of the kept visual tokens (order preserved), so image features stay whole.
:meth:`~Qwen3OmniAdapter._hold_back_features`
    FastV with K below the DeepStack layers: the features of layers >= K are added by FastV's
    hooks at the kept tokens.
:attr:`~Qwen3OmniAdapter.layout`
    The layout decision below (``frame_parity="stream"``), as data the methods apply
    (:meth:`omnizip.method.CompressionMethod.for_model`).
MoE load-balancing loss (``output_router_logits=True``)
    The thinker computes it with the caller's attention mask, which covers the uncompressed
    prompt while the router logits cover the kept tokens only. On a prefill that may be
    compressed the thinker's own loss gets no mask (``thinker.model`` gets it back) and the
    loss is computed after the thinker, by transformers' own function, over the tokens the
    decoder ran and the compressed batch's padding mask (:meth:`~Qwen3OmniAdapter._after_thinker`).

Position ids and ``rope_deltas`` are floating point here (the temporal ids of video frames are
``t * second_per_grid * 13``); the shared batch code keeps their dtype.

Layout decision (windows and ISTC frame parity)
-----------------------------------------------
With the video's audio (``use_audio_in_video=True``), ``Qwen3OmniMoeProcessor.
replace_video_with_audio_token`` interleaves by timestamp, in position ids (13 per second): the
tokens of temporal grid step ``t`` (one vision "frame" of ``P`` tokens, i.e. 2 sampled frames)
go at ``t * second_per_grid * 13``, before the audio token of the same time, followed by the
audio tokens up to the next step::

    <vision_start><audio_start> V_0 A_0 V_1 A_1 ... V_{m-1} A_{m-1} <audio_end><vision_end>

so every maximal video run ``V_i`` holds exactly one frame, and ``A_i`` is the audio of
``[t_i, t_{i+1})``: frame ``i``'s own audio (13 tokens when frames are sampled at 2 fps, i.e.
1 s per grid step; 26 at the processor's fallback of 1 fps). The
trailing video (audio shorter than the video) follows the last audio run as one multi-frame run;
trailing audio (audio longer) extends the last ``A_i``.

* Windows stay algorithm §1's rule: window ``i`` pairs ``V_i`` with ``A_i``. On this layout that is
  one frame with its own audio, so the audio guidance (steps 5-7) runs per frame, with the
  budget normalisation over all guided frames; trailing frames without audio are unguided
  (``rho_video``), as in docs/algorithm.md.
* Frame parity runs along the stream (``OmniZipConfig(frame_parity="stream")``): consecutive
  video runs separated only by audio tokens (one interleaved video) count frames 0, 1, 2, ...
  across runs, even frames are pruned spatially (DPC-kNN), odd frames temporally against the
  previous frame, which sits in the previous run. Under the reference rule (parity restarts in
  every run) every frame would be frame 0 and the temporal half of ISTC would never run.
  Each frame still gets its own window's ratio ``r_i``; only which ISTC step prunes it changes.
  Separate videos (text between them) start their own count, as do video runs of another
  resolution.

The method takes ``frame_parity="stream"`` when it leaves ``frame_parity`` unset
(None, the default); ``OmniZipConfig(frame_parity="chunk")`` asks for the reference rule on this
model. Likewise DyCoke's audio "frame" (``audio_frame_tokens``, one second of audio) becomes 13
tokens, one second of Qwen3-Omni audio, unless set explicitly.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import torch

from ..method import FamilyLayout
from .batch import gather_tokens, select_flat
from .context import LayerFeatures
from .decode import cache_length
from .frames import padding_mask_2d
from .prefill import fills_media, keyword_arguments
from .qwen2_5_omni import Qwen2_5OmniAdapter

__all__ = ["Qwen3OmniAdapter"]

#: LLM audio tokens per second of audio (100 mel frames -> 13 after the conv stem)
AUDIO_TOKENS_PER_SECOND = 13


def _conv_stem(frames: torch.Tensor) -> torch.Tensor:
    """Length after three stride-2 convolutions (kernel 3, padding 1); 0 stays 0."""
    for _ in range(3):
        frames = torch.where(frames > 0, (frames - 1) // 2 + 1, frames)
    return frames


class Qwen3OmniAdapter(Qwen2_5OmniAdapter):
    """Hooks for ``Qwen3OmniMoeForConditionalGeneration`` and its thinker (algorithm §3, 5).

    Attributes:
        frame_parity: ISTC frame parity used on this model when the method leaves its
            ``frame_parity`` unset: ``"stream"`` (see the module docstring; one frame per video
            run).
    """

    name = "qwen3_omni"
    #: stream frame parity and one-second (13-token) DyCoke audio frames where unset
    layout: ClassVar[FamilyLayout] = FamilyLayout(
        "Qwen3-Omni",
        {"frame_parity": "stream", "audio_frame_tokens": AUDIO_TOKENS_PER_SECOND},
    )
    model_classes = (
        "Qwen3OmniMoeForConditionalGeneration",
        "Qwen3OmniMoeThinkerForConditionalGeneration",
    )
    #: no pooling after the encoder layers: one LLM token per last-layer frame (algorithm §3)
    audio_pool = 1
    #: one OmniZip window is one grid step (2 sampled frames) with its audio: 1 s at 2 fps
    window_seconds = 1.0
    audio_tokens_per_second = AUDIO_TOKENS_PER_SECOND
    frame_parity = "stream"

    def __init__(self, model: torch.nn.Module, handle: Any) -> None:
        super().__init__(model, handle)
        self.n_window = int(getattr(self.audio_tower, "n_window", 50))
        # load-balancing loss of a prefill: the caller's mask held back from the thinker's
        # own loss, and the mask the decoder got
        self._router_mask: torch.Tensor | None = None
        self._decoder_mask: Any = None

    def attach(self) -> None:
        # first of thinker.model's pre-hooks: it hands back the mask held back from the loss
        self._pre_hook(self.inner, self._restore_router_mask)
        super().attach()
        # after the compression pre-hook: it sees the mask the decoder gets
        self._pre_hook(self.decoder, self._note_decoder_mask)
        self._post_hook(self.thinker, self._after_thinker, always_call=True)

    def detach(self) -> None:
        super().detach()
        self._router_mask = None
        self._decoder_mask = None

    # -- MoE load-balancing loss ---------------------------------------------------------------
    def _on_thinker(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Labels as for Qwen2.5-Omni. With router logits asked for on a prefill with media,
        hold the caller's mask back from the thinker's load-balancing loss (it covers the
        uncompressed prompt, the router logits the kept tokens): ``thinker.model`` gets it
        back, and :meth:`_after_thinker` computes the loss."""
        super()._on_thinker(module, args, kwargs)
        if args:
            kwargs = keyword_arguments(self._thinker_signature, args, kwargs)
        wants = kwargs.get("output_router_logits")
        if wants is None:
            wants = getattr(self.thinker.config.get_text_config(), "output_router_logits", False)
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if not wants or mask is None or cache_length(cache) or not fills_media(kwargs):
            return ((), kwargs) if args else None
        self._router_mask = mask
        return (), {**kwargs, "attention_mask": None}

    def _restore_router_mask(self, module: Any, args: tuple, kwargs: dict) -> tuple | None:
        if self._router_mask is None or kwargs.get("attention_mask") is not None:
            return None
        return args, {**kwargs, "attention_mask": self._router_mask}

    def _note_decoder_mask(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self._router_mask is not None:
            self._decoder_mask = kwargs.get("attention_mask")
        return None

    def _after_thinker(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """``aux_loss`` over the tokens the decoder ran: transformers' own load-balancing
        loss with the decoder's padding mask (the caller's mask when nothing was dropped, so
        the loss is the unpatched one)."""
        caller, self._router_mask = self._router_mask, None
        decoder, self._decoder_mask = self._decoder_mask, None
        logits = getattr(output, "router_logits", None)
        if caller is None or getattr(output, "aux_loss", None) is None or not logits:
            return None
        if self.method.prunes_in_decoder:
            return None  # pruned inside the decoder: layers saw different tokens, no one mask
        rows, bsz = int(logits[0].shape[0]), int(caller.shape[0])
        if caller.dim() == 2 and rows == caller.numel():
            mask = caller
        else:
            mask = padding_mask_2d(decoder, bsz, rows // bsz, logits[0].device).long()
        loss = sys.modules[type(self.thinker).__module__].load_balancing_loss_func
        output.aux_loss = loss(logits, self.thinker.num_experts, self.thinker.num_experts_per_tok, mask)
        return output

    def _stream_frames(self, feature_lens: torch.Tensor) -> torch.Tensor:
        """Last-layer frames per audio stream: per ``2 * n_window`` mel-frame chunk, the conv
        stem's output length (13 for a full chunk of 100), summed over the stream's chunks."""
        chunk = 2 * self.n_window
        full = feature_lens // chunk
        per_full = _conv_stem(torch.tensor(chunk, dtype=torch.int64))
        return full * per_full + _conv_stem(feature_lens % chunk)

    def _encoder_window_seconds(self) -> float:
        """The encoder attends within ``n_window_infer`` mel frames (8 s on the real model)."""
        return int(self.thinker.config.audio_config.n_window_infer) / self.mel_frames_per_second

    def _side_feature_layers(self) -> int:
        """Decoder layers after which DeepStack vision features are added (one per
        ``deepstack_visual_indexes`` entry: after layers 0, 1, 2 in the real checkpoint)."""
        vision = getattr(self.thinker.config, "vision_config", None)
        return len(getattr(vision, "deepstack_visual_indexes", None) or ())

    def _hold_back_features(self, kwargs: dict, first_layer: int) -> tuple[dict, LayerFeatures | None]:
        """Pruning inside the decoder after layer K below the DeepStack layers: the decoder
        would add layer i's features (i >= K) with the unpruned ``visual_pos_masks``; hand it
        only the first K, and the others to the pruning hooks."""
        features = kwargs.get("deepstack_visual_embeds")
        mask = kwargs.get("visual_pos_masks")
        k = first_layer
        if features is None or not isinstance(mask, torch.Tensor) or len(features) <= k:
            return {}, None
        held = LayerFeatures(mask.to(torch.bool), {i: features[i] for i in range(k, len(features))})
        return {"deepstack_visual_embeds": list(features[:k])}, held

    def _extra_decoder_inputs(self, kwargs: dict, batch: Any) -> dict:
        """``visual_pos_masks`` and every DeepStack feature tensor, pruned like the sequence."""
        mask = kwargs.get("visual_pos_masks")
        if not isinstance(mask, torch.Tensor):
            return {}
        mask = mask.to(batch.keep.device, torch.bool)
        out: dict[str, Any] = {"visual_pos_masks": gather_tokens(mask, batch.index, fill=False)}
        features = kwargs.get("deepstack_visual_embeds")
        if features is not None:
            out["deepstack_visual_embeds"] = [select_flat(f, mask, batch.keep) for f in features]
        return out
