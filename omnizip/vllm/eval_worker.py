"""The vLLM side of ``omnizip eval --engine vllm``: one offline engine answering batches.

Runs in vLLM's environment (``python -m omnizip.vllm.eval_worker SPEC_JSON``), started and fed
by :class:`omnizip.eval.vllm_engine.VllmAnswerer` in the main environment. The spec:
``{"model", "family", "omnizip": config dict or null (no compression: vLLM's own model),
"max_tokens", "dtype", "tensor_parallel_size", "sampling_rate", "engine_kwargs": {...}}``.

Protocol (JSON lines): the worker writes ``{"ready": true, "vllm": version}`` once the engine
is up (or ``{"fatal": message}`` and exits 2); then for every line ``{"tag", "batch": [request,
...]}`` read from stdin it answers each request with ``{"id", "text", "token_ids",
"prompt_len", "cached", "error"}`` and ends the batch with ``{"done": tag}``; ``{"shutdown":
true}`` or the end of stdin stops it. A request is ``{"id", "prompt", "media": npz path or
null, "use_audio_in_video", "fps", "mm_processor_kwargs"}``; the npz holds ``frames`` (uint8
``[T, H, W, 3]``) and/or ``audio`` (float32 at ``sampling_rate``). The whole batch goes to
``LLM.generate`` at once (vLLM schedules it: continuous batching); a batch that fails is retried
request by request so that one bad item only fails itself.

vLLM logs to stdout; the protocol keeps its own copy of the original stdout and points file
descriptor 1 at stderr before vLLM is imported.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["main"]


def _requests(batch: list[dict], sampling_rate: int) -> list[dict]:
    import numpy as np

    out = []
    for req in batch:
        data: dict[str, Any] = {}
        if req.get("media"):
            with np.load(req["media"]) as media:
                if "frames" in media:
                    data["video"] = media["frames"]
                if "audio" in media:
                    data["audio"] = (media["audio"].astype(np.float32), sampling_rate)
        prompt: dict[str, Any] = {"prompt": req["prompt"]}
        if data:
            prompt["multi_modal_data"] = data
            prompt["mm_processor_kwargs"] = {
                "use_audio_in_video": bool(req.get("use_audio_in_video")),
                "fps": float(req.get("fps", 2.0)),
                "do_sample_frames": False,  # the frames are already sampled at `fps`
                **(req.get("mm_processor_kwargs") or {}),
            }
        out.append(prompt)
    return out


def _result(req: dict, output: Any) -> dict:
    completion = output.outputs[0]
    return {
        "id": req["id"],
        "text": completion.text,
        "token_ids": [int(t) for t in completion.token_ids],
        "prompt_len": len(output.prompt_token_ids),
        "cached": int(output.num_cached_tokens or 0),
        "error": None,
    }


def _answer(llm: Any, params: Any, batch: list[dict], sampling_rate: int) -> list[dict]:
    try:
        outputs = llm.generate(_requests(batch, sampling_rate), params, use_tqdm=False)
        return [_result(req, out) for req, out in zip(batch, outputs, strict=True)]
    except Exception:  # one bad request fails the whole call: isolate it
        if len(batch) == 1:
            raise
    results = []
    for req in batch:
        try:
            results.extend(_answer(llm, params, [req], sampling_rate))
        except Exception as exc:  # reported for this item; the engine keeps serving
            results.append({"id": req["id"], "error": f"{type(exc).__name__}: {exc}".strip()[:500]})
    return results


def _check_plugin(spec: dict) -> None:
    """vLLM loads the OmniZip architectures in every process through omnizip's entry point,
    so omnizip must be installed in this environment, not only importable."""
    from importlib.metadata import entry_points

    if spec.get("omnizip") is None:
        return
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    if "omnizip.vllm:register" not in names:
        raise RuntimeError(
            "omnizip is not installed in the vLLM environment (its vllm.general_plugins entry "
            f"point is missing in {sys.prefix}): run `pip install --no-deps -e <omnizip>` there "
            "(`make vllm-setup` does)"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's log lines go to stderr, the protocol keeps the real stdout

    def send(message: dict) -> None:
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    try:
        spec = json.loads(args[0])
        _check_plugin(spec)
        import vllm
        from vllm import LLM, SamplingParams

        from . import hf_overrides

        kwargs: dict[str, Any] = {
            "model": spec["model"],
            "dtype": spec.get("dtype", "auto"),
            "tensor_parallel_size": int(spec.get("tensor_parallel_size", 1)),
            "seed": 0,
            "limit_mm_per_prompt": {"video": 1, "audio": 1, "image": 0},
        }
        if spec.get("omnizip") is not None:
            kwargs["hf_overrides"] = hf_overrides(spec["family"], spec["omnizip"])
        kwargs.update(spec.get("engine_kwargs") or {})
        llm = LLM(**kwargs)
        params = SamplingParams(max_tokens=int(spec["max_tokens"]), temperature=0.0)
    except Exception as exc:  # start-up: one line to the main process, then exit
        send({"fatal": f"{type(exc).__name__}: {exc}".strip()})
        return 2
    send({"ready": True, "vllm": vllm.__version__})
    sampling_rate = int(spec.get("sampling_rate", 16000))
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if message.get("shutdown"):
            break
        for result in _answer(llm, params, message["batch"], sampling_rate):
            send(result)
        send({"done": message.get("tag")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
