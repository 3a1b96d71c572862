"""Qwen-style chat messages to processor inputs that work with omnizip on transformers 5.x.

Qwen's model cards build a request with ``qwen-omni-utils``::

    audios, images, videos = process_mm_info(messages, use_audio_in_video=True)
    inputs = processor(text=text, audio=audios, images=images, videos=videos,
                       return_tensors="pt", padding=True, use_audio_in_video=True)

On transformers 5.x the processor no longer guesses which audio came out of a video: the
audio track ``process_mm_info`` decoded from a video must be marked with
``audio_from_video_indices`` (and ``use_audio_in_video`` is now ``load_audio_from_video``),
otherwise it is counted as a separate audio input and the call fails before the model (or
omnizip) is reached. :func:`inputs_from_messages` makes that call with the marks, from the same
messages::

    from omnizip.hf.messages import inputs_from_messages

    inputs = inputs_from_messages(processor, messages, use_audio_in_video=True)
    handle = omnizip.patch(model, omnizip.OmniZipConfig())
    out = model.generate(**inputs, use_audio_in_video=True)   # thinker: plus do_sample etc.

:func:`audio_from_video_indices` gives the marks alone, for code that calls ``process_mm_info``
itself.

**Video decoding.** ``qwen-omni-utils`` reads video files with torchcodec, else decord, else
``torchvision.io.read_video``, which torchvision 0.29 no longer has. PyPI's torchcodec is a CUDA
build that fails to load beside a CPU-only torch; decord's wheel works on Linux x86-64 (omnizip's
``lmms`` extra installs it there). Elsewhere give the video as a list of frames (image paths or
PIL images: ``{"type": "video", "video": [...], "sample_fps": 2.0}``) and its audio as an
``{"type": "audio", "audio": ...}`` item with ``use_audio_in_video=False``: no decoder needed.
The audio itself is decoded with librosa (ffmpeg for video files).
"""

from __future__ import annotations

from typing import Any

__all__ = ["audio_from_video_indices", "inputs_from_messages"]


def _conversations(messages: list) -> list[list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise TypeError(f"messages must be a non-empty list of chat messages (or of conversations), "
                        f"got {type(messages).__name__}{' (empty)' if messages == [] else ''}")
    return [messages] if isinstance(messages[0], dict) else messages


def audio_from_video_indices(messages: list, *, use_audio_in_video: bool = True) -> list[int | None]:
    """For each audio ``process_mm_info(messages, use_audio_in_video)`` returns, in its order:
    the index of the video it was decoded from (among all videos of the messages, in order), or
    None for an ``{"type": "audio"}`` item.

    Args:
        messages: one conversation (a list of ``{"role", "content"}`` dicts) or a batch of them.
        use_audio_in_video: as given to ``process_mm_info``.
    """
    indices: list[int | None] = []
    n_videos = 0
    for conversation in _conversations(messages):
        for message in conversation:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for part in content:
                kind = part.get("type")
                if kind == "audio":
                    indices.append(None)
                elif kind == "video" or "video" in part:
                    if use_audio_in_video and kind == "video":
                        indices.append(n_videos)
                    n_videos += 1
    return indices


def inputs_from_messages(
    processor: Any,
    messages: list,
    *,
    use_audio_in_video: bool = True,
    **processor_kwargs: Any,
) -> Any:
    """Processor inputs (a ``BatchFeature`` of tensors) for Qwen-style chat messages.

    Reads the media with ``qwen_omni_utils.process_mm_info`` (as Qwen's model cards do), renders
    the chat template, and calls the processor with the audio of each video marked as such.

    Args:
        processor: a ``Qwen2_5OmniProcessor`` or ``Qwen3OmniMoeProcessor`` (transformers 5.x).
        messages: one conversation or a batch (the model cards' format: ``{"type": "video",
            "video": path}``, ``{"type": "audio", "audio": path}``, ``{"type": "image", ...}``,
            ``{"type": "text", "text": ...}`` items).
        use_audio_in_video: interleave each video's audio track with its frames (every video
            must have one, as ``qwen-omni-utils`` requires). Pass the same value to
            ``model.generate``.
        processor_kwargs: more processor arguments (e.g. ``videos_kwargs``).

    Raises:
        ImportError: ``qwen-omni-utils`` is not installed.
        ValueError: videos sampled at different rates in one call (the processor takes one).
    """
    try:
        from qwen_omni_utils import process_mm_info
    except ImportError as exc:
        raise ImportError("inputs_from_messages needs qwen-omni-utils (pip install "
                          "'omnizip[lmms]', or qwen-omni-utils and decord)") from exc
    conversations = _conversations(messages)
    audios, images, videos, video_kwargs = process_mm_info(
        conversations, use_audio_in_video=use_audio_in_video, return_video_kwargs=True
    )
    text = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations]
    kwargs: dict[str, Any] = {"text": text, "return_tensors": "pt", "padding": True}
    if audios:
        kwargs["audio"] = audios
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        rates = sorted(set(video_kwargs.get("fps") or []))
        if len(rates) > 1:
            raise ValueError(f"messages: videos sampled at different rates {rates} in one call; "
                             "give them the same fps (the processor takes one rate)")
        videos_kwargs = {"do_sample_frames": False, **({"fps": rates[0]} if rates else {})}
        kwargs["videos_kwargs"] = {**videos_kwargs, **processor_kwargs.pop("videos_kwargs", {})}
        if use_audio_in_video and audios:
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = audio_from_video_indices(
                conversations, use_audio_in_video=True)
    return processor(**kwargs, **processor_kwargs)
