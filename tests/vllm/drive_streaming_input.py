"""Send a live stream's chunks through vLLM's streaming-input path (vLLM 0.32 ``AsyncLLM``).

Runs in the vLLM environment, driven by tests/test_vllm_streams.py:
``python drive_streaming_input.py SPEC.json OUT.json``. One resumable request: an async
generator yields one ``StreamingInput`` per spec entry (a prompt piece with its chunk items and
its ``max_tokens``); vLLM appends each to the waiting session (the chunk's items included).
Records, after each input, the session's prompt length and the tokens generated for it.

Spec: ``{"model": dir, "omnizip": {...}, "inputs": [{"prompt": str, "chunks": [npz, ...],
"max_tokens": int}]}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np


async def run(spec: dict) -> list[dict]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.engine.protocol import StreamingInput
    from vllm.v1.engine.async_llm import AsyncLLM

    from omnizip.vllm import hf_overrides

    args = AsyncEngineArgs(
        model=spec["model"], hf_overrides=hf_overrides("qwen2.5-omni", spec.get("omnizip")),
        dtype="float32", enforce_eager=True, max_model_len=8192, enable_prefix_caching=True,
        limit_mm_per_prompt={"video": 4, "audio": 4, "image": 0}, seed=0)
    llm = AsyncLLM.from_engine_args(args)
    kwargs = {"use_audio_in_video": True, "fps": 2.0, "do_sample_frames": False}

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, temperature=0.0)

    def piece(entry: dict) -> dict:
        media = [np.load(path) for path in entry["chunks"]]
        prompt: dict = {"prompt": entry["prompt"]}
        if media:
            prompt["multi_modal_data"] = {
                "video": [m["frames"] for m in media],
                "audio": [(m["audio"].astype(np.float32), 16000) for m in media]}
            prompt["mm_processor_kwargs"] = kwargs
        return prompt

    # outputs are cumulative over the session; the next input is sent once the previous one's
    # tokens are all out (a live client's next chunk arrives later), so each output's prompt
    # length is the session's length for the input it answers
    steps: list[dict] = []
    generated: list[int] = []
    answered = asyncio.Event()

    async def inputs():
        expected = 0
        for entry in spec["inputs"]:  # one entry per chunk or question
            steps.append({"start": expected})
            expected += entry["max_tokens"]
            answered.clear()
            yield StreamingInput(prompt=piece(entry), sampling_params=params(entry["max_tokens"]))
            await answered.wait()

    try:
        async for out in llm.generate(inputs(), params(1), request_id="stream"):
            generated = list(out.outputs[0].token_ids)
            step = steps[-1]
            step["prompt_ids"] = list(out.prompt_token_ids or [])
            step["prompt_len"] = len(step["prompt_ids"])
            step["tokens"] = generated[step["start"]:]
            if len(generated) >= step["start"] + spec["inputs"][len(steps) - 1]["max_tokens"]:
                answered.set()
    finally:
        llm.shutdown()
    return steps


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    steps = asyncio.run(run(spec))
    with open(sys.argv[2], "w") as fh:
        json.dump(steps, fh)


if __name__ == "__main__":
    main()
