"""``python -m omnizip.vllm.stream_client CLIP``: send a clip to a vLLM server as a live stream.

The clip is cut into chunks of ``--chunk-seconds`` (default 8 s: a whole number of audio-encoder
spans on both families, 2 s on Qwen2.5-Omni and 8 s on Qwen3-Omni) and played at real-time pace
(``--no-pace``: as fast as the server answers). Every ``--ask-every`` seconds of stream time,
and once more at the end of the clip, the question is asked in one conversation holding every
chunk received so far, one video item (with its own audio) per chunk, then the question
(docs/serving_streams.md). The server decides each chunk item from that item alone, so each
question's prompt starts with the previous one's and the prefix cache serves it: the
``cached_tokens`` of the answers grow with the stream.

Chunks travel as ``data:`` URLs (MP4, base64), so the server needs no access to the client's
files. Uses the official ``openai`` client (``pip install omnizip[vllm]``).

    python -m omnizip.vllm.stream_client CLIP [--url http://127.0.0.1:8000/v1]
        [--ask-every SECONDS] [--chunk-seconds S] [--question Q] [--max-tokens N]
        [--no-pace] [--json]

``--json`` prints one object per answer: ``{"t", "prompt_tokens", "cached_tokens", "ttft_ms",
"text"}`` (``t``: stream seconds covered by the question). A bad argument prints one line and
exits with status 2; a refused request or an unreachable server, one line and status 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "cut_chunks", "main", "stream_messages"]

DEFAULT_QUESTION = "What is happening in the stream so far, and what is said?"


class ClientError(Exception):
    """A bad argument (exit status 2)."""


@dataclass(frozen=True)
class Chunk:
    """One chunk of the clip: stream seconds ``[start, end)`` and its MP4 as a ``data:`` URL."""

    start: float
    end: float
    url: str


def _one_line(text: str) -> str:
    """A tool's error output as one short line (the CLI's errors are one line)."""
    return " ".join(text.split())[:200]


def _duration(clip: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(clip)],
        capture_output=True, text=True, check=False)
    try:
        seconds = float(out.stdout.strip())
    except ValueError:
        raise ClientError(f"CLIP: {clip} is not a readable video ({_one_line(out.stderr)})") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ClientError(f"CLIP: {clip} has no duration")
    return seconds


def cut_chunks(clip: Path, chunk_seconds: float) -> list[Chunk]:
    """The clip cut at every ``chunk_seconds`` (the last chunk may be shorter), re-encoded
    (H.264 + AAC 16 kHz mono) so each chunk starts on its own key frame."""
    duration = _duration(clip)
    n = max(1, math.ceil(duration / chunk_seconds - 1e-6))
    chunks = []
    with tempfile.TemporaryDirectory(prefix="omnizip-stream-") as tmp:
        for i in range(n):  # one ffmpeg call per chunk (a handful per minute of stream)
            start = i * chunk_seconds
            length = min(chunk_seconds, duration - start)
            if length < 0.05:
                break
            out = Path(tmp) / f"chunk{i}.mp4"
            proc = subprocess.run(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{start:.3f}",
                 "-t", f"{length:.3f}", "-i", str(clip), "-c:v", "libx264", "-preset", "ultrafast",
                 "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "16000", "-ac", "1", str(out)],
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ClientError(f"CLIP: ffmpeg could not cut {clip} at {start:g} s: "
                                  f"{_one_line(proc.stderr)}")
            data = base64.b64encode(out.read_bytes()).decode()
            chunks.append(Chunk(start, start + length, f"data:video/mp4;base64,{data}"))
    return chunks


def stream_messages(chunks: list[Chunk], question: str) -> list[dict]:
    """One user turn: every chunk as a video item, in stream order, then the question."""
    content: list[dict] = [{"type": "video_url", "video_url": {"url": c.url}} for c in chunks]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def _ask(client, model: str, chunks: list[Chunk], question: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    text, usage = [], None
    stream = client.chat.completions.create(
        model=model, messages=stream_messages(chunks, question), max_tokens=max_tokens,
        temperature=0.0, stream=True, stream_options={"include_usage": True},
        extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}})
    for event in stream:  # one event per generated token (a bounded answer)
        if event.choices and event.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(event.choices[0].delta.content)
        if event.usage is not None:
            usage = event.usage
    first = first if first is not None else time.perf_counter()
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "t": round(chunks[-1].end, 3),
        "prompt_tokens": int(usage.prompt_tokens) if usage else None,
        "cached_tokens": int(details.cached_tokens or 0) if details else None,
        "ttft_ms": round((first - started) * 1e3, 1),
        "text": "".join(text),
    }


def question_times(duration: float, ask_every: float) -> list[float]:
    """Stream times of the questions: every ``ask_every`` seconds, then the end of the clip."""
    times = [ask_every * k for k in range(1, int(duration / ask_every + 1e-9) + 1)]
    if not times or times[-1] < duration - 1e-6:
        times.append(duration)
    return times


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m omnizip.vllm.stream_client",
                                description=__doc__.splitlines()[0])
    p.add_argument("clip", type=Path, metavar="CLIP", help="a video file with an audio track")
    p.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 address")
    p.add_argument("--ask-every", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--chunk-seconds", type=float, default=8.0, metavar="S",
                   help="chunk length: a multiple of the audio encoder's span (default 8)")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--model", default=None, help="the served model name (default: the first)")
    p.add_argument("--no-pace", action="store_true", help="do not wait for real time")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")
    args = p.parse_args(argv)
    for name in ("ask_every", "chunk_seconds"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            raise ClientError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value:g}")
    if args.max_tokens < 1:
        raise ClientError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not args.clip.is_file():
        raise ClientError(f"CLIP: no such file: {args.clip}")
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise ClientError(f"{tool} is not installed (the client cuts the clip with it)")
    return args


def main(argv: list[str] | None = None) -> int:
    prog = "omnizip.vllm.stream_client"
    try:
        args = _parse(argv)
        chunks = cut_chunks(args.clip, args.chunk_seconds)
    except ClientError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    import openai

    client = openai.OpenAI(base_url=args.url, api_key="unused", max_retries=0, timeout=3600)
    started = time.monotonic()
    try:
        model = args.model or client.models.list().data[0].id
        for t in question_times(chunks[-1].end, args.ask_every):
            if not args.no_pace:  # the chunks that end by t have arrived at t
                time.sleep(max(0.0, t - (time.monotonic() - started)))
            arrived = [c for c in chunks if c.end <= t + 1e-6]
            if not arrived:
                print(f"{prog}: t={t:g} s: no whole chunk yet", file=sys.stderr)
                continue
            answer = _ask(client, model, arrived, args.question, args.max_tokens)
            if args.json:
                print(json.dumps(answer), flush=True)
            else:
                print(f"[{answer['t']:7.1f} s] {answer['text']}  ({answer['prompt_tokens']} prompt "
                      f"tokens, {answer['cached_tokens']} cached, first token {answer['ttft_ms']:.0f} ms)",
                      flush=True)
    except openai.APIStatusError as exc:
        print(f"{prog}: the server refused the request ({exc.status_code}): {_one_line(exc.message)}",
              file=sys.stderr)
        return 1
    except openai.APIConnectionError as exc:
        print(f"{prog}: cannot reach {args.url}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
