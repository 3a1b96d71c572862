#!/usr/bin/env python3
"""Evaluation throughput: ``omnizip eval --engine hf`` against ``--engine vllm``, same questions.

Makes a local ShortVid-Bench copy of N generated clips (moving test pattern with per-frame
noise, espeak-ng speech then silence, 4 fps, lengths spread over ``--seconds``), saves the checkpoint (default: the
serving benchmark's scaled random-weight Qwen2.5-Omni, decoder 256 wide, 4 layers), then runs
the same ``omnizip eval`` command (OmniZip preset 45, ``budget="exact"`` on both engines) once
per engine, one after the other, and reports per engine: items/s of the questions (the run's
``metrics.json`` ``throughput``), the wall time of the whole command (model load / engine
start-up included), and whether both engines kept the same tokens and gave the same greedy
tokens per item.

    python benchmarks/bench_eval_engines.py [--items 16] [--seconds 10,30] [--batch-size 16]
        [--model DIR] [--vllm-python .venv-vllm/bin/python] [--json docs/bench/eval_engines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_serving import SPEECH, clip_lengths  # noqa: E402

ENGINE_KWARGS = {"enforce_eager": True, "max_model_len": 16384, "kv_cache_memory_bytes": 4 << 30,
                 "max_num_batched_tokens": 16384}


def checkpoint(model: str | None) -> Path:
    if model:
        return Path(model)
    from vllm_tiny_checkpoint import SCALED_SIZES

    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    folder = REPO / "out" / "vllm" / "bench-scaled"
    if not (folder / "spk_dict.pt").is_file():  # older saves lack the speaker table
        save_tiny_checkpoint(folder, "qwen2.5-omni", **SCALED_SIZES)
    return folder


def make_clips(folder: Path, lengths: list[float]) -> list[Path]:
    """The serving benchmark's clips (160x120, 4 fps, speech then silence), textured: the
    per-item comparison of the engines should not hinge on exact ties between flat patches."""
    from omnizip.demo.media import make_test_clip

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, seconds in enumerate(lengths):
        path = folder / f"clip{i:03d}_{seconds:.0f}s_textured.mp4"
        if not path.is_file():
            speech = " ".join(SPEECH[(i + j) % len(SPEECH)] for j in range(1 + i % 3))
            make_test_clip(path, seconds=seconds, speech=speech, width=160, height=120, fps=4,
                           texture=True)
        clips.append(path)
    return clips


def benchmark_file(folder: Path, n: int, low: float, high: float) -> Path:
    clips = make_clips(folder / "videos", clip_lengths(n, low, high))
    rows = [{"id": f"q{i}", "video": c.name, "question": "What happens in the video, and what is said?",
             "candidates": ["A. a square moves", "B. nothing moves", "C. a cat sings"],
             "answer": "A", "problem_type": "motion"} for i, c in enumerate(clips)]
    path = folder / "ShortVid-Bench-1k.json"
    path.write_text(json.dumps(rows))
    return path


def run(engine: str, data: Path, model: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "omnizip.cli", "eval", "--benchmark", "shortvid", "--data", str(data),
           "--model", str(model), "--method", "omnizip", "--preset", "45", "--output", str(out),
           "--max-new-tokens", str(args.max_new_tokens), "--no-progress", "--overwrite"]
    if engine == "hf":
        cmd += ["--option", "budget=exact", "--device", "cpu"]
    else:
        cmd += ["--engine", "vllm", "--batch-size", str(args.batch_size),
                "--vllm-kwargs", json.dumps(ENGINE_KWARGS)]
        if args.vllm_python:
            cmd += ["--vllm-python", args.vllm_python]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{engine}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    (run_dir,) = [Path(line.rsplit(" -> ", 1)[1]) for line in proc.stdout.splitlines() if " -> " in line]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return {"engine": engine, "command_wall_s": wall, "throughput": metrics["throughput"],
            "tokens": metrics["tokens"], "errors": metrics["n_errors"],
            "per_item": {r["id"]: {k: r["stats"].get(k) for k in
                                   ("prompt_tokens", "kept_audio", "kept_video", "generated_ids")}
                         for r in records}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--seconds", default="10,30", help="clip lengths LOW,HIGH (seconds)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", help="checkpoint folder (default: the scaled random-weight model)")
    p.add_argument("--vllm-python", help="interpreter of the vLLM environment")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    low, high = (float(x) for x in args.seconds.split(","))
    work = REPO / "out" / "bench-eval-engines"
    data = benchmark_file(work / "bench", args.items, low, high)
    model = checkpoint(args.model)
    results = [run(engine, data, model, work / "runs", args) for engine in ("hf", "vllm")]
    hf, vllm = (r["per_item"] for r in results)
    same = {key: sum(hf[i][key] == vllm[i][key] for i in hf) for key in ("kept_audio", "kept_video", "generated_ids")}
    import torch

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "model": str(model), "items": args.items, "seconds": [low, high],
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "engine_kwargs": ENGINE_KWARGS, "results": results,
        "same_per_item": {**same, "of": len(hf)},
        "speedup_items_per_s": results[1]["throughput"]["items_per_s"] / results[0]["throughput"]["items_per_s"],
    }
    for r in results:
        t = r["throughput"]
        print(f"{r['engine']:>5}: {t['items_per_s']:.3f} items/s ({t['items']} items in {t['seconds']:.1f} s; "
              f"command {r['command_wall_s']:.1f} s with start-up), prompt tokens kept "
              f"{r['tokens']['prompt_tokens_kept']:.0f} of {r['tokens']['prompt_tokens']:.0f}")
    print(f"vllm / hf items/s: {report['speedup_items_per_s']:.2f}x; same kept audio / video / "
          f"greedy tokens: {same['kept_audio']}/{same['kept_video']}/{same['generated_ids']} of {len(hf)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
