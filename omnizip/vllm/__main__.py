"""``python -m omnizip.vllm FAMILY [--preset 45|35] [--config JSON]``: print the ``hf_overrides``.

The JSON that selects the OmniZip architecture and carries its settings, for anything that
starts vLLM from a command line::

    vllm serve Qwen/Qwen2.5-Omni-7B --hf-overrides "$(python -m omnizip.vllm qwen2.5-omni)"
    python -m lmms_eval --model vllm \\
        --model_args "model=Qwen/Qwen2.5-Omni-7B,hf_overrides=$(python -m omnizip.vllm qwen2.5-omni)" ...

A bad setting prints one line (``omnizip.vllm: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import _FAMILIES, hf_overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnizip.vllm", description=__doc__.splitlines()[0])
    p.add_argument("family", help=f"one of: {', '.join(sorted(_FAMILIES))}")
    p.add_argument("--preset", help="the paper's operating point: 45 (default) or 35")
    p.add_argument("--config", metavar="JSON", help='OmniZipConfig fields, e.g. \'{"rho_video": 0.7}\'')
    args = p.parse_args(argv)
    try:
        fields = json.loads(args.config) if args.config else {}
        if not isinstance(fields, dict):
            raise ValueError(f"--config must be a JSON object, got {args.config!r}")
        if args.preset is not None:
            fields = {"preset": args.preset, **fields}
        print(json.dumps(hf_overrides(args.family, fields or None)))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"omnizip.vllm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
