"""How OmniZip's ``retention_split`` rules divide a retention target between audio and video.

For Qwen2.5-Omni's token mix at 2 fps (25 audio tokens per second; video tokens per 2-second
window from the real processor's ``smart_resize`` at common source resolutions) and the probe's
mix, prints the kept fractions of audio and of video each rule gives at each retention, from
``OmniZipConfig(retention=R, retention_split=...).resolve_ratios`` (expected counts, before
per-window rounding). The tables of docs/algorithm.md §7 come from:

    python scripts/retention_split.py
"""

from __future__ import annotations

import argparse

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from omnizip import OmniZipConfig
from omnizip.core.config import RETENTION_SPLITS

AUDIO_PER_WINDOW = 50  # 25 tokens per second, 2-second windows
UNIT = 28  # 14-pixel patches, 2 x 2 merge
DEFAULT_PIXELS = (128 * UNIT * UNIT, 768 * UNIT * UNIT)  # the processor's video bounds
PAPER_PIXELS = (128 * UNIT * UNIT, 128 * UNIT * UNIT)  # max_pixels the OmniZip paper evaluated at


def video_per_window(width: int, height: int, pixels: tuple[int, int]) -> int:
    """Two temporal grid steps per window at 2 fps, (h / 28) (w / 28) tokens each."""
    h, w = smart_resize(height, width, factor=UNIT, min_pixels=pixels[0], max_pixels=pixels[1])
    return 2 * (h // UNIT) * (w // UNIT)


def mixes() -> list[tuple[str, int, int]]:
    rows = [("probe 168 px", AUDIO_PER_WINDOW, 2 * 6 * 6),
            ("56 px (the issue's study)", AUDIO_PER_WINDOW, 2 * 2 * 2)]
    for name, (w, h) in (("360p", (640, 360)), ("720p", (1280, 720))):
        rows.append((f"{name}, default pixels", AUDIO_PER_WINDOW, video_per_window(w, h, DEFAULT_PIXELS)))
    rows.append(("any, max_pixels 128*28*28", AUDIO_PER_WINDOW, video_per_window(640, 360, PAPER_PIXELS)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="45")
    parser.add_argument("--retentions", default="0.45,0.35,0.25")
    args = parser.parse_args()
    retentions = [float(r) for r in args.retentions.split(",")]
    print(f"preset {args.preset}; cells: kept audio / kept video (fractions)")
    print("| mix (audio:video per window) | video share | retention | "
          + " | ".join(RETENTION_SPLITS) + " |")
    print("|---|---|---|" + "---|" * len(RETENTION_SPLITS))
    for name, n_a, n_v in mixes():
        for r in retentions:
            cells = []
            for split in RETENTION_SPLITS:
                cfg = OmniZipConfig.preset(args.preset, retention=r, retention_split=split)
                ra, rv = cfg.resolve_ratios(n_a, n_v)
                extra = cfg.contextual_ratio if cfg.g > 0 else 0.0
                cells.append(f"{min(1 - ra + extra, 1):.2f} / {1 - rv:.2f}")
            print(f"| {name} ({n_a}:{n_v}) | {n_v / (n_a + n_v):.0%} | {r:.2f} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
