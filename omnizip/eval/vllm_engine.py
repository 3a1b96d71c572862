"""``omnizip eval --engine vllm``: the benchmark answered by vLLM engines, in batches.

The main environment (transformers, this CLI) and vLLM's environment (its own torch and
transformers) are separate, so :class:`VllmAnswerer` runs each engine as a subprocess in vLLM's
interpreter (:mod:`omnizip.vllm.eval_worker`) and talks JSON lines with it. What each side does:

- here: the item's conversation, its decoded frames and audio track and the processor inputs
  (:class:`~omnizip.eval.conversation.ConversationInputs`, the same as ``--engine hf``); the
  prompt text; the token counts before compression (the processor's) and what OmniZip keeps of
  them (``budget="exact"``: a function of the layout, :func:`omnizip.vllm.layout.kept_counts`);
- the worker: ``vllm.LLM`` with the OmniZip plugin (``hf_overrides``), the frames and audio as
  ``multi_modal_data``, greedy decoding; it answers a whole batch with one ``generate`` call.

Every answer is checked: the prompt vLLM prefilled must be the text tokens plus the kept tokens
(else the item is an error naming both counts). Batches are prepared here while the engines
generate the previous ones; ``data_parallel_size`` engines (each over ``tensor_parallel_size``
devices) take batches as they come free.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import OmniZipConfig
from .conversation import ConversationInputs
from .datasets import Item
from .prompt import SYSTEM_PROMPT, build_conversation

__all__ = ["VllmAnswerer", "vllm_family"]

_FAMILIES = {"qwen2_5_omni": "qwen2.5-omni", "qwen3_omni_moe": "qwen3-omni"}


def vllm_family(model_type: str) -> str:
    """The plugin's family name for a checkpoint's ``model_type`` (full models only)."""
    family = _FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"--engine vllm serves full Qwen2.5-Omni / Qwen3-Omni checkpoints "
                         f"(model_type {', '.join(_FAMILIES)}), got model_type {model_type!r}")
    return family


@dataclass
class _Prepared:
    item: Item
    request: dict[str, Any]
    stats: dict[str, Any]


class _Worker:
    """One engine process; :meth:`run` sends a batch and reads its answers."""

    def __init__(self, python: str, spec: dict, env: dict[str, str], log: Path, timeout: float) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [python, "-m", "omnizip.vllm.eval_worker", json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log_file, env=env, text=True, bufsize=1,
        )
        try:
            self.started = self._read(timeout)
            if not self.started.get("ready"):
                raise RuntimeError(f"the vLLM engine did not start: {self.started.get('fatal') or self._tail()}")
        except BaseException:
            self.close()
            raise

    def _tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or f"(no output; log {self.log})"

    def _read(self, timeout: float | None = None) -> dict:
        if timeout is None:
            box = [self.proc.stdout.readline()]
        else:  # start-up: a reader thread, so that a hung engine cannot block forever
            box = []
            reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"the vLLM engine stopped answering (log {self.log}):\n{self._tail()}")
        return json.loads(box[0])

    def run(self, requests: list[dict], tag: int) -> dict[str, dict]:
        self.proc.stdin.write(json.dumps({"tag": tag, "batch": requests}) + "\n")
        self.proc.stdin.flush()
        results: dict[str, dict] = {}
        while True:
            message = self._read()
            if "done" in message:
                return results
            results[str(message["id"])] = message

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"shutdown": True}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class VllmAnswerer(ConversationInputs):
    """The evaluation's answer function on vLLM engines (see the module docstring).

    Args:
        model: a full Qwen2.5-Omni / Qwen3-Omni checkpoint (folder or hub id) vLLM can load.
        processor: its processor in this environment (for the inputs and token counts).
        thinker_config: its thinker's config (token ids and layout constants).
        config: the OmniZip configuration to serve (``budget`` must be ``"exact"``), or None
            for vLLM's own model without compression.
        python: the interpreter of vLLM's environment (omnizip installed there).
        max_new_tokens, fps, max_frames, min_pixels, max_pixels, use_audio_in_video,
            system_prompt: as for :class:`~omnizip.eval.generation.OmniAnswerer`.
        tensor_parallel_size: devices per engine; data_parallel_size: engines.
        batch_size: requests per ``generate`` call of an engine.
        dtype: vLLM's ``dtype`` (``"auto"``: the checkpoint's).
        engine_kwargs: more ``vllm.LLM`` arguments (e.g. ``{"max_model_len": 32768}``).
        log_dir: where each engine's log goes (``vllm-engine-<rank>.log``).
        startup_timeout: seconds an engine may take to start.
    """

    def __init__(self, model: str, processor: Any, thinker_config: Any, config: OmniZipConfig | None, *,
                 python: str, family: str, max_new_tokens: int = 16, fps: float = 2.0,
                 max_frames: int | None = None, min_pixels: int | None = None,
                 max_pixels: int | None = None, use_audio_in_video: bool = True,
                 system_prompt: str | None = SYSTEM_PROMPT, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, batch_size: int = 32, dtype: str = "auto",
                 engine_kwargs: dict[str, Any] | None = None, log_dir: str | os.PathLike | None = None,
                 startup_timeout: float = 1800.0) -> None:
        from ..vllm.blocks import Qwen2_5OmniBlocks, Qwen3OmniBlocks
        from ..vllm.settings import config_to_override, server_config

        super().__init__(processor, fps=fps, max_frames=max_frames, min_pixels=min_pixels,
                         max_pixels=max_pixels, use_audio_in_video=use_audio_in_video,
                         system_prompt=system_prompt)
        for name, value in (("tensor_parallel_size", tensor_parallel_size),
                            ("data_parallel_size", data_parallel_size), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.config = None if config is None else server_config(config)
        blocks_class = Qwen3OmniBlocks if family == "qwen3-omni" else Qwen2_5OmniBlocks
        self.blocks = blocks_class.from_thinker_config(thinker_config)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._tmp = Path(tempfile.mkdtemp(prefix="omnizip-vllm-eval-"))
        log_dir = Path(log_dir) if log_dir is not None else self._tmp
        log_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "model": model, "family": family, "max_tokens": max_new_tokens, "dtype": dtype,
            "omnizip": None if self.config is None else config_to_override(self.config),
            "tensor_parallel_size": tensor_parallel_size,
            "sampling_rate": int(processor.feature_extractor.sampling_rate),
            "engine_kwargs": dict(engine_kwargs or {}),
        }
        self.workers: list[_Worker] = []
        try:
            for rank in range(data_parallel_size):
                env = _worker_env(rank, tensor_parallel_size, data_parallel_size, spec["engine_kwargs"])
                self.workers.append(_Worker(python, spec, env, log_dir / f"vllm-engine-{rank}.log",
                                            startup_timeout))
        except BaseException:
            self.close()
            raise
        self.vllm_version = self.workers[0].started.get("vllm")

    # -- one item ------------------------------------------------------------------------------
    def _prompt_text(self, messages: list[dict[str, Any]], interleaved: bool) -> str:
        """The chat template's text for the decoded messages, media as placeholders (what
        :func:`omnizip.inputs.conversation_inputs` renders for the processor)."""
        rendered = []
        for message in messages:
            content = []
            for part in message.get("content", []):
                if part.get("type") == "video":
                    content.append({"type": "video"})
                    if part.get("audio") is not None and not interleaved:
                        content.append({"type": "audio"})
                else:
                    content.append(part)
            rendered.append({"role": message.get("role", "user"), "content": content})
        return self.processor.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)

    def _kept(self, inputs: Any, interleaved: bool, n_audio: int, n_video: int) -> tuple[int, int]:
        """(kept audio, kept video) tokens: all without compression, else the exact budget's
        counts of each media block."""
        if self.config is None:
            return n_audio, n_video
        from ..vllm.layout import kept_counts

        blocks, config = self.blocks, self.config
        lengths = inputs.get("feature_attention_mask")
        lengths = [] if lengths is None else [int(v) for v in lengths.sum(-1).tolist()]
        spans = []
        grids = inputs.get("video_grid_thw")
        if grids is not None:
            spg = inputs.get("video_second_per_grid")
            second = float(spg.flatten()[0]) if spg is not None else blocks.default_second_per_grid
            joint = blocks.audio_tokens(lengths.pop(0)) if interleaved and lengths else None
            spans.append(blocks.video(grids[0], second, joint))
        spans += [blocks.audio(blocks.audio_tokens(n)) for n in lengths]
        counts = [kept_counts(b, config, audio_token_id=blocks.audio_token_id,
                              video_token_id=blocks.video_token_id) for b in spans]
        return sum(a for a, _ in counts), sum(v for _, v in counts)

    def _prepare(self, item: Item, index: int) -> _Prepared:
        messages = self.decoded(build_conversation(item, system_prompt=self.system_prompt))
        inputs, interleaved = self.processor_inputs(messages)
        ids = inputs["input_ids"][0]
        n_audio = int((ids == self.blocks.audio_token_id).sum())
        n_video = int((ids == self.blocks.video_token_id).sum())
        kept_audio, kept_video = self._kept(inputs, interleaved, n_audio, n_video)
        media: dict[str, np.ndarray] = {}
        for message in messages:
            for part in message.get("content", []):
                if part.get("type") == "video":
                    media["frames"] = np.asarray(part["video"], dtype=np.uint8)
                    if part.get("audio") is not None:
                        media["audio"] = np.asarray(part["audio"], dtype=np.float32)
        path = None
        if media:
            path = self._tmp / f"item-{index}.npz"
            np.savez(path, **media)
        extra = self.videos_kwargs()
        request = {"id": item.id, "prompt": self._prompt_text(messages, interleaved),
                   "media": None if path is None else str(path),
                   "use_audio_in_video": interleaved, "fps": self.fps,
                   "mm_processor_kwargs": extra or {}}
        stats = {"prompt_tokens": int(ids.numel()), "n_text": int(ids.numel()) - n_audio - n_video,
                 "n_audio": n_audio, "n_video": n_video, "kept_audio": kept_audio, "kept_video": kept_video}
        return _Prepared(item, request, stats)

    @staticmethod
    def _finish(prepared: _Prepared, answer: dict | None) -> tuple[str, dict, str | None]:
        stats = dict(prepared.stats)
        if answer is None:
            return "", {}, "the vLLM engine returned no answer for this item"
        if answer.get("error"):
            return "", {}, answer["error"]
        expected = stats["n_text"] + stats["kept_audio"] + stats["kept_video"]
        if answer["prompt_len"] != expected:
            return "", {}, (f"vLLM prefilled {answer['prompt_len']} prompt tokens, the layout "
                            f"predicts {expected} (text {stats['n_text']} + kept audio "
                            f"{stats['kept_audio']} + kept video {stats['kept_video']})")
        stats.update(generated_tokens=len(answer["token_ids"]), generated_ids=answer["token_ids"],
                     prompt_tokens_kept=answer["prompt_len"], cached_tokens=answer["cached"])
        return answer["text"].strip(), stats, None

    # -- batches -------------------------------------------------------------------------------
    def answer_batch(self, items: Iterable[Item]) -> Iterator[tuple[Item, str, dict, str | None]]:
        """``(item, answer, stats, error or None)`` for every item, as the engines finish them
        (not in order). Inputs are prepared in a thread while the engines generate."""
        items = list(items)
        ready: queue.Queue = queue.Queue(maxsize=len(self.workers))
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def prepare() -> None:
            for start in range(0, len(items), self.batch_size):
                batch = []
                for i, item in enumerate(items[start : start + self.batch_size], start):
                    if stop.is_set():
                        break
                    try:
                        batch.append(self._prepare(item, i))
                    except Exception as exc:  # an unreadable video: this item fails
                        done.put([(item, "", {}, f"{type(exc).__name__}: {exc}")])
                if batch:
                    ready.put(batch)
            for _ in self.workers:
                ready.put(None)

        def serve(worker: _Worker) -> None:
            while (batch := ready.get()) is not None:
                try:
                    answers = worker.run([p.request for p in batch], id(batch))
                    done.put([(p.item, *self._finish(p, answers.get(str(p.item.id)))) for p in batch])
                except Exception as exc:  # the engine died: every item of the batch fails
                    done.put([(p.item, "", {}, str(exc)) for p in batch])
                finally:
                    for p in batch:
                        if p.request["media"]:
                            Path(p.request["media"]).unlink(missing_ok=True)

        threads = [threading.Thread(target=prepare, daemon=True)]
        threads += [threading.Thread(target=serve, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        remaining = len(items)
        try:
            while remaining:
                for result in done.get():
                    remaining -= 1
                    yield result
        finally:
            stop.set()

    def __call__(self, item: Item) -> tuple[str, dict]:
        (_, text, stats, error), = self.answer_batch([item])
        if error:
            raise RuntimeError(error)
        return text, stats

    def close(self) -> None:
        """Stop the engines and remove the temporary media."""
        for worker in getattr(self, "workers", []):
            worker.close()
        self.workers = []
        shutil.rmtree(self._tmp, ignore_errors=True)


def _worker_env(rank: int, tp: int, dp: int, engine_kwargs: dict[str, Any]) -> dict[str, str]:
    """The environment of engine ``rank``: this package first on the path; with several
    engines on one machine's GPUs, each sees its own ``tp`` devices (Ray places them itself)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if dp > 1 and engine_kwargs.get("distributed_executor_backend") != "ray":
        visible = env.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(dp * tp)]
        if len(devices) >= dp * tp:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[rank * tp : (rank + 1) * tp])
    return env
