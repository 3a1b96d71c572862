"""What ``run``, ``inspect`` and ``bench`` share: the model, the clip and the prompt, with every
library error about bad input turned into one :class:`CLIError` line naming the option."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..inputs import Clip, MediaError, conversation_inputs, read_clip, to_device
from ..loading import Loaded, LoadError, load_model
from .errors import CLIError, one_line, say
from .options import DEFAULT_CLIP, DEFAULT_MODEL, build_config

__all__ = [
    "NOISE_NOTE",
    "check_output_dir",
    "check_output_file",
    "load",
    "model_inputs",
    "patch_model",
    "prepare",
    "prepare_causal",
    "prompt_inputs",
    "read",
    "seconds",
    "token_line",
    "video_path",
]

NOISE_NOTE = (
    "random-weight model built in code: its answers are noise, and its speed figures follow "
    "from its size only"
)


def load(args: argparse.Namespace, default: str = DEFAULT_MODEL) -> Loaded:
    """The model of ``--model`` / ``--device`` / ``--dtype`` / ``--attn-implementation``."""
    try:
        return load_model(
            args.model or default, device=args.device, dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            log=None if args.quiet else say,
        )
    except LoadError as exc:
        raise CLIError(f"--{exc.option.replace('_', '-')} {exc.detail}") from exc


def video_path(value: str | None) -> str | os.PathLike:
    """The VIDEO argument: the bundled clip when absent; an empty string is an error (it is
    not "no video")."""
    if value is None:
        return DEFAULT_CLIP
    if not value.strip():
        raise CLIError(f"VIDEO: empty path {value!r} (omit it for the bundled clip)")
    return value


def read(path: str | os.PathLike, **kwargs: Any) -> Clip:
    """:func:`omnizip.inputs.read_clip`, its errors as :class:`CLIError`."""
    try:
        return read_clip(path, **kwargs)
    except MediaError as exc:
        raise CLIError(str(exc)) from exc


def prompt_inputs(processor: Any, clip: Clip, question: str) -> tuple[Any, bool]:
    """Processor inputs for ``[video (+ its audio track)] + question`` (one row)."""
    item: dict[str, Any] = {"type": "video", "video": clip.frames, "audio": clip.audio}
    try:
        return conversation_inputs(
            processor, [[{"role": "user", "content": [item, {"type": "text", "text": question}]}]],
            use_audio_in_video=clip.audio is not None, fps=clip.fps,
        )
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{clip.path}: the processor rejected the clip ({one_line(exc)})") from exc


def model_inputs(inputs: Any, loaded: Loaded) -> dict:
    """The processor's outputs on the model's device, floating tensors in its dtype."""
    return to_device(inputs, loaded.device, next(loaded.thinker.parameters()).dtype)


def patch_model(loaded: Loaded, config: Any) -> Any:
    from ..patch import patch

    try:
        return patch(loaded.model, config)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--model {loaded.name!r}: {one_line(exc)}") from exc


def prepare(args: argparse.Namespace) -> tuple[Loaded, Clip, Any, bool, Any]:
    """Shared by run and inspect: config, clip, model, processor inputs."""
    config = build_config(args)
    video = video_path(args.video)
    progress = not args.no_progress
    audio = "ignore" if args.video_only else "required"
    # read the clip before loading a large model: bad files fail fast
    clip = read(video, fps=args.fps, audio=audio, progress=progress)
    say(f"video: {clip.path.name}: {seconds(clip.duration)}, {len(clip.frames)} frames sampled at "
        f"{clip.fps:g} fps, " + ("audio track used" if clip.audio is not None else "no audio"),
        args.quiet)
    loaded = load(args)
    if clip.audio is not None:
        rate = getattr(getattr(loaded.processor, "feature_extractor", None), "sampling_rate", 16000)
        if rate != clip.sampling_rate:
            clip = read(video, fps=args.fps, sampling_rate=rate)
    inputs, uav = prompt_inputs(loaded.processor, clip, args.question)
    return loaded, clip, inputs, uav, config


def prepare_causal(args: argparse.Namespace) -> tuple[Loaded, Clip, Any, bool, Any]:
    """``run --causal``: the offline causal path (docs/streaming.md): the clip decoded as
    ``omnizip stream`` decodes it (:func:`omnizip.stream.source.read_stream`), its inputs
    built by :func:`omnizip.stream.offline_inputs` (causal log-mel, one fixed resolution)."""
    from ..stream import offline_inputs
    from ..stream.source import read_stream

    if args.video_only:
        raise CLIError("--causal needs the audio track (the causal rules are audio-guided); "
                       "drop --video-only")
    config = build_config(args)
    video = video_path(args.video)
    loaded = load(args)
    rate = int(loaded.processor.feature_extractor.sampling_rate)
    try:
        frames, audio = read_stream(str(video), fps=args.fps, sampling_rate=rate)
        inputs = offline_inputs(loaded.model, loaded.processor, frames, audio, args.question,
                                fps=args.fps)
    except MediaError as exc:
        raise CLIError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{video}: {one_line(exc)}") from exc
    duration = max(len(frames) / args.fps, audio.size / rate)
    clip = Clip(Path(str(video)), frames, args.fps, audio, rate, duration)
    return loaded, clip, inputs, True, config


def seconds(value: float) -> str:
    """A clip length for people: one decimal, two for clips under a second (0.12 s)."""
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def token_line(n_prompt: int, n_kept: int, result: Any) -> str:
    text = n_prompt - result.n_audio - result.n_video
    return (f"{n_prompt} -> {n_kept} prompt tokens ({n_kept / n_prompt:.1%}): audio "
            f"{result.n_audio} -> {result.n_audio_kept}, video {result.n_video} -> "
            f"{result.n_video_kept}, text {text} (kept)")


def check_output_dir(value: str, flag: str = "-o") -> Path:
    """The output folder, created now: a bad path fails before the model runs."""
    out = Path(value).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"{flag} {value}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{flag} {value}: cannot create the folder ({exc.strerror or one_line(exc)})") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {value}: the folder is not writable")
    return out


def check_output_file(value: str, flag: str = "-o") -> Path:
    """An output file's path: not a folder, its folder created and writable."""
    out = Path(value).expanduser()
    if out.is_dir():
        raise CLIError(f"{flag} {value}: is a folder, expected a file name")
    check_output_dir(str(out.parent), flag)
    if out.exists() and not os.access(out, os.W_OK):
        raise CLIError(f"{flag} {value}: the file is not writable")
    return out
