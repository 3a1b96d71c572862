"""``omnizip bench``: prefill latency, TTFT and peak memory of (a) the full model, (b) OmniZip per
preset and (c) the decoder fed only the kept tokens (see :mod:`omnizip.bench`)."""

from __future__ import annotations

import argparse
from typing import Any

from .errors import CLIError, one_line, say
from .options import DEFAULT_QUESTION, SCALED_MODEL, add_model_options, positive_float
from .session import NOISE_NOTE, check_output_file, load, prompt_inputs, read, video_path

__all__ = ["add_parser", "cmd_bench"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", parents=[common], help="prefill latency, TTFT and peak memory",
                       description="Benchmark (a) all tokens, (b) OmniZip per preset with compression "
                       "included, (c) the same decoder fed only the kept tokens (the limit of any "
                       "pruning at that budget). Default model: a scaled random-weight Qwen2.5-Omni.")
    p.add_argument("--video", metavar="PATH", help="clip to loop (default: the bundled clip)")
    p.add_argument("--clip-seconds", type=positive_float, default=None, metavar="N",
                   help="prompt length in seconds; the clip is looped/cut to it (default 20 on "
                   "CPU, 60 on CUDA)")
    p.add_argument("--presets", default="45,35", metavar="P[,P]", help="OmniZip presets (default 45,35)")
    p.add_argument("--reps", type=int, default=5, metavar="N", help="timed runs per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="warm-up runs (default 1)")
    p.add_argument("--fps", type=positive_float, default=2.0, help="frames sampled per second (default 2)")
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
    p.add_argument("--methods", metavar="M[,M]",
                   help="compare methods instead of OmniZip presets, e.g. omnizip,seats,fastv,"
                   "visionzip,dycoke,random: (a) and each method patched in")
    p.add_argument("--flops-ratio", type=positive_float, metavar="F",
                   help="with --methods: solve each method's retention so that its decoder "
                   "prefill FLOPs are F of the full run's (default: each method's defaults)")
    p.add_argument("--g", type=int, metavar="N", help="max tokens merged into each anchor")
    p.add_argument("--budget", choices=["reference", "exact"])
    p.add_argument("--audio-score", choices=["global", "windowed", "energy"])
    add_model_options(p, bench=True)
    p.set_defaults(func=cmd_bench)


def _presets_and_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """``--presets`` and the OmniZip fields every preset gets; checked here, before any work."""
    from ..config import PRESETS, OmniZipConfig

    presets = [p.strip().rstrip("%") for p in args.presets.split(",") if p.strip()]
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
    try:
        OmniZipConfig.preset(presets[0], **overrides)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    return presets, overrides


def _method_names(args: argparse.Namespace) -> list[str] | None:
    """``--methods`` checked (known names, no repeats), or None for the preset benchmark."""
    from ..methods import METHODS

    if args.methods is None:
        if args.flops_ratio is not None:
            raise CLIError("--flops-ratio needs --methods (the methods to compare)")
        return None
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown or len(set(names)) != len(names):
        raise CLIError(f"--methods: give distinct names of {', '.join(METHODS)}; got {args.methods!r}")
    if args.flops_ratio is not None and not 0 < args.flops_ratio <= 1:
        raise CLIError(f"--flops-ratio must lie in (0, 1], got {args.flops_ratio}")
    return names


def _check_settings(args: argparse.Namespace) -> None:
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


def _print_result(result: Any, loaded: Any, source: str, args: argparse.Namespace, path: Any) -> None:
    from ..bench import describe_machine, format_table
    from ..bench.table import format_methods

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
    if args.methods:
        print(format_methods(result))
        print()
        print("FLOPs ratio = sum over layers of F(n_i) / (layers * F(L)), F(n) = n*(2dq + 2dk + 3dm) "
              "+ n(n+1)q, n_i the tokens layer i saw (measured; 'predicted': the count model the "
              "retention was solved on, omnizip.bench.compare)")
    else:
        print(format_table(result))
        print()
        print("predicted = F(L)/F(L'), F(n) = layers*[n*(2dq + 2dk + 3dm) + n(n+1)q] (decoder prefill "
              "MACs: projections, SwiGLU MLP, causal attention; omnizip.flops)")
    print(f"json     {path}")


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_benchmark
    from ..inputs import loop_clip

    _check_settings(args)
    names = _method_names(args)
    presets, overrides = _presets_and_overrides(args)
    output = check_output_file(args.output)
    progress = not args.no_progress
    clip = read(video_path(args.video), fps=args.fps, progress=progress)
    source = f"{clip.path.name} ({clip.duration:.1f} s)"
    if abs(clip.duration - args.clip_seconds) > 1e-6:
        clip = loop_clip(clip, args.clip_seconds)
        source += f" looped/cut to {args.clip_seconds:g} s"
    loaded = load(args, default=SCALED_MODEL)
    inputs, uav = prompt_inputs(loaded.processor, clip, args.question)
    n = int(inputs["input_ids"].shape[1])
    methods = settings = None
    if names is not None:
        from ..bench.compare import solve_methods

        try:
            methods, settings = solve_methods(loaded.model, inputs, names, args.flops_ratio)
        except (ValueError, TypeError) as exc:
            raise CLIError(one_line(exc)) from exc
    n_configs = 1 + (len(names) if names is not None else 2 * len(presets))
    say(f"bench: {n} prompt tokens; {args.warmup} warm-up + {args.reps} timed runs of "
        f"{n_configs} configurations, then two memory runs each (one measured)", args.quiet)
    try:
        result = run_benchmark(
            loaded.model, inputs, presets=tuple(presets), config_overrides=overrides,
            methods=methods, method_settings=settings,
            reps=args.reps, warmup=args.warmup, use_audio_in_video=uav, progress=progress,
            retry_contended=args.retry_contended, clock=args.clock,
            model_info={"name": loaded.name, "description": loaded.description,
                        "builtin": loaded.builtin},
            input_info={"video": str(clip.path), "source": source, "seconds": clip.duration,
                        "fps": clip.fps, "question": args.question},
        )
    except ValueError as exc:
        raise CLIError(one_line(exc)) from exc
    _print_result(result, loaded, source, args, result.write_json(output))
    return 0
