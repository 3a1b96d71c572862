"""Live streams on the scaled model: real-time factor, answer latency, memory (CPU).

Model: ``scaled-qwen2.5-omni`` (the random-weight Qwen2.5-Omni thinker of ``omnizip bench``:
decoder hidden 768, 6 layers, FFN 4096; tiny encoders), float32, ``--threads`` torch threads.
Media, generated here chunk by chunk (seeded, so every run sees the same stream): 160x120
frames at 2 fps of a square moving over a gradient, resized by the processor to 112x112
(``--max-pixels``: 16 tokens per frame), and a speech-like harmonic signal whose voiced share
changes every 2 s (so windows differ in salient audio). OmniZip preset 45, causal.

Per stream length (``--minutes``, default 1 5 10 30) the script reports:

* **session**: the stream appended 2 s at a time to one :class:`omnizip.stream.StreamSession`
  (no pacing: as fast as it goes). Per committed window, its processing time (the session's
  ``window.ms``: encoders, causal decision, prefill) as a real-time factor (``ms / 2000``);
  at each length, a question (``--new-tokens`` greedy tokens) asked on the committed windows
  and its latency (median of ``--asks`` asks); peak RSS since the stream started. The
  lengths are marks along one stream of the longest length, run twice: without a bound (past
  Qwen2.5-Omni's 32,768 positions the position policy drops windows anyway) and with
  ``--max-cache-tokens``.
* **chunks**: the same stream as chunk items of ``--chunk-seconds`` (default 4), each decided
  alone with preset 45 and the exact budget (``omnizip.stream(..., chunk_seconds=...)``, what a
  vLLM server computes): per chunk its CPU time as a real-time factor, at each length a
  question's latency, the cache size, the kept share.
* **offline route**: what answering costs without a session: the same media up to that length
  built into inputs at once (:func:`omnizip.stream.offline_inputs`), the model patched with
  the same causal configuration, one ``generate`` (encoders, scores, compression, prefill of
  everything so far, the same question and tokens), timed end to end; its peak RSS.
  Lengths past the model's position range cannot be run as one prompt (reported, not run).

    python benchmarks/bench_stream.py                      # 1, 5, 10, 30 min (long: ~1 h)
    python benchmarks/bench_stream.py --minutes 1 2 --offline-up-to 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import omnizip
from omnizip import OmniZipConfig
from omnizip.bench import build_scaled_thinker, describe_machine, machine_info
from omnizip.bench.machine import cpu_ticks, foreign_share
from omnizip.bench.memory import PeakMemory
from omnizip.demo.media import synthetic_frames, synthetic_speech
from omnizip.demo.processor import build_offline_processor
from omnizip.stream import offline_inputs

QUESTION = "What happens in the video, and what is said?"
CHUNK_SECONDS = 2.0
RATE = 16000


def chunk_media(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Two seconds of the benchmark stream: 4 frames and 32,000 samples (seeded by index)."""
    rng = np.random.default_rng(index)
    frames = synthetic_frames(CHUNK_SECONDS, width=160, height=120, seed=index)
    audio = synthetic_speech(CHUNK_SECONDS, float(rng.uniform(0.0, CHUNK_SECONDS)), seed=index)
    return frames, audio


def media_until(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    chunks = [chunk_media(i) for i in range(round(seconds / CHUNK_SECONDS))]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


class FirstToken:
    """A logits processor that only notes when ``generate`` first scores a token (the end of
    the prefill of everything before the answer): time to first token (wall and CPU)."""

    def __init__(self) -> None:
        self.at: tuple[float, float] | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = (time.perf_counter(), time.process_time())
        return scores


def timed_answer(run) -> dict[str, float]:
    """Wall and process-CPU milliseconds of ``run(logits_processor)``, to its end and to its
    first token."""
    from transformers import LogitsProcessorList

    first = FirstToken()
    wall, cpu = time.perf_counter(), time.process_time()
    run(LogitsProcessorList([first]))
    end = (time.perf_counter(), time.process_time())
    at = first.at or end
    return {"answer_ms": (end[0] - wall) * 1e3, "answer_cpu_ms": (end[1] - cpu) * 1e3,
            "first_token_ms": (at[0] - wall) * 1e3, "first_token_cpu_ms": (at[1] - cpu) * 1e3}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def answers_at_mark(session, spans, args) -> dict:
    """At a mark: the question asked ``--asks`` times on ``session`` (the median of each timing
    of :func:`timed_answer`, and every ask), and the kept share of the committed ``spans``
    (windows or chunks)."""
    asks = [timed_answer(lambda lp: session.ask(
        QUESTION, max_new_tokens=args.new_tokens, do_sample=False, logits_processor=lp))
        for _ in range(args.asks)]
    return {"kept_share": sum(s.kept_audio + s.kept_video for s in spans)
            / max(1, sum(s.audio + s.video for s in spans)),
            **{key: statistics.median(a[key] for a in asks) for key in asks[0]},
            "asks": asks}


def run_session(model, processor, config, marks: list[float], args, bound: int | None) -> dict:
    """One stream of ``max(marks)`` minutes; at each mark: ask, latency, RTF so far, memory."""
    session = omnizip.stream(model, processor, config, max_cache_tokens=bound)
    rebuild_seconds: list[float] = []
    rebuild = session._cache.rebuild

    def timed_rebuild(pieces):
        started = time.perf_counter()
        rebuild(pieces)
        rebuild_seconds.append(time.perf_counter() - started)

    session._cache.rebuild = timed_rebuild
    out: dict = {"max_cache_tokens": bound, "marks": []}
    total = max(marks) * 60
    processing = cpu = carry = 0.0
    next_mark = 0
    cache_trace = []
    window_cpu: list[float] = []  # CPU seconds per committed window (an append's, shared)
    ticks = cpu_ticks()
    with PeakMemory(torch.device("cpu")) as memory:
        for index in range(round(total / CHUNK_SECONDS)):
            frames, audio = chunk_media(index)
            started, cpu_started = time.perf_counter(), time.process_time()
            committed = session.append(frames, audio)
            processing += time.perf_counter() - started
            spent = time.process_time() - cpu_started
            cpu += spent
            carry += spent
            if committed:
                window_cpu += [carry / len(committed)] * len(committed)
                carry = 0.0
            t = (index + 1) * CHUNK_SECONDS
            cache_trace.append((t, session.cache_tokens))
            if next_mark < len(marks) and t >= marks[next_mark] * 60:
                windows = session.windows
                rtf = [w.ms / 1000 / CHUNK_SECONDS for w in windows]
                mark = {
                    "minutes": marks[next_mark],
                    "windows": len(windows),
                    "windows_in_cache": sum(w.in_cache for w in windows),
                    "cache_tokens": session.cache_tokens,
                    **answers_at_mark(session, windows, args),
                    "rtf_overall": processing / t,
                    "rtf_overall_cpu": cpu / t,
                    "rtf_window_cpu": percentiles([c / CHUNK_SECONDS for c in window_cpu]),
                    "foreign_share": foreign_share(ticks, cpu_ticks()),
                    "rtf_window": percentiles(rtf),
                    "rebuilds": session.rebuilds,
                    "rebuild_seconds": sum(rebuild_seconds),
                    "peak_rss_mib_so_far": _peak_now() / 2**20,
                }
                out["marks"].append(mark)
                print(f"  session{'' if bound is None else f' (bound {bound})'} at "
                      f"{marks[next_mark]:g} min: answer {mark['answer_ms']:.0f} ms (CPU "
                      f"{mark['answer_cpu_ms']:.0f} ms, first token {mark['first_token_cpu_ms']:.0f} "
                      f"ms), RTF wall {mark['rtf_overall']:.2f} / CPU {mark['rtf_overall_cpu']:.2f} "
                      f"(CPU per window median {mark['rtf_window_cpu']['median']:.2f}, max "
                      f"{mark['rtf_window_cpu']['max']:.2f}), cache {session.cache_tokens} tokens, "
                      f"rebuilds {session.rebuilds}, other processes {mark['foreign_share']}",
                      flush=True)
                next_mark += 1
    out["peak_rss_mib"] = memory.peak / 2**20
    out["rise_mib"] = memory.rise / 2**20
    out["memory_method"] = memory.method
    out["cache_trace"] = cache_trace[:: max(1, len(cache_trace) // 200)]
    out["rebuild_seconds_each"] = rebuild_seconds
    return out


def run_chunks(model, processor, marks: list[float], args) -> dict:
    """The same stream as chunk items (``omnizip.stream(..., chunk_seconds=...)``, the vLLM
    layout, preset 45 with the server's exact budget): per chunk its processing time (the
    chunk's ``ms``: processor, encoders, decision, prefill) as a real-time factor; at each
    mark a question's latency, the cache and the memory."""
    session = omnizip.stream(model, processor, OmniZipConfig.preset("45"),
                             chunk_seconds=args.chunk_seconds)
    out: dict = {"chunk_seconds": args.chunk_seconds, "marks": []}
    chunk_cpu: list[float] = []
    cpu = 0.0
    next_mark = 0
    with PeakMemory(torch.device("cpu")) as memory:
        for index in range(round(max(marks) * 60 / CHUNK_SECONDS)):
            frames, audio = chunk_media(index)
            cpu_started = time.process_time()
            committed = session.append(frames, audio)
            spent = time.process_time() - cpu_started
            cpu += spent
            chunk_cpu += [spent / len(committed)] * len(committed) if committed else []
            t = (index + 1) * CHUNK_SECONDS
            if next_mark < len(marks) and t >= marks[next_mark] * 60:
                chunks = session.chunks
                mark = {
                    "minutes": marks[next_mark], "chunks": len(chunks),
                    "cache_tokens": session.cache_tokens,
                    **answers_at_mark(session, chunks, args),
                    "rtf_overall_cpu": cpu / t,
                    "rtf_chunk_cpu": percentiles([c / args.chunk_seconds for c in chunk_cpu]),
                    "peak_rss_mib_so_far": _peak_now() / 2**20,
                }
                out["marks"].append(mark)
                print(f"  chunks ({args.chunk_seconds:g} s) at {marks[next_mark]:g} min: answer "
                      f"CPU {mark['answer_cpu_ms']:.0f} ms (first token "
                      f"{mark['first_token_cpu_ms']:.0f} ms), RTF CPU {mark['rtf_overall_cpu']:.2f} "
                      f"(per chunk median {mark['rtf_chunk_cpu']['median']:.2f}), cache "
                      f"{session.cache_tokens} tokens, kept {mark['kept_share']:.1%}", flush=True)
                next_mark += 1
    out["peak_rss_mib"] = memory.peak / 2**20
    return out


def _peak_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_offline(model, processor, config, minutes: float, args) -> dict:
    frames, audio = media_until(minutes * 60)
    got: dict = {}

    def route(logits_processor) -> None:
        started = time.perf_counter()
        got["inputs"] = offline_inputs(model, processor, frames, audio, QUESTION)
        got["inputs_ms"] = (time.perf_counter() - started) * 1e3
        with omnizip.patch(model, config) as handle, torch.no_grad():
            got["out"] = model.generate(**got["inputs"], use_audio_in_video=True, do_sample=False,
                                        max_new_tokens=args.new_tokens,
                                        logits_processor=logits_processor)
            got["kept"] = int(handle.results[0].n_kept)
            got["overhead_ms"] = handle.last_overhead_ms  # audio scoring + compression (wall)

    ticks = cpu_ticks()
    with PeakMemory(torch.device("cpu")) as memory:
        timing = timed_answer(route)
    inputs, kept = got["inputs"], got["kept"]
    result = {"minutes": minutes, **timing,
              "inputs_ms": got["inputs_ms"], "prompt_tokens": int(inputs["input_ids"].shape[1]),
              "kept_tokens": kept, "scoring_and_compression_ms": got["overhead_ms"],
              "new_tokens": int(got["out"].shape[1] - inputs["input_ids"].shape[1]),
              "foreign_share": foreign_share(ticks, cpu_ticks()),
              "peak_rss_mib": memory.peak / 2**20, "rise_mib": memory.rise / 2**20}
    print(f"  offline route at {minutes:g} min: {result['answer_ms'] / 1e3:.1f} s (CPU "
          f"{result['answer_cpu_ms'] / 1e3:.1f} s, first token {result['first_token_cpu_ms'] / 1e3:.1f} s) "
          f"({result['prompt_tokens']} -> {kept} tokens), peak {result['peak_rss_mib']:.0f} MiB",
          flush=True)
    return result


def table(report: dict) -> str:
    """The markdown table of docs/streaming.md from a report (``--table``)."""
    offline = {o["minutes"]: o for o in report.get("offline", [])}
    free = {m["minutes"]: m for m in report.get("session", {}).get("marks", [])}
    bounded = {m["minutes"]: m for m in report.get("session_bounded", {}).get("marks", [])}
    bound = report.get("session_bounded", {}).get("max_cache_tokens")
    rows = [
        "| stream | session CPU per window, RTF median / max | session answer, first token / 16 tokens "
        "(CPU) | offline route, first token / 16 tokens (CPU) | answer speed-up | cache tokens "
        f"(unbounded / bound {bound}) | peak RSS so far, unbounded / bounded / offline route |",
        "|---|---|---|---|---|---|---|",
    ]
    for minutes in report["marks"]:
        s, b, o = free.get(minutes, {}), bounded.get(minutes, {}), offline.get(minutes, {})
        rtf = s.get("rtf_window_cpu", {})
        if "answer_cpu_ms" in o:
            route = f"{o['first_token_cpu_ms'] / 1e3:.1f} s / {o['answer_cpu_ms'] / 1e3:.1f} s"
            speedup = (f"{o['first_token_cpu_ms'] / s['first_token_cpu_ms']:.0f}x / "
                       f"{o['answer_cpu_ms'] / s['answer_cpu_ms']:.0f}x")
            route_rss = f"{o['peak_rss_mib']:.0f}"
        else:
            route, speedup, route_rss = "not one prompt (positions)", "-", "-"
        rows.append(
            f"| {minutes:g} min | {rtf.get('median', 0):.2f} / {rtf.get('max', 0):.2f} | "
            f"{s.get('first_token_cpu_ms', 0):.0f} ms / {s.get('answer_cpu_ms', 0) / 1e3:.2f} s | "
            f"{route} | {speedup} | {s.get('cache_tokens', '-')} / {b.get('cache_tokens', '-')} | "
            f"{s.get('peak_rss_mib_so_far', 0):.0f} / {b.get('peak_rss_mib_so_far', 0):.0f} / "
            f"{route_rss} MiB |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10, 30])
    parser.add_argument("--offline-up-to", type=float, default=10.0,
                        help="run the offline route up to this length (longer: past the positions)")
    parser.add_argument("--max-cache-tokens", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--asks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time then measures the work, robust to a shared machine)")
    parser.add_argument("--max-pixels", type=int, default=112 * 112)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["offline", "unbounded", "bounded", "chunks"])
    parser.add_argument("--chunk-seconds", type=float, default=4.0,
                        help="chunk length of the chunk-item phase (default 4)")
    parser.add_argument("--out", default="docs/bench/stream_cpu.json")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a report and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = build_scaled_thinker(device, torch.float32)
    processor = build_offline_processor(max_pixels=args.max_pixels, min_pixels=56 * 56)
    config = OmniZipConfig.preset("45", causal=True)
    limit = int(model.config.get_text_config().max_position_embeddings)
    marks = sorted(args.minutes)
    print(describe_machine(machine_info(device)), flush=True)
    report: dict = {"machine": machine_info(device), "config": config.to_dict(),
                    "model": "scaled-qwen2.5-omni (CPU sizes), float32", "marks": marks,
                    "question": QUESTION, "new_tokens": args.new_tokens,
                    "max_pixels": args.max_pixels, "position_limit": limit}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase, so a long run keeps what it measured
        out.write_text(json.dumps(report, indent=1))

    if "offline" not in args.skip:
        report["offline"] = []
        for minutes in marks:
            if minutes > args.offline_up_to:
                report["offline"].append({"minutes": minutes, "skipped": (
                    f"{minutes:g} min at 25 positions per second needs {minutes * 60 * 25:.0f} "
                    f"positions, past the model's {limit}: not one prompt")
                    if minutes * 60 * 25 > limit else "longer than --offline-up-to"})
                continue
            report["offline"].append(run_offline(model, processor, config, minutes, args))
            save()
    if "unbounded" not in args.skip:
        report["session"] = run_session(model, processor, config, marks, args, None)
        save()
    if "bounded" not in args.skip:
        report["session_bounded"] = run_session(model, processor, config, marks, args,
                                                args.max_cache_tokens)
        save()
    if "chunks" not in args.skip:
        report["chunks"] = run_chunks(model, processor, marks, args)
    save()
    print(f"wrote {out}")
    print(table(report))


if __name__ == "__main__":
    main()
