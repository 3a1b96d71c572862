"""The tables of docs/probe.md: every method, the retention splits, equal FLOPs, causal vs offline.

    python scripts/probe_tables.py --weights omnizip/probe/assets out/probe-seed1 out/probe-seed2 \\
        --samples 96 -o out/probe-tables.json

Each weights folder is one trained seed (scripts/train_probe.py); all are evaluated on the same
held-out clips. Rows (per seed): all tokens; each method at each retention (the registry's
non-ablation methods, plus ``omnizip-no-dynamic``: OmniZip without audio guidance of the video
ratios); OmniZip with ``retention_split="shift"`` and ``"even"``; OmniZip's causal stream
configuration (``causal=True``); every method whose decoder cost differs from a pre-decoder
method's at the same retention (FastV, SEATS) again at the retention predicted to cost the same
(``@FLOPs``: the count model of ``omnizip bench --flops-ratio``); and the causal configuration at
the retention that makes it keep the asked share (``omnizip causal @FLOPs``). Prints
markdown tables of the mean accuracy with its spread (min-max) over the seeds; the JSON keeps
every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from omnizip import OmniZipConfig
from omnizip.methods import METHODS
from omnizip.probe.evaluate import (
    default_methods,
    evaluate,
    heldout_set,
    predicted_flops,
    probe_method,
    retention_at_flops,
)
from omnizip.probe.model import load_probe

SPLITS = ("shift", "even")


def rows_for(probe: Any, heldout: Any, retentions: list[float], methods: list[str],
             log: Any) -> list[dict[str, Any]]:
    rows = [evaluate(probe, heldout)]
    for name in methods:
        for r in retentions:
            log(f"{name} {r}")
            rows.append(evaluate(probe, heldout, probe_method(name, r), name, r))
    for split in SPLITS:
        for r in retentions:
            log(f"omnizip split={split} {r}")
            rows.append(evaluate(probe, heldout, probe_method("omnizip", r, retention_split=split),
                                 f"omnizip split={split}", r))
    if "causal" in {f.name for f in dataclasses.fields(OmniZipConfig)}:
        for r in retentions:
            log(f"omnizip causal {r}")
            rows.append(evaluate(probe, heldout, probe_method("omnizip", r, causal=True,
                                                              budget="reference"),
                                 "omnizip causal", r))
    # equal FLOPs: every method whose predicted decoder cost at a retention differs from a
    # pre-decoder method's (random's) is re-run at the retention predicted to cost the same
    # (the count model of omnizip bench --flops-ratio): FastV, SEATS
    for name in methods:
        for r in retentions:
            target = predicted_flops(probe, heldout, "random", r)
            if abs(predicted_flops(probe, heldout, name, r) - target) < 0.005:
                continue
            match, predicted = retention_at_flops(probe, heldout, name, target)
            log(f"{name} at FLOPs {target:.3f}: retention {match:.3f} (predicted {predicted:.3f})")
            row = evaluate(probe, heldout, probe_method(name, match), f"{name} @FLOPs", r)
            row.update(flops_target=target, matched_retention=match)
            rows.append(row)
    # the causal configuration resolves its ratios from the first window's mix, so it keeps a
    # different share than asked: one secant step on the measured kept share matches it
    causal = {x["retention"]: x for x in rows if x["method"] == "omnizip causal"}
    for r, first in causal.items():
        match = min(1.0, r * r / first["kept"])
        log(f"omnizip causal at kept {r}: retention {match:.3f}")
        row = evaluate(probe, heldout, probe_method("omnizip", match, causal=True,
                                                    budget="reference"),
                       "omnizip causal @FLOPs", r)
        row.update(matched_retention=match)
        rows.append(row)
    return rows


def summarise(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows keyed by (method, retention): accuracy mean/min/max over the seeds."""
    out = []
    for i, row in enumerate(per_seed[0]):
        same = [rows[i] for rows in per_seed]
        entry = {"method": row["method"], "retention": row["retention"]}
        if "accuracy" not in row:
            entry["matched_retention"] = None
            out.append(entry)
            continue
        for key in ("accuracy", "kept", "kept_audio", "kept_video", "flops_ratio"):
            values = [r[key] for r in same]
            entry[key] = statistics.fmean(values)
            entry[key + "_range"] = (min(values), max(values))
        for v in row["accuracy_by_variant"]:
            values = [r["accuracy_by_variant"][v] for r in same]
            entry[v] = statistics.fmean(values)
            entry[v + "_range"] = (min(values), max(values))
        if "matched_retention" in row:
            entry["matched_retention"] = row["matched_retention"]
        out.append(entry)
    return out


def cell(entry: dict[str, Any], key: str) -> str:
    lo, hi = entry[key + "_range"]
    return f"{100 * entry[key]:.1f} ({100 * lo:.0f}-{100 * hi:.0f})"


def markdown(summary: list[dict[str, Any]], retentions: list[float]) -> str:
    lines = []
    for title, key in (("all clips", "accuracy"), ("audio-led", "audio"), ("visual-only", "visual")):
        lines += [f"\n**Accuracy %, {title}** (mean over seeds, min-max in brackets)\n",
                  "| method | " + " | ".join(f"retention {r:g}" for r in retentions) + " |",
                  "|---|" + "---|" * len(retentions)]
        names = list(dict.fromkeys(e["method"] for e in summary))
        for name in names:
            mine = {e["retention"]: e for e in summary if e["method"] == name}
            if name == "full":
                lines.append(f"| all tokens | {cell(mine[1.0], key)} |" + " |" * (len(retentions) - 1))
                continue
            cells = [cell(mine[r], key) if r in mine and key in mine[r] else "unreachable"
                     for r in retentions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["\n**Kept shares** (audio / video, seed mean)\n",
              "| method | " + " | ".join(f"retention {r:g}" for r in retentions) + " |",
              "|---|" + "---|" * len(retentions)]
    for name in dict.fromkeys(e["method"] for e in summary if e["method"] != "full"):
        mine = {e["retention"]: e for e in summary if e["method"] == name}
        cells = [f"{mine[r]['kept_audio']:.2f} / {mine[r]['kept_video']:.2f} (FLOPs "
                 f"{mine[r]['flops_ratio']:.2f})" if r in mine and "kept_audio" in mine[r] else "-"
                 for r in retentions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True, metavar="DIR")
    parser.add_argument("--samples", type=int, default=96, help="held-out clips per variant")
    parser.add_argument("--retentions", default="0.45,0.35,0.25")
    parser.add_argument("--methods", default=None,
                        help="default: the non-ablation registry methods + omnizip-no-dynamic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    retentions = [float(r) for r in args.retentions.split(",")]
    methods = (args.methods.split(",") if args.methods
               else [*default_methods(), "omnizip-no-dynamic"])
    methods = [m for m in methods if m in METHODS]
    out = Path(args.output)
    done = json.loads(out.read_text()) if out.exists() else {"per_seed": {}}
    heldout = None
    start = time.perf_counter()
    for folder in args.weights:
        if folder in done["per_seed"]:
            continue
        probe = load_probe(folder)
        if heldout is None:
            heldout = heldout_set(probe, args.samples)
        rows = rows_for(probe, heldout, retentions, methods,
                        lambda msg, f=folder: print(f"[{f} {time.perf_counter() - start:.0f} s] {msg}",
                                                    file=sys.stderr, flush=True))
        done["per_seed"][folder] = rows
        done.update(samples=args.samples, retentions=retentions, methods=methods)
        out.write_text(json.dumps(done, indent=1))
    summary = summarise([done["per_seed"][f] for f in args.weights])
    done["summary"] = summary
    out.write_text(json.dumps(done, indent=1))
    print(markdown(summary, retentions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
