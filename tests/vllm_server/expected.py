"""Prompt lengths a server must report, computed without the plugin.

The uncompressed layout comes from the checkpoint's own Hugging Face processor in the main
environment (the same chat template, frames sampled at 2 fps, the video's audio track
interleaved), the compressed count from the exact-budget rule of docs/algorithm.md written
out here on its own: kept audio = salient + anchors, kept video = round((1 - rho_video) N_v),
text untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Token counts of one uncompressed prompt."""

    total: int  # prompt length
    n_audio: int  # audio placeholder tokens
    n_video: int  # video placeholder tokens
    prefix: int  # tokens before the question (system turn, user header, media block)


def uncompressed_layout(checkpoint: Path, clip: Path, question: str) -> Layout:
    """The layout the checkpoint's processor builds for ``[clip with its audio] + question``."""
    from transformers import AutoProcessor

    from omnizip.demo.media import prepare_video_inputs

    processor = AutoProcessor.from_pretrained(checkpoint)
    ids = prepare_video_inputs(processor, clip, question)["input_ids"][0].tolist()
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids(tok.audio_token)
    video_id = tok.convert_tokens_to_ids(tok.video_token)
    vision_end = tok.convert_tokens_to_ids(tok.vision_eos_token)
    assert ids.count(vision_end) == 1, "expected exactly one media block"
    return Layout(len(ids), ids.count(audio_id), ids.count(video_id), ids.index(vision_end) + 1)


def exact_budget_removed(layout: Layout, *, rho_audio: float, rho_video: float,
                         contextual_ratio: float = 0.05, g: int = 3) -> int:
    """How many media tokens the exact budget drops from ``layout``."""
    n_a, n_v = layout.n_audio, layout.n_video
    salient = min(max(round((1 - rho_audio) * n_a), 0), n_a)
    rest = n_a - salient
    n_ctx = round(contextual_ratio * n_a)
    anchors = min(n_ctx, rest) if rest > 0 and n_ctx > 0 and g > 0 else 0
    kept_video = round((1 - rho_video) * n_v)
    return (n_a - salient - anchors) + (n_v - kept_video)
