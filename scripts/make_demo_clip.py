#!/usr/bin/env python3
"""Make the bundled demo clip ``omnizip/assets/demo_clip.mp4`` (10 s, speech then silence,
visible motion) with espeak-ng and ffmpeg. Reproducible: the same tool versions give the same
bytes (fixed seeds, single-threaded bit-exact encoders, no metadata).

    python scripts/make_demo_clip.py [-o PATH] [--seconds 10]

Picture: SMPTE colour bars (a static, textured background) with a white-framed red square sweeping
left to right and back and a small white box bouncing up and down, 320x240 at 10 fps, H.264.
Sound: espeak-ng speaks two sentences (about 5.5 s), then silence up to the end, 16 kHz mono AAC.
So the first windows hold dense speech and the last ones none: what OmniZip's audio guidance
reacts to. The file must stay under 1 MB (it is committed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "omnizip" / "assets" / "demo_clip.mp4"
SPEECH = "Hello! This is the omnizip demo clip. Watch the red square move while I talk."
MAX_BYTES = 1_000_000


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def make_clip(out: Path, seconds: float = 10.0, width: int = 320, height: int = 240,
              fps: int = 10) -> Path:
    for tool in ("ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"make_demo_clip: {tool} is not on PATH (apt-get install ffmpeg espeak-ng)")
    out.parent.mkdir(parents=True, exist_ok=True)
    side = height // 4
    with tempfile.TemporaryDirectory() as tmp:
        speech = str(Path(tmp) / "speech.wav")
        # -s words per minute, -p pitch, -a amplitude: fixed, so the waveform is fixed
        run(["espeak-ng", "-v", "en-us", "-s", "165", "-p", "50", "-a", "150", "-w", speech, SPEECH])
        graph = (
            f"smptebars=size={width}x{height}:rate={fps}:duration={seconds}[bg];"
            f"color=c=red:size={side}x{side}:rate={fps}:duration={seconds},"
            f"drawbox=c=white:t=4[sq];"
            f"color=c=white:size={side // 2}x{side // 2}:rate={fps}:duration={seconds}[dot];"
            # the square sweeps left -> right -> left once per clip; the box bounces twice
            f"[bg][sq]overlay=x='(W-w)*(1-cos(2*PI*t/{seconds}))/2':y='(H-h)*0.55'[v1];"
            f"[v1][dot]overlay=x='W*0.7':y='(H-h)*abs(sin(2*PI*t/{seconds}))'[v]"
        )
        run([
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1",
            "-filter_complex", graph, "-i", speech,
            "-map", "[v]", "-map", "0:a",
            "-filter:a", f"apad=whole_dur={seconds}", "-ar", "16000", "-ac", "1",
            "-c:a", "aac", "-b:a", "32k",
            "-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p",
            "-g", str(2 * fps), "-x264-params", "threads=1",
            "-t", str(seconds), "-map_metadata", "-1", "-fflags", "+bitexact",
            "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-movflags", "+faststart",
            str(out),
        ])
    size = out.stat().st_size
    if size > MAX_BYTES:
        sys.exit(f"make_demo_clip: {out} is {size} bytes, over the {MAX_BYTES}-byte limit")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    out = make_clip(args.output, args.seconds)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
