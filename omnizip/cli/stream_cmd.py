"""``omnizip stream``: answer a question about a live stream while it plays.

The source (a file, an FFmpeg URL, or ``-`` for stdin) is decoded as it arrives
(:class:`omnizip.stream.source.LiveSource`, real-time pace unless ``--no-pace``) and appended
to a :class:`omnizip.stream.StreamSession` (causal OmniZip, window by window) or, with
``--chunk-seconds S``, to a :class:`omnizip.stream.ChunkStreamSession` (S-second chunk items,
each decided alone: what a vLLM server computes for ``omnizip.vllm.stream_client --chunk-seconds
S``). The question is asked every ``--ask-every`` seconds of stream time on the committed
windows (chunks), and once more at the end of the input after the last, partial one is
committed. A status line on stderr shows the windows (chunks), kept tokens, cache size and
real-time factor; ``--json`` prints one JSON object per event on stdout (docs/streaming.md,
"Command line").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .errors import CLIError, one_line, say
from .options import (
    DEFAULT_CLIP,
    DEFAULT_QUESTION,
    add_config_options,
    add_model_options,
    build_config,
    config_summary,
    positive_float,
)
from .session import NOISE_NOTE, load

__all__ = ["add_parser", "cmd_stream"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stream", parents=[common], help="answer questions about a live stream as it plays",
        description="Decode a media file, a live FFmpeg URL or stdin (-) as a stream, compress "
        "each window as it completes (causal OmniZip), or each --chunk-seconds chunk item as a "
        "vLLM server does, and answer the question every --ask-every seconds of stream time "
        "and at the end.")
    p.add_argument("clip", nargs="?", metavar="CLIP|-",
                   help="a media file or FFmpeg URL with audio and video, or - for stdin (a "
                   "streamable format such as MPEG-TS); default: the bundled 10-second clip")
    p.add_argument("--question", "-q", default=DEFAULT_QUESTION, help="the question to ask")
    p.add_argument("--ask-every", type=positive_float, default=5.0, metavar="SECONDS",
                   help="ask every SECONDS of stream time (default 5), and at the end")
    p.add_argument("--no-pace", action="store_true",
                   help="read the source as fast as it decodes (default: real-time pace)")
    p.add_argument("--max-cache-tokens", type=int, metavar="N",
                   help="bound the KV cache: drop the oldest windows beyond it (default: none)")
    p.add_argument("--chunk-seconds", type=positive_float, metavar="S",
                   help="cut the stream into S-second chunk items, each decided alone as the "
                   "vLLM plugin decides it (non-causal, exact budget, unbounded cache); S holds "
                   "whole video steps (a multiple of 1 s at 2 fps). Default: causal windows")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="answer length (default 32)")
    p.add_argument("--fps", type=positive_float, default=2.0, help="frames per second sampled (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    add_model_options(p)
    add_config_options(p)
    p.set_defaults(func=cmd_stream)


class StatusLine:
    """The live status on stderr: rewritten in place on a terminal, one line per update
    that committed windows otherwise; nothing with ``--quiet``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.shown = False

    def update(self, session: Any, processing: float, committed: bool) -> None:
        if not self.enabled or not (self.tty or committed):
            return
        noun, items = _committed(session)
        total = sum(w.audio + w.video for w in items)
        kept = sum(w.kept_audio + w.kept_video for w in items)
        share = f" ({kept / total:.1%})" if total else ""
        rtf = processing / session.t if session.t else 0.0
        line = (f"t {session.t:7.1f} s | {noun} {len(items)} | kept {kept}/{total} tokens{share} "
                f"| cache {session.cache_tokens} tokens | real-time factor {rtf:.2f}")
        if self.tty:
            print("\r" + line + "\x1b[K", end="", file=sys.stderr, flush=True)
            self.shown = True
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)
            self.shown = False


def _committed(session: Any) -> tuple[str, list]:
    """``("chunks", the chunk items)`` of a chunk stream, ``("windows", the windows)`` of a
    window-by-window one."""
    from ..stream import ChunkStreamSession

    if isinstance(session, ChunkStreamSession):
        return "chunks", session.chunks
    return "windows", session.windows


def _emit(items: list, as_json: bool) -> None:
    """One ``chunk`` event per committed chunk item (with its ``end``), or one ``window``
    event per committed window."""
    from ..stream import StreamChunk

    if not as_json:
        return
    for w in items:
        if isinstance(w, StreamChunk):
            fields = {"event": "chunk", **w.as_dict()}
        else:
            fields = {"event": "window", **{k: v for k, v in w.as_dict().items() if k != "end"}}
        print(json.dumps({**fields, "cache_tokens": w.cache_tokens, "ms": round(w.ms, 1)}),
              flush=True)


def _ask(session: Any, args: argparse.Namespace, status: StatusLine, final: bool = False) -> None:
    """Ask the question now; before the first window commits, say so (stderr) and go on."""
    try:
        session.ask(args.question, final=final, max_new_tokens=args.max_new_tokens,
                    do_sample=False)
    except ValueError as exc:
        if final:
            raise CLIError(one_line(exc)) from exc
        status.close()
        say(f"[{session.t:7.1f} s] not asked: {exc}", args.quiet)
        return
    answer = session.answers[-1]
    status.close()
    if args.json:
        print(json.dumps({"event": "answer", "t": answer.t, "question": answer.question,
                          "text": answer.text, "tokens": answer.tokens,
                          "latency_ms": round(answer.latency_ms, 1)}), flush=True)
        return
    text = answer.text or f"(no decodable text; token ids {answer.tokens})"
    end = ", end" if final else ""
    print(f"[{answer.t:7.1f} s{end}] {text}", flush=True)
    noun, items = _committed(session)
    say(f"          {answer.latency_ms:.0f} ms, {len(items)} {noun}, cache "
        f"{session.cache_tokens} tokens", args.quiet)


#: session arguments as the command line names them
_FLAGS = {"max_cache_tokens": "--max-cache-tokens", "fps": "--fps",
          "chunk_seconds": "--chunk-seconds"}


def _refuse_with_chunks(args: argparse.Namespace) -> None:
    """The flags of the causal window session that a chunk stream has no use for."""
    if args.max_cache_tokens is not None:
        raise CLIError("--max-cache-tokens does not apply with --chunk-seconds: a chunk stream "
                       "keeps every chunk item in the cache, as a vLLM server's prompt holds "
                       "every chunk (drop one of the two)")
    if args.causal_lookback is not None:
        raise CLIError("--causal-lookback does not apply with --chunk-seconds: each chunk item "
                       "is decided alone, with no look-back (drop one of the two)")
    if args.budget == "reference":
        raise CLIError("--budget reference does not apply with --chunk-seconds: a chunk item's "
                       "kept counts follow from its layout, as on a vLLM server (budget exact)")


def _finish(session: Any, args: argparse.Namespace) -> list:
    """Commit the last, partial window or chunk. A chunk item needs frames and audio: a
    leftover of one kind only (the last milliseconds of an audio track that outlasts the last
    frame) is dropped, with a note on stderr."""
    from ..stream import ChunkStreamSession

    if not isinstance(session, ChunkStreamSession):
        return session.finish()
    frames, samples = session.pending
    if bool(frames) != bool(samples):
        left = (f"{frames} frame(s) with no audio" if frames
                else f"{samples / session.sampling_rate:.3f} s of audio with no frame")
        say(f"end of input: dropped {left} after the last chunk (a chunk item needs both)",
            args.quiet)
    return session.finish(drop_unpaired=True)


def _refusal(exc: BaseException, where: str) -> CLIError:
    """A session's ValueError/TypeError as one line, naming the flag at fault when it is one."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    for name, flag in _FLAGS.items():
        if text.startswith(name):
            return CLIError(flag + text[len(name):])
    return CLIError(f"{where}: {text}")


def _source(value: str | None) -> str:
    if value is None:
        return str(DEFAULT_CLIP)
    if not value.strip():
        raise CLIError(f"CLIP: empty path {value!r} (omit it for the bundled clip, - for stdin)")
    return value


def cmd_stream(args: argparse.Namespace) -> int:
    from ..inputs import MediaError
    from ..stream import stream
    from ..stream.source import LiveSource

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    chunked = args.chunk_seconds is not None
    if chunked:
        _refuse_with_chunks(args)
    if args.max_cache_tokens is not None and args.max_cache_tokens < 1:
        raise CLIError(f"--max-cache-tokens must be >= 1, got {args.max_cache_tokens}")
    config = build_config(args, causal=not chunked)
    source = _source(args.clip)
    loaded = load(args)
    options = ({"chunk_seconds": args.chunk_seconds} if chunked
               else {"max_cache_tokens": args.max_cache_tokens})
    try:
        session = stream(loaded.model, loaded.processor, config, fps=args.fps, **options)
    except (ValueError, TypeError) as exc:
        raise _refusal(exc, "model") from exc
    say(f"model     {loaded.description}", args.quiet)
    if loaded.builtin:
        say(f"          NOTE: {NOISE_NOTE}", args.quiet)
    say(f"omnizip   {config_summary(session.config)}", args.quiet)
    layout = f", chunk items of {args.chunk_seconds:g} s" if chunked else ""
    say(f"stream    {'stdin' if source == '-' else source}, {args.fps:g} fps{layout}, question "
        f"every {args.ask_every:g} s: {args.question}", args.quiet)
    status = StatusLine(enabled=not args.quiet)
    rate = int(loaded.processor.feature_extractor.sampling_rate)
    reader = LiveSource(source, fps=args.fps, sampling_rate=rate, pace=not args.no_pace)
    next_ask = args.ask_every
    processing = 0.0
    try:
        for media in reader.chunks():  # LiveSource pieces of media (0.5 s), not chunk items
            started = time.perf_counter()
            try:
                committed = session.append(media.frames, media.audio)
            except (ValueError, TypeError) as exc:
                raise _refusal(exc, source) from exc
            processing += time.perf_counter() - started
            _emit(committed, args.json)
            status.update(session, processing, bool(committed))
            if media.t >= next_ask:
                _ask(session, args, status)
                while next_ask <= media.t:
                    next_ask += args.ask_every
    except MediaError as exc:
        raise CLIError(str(exc)) from exc
    except KeyboardInterrupt:
        status.close()
        say("interrupted: committing what arrived and answering once more", args.quiet)
    started = time.perf_counter()
    try:
        committed = _finish(session, args)
    except ValueError as exc:
        raise _refusal(exc, source) from exc
    processing += time.perf_counter() - started
    _emit(committed, args.json)
    status.update(session, processing, bool(committed))
    _ask(session, args, status, final=True)
    status.close()
    return 0
