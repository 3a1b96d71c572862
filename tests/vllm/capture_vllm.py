"""Run OmniZip requests through vLLM in-process and record what its decoder sees.

Runs in the vLLM environment (``.venv-vllm``), driven by tests/test_vllm_equivalence.py from
the main environment: ``python capture_vllm.py SPEC.json OUT.pt``. One engine start serves every
request of the spec. For each single request it records the decoder's prefill inputs (M-RoPE
positions and input embeddings of every prefill chunk, concatenated), the prompt length, the
cached-prefix length and the first generated tokens with their logprobs; a "batch" entry sends
several requests at once and records their outputs.

Spec: ``{"model": dir, "omnizip": {...}, "max_num_batched_tokens": int,
"requests": [{"name", "prompt", "frames"?: npz, "audio"?: npz, "use_audio_in_video": bool}],
"batch": [names], "max_tokens": int}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: hooks see the model
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np
import torch


def _request(req: dict, salt: str | None = None) -> dict:
    data: dict = {}
    if req.get("frames"):
        data["video"] = np.load(req["frames"])["frames"]
    if req.get("audio"):
        data["audio"] = (np.load(req["audio"])["audio"].astype(np.float32), 16000)
    # a cache salt per request keeps the prefix cache from mixing cases (a shared salt on
    # purpose shows the reuse of a compressed prefix across questions)
    out = {"prompt": req["prompt"], "cache_salt": salt or req.get("salt", req["name"])}
    if data:
        out["multi_modal_data"] = data
        out["mm_processor_kwargs"] = {
            "use_audio_in_video": bool(req.get("use_audio_in_video", False)),
            "fps": 2.0,
            "do_sample_frames": False,
        }
    return out


def _result(output) -> dict:
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    logprobs = [float(step[tok].logprob) for tok, step in zip(tokens, completion.logprobs, strict=True)]
    top = [{int(k): float(v.logprob) for k, v in step.items()} for step in completion.logprobs]
    return {
        "prompt_len": len(output.prompt_token_ids),
        "prompt_ids": list(output.prompt_token_ids),
        "cached": int(output.num_cached_tokens or 0),
        "tokens": tokens,
        "logprobs": logprobs,
        "top": top,
    }


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    from vllm import LLM, SamplingParams

    # the plugin comes in through its entry point (vllm.general_plugins), as on a server
    from omnizip.vllm import hf_overrides

    started = time.time()
    llm = LLM(
        model=spec["model"],
        hf_overrides=hf_overrides(spec.get("family", "qwen2.5-omni"), spec.get("omnizip")),
        dtype="float32",
        enforce_eager=True,
        max_model_len=8192,
        max_num_batched_tokens=spec.get("max_num_batched_tokens", 8192),
        max_num_seqs=8,
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"video": 1, "audio": 1, "image": 0},
        gpu_memory_utilization=0.05,
        seed=0,
    )
    startup = time.time() - started
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def install(model):
        def hook(module, args, kwargs):
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None and positions is not None:
                captured.append((positions.detach().cpu().clone(), embeds.detach().cpu().clone()))

        # the top-level model (the decoder inside is wrapped by vLLM's compile decorator,
        # whose __call__ bypasses module hooks)
        model.register_forward_pre_hook(hook, with_kwargs=True)

    # in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): the worker's model object itself
    core = llm.llm_engine.engine_core.engine_core
    install(core.model_executor.driver_worker.worker.model_runner.get_model())
    params = SamplingParams(max_tokens=spec.get("max_tokens", 3), temperature=0.0, logprobs=5)
    requests = {r["name"]: r for r in spec["requests"]}
    results: dict = {"startup_s": startup, "single": {}, "batch": {}}
    for name, req in requests.items():
        captured.clear()
        output = llm.generate([_request(req)], params, use_tqdm=False)[0]
        res = _result(output)
        n, pos, emb, steps = res["prompt_len"] - res["cached"], [], [], 0
        for positions, embeds in captured:  # prefill chunks until the prompt is covered
            if steps >= n:
                break
            pos.append(positions)
            emb.append(embeds)
            steps += embeds.shape[0]
        res["positions"] = torch.cat(pos, dim=-1) if pos else None
        res["embeds"] = torch.cat(emb, dim=0) if emb else None
        res["prefill_chunks"] = len(pos)
        results["single"][name] = res
    if spec.get("batch"):
        outputs = llm.generate([_request(requests[n], f"batch-{n}") for n in spec["batch"]], params, use_tqdm=False)
        results["batch"] = {n: _result(o) for n, o in zip(spec["batch"], outputs, strict=True)}
    results["total_s"] = time.time() - started
    torch.save(results, sys.argv[2])


if __name__ == "__main__":
    main()
