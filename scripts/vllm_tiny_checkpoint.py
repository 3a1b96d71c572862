#!/usr/bin/env python3
"""Save the built-in random-weight Qwen-Omni model as a checkpoint folder that vLLM serves.

Runs in the MAIN environment (transformers 5.2x, the tiny builders); ``make serve`` calls it
once. ``--scaled`` saves a wider, deeper decoder (so that prefill, not media decoding,
dominates a CPU serving benchmark).

    python scripts/vllm_tiny_checkpoint.py OUT_DIR [--family qwen2.5-omni] [--scaled]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnizip.vllm.checkpoint import FAMILIES, save_tiny_checkpoint

# decoder 256 wide (head dim 64), 4 layers: ~5x the default decoder's FLOPs per token (and 4x
# its attention cost), so that prefill outweighs media decoding on a CPU, yet 32 concurrent
# minute-long clips still take minutes on a 2-core VM
SCALED_SIZES = {"text_hidden": 256, "text_heads": 4, "text_kv_heads": 2, "text_layers": 4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--family", choices=FAMILIES, default="qwen2.5-omni")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scaled", action="store_true", help=f"bigger decoder: {SCALED_SIZES}")
    args = p.parse_args(argv)
    sizes = SCALED_SIZES if args.scaled else {}
    print(save_tiny_checkpoint(args.out, args.family, args.seed, **sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
