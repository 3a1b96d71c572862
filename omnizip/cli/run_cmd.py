"""``omnizip run``: answer a question about a video with OmniZip on, and print the token counts,
the compression time and the prefill time."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .errors import CLIError, say
from .options import (
    add_config_options,
    add_media_options,
    add_model_options,
    config_summary,
    preset_name,
)
from .session import (
    NOISE_NOTE,
    model_inputs,
    patch_model,
    prepare,
    prepare_causal,
    seconds,
    token_line,
)

__all__ = ["add_parser", "cmd_run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="answer a question about a video with OmniZip on",
                       description="Load the model, patch it with OmniZip, answer, and print token "
                       "counts before/after, compression time and prefill time.")
    add_media_options(p)
    add_model_options(p)
    add_config_options(p)
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="answer length (default 32)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed prefills before the timed answer (default 1; first calls are slow)")
    p.add_argument("--compare", action="store_true",
                   help="also run the uncompressed model and print the prefill speedup")
    p.add_argument("--causal", action="store_true",
                   help="causal OmniZip (decisions per window from the past only) on the clip "
                   "decoded as `omnizip stream` decodes it: what a stream of it answers at the end")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"text", "tokens", "windows": [...]} on stdout')
    p.set_defaults(func=cmd_run)


def _generate(loaded: Any, batch: dict, uav: bool, patched: bool, args: argparse.Namespace,
              label: str) -> tuple[Any, Any, float]:
    """(new token ids, the stage timer, TTFT seconds) of one greedy ``generate``."""
    import torch

    from ..bench import StageTimer

    n_prompt = int(batch["input_ids"].shape[1])
    timer = StageTimer(loaded.model, loaded.device)
    if patched:
        timer.after_patch()
    say(f"{label}: generating up to {args.max_new_tokens} tokens ...", args.quiet)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            out = loaded.thinker.generate(**batch, use_audio_in_video=uav, do_sample=False,
                                          max_new_tokens=args.max_new_tokens)
        total = time.perf_counter() - start
        ttft = (timer.head_end - start) if timer.head_end else float("nan")
    finally:
        timer.remove()
    seq = out if isinstance(out, torch.Tensor) else out.sequences
    return seq[0, n_prompt:], timer, ttft if ttft == ttft else total


def _windows(results: list) -> list[dict]:
    """Per window of the (one-row) prompt: its audio and video tokens before and after."""
    if not results or not hasattr(results[0], "window_counts"):
        return []
    rows = results[0].window_counts().tolist()
    keys = ("audio", "kept_audio", "video", "kept_video")
    return [{"index": i, **dict(zip(keys, row, strict=True))} for i, row in enumerate(rows)]


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import forward

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, got {args.warmup}")
    loaded, clip, inputs, uav, config = prepare_causal(args) if args.causal else prepare(args)
    batch = model_inputs(inputs, loaded)
    n_prompt = int(batch["input_ids"].shape[1])

    handle = patch_model(loaded, config)
    try:
        if args.warmup:
            say(f"warm-up: {args.warmup} untimed prefill(s) ...", args.quiet)
            with torch.no_grad():
                for _ in range(args.warmup):
                    forward(loaded.thinker, batch, uav)
        new, timer, ttft = _generate(loaded, batch, uav, True, args, "OmniZip")
        results = handle.results or []
        overhead = handle.last_overhead_ms
    finally:
        handle.remove()
    answer = loaded.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
    if args.json:
        print(json.dumps({"text": answer, "tokens": new.tolist(), "windows": _windows(results)}))
        return 0
    decoder_ms = (timer.dec_end - timer.dec_ready) * 1e3 if timer.dec_ready and timer.dec_end else None

    print(f"model     {loaded.description}")
    if loaded.builtin:
        print(f"          NOTE: {NOISE_NOTE}")
    preset = preset_name(config)
    print(f"omnizip   {'preset ' + preset + '%: ' if preset else ''}{config_summary(config)}")
    print(f"video     {clip.path} ({seconds(clip.duration)}, {len(clip.frames)} frames at "
          f"{clip.fps:g} fps{', with audio' if uav else ', video only'})")
    print(f"question  {args.question}")
    shown = answer if answer else f"(no decodable text; token ids {new.tolist()})"
    print(f"answer    {shown}")
    if results:
        kept = int(sum(r.n_kept for r in results))
        print(f"tokens    {token_line(n_prompt, kept, results[0])}")
    else:
        kept = n_prompt
        print(f"tokens    {n_prompt} (no audio/video tokens: nothing compressed)")
    if overhead is not None:
        print(f"compress  {overhead:.1f} ms (audio scoring + OmniZip token selection, per prompt)")
    if decoder_ms is not None:
        print(f"prefill   {decoder_ms:.1f} ms (decoder forward over the {kept} kept tokens; "
              f"{decoder_ms + (overhead or 0.0):.1f} ms with compression)")
    print(f"TTFT      {ttft * 1e3:.1f} ms (encoders + compression + prefill + LM head, in generate)")
    if args.compare:
        _, full_timer, full_ttft = _generate(loaded, batch, uav, False, args, "full model")
        full_ms = full_timer.decoder_s * 1e3
        if decoder_ms:
            total = decoder_ms + (overhead or 0.0)
            print(f"full      prefill {full_ms:.1f} ms over {n_prompt} tokens, TTFT {full_ttft * 1e3:.1f} ms: "
                  f"OmniZip prefill speedup {full_ms / total:.2f}x (compression included)")
    return 0
