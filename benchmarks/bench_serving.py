#!/usr/bin/env python3
"""Serving benchmark: the same Qwen-Omni checkpoint on vLLM with and without OmniZip.

For each setting (``--modes off,on``) the script starts the real OpenAI-compatible server
(scripts/vllm_serve.py in the vLLM environment), sends one warm-up request, then N concurrent
streaming chat requests (default 32), each a different generated clip of 20-60 s (moving test
pattern + espeak-ng speech then silence, the video's own audio track interleaved), and stops
the server before starting the next one. Measured per setting: request throughput, prompt
tokens per second, time to first token p50/p95 (client side, from the streamed usage), the
peak KV-cache usage (blocks, from the server's /metrics) and the wall time. Then the measured
speedup (request throughput, on vs off) is set against the token-count prediction (prompt
tokens off / on: what a prefill that is linear in the tokens would gain).

    python benchmarks/bench_serving.py [--requests 32] [--scaled] [--model DIR]
        [--venv .venv-vllm] [--json benchmarks/results/serving.json]

``--streams N``: N concurrent live streams instead (benchmarks/serving_streams.py): clips of
``--stream-seconds``, one chunk item per ``--ask-every`` seconds, a question after each chunk;
TTFT p50/p95 per question (by stream time), prefix-cache hit rate, peak KV blocks.

Default model: the built-in random-weight Qwen2.5-Omni (``--scaled``: a wider, deeper decoder,
so that prefill rather than media decoding dominates on a CPU), saved under out/vllm/.
Runs from the main environment; the servers run from ``--venv``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from server_metrics import gather_sampled, total_blocks

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

SPEECH = [
    "The red square moves to the right while the bars stay still.",
    "Please count the boxes on the screen and tell me their colours.",
    "This clip has speech at the start and silence after that.",
    "A small white box bounces up and down over the pattern.",
    "Listen to the voice and describe what you can see in the picture.",
]
QUESTION = "What happens in the video, and what is said?"


# ----------------------------------------------------------------------------- inputs
def checkpoint(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from vllm_tiny_checkpoint import SCALED_SIZES

    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    folder = REPO / "out" / "vllm" / ("bench-scaled" if args.scaled else "tiny-qwen2.5-omni")
    if not (folder / "config.json").is_file():
        save_tiny_checkpoint(folder, "qwen2.5-omni", **(SCALED_SIZES if args.scaled else {}))
    return folder


def clip_lengths(n: int, low: float, high: float) -> list[float]:
    """``n`` clip lengths spread evenly over ``[low, high]`` seconds (whole seconds)."""
    if n == 1:
        return [float(round((low + high) / 2))]
    return [float(round(low + (high - low) * i / (n - 1))) for i in range(n)]


def make_clips(folder: Path, lengths: list[float]) -> list[Path]:
    """One clip per length (reused when already there): 160x120 at 4 fps, speech then silence."""
    from omnizip.demo.media import make_test_clip

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, seconds in enumerate(lengths):
        path = folder / f"clip{i:03d}_{seconds:.0f}s.mp4"
        if not path.is_file():
            speech = " ".join(SPEECH[(i + j) % len(SPEECH)] for j in range(1 + i % 3))
            make_test_clip(path, seconds=seconds, speech=speech, width=160, height=120, fps=4)
        clips.append(path)
    return clips


# ----------------------------------------------------------------------------- server
class Server:
    """scripts/vllm_serve.py in its own process group; stopped with the whole group."""

    def __init__(self, python: Path, model: Path, mode: str, args: argparse.Namespace, log: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [str(python), str(REPO / "scripts" / "vllm_serve.py"), "--model", str(model),
                    "--omnizip", mode, "--preset", args.preset, "--port", str(self.port),
                    "--media-root", str(args.media), "--kv-cache-gib", str(args.kv_cache_gib),
                    "--max-model-len", str(args.max_model_len),
                    "--", "--enforce-eager", "--max-num-seqs", str(args.requests),
                    # the encoder cache must hold a whole minute-long clip (one item)
                    "--max-num-batched-tokens", str(args.max_model_len)]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").splitlines()[-30:]
                raise RuntimeError("server exited during start-up:\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(2)
        self.__exit__()
        raise RuntimeError(f"server not ready after 900 s (log: {self.log})")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            return resp.read().decode()


# ----------------------------------------------------------------------------- requests
async def one_request(client, model: str, clip: Path, max_tokens: int) -> dict:
    start = time.perf_counter()
    ttft = None
    usage = None
    stream = await client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": clip.as_uri()}},
            {"type": "text", "text": QUESTION}]}],
        extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}, "ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            # the first chunk that reports a generated token (a random model's tokens may
            # decode to empty text, so the text is not the signal)
            if ttft is None and chunk.usage.completion_tokens >= 1:
                ttft = time.perf_counter() - start
    return {"clip": clip.name, "ttft": ttft, "latency": time.perf_counter() - start,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}


async def run_load(url: str, clips: list[Path], warmup: Path, max_tokens: int, server: Server) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    await one_request(client, model, warmup, max_tokens)

    results, wall, peak = await gather_sampled(
        server.metrics, [one_request(client, model, c, max_tokens) for c in clips],
        {"kv": "vllm:kv_cache_usage_perc", "running": "vllm:num_requests_running"},
    )
    return {"wall": wall, "requests": results, "peak_kv_usage": peak["kv"],
            "peak_running": peak["running"], "num_blocks": total_blocks(server.metrics())}


def summarise(run: dict) -> dict:
    reqs = run["requests"]
    ttfts = sorted(r["ttft"] for r in reqs)
    prompt = sum(r["prompt_tokens"] for r in reqs)
    q = statistics.quantiles(ttfts, n=20, method="inclusive") if len(ttfts) > 1 else ttfts * 19
    return {
        "requests": len(reqs),
        "wall_s": run["wall"],
        "req_per_s": len(reqs) / run["wall"],
        "prompt_tokens": prompt,
        "prompt_tokens_mean": prompt / len(reqs),
        "prompt_tok_per_s": prompt / run["wall"],
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": q[18],
        "peak_kv_usage": run["peak_kv_usage"],
        "peak_kv_blocks": round(run["peak_kv_usage"] * run["num_blocks"]),
        "num_blocks": run["num_blocks"],
    }


def table(summaries: dict[str, dict]) -> str:
    rows = [
        ("requests/s", "req_per_s", "{:.3f}"),
        ("prompt tokens / request (mean)", "prompt_tokens_mean", "{:.0f}"),
        ("prompt tokens/s", "prompt_tok_per_s", "{:.0f}"),
        ("TTFT p50 (s)", "ttft_p50_s", "{:.1f}"),
        ("TTFT p95 (s)", "ttft_p95_s", "{:.1f}"),
        ("peak KV-cache blocks used", "peak_kv_blocks", "{:d}"),
        ("wall time (s)", "wall_s", "{:.1f}"),
    ]
    modes = list(summaries)
    names = {"off": "vLLM (OmniZip off)", "on": "vLLM + OmniZip"}
    out = ["| | " + " | ".join(names.get(m, m) for m in modes) + " |",
           "|---|" + "---:|" * len(modes)]
    for label, key, fmt in rows:
        out.append(f"| {label} | " + " | ".join(fmt.format(summaries[m][key]) for m in modes) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32, help="concurrent requests (default 32)")
    p.add_argument("--min-seconds", type=float, default=20.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: tiny)")
    p.add_argument("--scaled", action="store_true", help="the wider, deeper tiny checkpoint")
    p.add_argument("--preset", default="45")
    p.add_argument("--modes", default="off,on", help="comma-separated: off,on")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument("--kv-cache-gib", type=float, default=3.0)
    p.add_argument("--venv", default=os.environ.get("OMNIZIP_VLLM_VENV", str(REPO / ".venv-vllm")))
    p.add_argument("--media", type=Path, default=REPO / "out" / "vllm" / "bench-media")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    p.add_argument("--streams", type=int, default=0, help="N concurrent live streams (see above)")
    p.add_argument("--stream-seconds", type=float, default=120.0)
    p.add_argument("--ask-every", type=float, default=10.0, help="seconds per chunk and question")
    args = p.parse_args(argv)
    if args.streams:
        return streams_main(args)

    python = Path(args.venv) / "bin" / "python"
    if not python.is_file():
        print(f"bench_serving: error: no vLLM environment at {args.venv} (make vllm-setup)",
              file=sys.stderr)
        return 2
    model = checkpoint(args)
    lengths = clip_lengths(args.requests, args.min_seconds, args.max_seconds)
    clips = make_clips(args.media, lengths)
    warmup = make_clips(args.media / "warmup", [4.0])[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict] = {}
    summaries: dict[str, dict] = {}
    for mode in args.modes.split(","):
        log = args.json.with_name(f"{args.json.stem}-server-{mode}.log")
        print(f"[{mode}] starting the server (log: {log})", flush=True)
        with Server(python, model, mode, args, log) as server:
            print(f"[{mode}] {len(clips)} concurrent requests", flush=True)
            runs[mode] = asyncio.run(run_load(server.url, clips, warmup, args.max_tokens, server))
        summaries[mode] = summarise(runs[mode])
        print(f"[{mode}] done in {summaries[mode]['wall_s']:.1f} s", flush=True)

    print(f"\nmodel {model}, {len(clips)} concurrent requests, clips {args.min_seconds:.0f}-"
          f"{args.max_seconds:.0f} s, max_tokens {args.max_tokens}, OmniZip preset {args.preset}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs\n")
    print(table(summaries))
    report = {"model": str(model), "clips_s": lengths, "preset": args.preset,
              "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} CPUs",
              "summary": summaries, "runs": runs}
    if {"on", "off"} <= summaries.keys():
        off, on = summaries["off"], summaries["on"]
        measured = on["req_per_s"] / off["req_per_s"]
        predicted = off["prompt_tokens"] / on["prompt_tokens"]
        report["speedup"] = {"measured": measured, "predicted_by_tokens": predicted,
                             "ratio": measured / predicted,
                             "ttft_p50": off["ttft_p50_s"] / on["ttft_p50_s"]}
        print(f"\nspeedup (requests/s, on / off): {measured:.2f}x; token-count prediction "
              f"(prompt tokens off / on): {predicted:.2f}x; measured / predicted: "
              f"{measured / predicted:.2f}; TTFT p50 off / on: {report['speedup']['ttft_p50']:.2f}x")
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


def streams_main(args: argparse.Namespace) -> int:
    from serving_streams import make_stream_chunks, run_streams, streams_table, summarise_streams

    python = Path(args.venv) / "bin" / "python"
    if not python.is_file():
        print(f"bench_serving: error: no vLLM environment at {args.venv} (make vllm-setup)",
              file=sys.stderr)
        return 2
    if args.ask_every <= 0 or args.ask_every % 2:
        print("bench_serving: error: --ask-every must be a positive multiple of 2 seconds (the "
              f"audio encoder's span), got {args.ask_every:g}", file=sys.stderr)
        return 2
    model = checkpoint(args)
    clips = make_clips(args.media / "streams", [args.stream_seconds] * args.streams)
    # one clip per stream: make_clips varies the speech per index, the length is the same
    streams = [make_stream_chunks(c, args.stream_seconds, args.ask_every) for c in clips]
    warmup = make_clips(args.media / "warmup", [4.0])[0]
    args.requests = args.streams  # the server's --max-num-seqs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summaries, runs = {}, {}
    for mode in args.modes.split(","):
        log = args.json.with_name(f"{args.json.stem}-server-{mode}.log")
        print(f"[{mode}] starting the server (log: {log})", flush=True)
        server = Server(python, model, mode, args, log)
        if mode == "off":
            # vLLM 0.32's own Qwen-Omni processor caches a video and its audio separately: once
            # a silent chunk's audio is cached from another chunk while its video is not, it
            # refuses the request ("Video doesn't have audio track"); without the cache it
            # serves these streams (the OmniZip plugin caches the pair together)
            server.cmd += ["--mm-processor-cache-gb", "0"]
        with server:
            print(f"[{mode}] {args.streams} concurrent streams of {args.stream_seconds:.0f} s", flush=True)
            runs[mode] = asyncio.run(run_streams(server.url, streams, warmup, args.max_tokens, server))
        summaries[mode] = summarise_streams(runs[mode], args.ask_every)
    print(f"\nmodel {model}, {args.streams} concurrent streams of {args.stream_seconds:.0f} s, a "
          f"question every {args.ask_every:g} s, max_tokens {args.max_tokens}, OmniZip preset "
          f"{args.preset}; {platform.machine()}, {os.cpu_count()} CPUs\n")
    print(streams_table(summaries))
    report = {"model": str(model), "streams": args.streams, "stream_seconds": args.stream_seconds,
              "ask_every": args.ask_every, "preset": args.preset,
              "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} CPUs",
              "summary": summaries, "runs": runs}
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
