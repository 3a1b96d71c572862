"""``omnizip eval``: one command per (benchmark, model, method, budget) comparison.

Example::

    omnizip eval --benchmark worldsense --data WorldSense/worldsense_qa.json \\
        --model Qwen/Qwen2.5-Omni-7B --method dycoke --retention 0.45

Bad input (unknown benchmark or method, an option the method lacks, a malformed annotation
file, a model that cannot be loaded) prints one ``omnizip eval: error: ...`` line and exits
with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from .errors import CLIError
from .eval_vllm import add_engine_options, vllm_answerer
from .options import add_video_only_option, positive_float
from .session import load

__all__ = ["add_parser", "build_method", "run_eval_command"]

NO_METHOD = "none"


def _method_names() -> list[str]:
    from ..methods import METHODS

    return [NO_METHOD, *METHODS]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    from ..eval.datasets import BENCHMARKS
    from ..loading import BUILTIN_MODELS

    p = sub.add_parser(
        "eval", parents=[common],
        help="evaluate a (compressed) omni model on an audio-video benchmark",
        description="Evaluate a Qwen-Omni model, compressed by a token-compression method, on "
        "a local copy of WorldSense, Video-MME, AVUT or ShortVid-Bench (multiple choice, greedy "
        "decoding). Results go to <output>/<benchmark>__<model>__<method>[__options]/ and a rerun "
        "resumes where it stopped.",
    )
    p.add_argument("--benchmark", required=True, metavar="NAME",
                   help=f"one of: {', '.join(BENCHMARKS)}")
    p.add_argument("--data", required=True, metavar="PATH", help="the benchmark's annotation file")
    p.add_argument("--video-dir", metavar="DIR", help="folder of the videos (default: next to --data)")
    p.add_argument("--model", required=True, metavar="ID_OR_PATH",
                   help="Hugging Face id or local path of a Qwen2.5-Omni / Qwen3-Omni checkpoint, "
                   f"or a built-in random-weight model for smoke tests: {', '.join(BUILTIN_MODELS)}")
    p.add_argument("--method", default="omnizip", metavar="M",
                   help=f"compression method: {', '.join(_method_names())} (default omnizip)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--retention", type=float, metavar="R",
                        help="fraction of audio+video tokens kept, in (0, 1]")
    budget.add_argument("--token-budget", type=int, metavar="N",
                        help="absolute number of audio+video tokens kept")
    p.add_argument("--preset", choices=["45", "35"],
                   help="OmniZip operating point (rho_audio, rho_video) of the paper")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. --option g=15 --option layer=5")
    p.add_argument("--output", default="results", metavar="DIR", help="output root (default: results)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run of this configuration")
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N")
    p.add_argument("--fps", type=positive_float, default=2.0,
                   help="video frames sampled per second (default 2)")
    p.add_argument("--max-frames", type=int, metavar="N", help="cap on sampled frames per video")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="max pixels per frame (the paper: 100352 = 128*28*28)")
    p.add_argument("--min-pixels", type=int, metavar="N", help="min pixels per frame")
    add_video_only_option(p)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto",
                   help="auto (checkpoints: their own; built-in: float32 on CPU, bfloat16 on "
                   "CUDA), float32, bfloat16, float16")
    p.add_argument("--attn-implementation", metavar="NAME",
                   help="sdpa, eager or flash_attention_2 (default: the model's)")
    add_engine_options(p)
    p.set_defaults(func=run_eval_command)
    return p


def build_method(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(method configuration or None, the options naming the run) from the parsed arguments.

    Raises ValueError/TypeError with a one-line message for bad input.
    """
    from ..config import PRESETS
    from ..methods import coerce_option, get_method

    name = args.method
    if name not in _method_names():
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(_method_names())}")
    options: dict[str, Any] = {}
    for text in args.option or []:
        if "=" not in text:
            raise ValueError(f"--option {text!r}: expected KEY=VALUE")
        key, value = text.split("=", 1)
        key = key.strip().replace("-", "_")
        if name == NO_METHOD:
            raise ValueError("--option needs a compression method (--method is 'none')")
        options[key] = coerce_option(name, key, value)
    if args.retention is not None:
        options["retention"] = args.retention
    if args.token_budget is not None:
        options["token_budget"] = args.token_budget
    naming = dict(options)
    if args.preset is not None:
        if not name.startswith("omnizip"):
            raise ValueError(f"--preset applies to the omnizip methods, not {name!r}")
        rho_a, rho_v = PRESETS[args.preset]
        options.setdefault("rho_audio", rho_a)
        options.setdefault("rho_video", rho_v)
        naming["preset"] = args.preset
    if name == NO_METHOD:
        if options:
            raise ValueError("--retention/--token-budget need a compression method (--method is 'none')")
        return None, naming
    return get_method(name, **options), naming


def _items(args: argparse.Namespace) -> tuple[str, list[Any], Any, dict[str, Any]]:
    """(benchmark key, questions, method, naming options), checked before the model loads."""
    from ..eval.datasets import benchmark_key, load_benchmark

    try:
        benchmark = benchmark_key(args.benchmark)
        method, naming = build_method(args)
        items = load_benchmark(benchmark, args.data, video_dir=args.video_dir)
        if not items:
            raise ValueError(f"{args.data}: no questions found")
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    return benchmark, items, method, naming


def _hf_answerer(args: argparse.Namespace, method: Any) -> tuple[Any, Any]:
    """(answer function, the model for FLOPs) of ``--engine hf``."""
    from ..eval.generation import OmniAnswerer

    if args.tensor_parallel_size != 1 or args.data_parallel_size != 1 or args.vllm_kwargs or args.vllm_python:
        raise CLIError("--tensor-parallel-size, --data-parallel-size, --vllm-kwargs and "
                       "--vllm-python apply to --engine vllm")
    model, processor = load(args)
    try:
        return OmniAnswerer(
            model, processor, method, max_new_tokens=args.max_new_tokens, fps=args.fps,
            max_frames=args.max_frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            use_audio_in_video=not args.video_only,
        ), model
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``omnizip eval`` from parsed arguments; returns the exit status."""
    from pathlib import Path

    from ..eval.runner import run_eval, run_name
    from ..flops import decoder_dims

    benchmark, items, method, naming = _items(args)
    uav = not args.video_only
    generation = {
        "max_new_tokens": args.max_new_tokens, "fps": args.fps, "max_frames": args.max_frames,
        "max_pixels": args.max_pixels, "min_pixels": args.min_pixels,
        "use_audio_in_video": uav, "decoding": "greedy",
    }
    if args.engine == "vllm":
        options = dict(naming)
        naming["engine"] = "vllm"  # its own run folder: the engines do not share a resume
        generation["engine"] = "vllm"
        log_dir = Path(args.output) / run_name(benchmark, args.model, args.method, naming)
        answerer, method, model = vllm_answerer(args, method, options, log_dir)
    else:
        answerer, model = _hf_answerer(args, method)
    prune_layer = getattr(method, "in_decoder_layer", None) if method is not None else None
    try:
        dims = decoder_dims(model)
    except ValueError as exc:  # an unknown config layout: run without FLOPs ratios
        print(f"omnizip eval: warning: no FLOPs ratio ({exc})", file=sys.stderr)
        dims = None
    try:
        result = run_eval(
            items, answerer, output=args.output, benchmark=benchmark, model=args.model,
            method=args.method,
            method_config=dataclasses.asdict(method) if method is not None else None,
            options=naming, generation=generation,
            extra_config={"data": str(args.data), "video_dir": args.video_dir,
                          "engine": _engine_facts(args, answerer)},
            dims=dims, prune_layer=prune_layer, limit=args.limit,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    except KeyboardInterrupt:
        print("omnizip eval: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        answerer.close()
    m = result.metrics
    of_total = "" if m["complete"] else f" of {m['n_items']}"
    prefill = (m.get("prefill_ms") or {}).get("mean")
    print(
        f"{benchmark} {args.method}: accuracy {m['accuracy']:.4f} ({m['correct']}/{m['answered']}"
        f"{of_total}), retention {_fmt(m['tokens'].get('retention'))}, FLOPs ratio "
        f"{_fmt(m.get('flops_ratio'))}, prefill {_fmt(prefill, ' ms')} -> {result.output_dir}"
    )
    if m["n_errors"]:
        print(f"omnizip eval: {m['n_errors']} question(s) failed (see predictions.jsonl 'error'); "
              "rerun to retry them", file=sys.stderr)
    return 0


def _engine_facts(args: argparse.Namespace, answerer: Any) -> dict[str, Any]:
    if args.engine != "vllm":
        return {"name": "hf"}
    return {"name": "vllm", "vllm": answerer.vllm_version, "batch_size": args.batch_size,
            "tensor_parallel_size": args.tensor_parallel_size,
            "data_parallel_size": args.data_parallel_size}


def _fmt(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3f}{unit}" if isinstance(value, float) else json.dumps(value)
