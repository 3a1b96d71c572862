"""A benchmark item's conversation as model inputs: decoded media, processor inputs, the prompt.

:class:`ConversationInputs` is what both evaluation engines share, so they see the same frames,
the same audio track and the same prompt: :class:`~omnizip.eval.generation.OmniAnswerer`
(Hugging Face ``generate``) and :class:`~omnizip.eval.vllm_engine.VllmAnswerer` (a vLLM engine).
Videos are read with :func:`omnizip.inputs.read_clip` (an even number of frames: temporal patch
2, as qwen-omni-utils) and turned into processor inputs by
:func:`omnizip.inputs.conversation_inputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..inputs import conversation_inputs, read_clip
from .prompt import SYSTEM_PROMPT

__all__ = ["ConversationInputs"]


class ConversationInputs:
    """Media decoding and processor inputs of the evaluation.

    Args:
        processor: the model's processor.
        fps: frames per second sampled from the video (the Qwen-Omni default is 2).
        max_frames: cap on sampled frames (uniform over the clip beyond it); None: no cap.
        min_pixels, max_pixels: per-frame pixel bounds handed to the video processor (the
            OmniZip paper used ``max_pixels = 128 * 28 * 28``); None: the processor's default.
        use_audio_in_video: interleave the video's audio track (when it has one), as the paper;
            False: the track follows the video as its own audio block.
        system_prompt: the system turn (:data:`~omnizip.eval.prompt.SYSTEM_PROMPT`).
    """

    def __init__(
        self,
        processor: Any,
        *,
        fps: float = 2.0,
        max_frames: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        use_audio_in_video: bool = True,
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        self.processor = processor
        self.fps = fps
        self.max_frames = max_frames
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.use_audio_in_video = use_audio_in_video
        self.system_prompt = system_prompt

    def _media(self, path: str) -> tuple[Any, Any]:
        """Frames (an even number: temporal patch 2, as qwen-omni-utils) and the audio track
        (None without one)."""
        clip = read_clip(
            path, fps=self.fps, sampling_rate=self.processor.feature_extractor.sampling_rate,
            audio="optional", max_frames=self.max_frames,
        )
        frames = clip.frames
        if len(frames) % 2:
            frames = frames[: len(frames) - 1] if len(frames) > 1 else frames.repeat(2, axis=0)
        return frames, clip.audio

    def _pixel_bounds(self) -> dict[str, int]:
        """``{"shortest_edge": min, "longest_edge": max}`` pixels per frame: the bounds given,
        the processor's own for the other one (the video processor needs both)."""
        current: Any = (getattr(self.processor, "videos_kwargs", None) or {}).get("size")
        if current is None:
            current = getattr(getattr(self.processor, "video_processor", None), "size", None)

        def read(key: str, default: int) -> int:
            value = current.get(key) if isinstance(current, dict) else getattr(current, key, None)
            return int(value) if value else default

        low = int(self.min_pixels) if self.min_pixels is not None else read("shortest_edge", 128 * 28 * 28)
        high = int(self.max_pixels) if self.max_pixels is not None else read("longest_edge", 768 * 28 * 28)
        return {"shortest_edge": min(low, high), "longest_edge": high}

    def videos_kwargs(self) -> dict[str, Any] | None:
        """Extra video-processor settings (the pixel bounds), or None for the processor's own."""
        if self.min_pixels is None and self.max_pixels is None:
            return None
        return {"size": self._pixel_bounds()}

    def decoded(self, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation with every video file replaced by its frames and audio track."""
        messages = []
        for msg in conversation:
            content = msg.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "video" and isinstance(part.get("video"), (str, Path)):
                        frames, audio = self._media(str(part["video"]))
                        part = {"type": "video", "video": frames, "audio": audio}
                    parts.append(part)
                msg = {**msg, "content": parts}
            messages.append(msg)
        return messages

    def inputs(self, conversation: list[dict[str, Any]]) -> tuple[Any, bool]:
        """Processor inputs for a conversation whose user turn holds one video file, and
        whether its audio track is interleaved with it (``use_audio_in_video``)."""
        return self.processor_inputs(self.decoded(conversation))

    def processor_inputs(self, messages: list[dict[str, Any]]) -> tuple[Any, bool]:
        """Processor inputs for already decoded messages (:meth:`decoded`)."""
        return conversation_inputs(self.processor, [messages], use_audio_in_video=self.use_audio_in_video,
                                   fps=self.fps, videos_kwargs=self.videos_kwargs())
