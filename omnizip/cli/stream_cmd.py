"""``omnizip stream``: answer a question about a live stream while it plays (causal OmniZip).

The source (a file, an FFmpeg URL, or ``-`` for stdin) is decoded as it arrives
(:class:`omnizip.stream.source.LiveSource`, real-time pace unless ``--no-pace``) and appended
to a :class:`omnizip.stream.StreamSession`; the question is asked every ``--ask-every`` seconds
of stream time on the committed windows, and once more at the end of the input after the last
(partial) window is committed. A status line on stderr shows the windows, kept tokens, cache
size and real-time factor; ``--json`` prints one JSON object per event on stdout
(docs/streaming.md, "Command line").
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
        "each window as it completes (causal OmniZip) and answer the question every "
        "--ask-every seconds of stream time and at the end.")
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
        windows = session.windows
        total = sum(w.audio + w.video for w in windows)
        kept = sum(w.kept_audio + w.kept_video for w in windows)
        share = f" ({kept / total:.1%})" if total else ""
        rtf = processing / session.t if session.t else 0.0
        line = (f"t {session.t:7.1f} s | windows {len(windows)} | kept {kept}/{total} tokens{share} "
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


def _emit_windows(windows: list, as_json: bool) -> None:
    if not as_json:
        return
    for w in windows:
        event = {"event": "window", **{k: v for k, v in w.as_dict().items() if k != "end"},
                 "cache_tokens": w.cache_tokens, "ms": round(w.ms, 1)}
        print(json.dumps(event), flush=True)


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
    say(f"          {answer.latency_ms:.0f} ms, {len(session.windows)} windows, cache "
        f"{session.cache_tokens} tokens", args.quiet)


#: session arguments as the command line names them
_FLAGS = {"max_cache_tokens": "--max-cache-tokens", "fps": "--fps"}


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
    if args.max_cache_tokens is not None and args.max_cache_tokens < 1:
        raise CLIError(f"--max-cache-tokens must be >= 1, got {args.max_cache_tokens}")
    config = build_config(args, causal=True)
    source = _source(args.clip)
    loaded = load(args)
    try:
        session = stream(loaded.model, loaded.processor, config, fps=args.fps,
                         max_cache_tokens=args.max_cache_tokens)
    except (ValueError, TypeError) as exc:
        raise _refusal(exc, "model") from exc
    say(f"model     {loaded.description}", args.quiet)
    if loaded.builtin:
        say(f"          NOTE: {NOISE_NOTE}", args.quiet)
    say(f"omnizip   {config_summary(config)}", args.quiet)
    say(f"stream    {'stdin' if source == '-' else source}, {args.fps:g} fps, question every "
        f"{args.ask_every:g} s: {args.question}", args.quiet)
    status = StatusLine(enabled=not args.quiet)
    rate = int(loaded.processor.feature_extractor.sampling_rate)
    reader = LiveSource(source, fps=args.fps, sampling_rate=rate, pace=not args.no_pace)
    next_ask = args.ask_every
    processing = 0.0
    try:
        for chunk in reader.chunks():
            started = time.perf_counter()
            try:
                windows = session.append(chunk.frames, chunk.audio)
            except (ValueError, TypeError) as exc:
                raise _refusal(exc, source) from exc
            processing += time.perf_counter() - started
            _emit_windows(windows, args.json)
            status.update(session, processing, bool(windows))
            if chunk.t >= next_ask:
                _ask(session, args, status)
                while next_ask <= chunk.t:
                    next_ask += args.ask_every
    except MediaError as exc:
        raise CLIError(str(exc)) from exc
    except KeyboardInterrupt:
        status.close()
        say("interrupted: committing what arrived and answering once more", args.quiet)
    started = time.perf_counter()
    try:
        windows = session.finish()
    except ValueError as exc:
        raise _refusal(exc, source) from exc
    processing += time.perf_counter() - started
    _emit_windows(windows, args.json)
    status.update(session, processing, True)
    _ask(session, args, status, final=True)
    status.close()
    return 0
