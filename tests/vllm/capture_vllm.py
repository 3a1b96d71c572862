"""Run OmniZip requests through vLLM and record what its decoder sees, on every rank.

Runs in the vLLM environment (``.venv-vllm``), driven by tests/test_vllm_equivalence.py from
the main environment: ``python capture_vllm.py docs/algorithm.md.json OUT.pt``. One engine start serves every
request of the spec; the plugin is loaded through its ``vllm.general_plugins`` entry point.
Functions sent to the workers (``collective_rpc``) record, per request and per rank, the media
encoder's outputs (kept tokens with their position channels) and the decoder's prefill inputs
(M-RoPE positions and input embeddings of every prefill chunk); the driver adds the prompt
length, the cached-prefix length and the first generated tokens with their logprobs. A "batch"
entry sends several requests at once and records their outputs.

Spec: ``{"model": dir, "omnizip": {...}, "max_num_batched_tokens": int,
"tensor_parallel_size": int, "requests": [{"name", "prompt", "frames"?: npz, "audio"?: npz,
"use_audio_in_video": bool, "salt"?: str}], "batch": [names], "max_tokens": int,
"max_items"?: int}``; ``frames`` / ``audio`` may be lists of npz paths (one per item: a live
stream's chunks).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # single rank: one process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np
import torch


def _paths(value) -> list:
    return value if isinstance(value, list) else [value]


def _request(req: dict, salt: str | None = None) -> dict:
    data: dict = {}
    # one npz path per item, or a list of paths: several items (a live stream's chunks)
    if req.get("frames"):
        frames = [np.load(f)["frames"] for f in _paths(req["frames"])]
        data["video"] = frames if isinstance(req["frames"], list) else frames[0]
    if req.get("audio"):
        audio = [(np.load(f)["audio"].astype(np.float32), 16000) for f in _paths(req["audio"])]
        data["audio"] = audio if isinstance(req["audio"], list) else audio[0]
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


def _install_capture(worker) -> bool:
    """On a worker: record the decoder's inputs and the media encoder's outputs."""
    model = worker.model_runner.get_model()
    model._omnizip_capture = {"decoder": [], "media": []}

    def on_forward(module, args, kwargs):
        # the top-level model: the decoder inside is wrapped by vLLM's compile decorator, whose
        # __call__ bypasses module hooks
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and positions is not None:
            model._omnizip_capture["decoder"].append((positions.detach().cpu().clone(), embeds.detach().cpu().clone()))

    model.register_forward_pre_hook(on_forward, with_kwargs=True)
    encode = model.embed_multimodal

    def embed_multimodal(**kwargs):
        out = encode(**kwargs)
        model._omnizip_capture["media"].extend(o.detach().cpu().clone() for o in out)
        return out

    model.embed_multimodal = embed_multimodal
    return True


def _drain_capture(worker) -> dict:
    model = worker.model_runner.get_model()
    data, model._omnizip_capture = model._omnizip_capture, {"decoder": [], "media": []}
    return data


def _prefill(decoder: list, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """The prefill chunks' (positions, embeddings) until ``n`` prompt tokens are covered."""
    pos, emb, steps = [], [], 0
    for positions, embeds in decoder:
        if steps >= n:
            break
        pos.append(positions)
        emb.append(embeds)
        steps += embeds.shape[0]
    if not pos:
        return None, None, 0
    return torch.cat(pos, dim=-1), torch.cat(emb, dim=0), len(pos)


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    tp = int(spec.get("tensor_parallel_size", 1))
    if tp > 1:
        # several CPU workers: one core each (vLLM refuses to share one NUMA node otherwise);
        # the capture functions are sent to the worker processes
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(tp)))
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
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
        limit_mm_per_prompt={"video": spec.get("max_items", 1), "audio": spec.get("max_items", 1),
                             "image": 0},
        gpu_memory_utilization=0.05,
        tensor_parallel_size=tp,
        distributed_executor_backend="mp" if tp > 1 else None,
        seed=0,
    )
    startup = time.time() - started
    llm.collective_rpc(_install_capture)
    params = SamplingParams(max_tokens=spec.get("max_tokens", 3), temperature=0.0, logprobs=5)
    requests = {r["name"]: r for r in spec["requests"]}
    results: dict = {"startup_s": startup, "single": {}, "batch": {}, "ranks": {},
                     "block_size": int(llm.llm_engine.vllm_config.cache_config.block_size)}
    for name, req in requests.items():
        llm.collective_rpc(_drain_capture)
        output = llm.generate([_request(req)], params, use_tqdm=False)[0]
        res = _result(output)
        per_rank = llm.collective_rpc(_drain_capture)
        n = res["prompt_len"] - res["cached"]
        res["positions"], res["embeds"], res["prefill_chunks"] = _prefill(per_rank[0]["decoder"], n)
        results["single"][name] = res
        # every rank's view: the media encoder's outputs (kept tokens + position channels)
        # and the decoder's prefill inputs
        results["ranks"][name] = [
            {"media": r["media"], "decoder": _prefill(r["decoder"], n)[:2]} for r in per_rank
        ]
    if spec.get("batch"):
        outputs = llm.generate([_request(requests[n], f"batch-{n}") for n in spec["batch"]], params, use_tqdm=False)
        results["batch"] = {n: _result(o) for n, o in zip(spec["batch"], outputs, strict=True)}
    results["total_s"] = time.time() - started
    torch.save(results, sys.argv[2])


if __name__ == "__main__":
    main()
