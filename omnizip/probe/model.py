"""The probe model: a small Qwen2.5-Omni thinker of the real class, its answer head, its weights.

The architecture is transformers' ``Qwen2_5OmniThinkerForConditionalGeneration`` (Whisper-style
audio encoder, Qwen2.5-VL vision encoder, M-RoPE decoder) at the sizes of :data:`PROBE_SIZES`,
built by :func:`omnizip.demo.tiny_model.build_tiny_qwen2_5_omni_thinker`, so every compression
method runs on it through ``omnizip.patch`` exactly as on a checkpoint. Two things differ from a
language model, both to make training on a CPU cheap (docs/probe.md):

* the output head is restricted to the four answers: ``lm_head`` is an :class:`AnswerHead`, a
  ``[4, hidden]`` matrix initialised from the seeded head's rows of the answer tokens, so the
  model's ``logits`` are ``[B, L, 4]`` (a 152k-row head at every position would dominate a step);
* the token embedding table (152064 x hidden) is frozen at its seeded values: it is rebuilt from
  the seed, never stored.

What is stored (:func:`save_probe`): the trained parameters as safetensors and a JSON file with
the seed, the sizes, the task and the training record. :func:`load_probe` rebuilds the seeded
model and loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .task import COLOURS, ProbeTask, build_probe_processor

__all__ = [
    "ASSETS",
    "PROBE_SIZES",
    "AnswerHead",
    "ProbeModel",
    "answer_token_ids",
    "build_probe_model",
    "frozen_parameter",
    "load_probe",
    "save_probe",
]

#: decoder hidden 128 x 4 layers; audio and vision encoders hidden 64 x 2 layers
PROBE_SIZES: dict[str, int] = dict(
    text_hidden=128, text_layers=4, text_heads=4, text_kv_heads=2,
    audio_hidden=64, audio_layers=2, audio_heads=4,
    vision_hidden=64, vision_layers=2, vision_heads=2,
)
#: the committed weights (package data)
ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS_FILE = "probe.safetensors"
RECORD_FILE = "probe.json"


class AnswerHead(torch.nn.Module):
    """``lm_head`` restricted to the answer tokens: ``hidden [..., D] -> logits [..., A]``.

    ``token_ids`` ``[A]`` are the vocabulary rows it stands for (kept for the record).
    """

    def __init__(self, weight: torch.Tensor, token_ids: list[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.int64),
                             persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)


def answer_token_ids(tokenizer: Any) -> list[int]:
    """The first token of each colour name (:data:`~omnizip.probe.task.COLOURS`), distinct."""
    ids = [tokenizer.encode(name, add_special_tokens=False)[0] for name, _ in COLOURS]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answer names share a first token: {ids}")
    return ids


def frozen_parameter(name: str) -> bool:
    """Parameters rebuilt from the seed, never trained nor stored (the embedding table)."""
    return name.endswith("embed_tokens.weight")


def build_probe_model(seed: int, token_ids: list[int], sizes: dict[str, Any] | None = None) -> Any:
    """The seeded probe thinker (float32, CPU, eval mode) with its :class:`AnswerHead`.

    ``sizes``: :func:`omnizip.demo.tiny_model.tiny_thinker_config` arguments, plus
    ``rope_theta`` (the decoder's rotary base).
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from ..demo.tiny_model import _finish, tiny_thinker_config

    sizes = dict(sizes or PROBE_SIZES)
    theta = sizes.pop("rope_theta", None)
    cfg = tiny_thinker_config(**sizes)
    if theta is not None:
        cfg.text_config.rope_parameters["rope_theta"] = float(theta)
    model = _finish(Qwen2_5OmniThinkerForConditionalGeneration(cfg), seed)
    head = model.lm_head.weight[torch.tensor(token_ids)]
    model.lm_head = AnswerHead(head, token_ids)
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen_parameter(name))
    return model


def trained_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that training changes (everything but the frozen table), contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters()
            if not frozen_parameter(name)}


@dataclass
class ProbeModel:
    """A loaded probe: the model, the processor for its clips, the task and the record."""

    model: Any
    processor: Any
    task: ProbeTask
    record: dict[str, Any] = field(default_factory=dict)


def save_probe(model: Any, folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``probe.safetensors`` (trained parameters) and ``probe.json`` (``record``: seed,
    sizes, task, answer token ids, training history) into ``folder``; returns the folder."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), str(out / WEIGHTS_FILE))
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return out


def load_probe(folder: str | Path | None = None) -> ProbeModel:
    """The probe from ``folder`` (default: the committed weights in :data:`ASSETS`).

    Raises:
        FileNotFoundError: the folder lacks ``probe.safetensors`` or ``probe.json``.
        ValueError: the weights do not match the model the record describes.
    """
    from safetensors.torch import load_file

    src = Path(folder) if folder is not None else ASSETS
    weights, record_path = src / WEIGHTS_FILE, src / RECORD_FILE
    for path in (weights, record_path):
        if not path.is_file():
            raise FileNotFoundError(f"probe folder {src}: missing {path.name}")
    record = json.loads(record_path.read_text())
    task = ProbeTask(**record["task"])
    model = build_probe_model(int(record["seed"]), list(record["answer_token_ids"]),
                              dict(record["sizes"]))
    state = load_file(str(weights))
    expected = set(trained_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"probe weights {weights} do not match the model: missing "
                         f"{missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return ProbeModel(model=model, processor=build_probe_processor(task), task=task, record=record)
