"""``omnizip probe``: accuracy against retention of every compression method on the probe model.

The probe is a small Qwen2.5-Omni thinker trained here on a synthetic audio-visual task
(docs/probe.md): an honest if narrow accuracy signal on a CPU. It is not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .errors import CLIError, one_line, say
from .session import check_output_dir

__all__ = ["add_parser", "cmd_probe", "parse_methods", "parse_retentions"]

DEFAULT_RETENTIONS = "0.45,0.35,0.25"
DEFAULT_SAMPLES = 48


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "probe", parents=[common], help="accuracy vs retention of each method on the probe model",
        description="Evaluate compression methods at several retentions on the held-out clips of "
        "the synthetic audio-visual probe (a small Qwen2.5-Omni trained on CPU, docs/probe.md) "
        "and write accuracy-vs-retention as probe.png and probe.json. A synthetic probe, not a "
        "benchmark.")
    p.add_argument("--methods", metavar="M[,M]",
                   help="methods of the registry (default: every method that is not a paper "
                   "ablation)")
    p.add_argument("--retentions", default=DEFAULT_RETENTIONS, metavar="R[,R]",
                   help=f"kept shares of audio + video tokens, each in (0, 1] (default "
                   f"{DEFAULT_RETENTIONS})")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"held-out clips per variant (default {DEFAULT_SAMPLES})")
    p.add_argument("--weights", metavar="DIR",
                   help="a folder with probe.safetensors and probe.json (default: the committed "
                   "weights)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true",
                   help="print the rows as a JSON list instead of a table")
    p.add_argument("-o", "--output", default="omnizip-probe", metavar="DIR",
                   help="folder for probe.png and probe.json (default: omnizip-probe)")
    p.set_defaults(func=cmd_probe)


def parse_methods(text: str | None) -> list[str]:
    """``--methods``: registry names, comma-separated (unknown names refused, listing them)."""
    from ..methods import METHODS
    from ..probe.evaluate import default_methods

    if text is None:
        return default_methods()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError("--methods: give at least one method")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise CLIError(f"--methods: unknown method {unknown[0]!r}; known methods: "
                       f"{', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def parse_retentions(text: str) -> list[float]:
    """``--retentions``: floats in (0, 1], comma-separated."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise CLIError(f"--retentions: {part!r} is not a number") from None
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise CLIError(f"--retentions: each retention must lie in (0, 1], got {part}")
        values.append(value)
    if not values:
        raise CLIError("--retentions: give at least one retention")
    return list(dict.fromkeys(values))


def _table(rows: list[dict[str, Any]]) -> str:
    variants = list(rows[0]["accuracy_by_variant"])
    head = ["method", "retention", "kept", "audio", "video", "FLOPs", "accuracy", *variants]
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for r in rows:
        cells = [f"{r['method']:>10}", f"{r['retention']:>10.2f}", f"{r['kept']:>10.3f}",
                 f"{r['kept_audio']:>10.3f}", f"{r['kept_video']:>10.3f}",
                 f"{r['flops_ratio']:>10.3f}", f"{r['accuracy']:>10.3f}",
                 *(f"{r['accuracy_by_variant'][v]:>10.3f}" for v in variants)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from ..probe.evaluate import heldout_set, sweep
    from ..probe.model import load_probe
    from ..probe.report import public_rows, write_outputs

    methods = parse_methods(args.methods)
    retentions = parse_retentions(args.retentions)
    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = check_output_dir(args.output)
    try:
        probe = load_probe(args.weights)
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"--weights {args.weights or '(committed)'}: {one_line(exc)}") from exc
    say(f"probe: {args.samples} held-out clips per variant, {len(methods)} method(s) x "
        f"{len(retentions)} retention(s)", args.quiet)
    heldout = heldout_set(probe, args.samples)
    progress = None if args.no_progress else (lambda msg: say(f"  {msg}", args.quiet))
    rows = sweep(probe, heldout, methods, retentions, progress=progress)
    meta = {"note": "synthetic probe, not a benchmark (docs/probe.md)",
            "weights": args.weights or "committed", "n_clips": heldout.size,
            "methods": methods, "retentions": retentions, "task": probe.task.to_dict()}
    paths = write_outputs(rows, out, meta)
    if args.json:
        print(json.dumps(public_rows(rows)))
    else:
        print(_table(rows))
        print(f"json     {paths['json']}\npng      {paths['png']}")
    return 0
