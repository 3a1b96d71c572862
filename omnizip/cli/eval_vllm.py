"""``omnizip eval --engine vllm``: its options, and the answer function on vLLM engines.

The benchmark, the method, the prompt and the result files are those of ``--engine hf``
(:mod:`omnizip.cli.eval_cmd`); what changes is who answers: vLLM engines running in vLLM's own
environment (:class:`omnizip.eval.vllm_engine.VllmAnswerer`), in batches. The engines serve the
OmniZip methods (``budget="exact"``, which vLLM needs; switched on when no budget is given) or
``--method none`` (vLLM's own model).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import CLIError

__all__ = ["add_engine_options", "find_vllm_python", "vllm_answerer"]


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="hf: transformers generate, one question at a time (default); vllm: vLLM "
                   "engines in batches (OmniZip methods and none; docs/serving.md)")
    g.add_argument("--vllm-python", metavar="PATH",
                   help="interpreter of the environment with vLLM and omnizip (default: this one "
                   "when it has vLLM, else $OMNIZIP_VLLM_VENV/bin/python or .venv-vllm/bin/python)")
    g.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                   help="vllm: devices per engine (default 1)")
    g.add_argument("--data-parallel-size", type=int, default=1, metavar="N",
                   help="vllm: engines, each answering its share of the batches (default 1)")
    g.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="vllm: questions per engine call (default 32)")
    g.add_argument("--vllm-kwargs", metavar="JSON",
                   help='vllm: more vllm.LLM arguments, e.g. \'{"max_model_len": 32768}\'')


def find_vllm_python(explicit: str | None) -> str:
    """The interpreter that runs the engines (see ``--vllm-python``)."""
    if explicit:
        if not Path(explicit).is_file():
            raise CLIError(f"--vllm-python: {explicit} is not a file")
        return explicit
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = os.environ.get("OMNIZIP_VLLM_VENV")
    candidates = [Path(venv)] if venv else []
    candidates.append(Path(__file__).resolve().parents[2] / ".venv-vllm")
    for root in candidates:
        python = root / "bin" / "python"
        if python.is_file():
            return str(python)
    raise CLIError("--engine vllm: no environment with vLLM found: install omnizip[vllm], run "
                   "`make vllm-setup`, or pass --vllm-python")


def _engine_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--vllm-kwargs: not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise CLIError(f"--vllm-kwargs: expected a JSON object, got {text!r}")
    return value


def _served_config(method: Any, options: dict[str, Any]) -> Any:
    """The OmniZip configuration the engines serve (None for ``--method none``)."""
    from ..config import OmniZipConfig

    if method is None:
        return None
    if not isinstance(method, OmniZipConfig):
        raise CLIError(f"--engine vllm serves the omnizip methods and none, not "
                       f"{getattr(method, 'name', type(method).__name__)!r}; use --engine hf")
    if "budget" not in options and method.budget != "exact":
        method = dataclasses.replace(method, budget="exact")  # the only budget vLLM can serve
    return method


def vllm_answerer(args: argparse.Namespace, method: Any, options: dict[str, Any], log_dir: Path) -> tuple[Any, Any, Any]:
    """(answer function, the served configuration, the thinker config for FLOPs) of
    ``--engine vllm``. Bad options raise :class:`CLIError` before any engine starts."""
    from ..loading import BUILTIN_MODELS

    if args.model in BUILTIN_MODELS:
        raise CLIError(f"--engine vllm loads checkpoints, not the built-in {args.model!r}: save "
                       "one with `python scripts/vllm_tiny_checkpoint.py DIR` and pass --model "
                       "DIR (both engines load it)")
    if args.attn_implementation or args.device not in (None, "auto"):
        raise CLIError("--attn-implementation and --device apply to --engine hf (vLLM picks "
                       "its own attention and devices)")
    config = _served_config(method, options)
    try:
        from ..vllm.settings import server_config

        if config is not None:
            server_config(config)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    engine_kwargs = _engine_kwargs(args.vllm_kwargs)
    python = find_vllm_python(args.vllm_python)
    try:
        from transformers import AutoConfig, AutoProcessor

        from ..eval.vllm_engine import VllmAnswerer, vllm_family

        hf_config = AutoConfig.from_pretrained(args.model)
        family = vllm_family(str(getattr(hf_config, "model_type", None)))
        processor = AutoProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--model {args.model}: {exc}") from exc
    thinker_config = getattr(hf_config, "thinker_config", hf_config)
    dtype = args.dtype
    if dtype in (None, "auto"):
        # the checkpoint's own, as --engine hf loads it (vLLM's "auto" runs float32 checkpoints
        # in 16 bits)
        saved = getattr(hf_config, "dtype", None) or getattr(thinker_config, "dtype", None)
        dtype = str(saved).removeprefix("torch.") if saved is not None else "auto"
    try:
        answerer = VllmAnswerer(
            args.model, processor, thinker_config, config, python=python, family=family,
            max_new_tokens=args.max_new_tokens, fps=args.fps, max_frames=args.max_frames,
            min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            use_audio_in_video=not args.video_only, tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size, batch_size=args.batch_size, dtype=dtype,
            engine_kwargs=engine_kwargs, log_dir=log_dir,
        )
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"{first} (engine logs: {log_dir})") from exc
    return answerer, config, thinker_config
