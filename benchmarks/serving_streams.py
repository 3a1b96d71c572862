"""Live streams for benchmarks/bench_serving.py ``--streams N`` (docs/serving_streams.md).

Each of N concurrent streams is one generated clip of ``--stream-seconds``, cut into chunks of
``--ask-every`` seconds (a whole number of the audio encoder's spans: 2 s on Qwen2.5-Omni);
after each chunk the stream asks its question in one conversation holding every chunk so far
(one video item per chunk, with its audio), then the next chunk arrives. Streams are not
paced: each sends its next question as soon as the previous answer is complete, so the
server's queue, not the clock, sets the pace. Per question: time to first token, prompt and
cached tokens; per run: the prefix-cache hit rate (cached / prompt tokens over all
questions), the peak KV-cache blocks in use, the wall time.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from server_metrics import gather_sampled, total_blocks

QUESTION = "What is happening in the stream so far, and what is said?"


def make_stream_chunks(clip: Path, seconds: float, chunk: float) -> list[Path]:
    """The clip cut into ``chunk``-second MP4 files next to it (reused when there)."""
    out = []
    for i in range(round(seconds / chunk)):  # one ffmpeg call per chunk
        path = clip.with_name(f"{clip.stem}_chunk{i:03d}.mp4")
        if not path.is_file():
            subprocess.run(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{i * chunk:.3f}",
                 "-t", f"{chunk:.3f}", "-i", str(clip), "-c:v", "libx264", "-preset", "ultrafast",
                 "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "16000", "-ac", "1", str(path)],
                check=True, capture_output=True)
        out.append(path)
    return out


async def _question(client, model: str, chunks: list[Path], max_tokens: int) -> dict:
    start = time.perf_counter()
    ttft, usage = None, None
    content = [{"type": "video_url", "video_url": {"url": c.as_uri()}} for c in chunks]
    content.append({"type": "text", "text": QUESTION})
    stream = await client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        messages=[{"role": "user", "content": content}],
        extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}, "ignore_eos": True},
    )
    async for event in stream:
        if event.usage is not None:
            usage = event.usage
            if ttft is None and event.usage.completion_tokens >= 1:
                ttft = time.perf_counter() - start
    details = getattr(usage, "prompt_tokens_details", None)
    return {"chunks": len(chunks), "ttft": ttft, "latency": time.perf_counter() - start,
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": int(details.cached_tokens or 0) if details else 0}


async def _one_stream(client, model: str, chunks: list[Path], max_tokens: int) -> list[dict]:
    return [await _question(client, model, chunks[: n + 1], max_tokens) for n in range(len(chunks))]


async def run_streams(url: str, streams: list[list[Path]], warmup: Path, max_tokens: int,
                      server) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    await _question(client, model, [warmup], max_tokens)
    results, wall, peak = await gather_sampled(
        server.metrics, [_one_stream(client, model, s, max_tokens) for s in streams],
        {"kv": "vllm:kv_cache_usage_perc"},
    )
    return {"wall": wall, "streams": results, "peak_kv_usage": peak["kv"],
            "num_blocks": total_blocks(server.metrics())}


def summarise_streams(run: dict, ask_every: float) -> dict:
    """TTFT p50/p95 per question index (its stream time), hit rate, KV blocks."""
    by_index: dict[int, list[dict]] = {}
    for stream in run["streams"]:
        for q in stream:
            by_index.setdefault(q["chunks"], []).append(q)
    per_question = []
    for n in sorted(by_index):
        ttfts = sorted(q["ttft"] for q in by_index[n])
        p95 = statistics.quantiles(ttfts, n=20, method="inclusive")[18] if len(ttfts) > 1 else ttfts[0]
        per_question.append({
            "t": n * ask_every, "ttft_p50_s": statistics.median(ttfts), "ttft_p95_s": p95,
            "prompt_tokens": statistics.mean(q["prompt_tokens"] for q in by_index[n]),
            "cached_tokens": statistics.mean(q["cached_tokens"] for q in by_index[n]),
        })
    questions = [q for s in run["streams"] for q in s]
    prompt = sum(q["prompt_tokens"] for q in questions)
    return {
        "streams": len(run["streams"]), "questions": len(questions), "wall_s": run["wall"],
        "prefix_hit_rate": sum(q["cached_tokens"] for q in questions) / prompt,
        "peak_kv_blocks": round(run["peak_kv_usage"] * run["num_blocks"]),
        "num_blocks": run["num_blocks"], "per_question": per_question,
    }


def streams_table(summaries: dict[str, dict]) -> str:
    modes = list(summaries)
    names = {"off": "OmniZip off", "on": "OmniZip on"}
    out = ["| stream time | " + " | ".join(f"{names.get(m, m)}: TTFT p50 / p95, prompt (cached) tokens"
                                            for m in modes) + " |",
           "|---|" + "---|" * len(modes)]
    rows = max(len(summaries[m]["per_question"]) for m in modes)
    for i in range(rows):
        cells = []
        for m in modes:
            q = summaries[m]["per_question"][i]
            cells.append(f"{q['ttft_p50_s']:.2f} / {q['ttft_p95_s']:.2f} s, "
                         f"{q['prompt_tokens']:.0f} ({q['cached_tokens']:.0f})")
        t = summaries[modes[0]]["per_question"][i]["t"]
        out.append(f"| {t:.0f} s | " + " | ".join(cells) + " |")
    out.append("| prefix-cache hit rate | " + " | ".join(
        f"{summaries[m]['prefix_hit_rate']:.0%}" for m in modes) + " |")
    out.append("| peak KV-cache blocks | " + " | ".join(
        f"{summaries[m]['peak_kv_blocks']} of {summaries[m]['num_blocks']}" for m in modes) + " |")
    out.append("| wall time | " + " | ".join(f"{summaries[m]['wall_s']:.1f} s" for m in modes) + " |")
    return "\n".join(out)
