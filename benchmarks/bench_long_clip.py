"""OmniZip's own cost on long clips, end to end on the scaled model of ``omnizip bench``.

Model: ``scaled-qwen2.5-omni``, the random-weight Qwen2.5-Omni thinker ``omnizip bench``
builds (real architecture; CPU sizes: decoder hidden 768, 6 layers, FFN 4096; tiny encoders:
the audio encoder has 4 heads of 8, so its last layer, which OmniZip re-scores, is far
cheaper than Qwen2.5-Omni-7B's 20 heads of 64 - see benchmarks/bench_audio_scores.py for the
scoring at real widths).

Input: the bundled demo clip looped to 20 s, 60 s, 5 min and 10 min, video at 2 fps with
small frames (``--max-pixels``, default 112 x 112: 12 tokens per 2-frame group, so that a
10-min prompt stays within reach of a CPU) and its audio track in the prompt
(``use_audio_in_video``), 25 audio tokens per second. The Qwen2.5-Omni processor pads or
cuts audio to 300 s; for longer clips this script raises that cap to the clip's length (the
model itself has no such limit: its audio encoder attends within 2-s windows), so the
10-min point scores and compresses all 10 minutes of audio (15,000 tokens, 30,000 encoder
frames). ``--stock-audio-cap`` keeps the 300-s cap instead.

Per clip, one prefill of each configuration (after one warm-up run for clips under 5 min;
medians over ``--repeats`` runs for clips under 5 min, one run at 5 and 10 min):
  (a) full        the decoder over every prompt token;
  (b) OmniZip     the patched model: audio scoring + compression + the decoder over the kept
                  tokens (what ``omnizip bench`` calls prefill), for each configuration:
                  ``default`` (OmniZipConfig(): global audio scores, global merge scope) and
                  ``linear`` (audio_score="windowed", merge_scope="window": linear time);
  (c) kept-only   the bare decoder fed only (b)'s kept tokens: the limit of any pruning that
                  keeps as many tokens.
Overhead = (b)'s scoring + compression, as a share of (c)'s prefill. Times are process CPU
time with one torch thread (the machine is shared: a descheduled run accrues no CPU time).
Peak memory: the process's peak RSS over each configuration's timed run (encoders included;
kernel high-water mark reset after malloc_trim just before the run, as ``omnizip bench``
does, but without its pinned malloc thresholds, so one run serves both time and memory).

    python benchmarks/bench_long_clip.py                        # 20 s, 60 s, 5 min, 10 min
    python benchmarks/bench_long_clip.py --seconds 20 60 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

# omnizip internals this script uses, all in one place (omnizip.bench and omnizip.cli are
# being split into packages: these imports are the only lines to adjust when they move).
from omnizip import OmniZipConfig, patch
from omnizip.bench import (
    PeakMemory,
    StageTimer,
    build_scaled_thinker,
    capture_decoder_inputs,
    describe_machine,
    gather_kept,
    machine_info,
)
from omnizip.cli import DEFAULT_CLIP, build_prompt_inputs, loop_clip, read_clip
from omnizip.demo.processor import build_offline_processor

QUESTION = "What happens in this video, and what is said?"
PROCESSOR_AUDIO_CAP_S = 300
VARIANTS = {
    "default": {},
    "linear": {"audio_score": "windowed", "merge_scope": "window"},
}


def build_processor(max_pixels: int, audio_seconds: int):
    """The offline Qwen2.5-Omni processor with small video frames and its audio cap (the
    Whisper feature extractor's ``chunk_length``) raised to ``audio_seconds`` if longer."""
    processor = build_offline_processor(max_pixels=max_pixels, min_pixels=min(max_pixels, 4 * 28 * 28))
    fe = processor.feature_extractor
    if audio_seconds > fe.chunk_length:
        fe.chunk_length = audio_seconds
        fe.n_samples = audio_seconds * fe.sampling_rate
        fe.nb_max_frames = fe.n_samples // fe.hop_length
    return processor


class Runner:
    """One prefill of (a), (b) or (c) on the scaled thinker, CPU-timed, with its peak RSS."""

    def __init__(self, thinker, inputs, uav: bool):
        self.thinker, self.inputs, self.uav = thinker, inputs, uav
        self.device = next(thinker.parameters()).device
        self.timer = StageTimer(thinker, self.device, time.process_time)

    def _forward(self):
        self.thinker.model(**self.inputs, use_audio_in_video=self.uav, use_cache=True)

    def full(self) -> dict:
        self.timer.reset()
        with PeakMemory(self.device) as mem:
            self._forward()
        return {"prefill_s": self.timer.decoder_s, "peak_mib": mem.peak / 2**20,
                "tokens": int(self.inputs["input_ids"].shape[1])}

    def omnizip(self, config: OmniZipConfig) -> tuple[dict, torch.Tensor]:
        handle = patch(self.thinker, config)
        self.timer.after_patch()
        try:
            self.timer.reset()
            with PeakMemory(self.device) as mem:
                self._forward()
        finally:
            self.timer.drop_late()
            handle.remove()
        t = self.timer
        score, compress = t.score_s, t.compression_s
        decoder = t.dec_end - t.dec_ready
        kept = handle.kept_indices[0].detach().to("cpu")
        return {"prefill_s": score + compress + decoder, "score_s": score, "compress_s": compress,
                "peak_mib": mem.peak / 2**20, "tokens": int(kept.numel())}, kept

    def kept_only(self, kept: torch.Tensor) -> dict:
        self.timer.remove()  # the bare decoder: no hooks at all
        try:
            with PeakMemory(self.device) as mem:
                small = gather_kept(capture_decoder_inputs(self.thinker, self.inputs, self.uav), kept)
                t0 = time.process_time()
                self.thinker.model.language_model(**small)
                prefill = time.process_time() - t0
        finally:
            self.timer.attach()
        return {"prefill_s": prefill, "peak_mib": mem.peak / 2**20, "tokens": int(kept.numel())}


def median_runs(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for key in ("prefill_s", "score_s", "compress_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    out["peak_mib"] = max(r["peak_mib"] for r in runs)
    return out


def measure_clip(thinker, processor, clip, seconds: int, repeats: int, warmup: int) -> dict:
    inputs, uav = build_prompt_inputs(processor, loop_clip(clip, seconds), QUESTION)
    ids = inputs["input_ids"]
    cfg = thinker.config
    n_audio = int((ids == cfg.audio_token_id).sum())
    n_video = int((ids == cfg.video_token_id).sum())
    runner = Runner(thinker, dict(inputs), uav)
    configs = {name: OmniZipConfig(**over) for name, over in VARIANTS.items()}
    runs: dict[str, list[dict]] = {}
    with torch.no_grad():
        for it in range(warmup + repeats):
            # interleaved run by run, so drifting machine load affects every configuration alike
            row = {"full": runner.full()}
            for name, config in configs.items():
                row[f"omnizip-{name}"], kept = runner.omnizip(config)
                row[f"kept-{name}"] = runner.kept_only(kept)
            if it >= warmup:
                for key, value in row.items():
                    runs.setdefault(key, []).append(value)
    result = {key: median_runs(value) for key, value in runs.items()}
    return {"seconds": seconds, "prompt_tokens": int(ids.shape[1]), "audio_tokens": n_audio,
            "video_tokens": n_video, "audio_encoder_frames": 2 * n_audio, "repeats": repeats,
            "configs": result}


def print_clip(row: dict) -> None:
    c = row["configs"]
    full = c["full"]
    print(f"\n{row['seconds']} s clip: {row['prompt_tokens']} prompt tokens (audio {row['audio_tokens']}, "
          f"video {row['video_tokens']}; {row['audio_encoder_frames']} audio encoder frames), "
          f"median of {row['repeats']}")
    print(f"  {'configuration':<20}{'tokens':>7}{'prefill s':>11}{'score s':>9}{'compr s':>9}"
          f"{'overhead/(c)':>14}{'(b)/(c)':>9}{'speedup':>9}{'peak MiB':>10}")
    print(f"  {'(a) full':<20}{full['tokens']:>7}{full['prefill_s']:>11.3f}{'':>9}{'':>9}{'':>14}{'':>9}"
          f"{1.0:>8.2f}x{full['peak_mib']:>10.0f}")
    for name in VARIANTS:
        b, k = c[f"omnizip-{name}"], c[f"kept-{name}"]
        share = (b["score_s"] + b["compress_s"]) / k["prefill_s"]
        print(f"  {'(b) OmniZip ' + name:<20}{b['tokens']:>7}{b['prefill_s']:>11.3f}{b['score_s']:>9.3f}"
              f"{b['compress_s']:>9.3f}{share:>13.1%}{b['prefill_s'] / k['prefill_s']:>9.3f}"
              f"{full['prefill_s'] / b['prefill_s']:>8.2f}x{b['peak_mib']:>10.0f}")
        print(f"  {'(c) kept-only ' + name:<20}{k['tokens']:>7}{k['prefill_s']:>11.3f}{'':>9}{'':>9}{'':>14}"
              f"{'':>9}{full['prefill_s'] / k['prefill_s']:>8.2f}x{k['peak_mib']:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", default=[20, 60, 300, 600])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs for clips under 5 min")
    parser.add_argument("--max-pixels", type=int, default=112 * 112, help="pixels per video frame")
    parser.add_argument("--stock-audio-cap", action="store_true",
                        help=f"keep the processor's {PROCESSOR_AUDIO_CAP_S}-s audio cap")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/long_clip.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    info = machine_info(device)
    print(f"machine: {describe_machine(info)}; torch {info['torch']}; CPU time, 1 thread")
    thinker = build_scaled_thinker(device, torch.float32)
    clip = read_clip(DEFAULT_CLIP, progress=False)
    rows = []
    for seconds in args.seconds:
        long = seconds >= 300
        cap = PROCESSOR_AUDIO_CAP_S if args.stock_audio_cap else max(PROCESSOR_AUDIO_CAP_S, seconds)
        processor = build_processor(args.max_pixels, cap)
        row = measure_clip(thinker, processor, clip, seconds, 1 if long else args.repeats, 0 if long else 1)
        row["audio_cap_s"] = cap
        rows.append(row)
        print_clip(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "max_pixels": args.max_pixels,
                                    "variants": VARIANTS, "rows": rows}, indent=2))
    print(f"\nresults in {args.out}")


if __name__ == "__main__":
    main()
