"""Options shared by the commands (model, media, compression) and their checks."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .errors import CLIError

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_MODEL",
    "DEFAULT_QUESTION",
    "SCALED_MODEL",
    "add_config_options",
    "add_media_options",
    "add_model_options",
    "build_config",
    "config_summary",
    "positive_float",
    "preset_name",
]

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / "assets" / "demo_clip.mp4"
DEFAULT_MODEL = "tiny-qwen2.5-omni"
SCALED_MODEL = "scaled-qwen2.5-omni"
DEFAULT_QUESTION = "What happens in the video, and what is said?"


def positive_float(text: str) -> float:
    """argparse type: a positive finite number (``inf`` and ``nan`` are refused: a frame rate
    of ``inf`` makes the sampling step 0, ``nan`` samples one frame)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def add_model_options(p: argparse.ArgumentParser, bench: bool = False) -> None:
    from ..loading import BUILTIN_MODELS

    default = SCALED_MODEL if bench else DEFAULT_MODEL
    p.add_argument(
        "--model", metavar="ID_OR_PATH",
        help="Hugging Face id or local folder of a Qwen2.5-Omni / Qwen3-Omni checkpoint, or a "
        f"built-in random-weight model: {', '.join(BUILTIN_MODELS)} (default: {default})",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto",
                   help="auto (checkpoints: their own; built-in: float32 on CPU, bfloat16 on CUDA), "
                   "float32, bfloat16, float16")
    p.add_argument("--attn-implementation", metavar="NAME",
                   help="sdpa, eager or flash_attention_2 (default: sdpa for built-in models, "
                   "the checkpoint's otherwise)")


def add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression (default: the paper's 45%% preset)")
    g.add_argument("--preset", metavar="45|35",
                   help="the paper's operating points: 45 (rho_audio 0.3, rho_video 0.6) or 35 (0.4, 0.7)")
    g.add_argument("--rho-audio", type=float, metavar="X", help="audio compression ratio in [0, 1)")
    g.add_argument("--rho-video", type=float, metavar="Y", help="video compression ratio in [0, 1)")
    g.add_argument("--g", type=int, metavar="N", help="max tokens merged into each audio anchor (default 3)")
    g.add_argument("--contextual-ratio", type=float, metavar="C", help="anchors per audio token (default 0.05)")
    g.add_argument("--budget", choices=["reference", "exact"], help="video budget rule (default reference)")
    g.add_argument("--audio-score", choices=["global", "windowed", "energy"],
                   help="how audio tokens are scored (default global)")
    g.add_argument("--retention", type=float, metavar="R",
                   help="overall fraction of audio+video tokens to keep, in (0, 1]")
    g.add_argument("--causal-lookback", type=int, metavar="K",
                   help="windows a causal decision looks back over (with --causal; default 8)")


def add_video_only_option(p: argparse.ArgumentParser) -> None:
    """``--video-only`` (alias ``--no-audio``): ignore the videos' audio tracks."""
    p.add_argument("--video-only", "--no-audio", dest="video_only", action="store_true",
                   help="ignore the audio track (allows videos without one): video compression "
                   "only (--no-audio is an alias)")


def add_media_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", metavar="VIDEO",
                   help="a video file with an audio track (default: the bundled 10-second clip)")
    p.add_argument("--question", "-q", default=DEFAULT_QUESTION, help="the question about the video")
    p.add_argument("--fps", type=positive_float, default=2.0,
                   help="frames sampled per second (default 2)")
    add_video_only_option(p)


_FLAGS = {
    "rho_audio": "--rho-audio", "rho_video": "--rho-video", "g": "--g",
    "contextual_ratio": "--contextual-ratio", "budget": "--budget",
    "audio_score": "--audio-score", "retention": "--retention",
    "causal_lookback": "--causal-lookback",
}


def build_config(args: argparse.Namespace, causal: bool = False) -> Any:
    """:class:`OmniZipConfig` from ``--preset`` / ``--rho-audio`` / ``--rho-video`` / ...
    (``causal``, or a true ``args.causal``: the causal rules of streams, with
    ``--causal-lookback``); bad values raise :class:`CLIError` naming the option."""
    from ..config import PRESETS, OmniZipConfig

    fields: dict[str, Any] = {}
    if args.preset is not None:
        key = str(args.preset).rstrip("%")
        if key not in PRESETS:
            raise CLIError(f"--preset {args.preset!r}: unknown preset; choose one of "
                           f"{', '.join(sorted(PRESETS, reverse=True))}")
        fields["rho_audio"], fields["rho_video"] = PRESETS[key]
    for field in _FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            fields[field] = value
    causal = causal or bool(getattr(args, "causal", False))
    if "causal_lookback" in fields and not causal:
        raise CLIError("--causal-lookback applies to causal decisions only (add --causal)")
    if causal:
        fields["causal"] = True
    try:
        return OmniZipConfig(**fields)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        for field, flag in _FLAGS.items():
            if message.startswith(field + " "):
                message = f"{flag}: {message[len(field) + 1:]}"
                break
        raise CLIError(message) from exc


def config_summary(config: Any) -> str:
    text = f"rho_audio={config.rho_audio}, rho_video={config.rho_video}, g={config.g}"
    if config.budget != "reference":
        text += f", budget={config.budget}"
    if config.audio_score != "global":
        text += f", audio_score={config.audio_score}"
    if config.retention is not None:
        text += f", retention={config.retention}"
    if getattr(config, "causal", False):
        text += f", causal (look-back {config.causal_lookback} windows)"
    return text


def preset_name(config: Any) -> str | None:
    from ..config import PRESETS

    for name, (ra, rv) in PRESETS.items():
        if (config.rho_audio, config.rho_video) == (ra, rv):
            return name
    return None
