"""Audio scoring (algorithm §3, ``omnizip.core.audio_attention_scores``) against its floor.

Input shaped like the last layer of Qwen2.5-Omni-7B's audio encoder: 20 heads of 64
(d_model 1280); 50 frames per second (100 mel frames/s, one stride-2 convolution); the
encoder's attention windows (``cu_seqlens``) are 100 frames (``n_window`` = 100: chunks of
200 mel frames). A clip of S seconds is one audio stream of 50 * S frames: 3,000 at 60 s,
30,000 at 10 min. The Qwen2.5-Omni processor cuts audio at 300 s, so a 10-min clip reaches
the encoder as 15,000 frames; the 10-min point here scores all 30,000 as ONE stream, the
uncapped worst case (4x the quadratic work of the capped 15,000).

Measured side by side in one process, interleaved repeat by repeat (the machine is shared,
so each figure is the best of its repeats, the one least disturbed by other load):
  - ``old``: the implementation this one replaced (copied below as ``reference_old``);
  - ``new``: ``audio_attention_scores`` as shipped;
  - ``floor``: the same blocks and tiles as ``new`` (same plan, same gathered and scaled
    queries and keys), but only the ``Q K^T`` matmul, one in-place ``exp`` and one
    reduction per tile: no max, no normalisation, no masking. Any exact implementation pays
    at least this.
Both wall time and process CPU time are reported; on a shared machine CPU time is the
steadier measure of the work done (with 2 threads it adds both threads up).

    python benchmarks/bench_audio_scores.py                      # 60 s and 10 min, 1 and 2 threads
    python benchmarks/bench_audio_scores.py --seconds 60 --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from omnizip.core.layout import exclusive_cumsum
from omnizip.core.scores import (
    _lengths,
    audio_attention_scores,
    gather_segments,
    plan_score_blocks,
)
from omnizip.core.select import block_rows
from omnizip.core.similarity import padded_segments

HEADS, HEAD_DIM = 20, 64
FRAMES_PER_SECOND = 50
WINDOW_FRAMES = 100
BLOCK_ELEMENTS = 1 << 24  # OmniZipConfig's default


def reference_old(query, key, *, scope="global", stream_lengths=None, cu_seqlens=None,
                  scale=None, block_elements=1 << 24):
    """The replaced implementation (omnizip before issue 14), kept for comparison only:
    per block it scales the logits, masks every block, runs a softmax, multiplies by the
    query validity and sums - five passes over each ``[s, H, q, width]`` block."""
    n_frames, heads, head_dim = query.shape
    if scope == "global":
        lengths = _lengths("stream_lengths", stream_lengths, n_frames)
    else:
        bounds = torch.as_tensor(cu_seqlens).detach().to("cpu", torch.int64).flatten()
        lengths = _lengths("cu_seqlens differences", torch.diff(bounds), n_frames)
    scale = head_dim**-0.5 if scale is None else float(scale)
    device = query.device
    scores = torch.zeros(n_frames + 1, dtype=torch.float32, device=device)
    lengths = lengths[lengths > 0]
    if lengths.numel() == 0:
        return scores[:n_frames]
    starts = exclusive_cumsum(lengths)
    width = int(lengths.max())
    index, valid = padded_segments(starts, lengths, width)
    sink = torch.where(valid, index, n_frames).to(device)
    index, valid = index.to(device), valid.to(device)
    n_segments = index.shape[0]
    segs = block_rows(n_segments, heads * width * width, block_elements)
    queries = block_rows(width, segs * heads * width, block_elements)
    for s0 in range(0, n_segments, segs):
        seg_index, seg_valid = index[s0 : s0 + segs], valid[s0 : s0 + segs]
        keys = key[seg_index].float().permute(0, 2, 3, 1)
        received = torch.zeros(seg_index.shape, dtype=torch.float32, device=device)
        key_mask = ~seg_valid[:, None, None, :]
        for q0 in range(0, width, queries):
            q = query[seg_index[:, q0 : q0 + queries]].float().permute(0, 2, 1, 3)
            logits = torch.matmul(q, keys) * scale
            attn = torch.softmax(logits.masked_fill(key_mask, float("-inf")), dim=-1)
            attn = attn * seg_valid[:, None, q0 : q0 + queries, None]
            received += attn.sum(dim=(1, 2))
        scores.scatter_add_(0, sink[s0 : s0 + segs].flatten(), received.flatten())
    return scores[:n_frames]


def floor(query, key, *, scope="global", stream_lengths=None, cu_seqlens=None,
          scale=None, block_elements=1 << 24):
    """The floor on the new implementation's own tiles: matmul, one exp, one reduction."""
    n_frames, heads, head_dim = query.shape
    if scope == "global":
        lengths = _lengths("stream_lengths", stream_lengths, n_frames)
    else:
        lengths = torch.diff(torch.as_tensor(cu_seqlens, dtype=torch.int64))
    scale = head_dim**-0.5 if scale is None else float(scale)
    out = torch.zeros(n_frames + 1, dtype=torch.float32)
    plan = plan_score_blocks(lengths, heads, block_elements, query.device)
    for group in plan.groups:
        sink = plan.group_sink(group)
        queries, keys = gather_segments(query, key, sink, scale)
        received = torch.zeros(sink.shape, dtype=torch.float32)
        for head_rows, query_rows in group.tiles():
            logits = torch.matmul(queries[:, head_rows, query_rows], keys[:, head_rows].transpose(-1, -2))
            received += logits.exp_().sum(dim=(1, 2))
            del logits
        out.scatter_add_(0, sink.flatten(), received.flatten())
    return out[:n_frames]


def make_input(frames: int, heads: int = HEADS, head_dim: int = HEAD_DIM, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # Projections of LayerNorm-ed states: unit-scale entries give logits of a few units.
    query = torch.randn(frames, heads, head_dim, generator=gen)
    key = torch.randn(frames, heads, head_dim, generator=gen)
    cu = [*range(0, frames, WINDOW_FRAMES), frames]
    return query, key, torch.tensor(cu, dtype=torch.int32)


def machine_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.machine()} {model}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}), CPU")


def measure(seconds: int, scope: str, threads: int, repeats: int, with_old: bool,
            min_seconds: float, heads: int = HEADS, head_dim: int = HEAD_DIM) -> dict:
    """Best wall and CPU time of each implementation over interleaved repeats: at least
    ``repeats``, more (up to 50) while one round takes under ``min_seconds`` in all."""
    torch.set_num_threads(threads)
    frames = seconds * FRAMES_PER_SECOND
    query, key, cu = make_input(frames, heads, head_dim)
    kwargs = dict(scope=scope, block_elements=BLOCK_ELEMENTS)
    if scope == "windowed":
        kwargs["cu_seqlens"] = cu
    impls = {"new": audio_attention_scores, "floor": floor}
    if with_old:
        impls["old"] = reference_old
    wall = {name: float("inf") for name in impls}
    cpu = dict(wall)
    results = {}
    done, started = 0, time.perf_counter()
    while done < repeats or (done < 50 and time.perf_counter() - started < min_seconds):
        for name, fn in impls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn(query, key, **kwargs)
            wall[name] = min(wall[name], time.perf_counter() - w0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
        done += 1
    if with_old:  # the new scores are the old ones (float32 summation order differs)
        torch.testing.assert_close(results["new"], results["old"], rtol=1e-4, atol=1e-3)
    row = {"seconds": seconds, "frames": frames, "scope": scope, "threads": threads,
           "repeats": done, "wall_s": wall, "cpu_s": cpu,
           "new_over_floor_cpu": cpu["new"] / cpu["floor"],
           "new_over_floor_wall": wall["new"] / wall["floor"]}
    if with_old:
        row["old_over_new_cpu"] = cpu["old"] / cpu["new"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--scope", choices=["global", "windowed"], nargs="+", default=["global", "windowed"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats per point (global points of 5 min and more run once)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="keep repeating a cheap point until this much time has passed")
    parser.add_argument("--old-up-to", type=int, default=60,
                        help="time the old implementation on clips up to this many seconds "
                        "(it takes ~4x the new one's time on global clips)")
    parser.add_argument("--heads", type=int, default=HEADS,
                        help="attention heads (4 for the scaled model of bench_long_clip.py)")
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM, help="head width (8 there)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/audio_scores.json"))
    args = parser.parse_args()
    machine = machine_name()
    print(f"machine: {machine}; {args.heads} heads of {args.head_dim}")
    print("CPU seconds, best of the repeats (wall time of new in brackets)")
    print(f"{'clip':>6} {'frames':>6} {'scope':>8} {'thr':>3} {'reps':>4} | {'old':>8} {'new':>8} "
          f"{'floor':>8} | new/floor cpu  wall | old/new")
    rows = []
    for seconds in args.seconds:
        for scope in args.scope:
            for threads in args.threads:
                long_global = seconds >= 300 and scope == "global"
                row = measure(seconds, scope, threads, 1 if long_global else args.repeats,
                              seconds <= args.old_up_to, 0.0 if long_global else args.min_seconds,
                              args.heads, args.head_dim)
                rows.append(row)
                c, w = row["cpu_s"], row["wall_s"]
                old = f"{c['old']:8.3f}" if "old" in c else f"{'-':>8}"
                speedup = f"{row['old_over_new_cpu']:6.2f}x" if "old" in c else f"{'-':>7}"
                print(f"{seconds:>5}s {row['frames']:>6} {scope:>8} {threads:>3} {row['repeats']:>4} | {old} "
                      f"{c['new']:8.3f} {c['floor']:8.3f} | {row['new_over_floor_cpu']:8.2f}x "
                      f"{row['new_over_floor_wall']:5.2f}x | {speedup}   (wall new {w['new']:.3f} s)",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "heads": args.heads,
                                    "head_dim": args.head_dim, "rows": rows}, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
