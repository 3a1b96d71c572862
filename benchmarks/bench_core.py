"""Speed and memory of the OmniZip core against the floor any exact implementation pays.

Input shaped like Qwen2.5-Omni-7B with use_audio_in_video: D = 3584, 144 tokens per frame,
per 2-second window 2 frames (288 video tokens) + 50 audio tokens, a little text around.

The floor, measured in the same run on the same input (algorithm §4 needs each of these):
  - copying the output embeddings ([L, D]);
  - normalising the video tokens ([N_v, D]);
  - the pool-by-video similarity matmul ([pool, D] x [D, N_v]);
  - the per-frame similarity matmuls of the spatial step ([P, D] x [D, P] per even frame).

Each configuration runs in a fresh subprocess so its peak resident memory is its own.

    python benchmarks/bench_core.py                  # 60 s and 10 min clips, JSON to benchmarks/results/
    python benchmarks/bench_core.py --seconds 1200 --only omnizip   # peak memory of a 20-min clip
    python benchmarks/bench_core.py --seconds 60 --grad              # with autograd on (training forward)
    python benchmarks/bench_core.py --causal --seconds 60 600 1800 --scope window  # + the causal core
                                                                     # (OmniZipConfig(causal=True)) side by side
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from omnizip.core import DEFAULT_BLOCK_ELEMENTS

HIDDEN = 3584
TOKENS_PER_FRAME = 144
FRAMES_PER_WINDOW = 2
AUDIO_PER_WINDOW = 50
WINDOW_SECONDS = 2
AUDIO_ID, VIDEO_ID, TEXT_ID = 151646, 151656, 100


def make_input(seconds: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    windows = seconds // WINDOW_SECONDS
    per_window = [VIDEO_ID] * (FRAMES_PER_WINDOW * TOKENS_PER_FRAME) + [AUDIO_ID] * AUDIO_PER_WINDOW
    ids = torch.tensor([TEXT_ID] * 20 + per_window * windows + [TEXT_ID] * 30)
    gen = torch.Generator().manual_seed(seed)
    # Correlated frames, like real video: a slowly drifting base plus noise.
    embeds = torch.randn(ids.numel(), HIDDEN, generator=gen)
    scores = torch.rand(int((ids == AUDIO_ID).sum()), generator=gen)
    return embeds, ids, scores


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_one(task: str, seconds: int, repeats: int, scope: str, grad: bool = False) -> dict:
    """One measurement in this process (called in a subprocess by main). ``grad``: the
    embeddings require grad, as in a training forward (the output then carries a graph)."""
    from omnizip import OmniZipConfig, compress_sequence

    embeds, ids, scores = make_input(seconds)
    embeds.requires_grad_(grad and task in ("omnizip", "causal"))
    config = OmniZipConfig(merge_scope=scope, causal=task == "causal")
    n_audio, n_video = int((ids == AUDIO_ID).sum()), int((ids == VIDEO_ID).sum())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict = {"task": task, "seconds": seconds, "scope": scope, "grad": grad, "L": ids.numel(),
                 "n_audio": n_audio, "n_video": n_video}
    if task in ("omnizip", "causal"):
        def fn():
            return compress_sequence(embeds, ids, scores, audio_token_id=AUDIO_ID,
                                     video_token_id=VIDEO_ID, tokens_per_frame=TOKENS_PER_FRAME,
                                     config=config)
        out["time_s"] = time_it(fn, repeats)
        result = fn()
        out["retention"] = result.retention
    elif task == "floor":
        video_pos = torch.nonzero(ids == VIDEO_ID).flatten()
        audio_pos = torch.nonzero(ids == AUDIO_ID).flatten()
        n_pool = n_audio - round(0.7 * n_audio) - round(0.05 * n_audio)
        pool = embeds[audio_pos[:n_pool]]
        pool = pool / (pool.norm(dim=-1, keepdim=True) + 1e-6)
        frames = n_video // TOKENS_PER_FRAME
        parts = {}
        parts["copy_output"] = time_it(lambda: embeds.clone(), repeats)
        parts["normalise_video"] = time_it(
            lambda: torch.nn.functional.normalize(embeds[video_pos], dim=-1), repeats)
        video_hat = torch.nn.functional.normalize(embeds[video_pos], dim=-1)
        even = video_hat.view(frames, TOKENS_PER_FRAME, HIDDEN)[0::2].contiguous()
        if scope == "global":
            # Blocked like any bounded-memory implementation would (same FLOPs as one matmul).
            def pool_by_video():
                step = max(1, DEFAULT_BLOCK_ELEMENTS // max(1, pool.shape[0]))
                for s in range(0, n_video, step):
                    (pool @ video_hat[s:s + step].T).amax(dim=1)
            parts["pool_by_video_matmul"] = time_it(pool_by_video, repeats)
        parts["frame_matmuls"] = time_it(lambda: torch.bmm(even, even.transpose(1, 2)), repeats)
        out["parts_s"] = parts
        out["time_s"] = sum(parts.values())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_before_mb"] = rss_before / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scope", choices=["global", "window"], nargs="+", default=["global", "window"])
    parser.add_argument("--only", choices=["omnizip", "floor", "causal"], default=None)
    parser.add_argument("--causal", action="store_true",
                        help="also time the causal core (OmniZipConfig(causal=True)) on the same input")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    parser.add_argument("--grad", action="store_true",
                        help="time compress_sequence with embeddings that require grad")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        task, seconds, repeats, scope = args._child
        print(json.dumps(run_one(task, int(seconds), int(repeats), scope, args.grad)))
        return
    torch_threads = torch.get_num_threads()
    machine = f"{platform.processor() or platform.machine()}, {torch_threads} torch threads, torch {torch.__version__}"
    rows = []
    for seconds in args.seconds:
        for scope in args.scope:
            tasks = [args.only] if args.only else ["omnizip", "floor"]
            if args.causal and "causal" not in tasks:
                tasks.append("causal")
            res = {}
            for task in tasks:
                proc = subprocess.run(
                    [sys.executable, __file__, "--_child", task, str(seconds), str(args.repeats), scope,
                     *(["--grad"] if args.grad else [])],
                    capture_output=True, text=True, check=True,
                )
                res[task] = json.loads(proc.stdout.strip().splitlines()[-1])
            row = {"seconds": seconds, "scope": scope, **{k: v for k, v in res.items()}}
            if "omnizip" in res and "floor" in res:
                row["ratio_to_floor"] = res["omnizip"]["time_s"] / res["floor"]["time_s"]
            if "omnizip" in res and "causal" in res:
                row["causal_to_offline"] = res["causal"]["time_s"] / res["omnizip"]["time_s"]
            rows.append(row)
            o = res.get("omnizip", {})
            f = res.get("floor", {})
            c = res.get("causal", {})
            print(
                f"{seconds:>5d} s clip, scope={scope:<6s} L={o.get('L', f.get('L'))}: "
                + (f"omnizip {o['time_s'] * 1e3:8.1f} ms (peak RSS {o['peak_rss_mb']:.0f} MB)  " if o else "")
                + (f"floor {f['time_s'] * 1e3:8.1f} ms {({k: round(v * 1e3, 1) for k, v in f['parts_s'].items()})}  " if f else "")
                + (f"ratio {row['ratio_to_floor']:.2f}x  " if "ratio_to_floor" in row else "")
                + (f"causal {c['time_s'] * 1e3:8.1f} ms (peak RSS {c['peak_rss_mb']:.0f} MB, "
                   f"kept {c['retention']:.3f} vs {o.get('retention', float('nan')):.3f})" if c else ""),
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"machine: {machine}; results in {args.out}")


if __name__ == "__main__":
    main()
