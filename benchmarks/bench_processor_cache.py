#!/usr/bin/env python3
"""Front-end time of a request about a clip, without and with vLLM's processor cache.

Runs in the vLLM environment (``.venv-vllm/bin/python benchmarks/bench_processor_cache.py``).
It builds the OmniZip plugin's multimodal processor the way a server's front end does (the
checkpoint's vLLM config, vLLM's registry, the server's processor-cache object), then times
the processor (HF processor: frame resizing and patching, Whisper features; vLLM's prompt
updates; OmniZip's slot counts) on requests about one clip, each with another question:

- ``cache off``: the server started with ``--mm-processor-cache-gb 0`` (what the plugin did
  for every request before it used the cache);
- ``cache on``: the first request (a miss) and the next ones about the same clip (hits).

Decoding the MP4 is not part of it (the server's media connector decodes a URL before the
processor runs); it is timed on its own for scale. Median of ``--repeats`` runs per row.

    python benchmarks/bench_processor_cache.py [--seconds 60] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=REPO / "out" / "vllm" / "bench-processor-cache")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from transformers.video_utils import load_video
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.cache import processor_cache_from_config

    from omnizip.demo.media import load_audio_track, make_test_clip
    from omnizip.vllm import hf_overrides, register
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    torch.set_num_threads(1)
    register()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "tiny-qwen2.5-omni"
    if not (ckpt / "config.json").is_file():
        save_tiny_checkpoint(ckpt, "qwen2.5-omni")
    clip = args.work / f"clip_{args.seconds:g}s_{args.width}x{args.height}.mp4"
    if not clip.is_file():
        make_test_clip(clip, seconds=args.seconds, width=args.width, height=args.height, fps=10)
    started = time.perf_counter()
    frames, _ = load_video(str(clip), fps=2, backend="pyav")
    audio = load_audio_track(clip, 16000).astype(np.float32)
    decode_ms = (time.perf_counter() - started) * 1e3

    def processor_and_cache(cache_gb: float):
        engine_args = EngineArgs(model=str(ckpt), hf_overrides=hf_overrides("qwen2.5-omni"),
                                 dtype="float32", enforce_eager=True, max_model_len=32768,
                                 mm_processor_cache_gb=cache_gb)
        config = engine_args.create_engine_config()
        processor = MULTIMODAL_REGISTRY.create_processor(config.model_config)
        return processor, processor_cache_from_config(config)

    tok_questions = [f"Question number {i}: what happens in the clip?" for i in range(args.repeats + 1)]

    def request(processor, cache, question: str) -> float:
        prompt = ("<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>" + question
                  + "<|im_end|>\n<|im_start|>assistant\n")
        items = processor.info.parse_mm_data({"video": [frames], "audio": [(audio, 16000)]})
        t0 = time.perf_counter()
        out = processor(prompt, items, hf_processor_mm_kwargs={"use_audio_in_video": True, "fps": 2.0,
                                                                "do_sample_frames": False},
                        cache=cache)
        ms = (time.perf_counter() - t0) * 1e3
        request.tokens = len(out["prompt_token_ids"])
        return ms

    rows = {}
    off, off_cache = processor_and_cache(0.0)
    assert off_cache is None
    rows["cache off: every request"] = statistics.median(
        request(off, None, q) for q in tok_questions[: args.repeats])
    tokens_off = request.tokens
    first, hits = [], []
    for r in range(args.repeats):  # a fresh cache per repeat: its first request is a miss
        on, cache = processor_and_cache(4.0)
        first.append(request(on, cache, tok_questions[0]))
        hits.append(request(on, cache, tok_questions[r + 1]))
    rows["cache on: first request (miss)"] = statistics.median(first)
    rows["cache on: next request, same clip (hit)"] = statistics.median(hits)
    report = {
        "clip": {"seconds": args.seconds, "size": f"{args.width}x{args.height}", "frames_2fps": len(frames)},
        "decode_ms": round(decode_ms, 1),
        "processor_ms": {k: round(v, 1) for k, v in rows.items()},
        "speedup_hit_vs_off": round(rows["cache off: every request"] / rows["cache on: next request, same clip (hit)"], 1),
        "prompt_tokens": tokens_off,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads 1",
        "command": "python benchmarks/bench_processor_cache.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
