"""``omnizip inspect``: one compressed prefill, drawn as a PNG/HTML report of what OmniZip kept."""

from __future__ import annotations

import argparse
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
    check_output_dir,
    model_inputs,
    patch_model,
    prepare,
    seconds,
    token_line,
)

__all__ = ["add_parser", "cmd_inspect"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", parents=[common], help="write a PNG/HTML report of what was pruned",
                       description="Run one compressed prefill and draw what OmniZip kept: per-window "
                       "S_i and r_i, the audio track with kept tokens and anchors, and kept-token maps "
                       "over the sampled frames.")
    add_media_options(p)
    p.add_argument("-o", "--output", default="omnizip-report", metavar="DIR",
                   help="output folder (default: omnizip-report)")
    add_model_options(p)
    add_config_options(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from ..report import ReportData, write_report

    check_output_dir(args.output)  # before the model runs: a bad -o fails fast
    loaded, clip, inputs, uav, config = prepare(args)
    thinker = loaded.thinker
    batch = model_inputs(inputs, loaded)
    n_prompt = int(batch["input_ids"].shape[1])
    handle = patch_model(loaded, config)
    seen: dict[str, Any] = {}

    def spy(module: Any, a: tuple, kwargs: dict) -> None:
        if "positions" not in seen:
            seen["positions"] = kwargs.get("position_ids")

    # registered first: it sees the positions before the patch compresses them
    hook = thinker.model.language_model.register_forward_pre_hook(spy, with_kwargs=True, prepend=True)
    say("OmniZip: encoders, audio scores and compression (one prefill) ...", args.quiet)
    try:
        with torch.no_grad():
            thinker.model(**batch, use_audio_in_video=uav, use_cache=False)
        results, scores, overhead = handle.results, handle.audio_scores, handle.last_overhead_ms
        # the configuration the adapter actually ran (Qwen3-Omni: frame parity along the stream)
        effective = getattr(handle.adapter, "effective_method", None) or config
        parity = (getattr(effective, "frame_parity", None)
                  or getattr(handle.adapter, "frame_parity", None) or "chunk")
    finally:
        hook.remove()
        handle.remove()
    if not results:
        raise CLIError(f"{clip.path}: the prompt holds no audio/video tokens, nothing to inspect")
    result = results[0]
    if not hasattr(result, "window_audio_retention"):
        raise CLIError("inspect needs an OmniZip configuration (not another method)")
    cfg = thinker.config
    grid = batch.get("video_grid_thw")
    if grid is None:
        raise CLIError(f"{clip.path}: no video tokens in the prompt")
    grid_thw = tuple(int(x) for x in grid[0].tolist())
    merge = int(getattr(cfg.vision_config, "spatial_merge_size", 2))
    patch_px = int(getattr(cfg.vision_config, "patch_size", 14))
    per_second = float(getattr(cfg, "position_id_per_seconds", 25))
    audio_times = video_times = None
    positions = seen.get("positions")
    if isinstance(positions, torch.Tensor) and positions.dim() == 3:
        t_row = positions[-3, 0].to("cpu").double()
        a_pos = result.audio_positions.to("cpu")
        v_pos = result.video_positions.to("cpu")
        mm = torch.cat([a_pos, v_pos])
        if mm.numel():
            origin = t_row[mm].min()
            audio_times = ((t_row[a_pos] - origin) / per_second).numpy() if a_pos.numel() else None
            video_times = ((t_row[v_pos] - origin) / per_second).numpy() if v_pos.numel() else None
    preset = preset_name(config)
    kept = int(result.n_kept)
    title = (f"OmniZip on {clip.path.name}: kept {kept}/{n_prompt} prompt tokens "
             f"(audio {result.n_audio_kept}/{result.n_audio}, video {result.n_video_kept}/{result.n_video})"
             f"{', preset ' + preset + '%' if preset else ''}")
    subtitle = f"{config_summary(config)}; model {loaded.description}"
    if loaded.builtin:
        subtitle += ". Random weights: these are OmniZip's real decisions on random features, not on meaningful ones"
    facts = [
        ("video", f"{clip.path} ({seconds(clip.duration)}, {len(clip.frames)} frames at {clip.fps:g} fps)"),
        ("model", loaded.description),
        ("configuration", config_summary(config)),
        ("tokens", token_line(n_prompt, kept, result)),
        ("compression time", f"{overhead:.1f} ms (audio scoring + selection in this one, cold "
         "prefill; `omnizip run` / `omnizip bench` time warm runs)" if overhead is not None else "-"),
    ]
    data = ReportData(
        result=result,
        frames=clip.frames,
        grid_thw=grid_thw,
        merge=merge,
        patch=patch_px,
        audio_scores=scores[0] if scores else None,
        audio_times=audio_times,
        video_times=video_times,
        waveform=clip.audio,
        sampling_rate=clip.sampling_rate,
        seconds_per_step=2.0 / clip.fps,
        audio_tokens_per_second=token_rate(audio_times, per_second),
        config=config.to_dict(),
        title=title,
        subtitle=subtitle,
        facts=facts,
        frame_parity=str(parity),
    )
    paths = write_report(data, args.output)
    print(f"{title}")
    print(f"report    {paths['png']}")
    print(f"html      {paths['html']}")
    print(f"numbers   {paths['json']}")
    if loaded.builtin:
        print(f"NOTE: {NOISE_NOTE}")
    return 0


def token_rate(times: Any, default: float) -> float:
    """Audio tokens per second from their times (the typical gap), else ``default``."""
    import numpy as np

    if times is None or len(times) < 2:
        return default
    gaps = np.diff(np.asarray(times, float))
    gaps = gaps[gaps > 0]
    return float(1.0 / np.median(gaps)) if gaps.size else default

