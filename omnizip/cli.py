"""The ``omnizip`` command line: ``run``, ``inspect``, ``bench`` (and ``eval`` when installed).

    omnizip run [VIDEO] --question "..." [--model ID_OR_PATH] [--preset 45|35 | --rho-audio X ...]
    omnizip inspect [VIDEO] -o DIR
    omnizip bench [--model ...] [--clip-seconds N] [--reps N] [-o results.json]

Without ``--model`` a random-weight model of the real Qwen2.5-Omni architecture is built in
code (its answers are noise; its speed is that of its size); without ``VIDEO`` the bundled
10-second clip (``omnizip/assets/demo_clip.mp4``, made by ``scripts/make_demo_clip.py``) is used.

Bad input (a missing or unreadable file, a video without audio, a model that cannot be loaded,
an unknown preset, a ratio out of range) prints one ``omnizip <command>: error: ...`` line and
exits with status 2; ``--debug`` shows the traceback of unexpected errors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_MODELS", "DEFAULT_CLIP", "CLIError", "main"]

DEFAULT_CLIP = Path(__file__).resolve().parent / "assets" / "demo_clip.mp4"
DEFAULT_MODEL = "tiny-qwen2.5-omni"
SCALED_MODEL = "scaled-qwen2.5-omni"
TINY_QWEN3 = "tiny-qwen3-omni"
BUILTIN_MODELS = (DEFAULT_MODEL, SCALED_MODEL, TINY_QWEN3)
DEFAULT_QUESTION = "What happens in the video, and what is said?"
NOISE_NOTE = (
    "random-weight model built in code: its answers are noise, and its speed figures follow "
    "from its size only"
)
# model_type of a checkpoint's config -> transformers class to load
MODEL_CLASSES = {
    "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration",
}

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class CLIError(Exception):
    """Bad input or an environment problem: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models
@dataclass
class Loaded:
    model: Any
    processor: Any
    name: str
    builtin: bool
    description: str
    device: Any
    dtype: Any

    @property
    def thinker(self) -> Any:
        return getattr(self.model, "thinker", self.model)


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def _resolve_dtype(dtype: str, device: Any, builtin: bool) -> Any:
    import torch

    if dtype == "auto":
        if builtin:
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return "auto"
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise CLIError(f"--dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    return value


def _describe_builtin(model: Any, name: str) -> str:
    from .bench import decoder_dims, decoder_parameters

    dims = decoder_dims(model)
    heads = getattr(model.config.text_config, "num_attention_heads", "?")
    kv = getattr(model.config.text_config, "num_key_value_heads", "?")
    family = "Qwen3-Omni (MoE)" if "Qwen3" in type(model).__name__ else "Qwen2.5-Omni"
    return (
        f"{name}: random-weight {family} thinker (real architecture), decoder hidden "
        f"{dims.hidden}, {dims.layers} layers, {heads} heads / {kv} KV heads, FFN "
        f"{dims.mlp_width}, {decoder_parameters(model) / 1e6:.1f}M decoder parameters"
    )


def load_model(
    spec: str | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    quiet: bool = False,
    default: str = DEFAULT_MODEL,
) -> Loaded:
    """The model and processor for ``--model`` (a built-in name, a Hub id or a local path).

    Checkpoints are loaded with ``from_pretrained`` and dispatched on their config's
    ``model_type`` (Qwen2.5-Omni or Qwen3-Omni, full model or thinker); the talker (speech
    output) is disabled. Raises :class:`CLIError` with one line when it cannot be loaded.
    """
    name = spec or default
    dev = _resolve_device(device)
    started = time.perf_counter()
    if name in BUILTIN_MODELS:
        dt = _resolve_dtype(dtype, dev, builtin=True)
        attn = attn_implementation or "sdpa"
        _say(f"building {name} (random weights) on {dev} ...", quiet)
        if name == DEFAULT_MODEL:
            from .demo.processor import build_offline_processor
            from .demo.tiny_model import build_tiny_qwen2_5_omni_thinker

            model = build_tiny_qwen2_5_omni_thinker(attn_implementation=attn, dtype=dt).to(dev)
            processor = build_offline_processor()
        elif name == SCALED_MODEL:
            from .bench import build_scaled_thinker
            from .demo.processor import build_offline_processor

            model = build_scaled_thinker(dev, dt, attn_implementation=attn)
            processor = build_offline_processor()
        else:
            model, processor = _build_tiny_qwen3(attn, dt, dev)
        desc = _describe_builtin(model, name)
        _say(f"  built in {time.perf_counter() - started:.1f} s: {desc}", quiet)
        return Loaded(model, processor, name, True, desc, dev, dt)

    dt = _resolve_dtype(dtype, dev, builtin=False)
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not path.exists():
        raise CLIError(f"--model {name!r}: no such file or directory")
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise CLIError(f"--model {name!r}: not a model folder (no config.json in it)")
    _say(f"loading {name} with from_pretrained on {dev} ...", quiet)
    try:
        import transformers
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(name)
    except Exception as exc:  # network, missing repo, bad config: one line
        raise CLIError(f"--model {name!r}: cannot load its config: {_one_line(exc)}") from exc
    model_type = getattr(config, "model_type", None)
    cls_name = MODEL_CLASSES.get(str(model_type))
    if cls_name is None or not hasattr(transformers, cls_name):
        raise CLIError(
            f"--model {name!r}: model_type {model_type!r} is not an omni model omnizip serves "
            f"({', '.join(MODEL_CLASSES)})"
        )
    import importlib.util

    kwargs: dict[str, Any] = {"dtype": dt}
    # device_map loads straight to the device but needs accelerate; otherwise load, then move
    place = importlib.util.find_spec("accelerate") is not None
    if place:
        kwargs["device_map"] = str(dev)
    if model_type in ("qwen2_5_omni", "qwen3_omni_moe"):
        kwargs["enable_audio_output"] = False  # text output only: do not build the talker
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = getattr(transformers, cls_name).from_pretrained(name, **kwargs)
        if not place:
            model = model.to(dev)
        processor = AutoProcessor.from_pretrained(name)
    except Exception as exc:
        raise CLIError(f"--model {name!r}: cannot load it: {_one_line(exc)}") from exc
    if getattr(model, "has_talker", False) and hasattr(model, "disable_talker"):
        model.disable_talker()
    model.eval()
    thinker = getattr(model, "thinker", model)
    param = next(thinker.parameters())
    desc = f"{name} ({cls_name}, {param.dtype}, {sum(p.numel() for p in thinker.parameters()) / 1e9:.2f}B thinker parameters)"
    _say(f"  loaded in {time.perf_counter() - started:.1f} s", quiet)
    return Loaded(model, processor, name, False, desc, param.device, param.dtype)


def _build_tiny_qwen3(attn: str, dtype: Any, device: Any) -> tuple[Any, Any]:
    try:
        from .demo import tiny_model
    except ImportError as exc:  # pragma: no cover
        raise CLIError(f"--model {TINY_QWEN3}: {exc}") from exc
    builder = getattr(tiny_model, "build_tiny_qwen3_omni_thinker", None)
    if builder is None:
        raise CLIError(f"--model {TINY_QWEN3}: this omnizip has no tiny Qwen3-Omni builder yet")
    model = builder(attn_implementation=attn, dtype=dtype).to(device)
    from .demo import processor as proc_mod

    make = getattr(proc_mod, "build_offline_qwen3_omni_processor", None)
    if make is None:
        raise CLIError(f"--model {TINY_QWEN3}: this omnizip has no offline Qwen3-Omni processor yet")
    return model, make()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


# ----------------------------------------------------------------------------- media
@dataclass
class Clip:
    path: Path
    frames: Any  # uint8 [T, H, W, 3]
    fps: float
    audio: Any  # float32 mono or None
    sampling_rate: int
    duration: float


def read_clip(
    path: str | os.PathLike,
    *,
    fps: float = 2.0,
    sampling_rate: int = 16000,
    with_audio: bool = True,
    progress: bool = True,
) -> Clip:
    """Decode a video file with PyAV: frames sampled uniformly at ``fps`` (as transformers'
    ``load_video``) with a progress bar, and its first audio track (mono, ``sampling_rate``).

    Raises :class:`CLIError` for a missing or unreadable file, no video stream, or (with
    ``with_audio``) no audio track.
    """
    import av
    import numpy as np
    from tqdm.auto import tqdm

    from .demo.media import load_audio_track

    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{p}: no such file")
    if not p.is_file():
        raise CLIError(f"{p}: not a file")
    frames = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise CLIError(f"{p}: no video stream in this file")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            rate = float(stream.average_rate or 25)
            step = 1.0 / fps
            target = 0.0
            bar = tqdm(total=round(duration, 1) if duration else None, unit="s", leave=False,
                       desc=f"decoding {p.name}", disable=None if progress else True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s")
            last = 0.0
            first_time = None
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else last + 1.0 / rate
                if first_time is None:
                    first_time = t
                t -= first_time
                if t + 0.5 / rate >= target:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    target += step
                    while target <= t:  # a gap in the stream: do not repeat frames
                        target += step
                if progress and duration:
                    bar.update(max(0.0, min(t, duration) - last))
                last = max(last, t)
            bar.close()
    except CLIError:
        raise
    except Exception as exc:  # av.error.*: not a media file, corrupt data
        raise CLIError(f"{p}: cannot read it as a video ({_one_line(exc)})") from exc
    if not frames:
        raise CLIError(f"{p}: no decodable video frames")
    audio = None
    if with_audio:
        try:
            audio = load_audio_track(p, sampling_rate)
        except Exception as exc:
            raise CLIError(f"{p}: cannot read its audio track ({_one_line(exc)})") from exc
        if audio is None or audio.size == 0:
            raise CLIError(
                f"{p}: the video has no audio track; OmniZip is audio-guided (pass --video-only "
                "to compress the video alone)"
            )
    duration = len(frames) / fps
    if audio is not None:
        duration = max(duration, audio.size / sampling_rate)
    return Clip(p, np.stack(frames), fps, audio, sampling_rate, duration)


def loop_clip(clip: Clip, seconds: float) -> Clip:
    """The clip repeated (and cut) to ``seconds``: frames and audio tiled alike."""
    import numpy as np

    n_frames = max(2, round(seconds * clip.fps))
    reps = -(-n_frames // len(clip.frames))
    frames = np.concatenate([clip.frames] * reps)[:n_frames]
    audio = None
    if clip.audio is not None:
        n = round(seconds * clip.sampling_rate)
        audio = np.tile(clip.audio, -(-n // max(clip.audio.size, 1)))[:n]
    return Clip(clip.path, frames, clip.fps, audio, clip.sampling_rate, float(seconds))


def build_prompt_inputs(processor: Any, clip: Clip, question: str) -> tuple[Any, bool]:
    """Processor inputs for ``[video (+ its audio track)] + question`` (one row)."""
    from .demo.media import build_inputs

    uav = clip.audio is not None
    item: dict[str, Any] = {"type": "video", "video": clip.frames, "audio": clip.audio}
    try:
        inputs = build_inputs(
            processor, [[item, {"type": "text", "text": question}]], use_audio_in_video=uav,
            fps=clip.fps,
        )
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{clip.path}: the processor rejected the clip ({_one_line(exc)})") from exc
    return inputs, uav


def _to_model(inputs: Any, loaded: Loaded) -> dict:
    import torch

    dtype = loaded.dtype if isinstance(loaded.dtype, torch.dtype) else next(loaded.thinker.parameters()).dtype
    return {
        k: (v.to(loaded.device, dtype) if torch.is_floating_point(v) else v.to(loaded.device))
        if isinstance(v, torch.Tensor) else v
        for k, v in dict(inputs).items()
    }


# ----------------------------------------------------------------------------- config
def build_config(args: argparse.Namespace) -> Any:
    """:class:`OmniZipConfig` from ``--preset`` / ``--rho-audio`` / ``--rho-video`` / ...;
    bad values raise :class:`CLIError` naming the option."""
    from .config import PRESETS, OmniZipConfig

    fields: dict[str, Any] = {}
    if args.preset is not None:
        key = str(args.preset).rstrip("%")
        if key not in PRESETS:
            raise CLIError(f"--preset {args.preset!r}: unknown preset; choose one of "
                           f"{', '.join(sorted(PRESETS, reverse=True))}")
        fields["rho_audio"], fields["rho_video"] = PRESETS[key]
    options = {
        "rho_audio": "--rho-audio", "rho_video": "--rho-video", "g": "--g",
        "contextual_ratio": "--contextual-ratio", "budget": "--budget",
        "audio_score": "--audio-score", "retention": "--retention",
    }
    for field in options:
        value = getattr(args, field, None)
        if value is not None:
            fields[field] = value
    try:
        return OmniZipConfig(**fields)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        for field, flag in options.items():
            if message.startswith(field + " "):
                message = f"{flag}: {message[len(field) + 1:]}"
                break
        raise CLIError(message) from exc


def _config_summary(config: Any) -> str:
    text = f"rho_audio={config.rho_audio}, rho_video={config.rho_video}, g={config.g}"
    if config.budget != "reference":
        text += f", budget={config.budget}"
    if config.audio_score != "global":
        text += f", audio_score={config.audio_score}"
    if config.retention is not None:
        text += f", retention={config.retention}"
    return text


def _preset_name(config: Any) -> str | None:
    from .config import PRESETS

    for name, (ra, rv) in PRESETS.items():
        if (config.rho_audio, config.rho_video) == (ra, rv):
            return name
    return None


def _patch(loaded: Loaded, config: Any) -> Any:
    from .patch import patch

    try:
        return patch(loaded.model, config)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--model {loaded.name!r}: {_one_line(exc)}") from exc


# ----------------------------------------------------------------------------- commands
def _add_model_options(p: argparse.ArgumentParser, bench: bool = False) -> None:
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


def _add_config_options(p: argparse.ArgumentParser) -> None:
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


def _add_media_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", metavar="VIDEO",
                   help="a video file with an audio track (default: the bundled 10-second clip)")
    p.add_argument("--question", "-q", default=DEFAULT_QUESTION, help="the question about the video")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    p.add_argument("--video-only", action="store_true",
                   help="ignore the audio track (allows videos without one): video compression only")


def _prepare(args: argparse.Namespace) -> tuple[Loaded, Clip, Any, bool, Any]:
    """Shared by run and inspect: config, clip, model, processor inputs."""
    if args.fps <= 0:
        raise CLIError(f"--fps must be positive, got {args.fps}")
    config = build_config(args)
    video = args.video or DEFAULT_CLIP
    progress = not args.no_progress
    # read the clip before loading a large model: bad files fail fast
    clip = read_clip(video, fps=args.fps, with_audio=not args.video_only, progress=progress)
    _say(f"video: {clip.path.name}: {clip.duration:.1f} s, {len(clip.frames)} frames sampled at "
         f"{clip.fps:g} fps, " + ("audio track used" if clip.audio is not None else "no audio"),
         args.quiet)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype,
                        attn_implementation=args.attn_implementation, quiet=args.quiet)
    if clip.audio is not None:
        rate = getattr(getattr(loaded.processor, "feature_extractor", None), "sampling_rate", 16000)
        if rate != clip.sampling_rate:
            clip = read_clip(video, fps=args.fps, sampling_rate=rate, progress=False)
    inputs, uav = build_prompt_inputs(loaded.processor, clip, args.question)
    return loaded, clip, inputs, uav, config


def _token_line(n_prompt: int, n_kept: int, result: Any) -> str:
    text = n_prompt - result.n_audio - result.n_video
    return (f"{n_prompt} -> {n_kept} prompt tokens ({n_kept / n_prompt:.1%}): audio "
            f"{result.n_audio} -> {result.n_audio_kept}, video {result.n_video} -> "
            f"{result.n_video_kept}, text {text} (kept)")


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .bench import StageTimer

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, got {args.warmup}")
    loaded, clip, inputs, uav, config = _prepare(args)
    thinker = loaded.thinker
    batch = _to_model(inputs, loaded)
    n_prompt = int(batch["input_ids"].shape[1])

    def generate(label: str) -> tuple[Any, StageTimer, float]:
        timer = StageTimer(loaded.model, loaded.device)
        if handle is not None:
            timer.after_patch()
        _say(f"{label}: generating up to {args.max_new_tokens} tokens ...", args.quiet)
        try:
            start = time.perf_counter()
            with torch.no_grad():
                out = thinker.generate(**batch, use_audio_in_video=uav, do_sample=False,
                                       max_new_tokens=args.max_new_tokens)
            total = time.perf_counter() - start
            ttft = (timer.head_end - start) if timer.head_end else float("nan")
        finally:
            timer.remove()
        seq = out if isinstance(out, torch.Tensor) else out.sequences
        return seq[0, n_prompt:], timer, ttft if ttft == ttft else total

    handle = _patch(loaded, config)
    try:
        if args.warmup:
            _say(f"warm-up: {args.warmup} untimed prefill(s) ...", args.quiet)
            from .bench import _forward

            with torch.no_grad():
                for _ in range(args.warmup):
                    _forward(thinker, batch, uav)
        new, timer, ttft = generate("OmniZip")
        results = handle.results or []
        overhead = handle.last_overhead_ms
    finally:
        handle.remove()
    answer = loaded.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
    decoder_ms = (timer.dec_end - timer.dec_ready) * 1e3 if timer.dec_ready and timer.dec_end else None

    print(f"model     {loaded.description}")
    if loaded.builtin:
        print(f"          NOTE: {NOISE_NOTE}")
    preset = _preset_name(config)
    print(f"omnizip   {'preset ' + preset + '%: ' if preset else ''}{_config_summary(config)}")
    print(f"video     {clip.path} ({clip.duration:.1f} s, {len(clip.frames)} frames at {clip.fps:g} fps"
          f"{', with audio' if uav else ', video only'})")
    print(f"question  {args.question}")
    shown = answer if answer else f"(no decodable text; token ids {new.tolist()})"
    print(f"answer    {shown}")
    if results:
        kept = int(sum(r.n_kept for r in results))
        print(f"tokens    {_token_line(n_prompt, kept, results[0])}")
    else:
        kept = n_prompt
        print(f"tokens    {n_prompt} (no audio/video tokens: nothing compressed)")
    if overhead is not None:
        print(f"compress  {overhead:.1f} ms (audio scoring + OmniZip token selection, per prompt)")
    if decoder_ms is not None:
        print(f"prefill   {decoder_ms:.1f} ms (decoder forward over the {kept} kept tokens; "
              f"{decoder_ms + (overhead or 0.0):.1f} ms with compression)")
    print(f"TTFT      {ttft * 1e3:.1f} ms (encoders + compression + prefill + LM head, in generate)")
    if args.compare:
        handle = None
        _, full_timer, full_ttft = generate("full model")
        full_ms = full_timer.decoder_s * 1e3
        if decoder_ms:
            total = decoder_ms + (overhead or 0.0)
            print(f"full      prefill {full_ms:.1f} ms over {n_prompt} tokens, TTFT {full_ttft * 1e3:.1f} ms: "
                  f"OmniZip prefill speedup {full_ms / total:.2f}x (compression included)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from .report import ReportData, write_report

    loaded, clip, inputs, uav, config = _prepare(args)
    thinker = loaded.thinker
    batch = _to_model(inputs, loaded)
    n_prompt = int(batch["input_ids"].shape[1])
    handle = _patch(loaded, config)
    seen: dict[str, Any] = {}

    def spy(module: Any, a: tuple, kwargs: dict) -> None:
        if "positions" not in seen:
            seen["positions"] = kwargs.get("position_ids")

    # registered first: it sees the positions before the patch compresses them
    hook = thinker.model.language_model.register_forward_pre_hook(spy, with_kwargs=True, prepend=True)
    _say("OmniZip: encoders, audio scores and compression (one prefill) ...", args.quiet)
    try:
        with torch.no_grad():
            thinker.model(**batch, use_audio_in_video=uav, use_cache=False)
        results, scores, overhead = handle.results, handle.audio_scores, handle.last_overhead_ms
        # the configuration the adapter actually ran (Qwen3-Omni: frame parity along the stream)
        effective = getattr(handle.adapter, "effective_method", None) or config
        parity = (getattr(effective, "frame_parity", None)
                  or getattr(handle.adapter, "frame_parity", None) or "chunk")
    finally:
        hook.remove()
        handle.remove()
    if not results:
        raise CLIError(f"{clip.path}: the prompt holds no audio/video tokens, nothing to inspect")
    result = results[0]
    if not hasattr(result, "window_audio_retention"):
        raise CLIError("inspect needs an OmniZip configuration (not another method)")
    cfg = thinker.config
    grid = batch.get("video_grid_thw")
    if grid is None:
        raise CLIError(f"{clip.path}: no video tokens in the prompt")
    grid_thw = tuple(int(x) for x in grid[0].tolist())
    merge = int(getattr(cfg.vision_config, "spatial_merge_size", 2))
    patch_px = int(getattr(cfg.vision_config, "patch_size", 14))
    per_second = float(getattr(cfg, "position_id_per_seconds", 25))
    audio_times = video_times = None
    positions = seen.get("positions")
    if isinstance(positions, torch.Tensor) and positions.dim() == 3:
        t_row = positions[-3, 0].to("cpu").double()
        a_pos = result.audio_positions.to("cpu")
        v_pos = result.video_positions.to("cpu")
        mm = torch.cat([a_pos, v_pos])
        if mm.numel():
            origin = t_row[mm].min()
            audio_times = ((t_row[a_pos] - origin) / per_second).numpy() if a_pos.numel() else None
            video_times = ((t_row[v_pos] - origin) / per_second).numpy() if v_pos.numel() else None
    preset = _preset_name(config)
    kept = int(result.n_kept)
    title = (f"OmniZip on {clip.path.name}: kept {kept}/{n_prompt} prompt tokens "
             f"(audio {result.n_audio_kept}/{result.n_audio}, video {result.n_video_kept}/{result.n_video})"
             f"{', preset ' + preset + '%' if preset else ''}")
    subtitle = f"{_config_summary(config)}; model {loaded.description}"
    if loaded.builtin:
        subtitle += ". Random weights: these are OmniZip's real decisions on random features, not on meaningful ones"
    facts = [
        ("video", f"{clip.path} ({clip.duration:.1f} s, {len(clip.frames)} frames at {clip.fps:g} fps)"),
        ("model", loaded.description),
        ("configuration", _config_summary(config)),
        ("tokens", _token_line(n_prompt, kept, result)),
        ("compression time", f"{overhead:.1f} ms (audio scoring + selection in this one, cold "
         "prefill; `omnizip run` / `omnizip bench` time warm runs)" if overhead is not None else "-"),
    ]
    data = ReportData(
        result=result,
        frames=clip.frames,
        grid_thw=grid_thw,
        merge=merge,
        patch=patch_px,
        audio_scores=scores[0] if scores else None,
        audio_times=audio_times,
        video_times=video_times,
        waveform=clip.audio,
        sampling_rate=clip.sampling_rate,
        seconds_per_step=2.0 / clip.fps,
        audio_tokens_per_second=_token_rate(audio_times, per_second),
        config=config.to_dict(),
        title=title,
        subtitle=subtitle,
        facts=facts,
        frame_parity=str(parity),
    )
    paths = write_report(data, args.output)
    print(f"{title}")
    print(f"report    {paths['png']}")
    print(f"html      {paths['html']}")
    print(f"numbers   {paths['json']}")
    if loaded.builtin:
        print(f"NOTE: {NOISE_NOTE}")
    return 0


def _token_rate(times: Any, default: float) -> float:
    """Audio tokens per second from their times (the typical gap), else ``default``."""
    import numpy as np

    if times is None or len(times) < 2:
        return default
    gaps = np.diff(np.asarray(times, float))
    gaps = gaps[gaps > 0]
    return float(1.0 / np.median(gaps)) if gaps.size else default


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import describe_machine, format_table, run_benchmark

    if args.clip_seconds <= 0:
        raise CLIError(f"--clip-seconds must be positive, got {args.clip_seconds}")
    if args.reps < 1 or args.warmup < 0 or args.retry_contended < 0:
        raise CLIError("--reps must be >= 1, --warmup and --retry-contended >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        raise CLIError("--clock cpu measures one-threaded runs: add --threads 1")
    presets = [p.strip().rstrip("%") for p in args.presets.split(",") if p.strip()]
    from .config import PRESETS

    for p in presets:
        if p not in PRESETS:
            raise CLIError(f"--presets: unknown preset {p!r}; choose from {', '.join(sorted(PRESETS, reverse=True))}")
    if not presets:
        raise CLIError("--presets: give at least one preset")
    overrides: dict[str, Any] = {}
    for field in ("g", "budget", "audio_score"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    from .config import OmniZipConfig

    try:
        OmniZipConfig.preset(presets[0], **overrides)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    progress = not args.no_progress
    clip = read_clip(args.video or DEFAULT_CLIP, fps=args.fps, progress=progress)
    source = f"{clip.path.name} ({clip.duration:.1f} s)"
    if abs(clip.duration - args.clip_seconds) > 1e-6:
        clip = loop_clip(clip, args.clip_seconds)
        source += f" looped/cut to {args.clip_seconds:g} s"
    loaded = load_model(args.model, device=args.device, dtype=args.dtype,
                        attn_implementation=args.attn_implementation, quiet=args.quiet,
                        default=SCALED_MODEL)
    inputs, uav = build_prompt_inputs(loaded.processor, clip, args.question)
    n = int(inputs["input_ids"].shape[1])
    _say(f"bench: {n} prompt tokens; {args.warmup} warm-up + {args.reps} timed runs of "
         f"{1 + 2 * len(presets)} configurations, then two memory runs each (one measured)",
         args.quiet)
    try:
        result = run_benchmark(
            loaded.model, inputs, presets=tuple(presets), config_overrides=overrides,
            reps=args.reps, warmup=args.warmup, use_audio_in_video=uav, progress=progress,
            retry_contended=args.retry_contended, clock=args.clock,
            model_info={"name": loaded.name, "description": loaded.description,
                        "builtin": loaded.builtin},
            input_info={"video": str(clip.path), "source": source, "seconds": clip.duration,
                        "fps": clip.fps, "question": args.question},
        )
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from exc
    path = result.write_json(args.output)
    print(f"model    {loaded.description}")
    if loaded.builtin:
        print(f"         NOTE: {NOISE_NOTE}")
    print(f"machine  {describe_machine(result.machine)}")
    print(f"input    {source}: {result.inputs['prompt_tokens']} prompt tokens (audio "
          f"{result.inputs['audio_tokens']}, video {result.inputs['video_tokens']}, text "
          f"{result.inputs['text_tokens']})")
    redo = result.settings["discarded_iterations"]
    clock = ("process CPU time, 1 thread" if args.clock == "cpu" else "wall clock")
    print(f"timing   {clock}, median of {args.reps} runs after {args.warmup} warm-up"
          + (f" ({redo} iteration(s) measured again: another process took CPU time)" if redo else "")
          + "; prefill = embeddings ready -> decoder output ((b) includes audio scoring + "
          "compression); TTFT = encoders -> first token")
    print(f"memory   {result.memory_method}")
    print()
    print(format_table(result))
    print()
    print("predicted = F(L)/F(L'), F(n) = layers*[n*(2dq + 2dk + 3dm) + n(n+1)q] (decoder prefill "
          "MACs: projections, SwiGLU MLP, causal attention)")
    print(f"json     {path}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="omnizip",
        description="OmniZip: training-free audio-guided token compression for omnimodal LLMs "
        "(Qwen2.5-Omni, Qwen3-Omni). Without --model a random-weight model is built in code; "
        "without VIDEO the bundled demo clip is used.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"omnizip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--quiet", action="store_true", help="only the results on stdout")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", parents=[common], help="answer a question about a video with OmniZip on",
                       description="Load the model, patch it with OmniZip, answer, and print token "
                       "counts before/after, compression time and prefill time.")
    _add_media_options(p)
    _add_model_options(p)
    _add_config_options(p)
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="answer length (default 32)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed prefills before the timed answer (default 1; first calls are slow)")
    p.add_argument("--compare", action="store_true",
                   help="also run the uncompressed model and print the prefill speedup")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", parents=[common], help="write a PNG/HTML report of what was pruned",
                       description="Run one compressed prefill and draw what OmniZip kept: per-window "
                       "S_i and r_i, the audio track with kept tokens and anchors, and kept-token maps "
                       "over the sampled frames.")
    _add_media_options(p)
    p.add_argument("-o", "--output", default="omnizip-report", metavar="DIR",
                   help="output folder (default: omnizip-report)")
    _add_model_options(p)
    _add_config_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", parents=[common], help="prefill latency, TTFT and peak memory",
                       description="Benchmark (a) all tokens, (b) OmniZip per preset with compression "
                       "included, (c) the same decoder fed only the kept tokens (the limit of any "
                       "pruning at that budget). Default model: a scaled random-weight Qwen2.5-Omni.")
    p.add_argument("--video", metavar="PATH", help="clip to loop (default: the bundled clip)")
    p.add_argument("--clip-seconds", type=float, default=None, metavar="N",
                   help="prompt length in seconds; the clip is looped/cut to it (default 20 on "
                   "CPU, 60 on CUDA)")
    p.add_argument("--presets", default="45,35", metavar="P[,P]", help="OmniZip presets (default 45,35)")
    p.add_argument("--reps", type=int, default=5, metavar="N", help="timed runs per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="warm-up runs (default 1)")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--retry-contended", type=int, default=10, metavar="N",
                   help="on CPU, repeat a timed iteration in which another process took CPU time "
                   "from the runs, at most N times in all (default 10; reported)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (default); cpu: process CPU time, with --threads 1, "
                   "for a shared machine whose other processes would distort wall times")
    p.add_argument("--question", "-q", default=DEFAULT_QUESTION)
    p.add_argument("-o", "--output", default="omnizip-bench.json", metavar="FILE",
                   help="JSON results (default: omnizip-bench.json)")
    p.add_argument("--g", type=int, metavar="N", help="max tokens merged into each anchor")
    p.add_argument("--budget", choices=["reference", "exact"])
    p.add_argument("--audio-score", choices=["global", "windowed", "energy"])
    _add_model_options(p, bench=True)
    p.set_defaults(func=cmd_bench)

    _mount_eval(sub, common)
    return parser


def _mount_eval(sub: Any, common: argparse.ArgumentParser) -> None:
    """``omnizip eval`` (omnizip/cli_eval.py) when it imports; the CLI works without it."""
    try:
        from .cli_eval import add_eval_parser
    except Exception:  # not installed / broken: the other commands still work
        return
    try:
        add_eval_parser(sub)
    except Exception:
        return


# ----------------------------------------------------------------------------- main
@contextlib.contextmanager
def _quiet_libraries(debug: bool, no_progress: bool) -> Any:
    """Library warnings, logs and progress bars off for the command (unless ``--debug``);
    the previous state is restored afterwards (``main`` may run inside another program)."""
    loggers = {name: logging.getLogger(name) for name in ("omnizip", "huggingface_hub", "transformers")}
    levels = {name: lg.level for name, lg in loggers.items()}
    hf_logging = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging
    hf_state = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) if hf_logging else None
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
            for lg in loggers.values():
                lg.setLevel(logging.ERROR)  # e.g. the Hub client logs every retry of a host
            if hf_logging is not None:
                hf_logging.set_verbosity_error()
        if no_progress and hf_logging is not None:
            hf_logging.disable_progress_bar()  # transformers' own bars (weight loading)
        try:
            yield
        finally:
            for name, lg in loggers.items():
                lg.setLevel(levels[name])
            if hf_logging is not None and hf_state is not None:
                hf_logging.set_verbosity(hf_state[0])
                if hf_state[1]:
                    hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnizip`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    debug = bool(getattr(args, "debug", False))
    if not hasattr(args, "quiet"):
        args.quiet = False
    if args.quiet:
        args.no_progress = True
    if args.command == "bench" and args.clip_seconds is None:
        import torch

        on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        args.clip_seconds = 60.0 if on_gpu else 20.0
    prog = f"omnizip {args.command}"
    try:
        with _quiet_libraries(debug, bool(getattr(args, "no_progress", False))):
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"{prog}: error: unexpected {_one_line(exc)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
