"""The interface every token-compression method implements (OmniZip and the baselines).

A method is a validated, frozen dataclass (its configuration) with a ``compress`` method that
decides, for one sequence, which tokens the decoder sees. Model adapters call it once per
prompt row, after the multimodal embeddings exist and before the first decoder layer, and
prune positions, masks and side inputs with the returned ``keep`` mask (SPEC 4 step 9, SPEC 5).

Methods that act inside the decoder (FastV) set ``in_decoder_layer``; adapters then prune at
that layer instead (see the adapter docs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # runtime import would be circular: the core imports the configuration
    import torch

    from .core import TokenDecision


class CompressionMethod:
    """Base of all methods. Subclasses are ``@dataclass(frozen=True)`` configurations.

    Class attributes:
        name: registry name (``"omnizip"``, ``"random"``, ...).
        needs_audio_scores: the adapter must compute SPEC 3 audio-encoder attention scores.
        needs_video_scores: the adapter must compute per-video-token vision-encoder scores
            (attention received in the vision encoder's last layer, pooled to LLM tokens).
        in_decoder_layer: None for pre-decoder methods; K for methods that prune after
            decoder layer K (FastV).
    """

    name: ClassVar[str] = ""
    needs_audio_scores: ClassVar[bool] = False
    needs_video_scores: ClassVar[bool] = False
    in_decoder_layer: ClassVar[int | None] = None

    def compress(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        *,
        audio_token_id: int,
        video_token_id: int,
        tokens_per_frame,
        audio_scores: torch.Tensor | None = None,
        video_scores: torch.Tensor | None = None,
    ) -> TokenDecision:
        """Decide one sequence.

        Args:
            embeds: ``[L, D]`` decoder input embeddings (never modified).
            input_ids: integer ``[L]``.
            tokens_per_frame: int P or one per video chunk (as :func:`omnizip.compress_sequence`).
            audio_scores: float ``[N_a]`` when ``needs_audio_scores`` (else may be None).
            video_scores: float ``[N_v]`` when ``needs_video_scores`` (else may be None).
        Returns:
            a :class:`~omnizip.TokenDecision` (or a subclass with more detail).
        """
        raise NotImplementedError
