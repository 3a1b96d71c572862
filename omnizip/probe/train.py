"""Training the probe from scratch on a CPU: a two-stage curriculum and one auxiliary loss
(docs/probe.md).

Trained from scratch on the full task, a model this small stays at chance: nothing tells it
which of the many video tokens matters before it can read a colour at all. The curriculum
(:data:`CURRICULUM`) first shows one-window clips on a plain background with only the target
square (learn to read a colour), then the full task (learn which square the question means: the
tone's window, or the ring). A stage ends when the accuracy over its last ``window`` batches
reaches its threshold and each variant's reaches the stage's ``each``, or after its step cap
(with 10 batches and no per-variant bound, seed 2 ended its full stage on a lucky run of
batches: 97.5% running, 93.4% held-out). The audio-led question takes two steps of
attention, which the answer alone did not teach (:func:`audio_colour_loss` does).

Training clips come from seeds ``(seed, step, row)`` through ``numpy.random.SeedSequence``; the
held-out clips (:func:`heldout_seeds`) come from a separate key, so they are never trained on.
Rows of a batch alternate between the two variants.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from .model import PROBE_SIZES, answer_token_ids, build_probe_model
from .task import (
    AUDIO_TOKENS_PER_SECOND,
    VARIANTS,
    ProbeSample,
    ProbeTask,
    build_batch,
    build_probe_processor,
    make_sample,
)

__all__ = [
    "CURRICULUM",
    "Stage",
    "TrainSettings",
    "audio_colour_loss",
    "heldout_seeds",
    "train_probe",
    "training_seeds",
]

#: SeedSequence keys of the two sample streams
_TRAIN_KEY, _HELDOUT_KEY = 1, 2


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: which clips, its learning rate, and when it ends.

    ``windows`` None means the task's own window count.
    """

    name: str
    windows: int | None
    plain: bool
    distractors: bool
    max_steps: int
    accuracy: float
    lr: float
    each: float = 0.0  # the running accuracy every variant must reach too


CURRICULUM: tuple[Stage, ...] = (
    Stage("read", windows=1, plain=True, distractors=False, max_steps=150, accuracy=0.95, lr=2e-3,
          each=0.9),
    Stage("full", windows=None, plain=False, distractors=True, max_steps=700, accuracy=0.97,
          lr=1e-3, each=0.95),
)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings (defaults: those of the committed weights)."""

    batch: int = 16
    warmup: int = 20
    window: int = 20  # batches in the running accuracy that ends a stage
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0  # weight of the audio-token colour loss (:func:`audio_colour_loss`)
    aux_layer: int = 2  # decoder layer whose output the auxiliary loss reads
    aux_target: str = "tone"  # "tone" or "window": which audio tokens name a colour
    stages: tuple[Stage, ...] = CURRICULUM


def _seed_int(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def training_seeds(seed: int, step: int, batch: int) -> list[int]:
    """Clip seeds of one training batch."""
    return [_seed_int(_TRAIN_KEY, seed, step, row) for row in range(batch)]


def heldout_seeds(n: int) -> list[int]:
    """Clip seeds of the held-out set (the same for every model)."""
    return [_seed_int(_HELDOUT_KEY, i) for i in range(n)]


def audio_colour_loss(model: Any, hidden: torch.Tensor, input_ids: torch.Tensor,
                      samples: list[ProbeSample], loud_tokens: int | None = None) -> torch.Tensor:
    """Auxiliary loss: at an inner decoder layer, every audio token names the colour of its
    window's square (windows without a square are left out).

    The audio-led question takes two steps of attention: the tone's audio tokens gather the
    colour of the square flashed in their window, then the last token reads the loud audio
    tokens. Trained on the answer alone the model found neither (audio-led accuracy 0.3-0.47
    for hundreds of steps while the visual-only clips reached 0.9-1.0; docs/probe.md). This
    loss teaches the first step, at a layer early enough (``aux_layer`` of 4) that the later
    layers can take the second.

    With ``loud_tokens`` (the *tone* target, the default recipe): only the first
    ``loud_tokens`` audio tokens of the tone's window (the tone itself) name that window's colour;
    every other audio token is pushed to the uniform answer distribution (names no colour).
    The colour is then carried by the loud tokens alone, so the last token's second step is a
    plain read of "the audio tokens that name a colour" instead of a search for loudness among
    audio tokens that all name one: with the *window* target (``loud_tokens`` None, the first
    recipe) seed 1 never found that step in 700 steps (docs/probe.md).

    Args:
        hidden: ``[B, L, D]`` the decoder's hidden states after ``aux_layer``.
        input_ids: ``[B, L]``; every row holds the same number of audio tokens, in window order.
        samples: the batch's clips (their ``colours``, one per window, -1 without a square, and
            ``tone``, the tone's window).
        loud_tokens: audio tokens of the tone, from its window's start (None: the window target).

    Returns: the window target: the mean cross-entropy of the answer head's ``[B, W, n, 4]``
    audio-token logits; the tone target: the loud tokens' mean cross-entropy plus the other
    tokens' mean KL divergence from the uniform distribution (each part 0 at its optimum).
    """
    is_audio = input_ids == model.config.audio_token_id
    colours = torch.tensor([s.colours for s in samples])  # [B, W]
    batch, windows = colours.shape
    audio = hidden[is_audio].view(batch, windows, -1, hidden.shape[-1])  # [B, W, n, D]
    logits = model.lm_head(audio)  # [B, W, n, 4]
    per_window, answers = audio.shape[2], logits.shape[-1]
    if loud_tokens is None:
        labels = colours[:, :, None].expand(-1, -1, per_window)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, answers),
                                                 labels.reshape(-1), ignore_index=-1)
    tone = torch.tensor([s.tone for s in samples])  # [B]
    rows = torch.arange(batch)
    tone_colour = colours[rows, tone]  # [B], -1 when the tone's window shows no square
    loud = torch.zeros(batch, windows, per_window, dtype=torch.bool)
    loud[rows, tone, :loud_tokens] = True
    loud &= (tone_colour >= 0)[:, None, None]
    log_p = torch.log_softmax(logits, dim=-1)  # [B, W, n, 4]
    # the two parts are averaged apart: the loud tokens are 1/8 of a clip's audio at most
    colour_labels = tone_colour[:, None, None].expand(-1, windows, per_window)
    named = -log_p.gather(-1, colour_labels.clamp(min=0)[..., None])[..., 0]  # [B, W, n]
    named = named[loud].mean() if bool(loud.any()) else log_p.new_zeros(())
    # KL(uniform || p) per token: 0 when the token names no colour
    silent = -(log_p.mean(-1) + torch.log(torch.tensor(float(answers))))  # [B, W, n]
    return named + silent[~loud].mean()


def _lr(settings: TrainSettings, stage: Stage, stage_step: int) -> float:
    """Linear warm-up over each stage's first steps, then constant (a stage ends on accuracy,
    so no schedule can know its length)."""
    return stage.lr * min(1.0, (stage_step + 1) / settings.warmup)


def train_probe(
    seed: int,
    task: ProbeTask | None = None,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] | None = None,
    sizes: dict[str, int] | None = None,
    max_seconds: float | None = None,
    resume: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a probe model from the seeded initialisation; returns ``(model, record)``.

    ``record`` holds what :func:`omnizip.probe.model.save_probe` stores: seed, sizes, task,
    answer token ids, settings and the history (per stage: steps, seconds, final running
    accuracy per variant). ``max_seconds``: stop training after this long (the record says
    so: ``"stopped": "time limit"``), else the curriculum runs to its end. ``resume``:
    ``(trained parameters, record)`` of a run stopped by its time limit; training goes on where
    it stopped (same clip stream, the stage's remaining steps; a fresh optimiser, warmed up
    again) and the record's history grows by the resumed part.
    """
    task = task or ProbeTask()
    settings = settings or TrainSettings()
    if settings.aux_target not in ("tone", "window"):
        raise ValueError(f"aux_target must be 'tone' or 'window', got {settings.aux_target!r}")
    loud_tokens = (task.tone_seconds * AUDIO_TOKENS_PER_SECOND
                   if settings.aux_target == "tone" else None)
    sizes = dict(sizes or PROBE_SIZES)
    processors: dict[int, Any] = {}
    torch.manual_seed(seed)
    model = None
    history: list[dict[str, Any]] = []
    step = 0
    stages = list(settings.stages)
    if resume is not None:
        done = resume[1]["history"]
        history = [dict(h) for h in done]
        step = sum(h["steps"] for h in done)
        # the stage it stopped in, with the steps it has left; the stages after it
        at = len(done) - 1
        left = stages[at].max_steps - sum(h["steps"] for h in done if h["stage"] == stages[at].name)
        stages = [replace(stages[at], max_steps=max(left, 0)), *stages[at + 1:]]
    start = time.perf_counter()

    def out_of_time() -> bool:
        return max_seconds is not None and time.perf_counter() - start > max_seconds

    for stage in stages:
        if out_of_time():
            break
        clip_task = replace(task, windows=stage.windows or task.windows)
        if clip_task.windows not in processors:
            processors[clip_task.windows] = build_probe_processor(clip_task)
        processor = processors[clip_task.windows]
        if model is None:
            token_ids = answer_token_ids(processor.tokenizer)
            model = build_probe_model(seed, token_ids, sizes)
            if resume is not None:
                model.load_state_dict(resume[0], strict=False)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimiser = torch.optim.AdamW(params, lr=stage.lr, weight_decay=settings.weight_decay)
        recent: list[torch.Tensor] = []  # [batch] correct flags of the last batches
        stage_start, stage_steps = time.perf_counter(), 0
        while stage_steps < stage.max_steps and not out_of_time():
            samples = [make_sample(clip_task, VARIANTS[row % len(VARIANTS)], s,
                                   distractors=stage.distractors, plain=stage.plain)
                       for row, s in enumerate(training_seeds(seed, step, settings.batch))]
            inputs, answers = build_batch(processor, samples)
            for group in optimiser.param_groups:
                group["lr"] = _lr(settings, stage, stage_steps)
            out = model(**inputs, use_audio_in_video=True,
                        output_hidden_states=settings.aux_weight > 0)
            logits = out.logits[:, -1]
            target = torch.from_numpy(answers)
            loss = torch.nn.functional.cross_entropy(logits, target)
            if settings.aux_weight > 0:
                loss = loss + settings.aux_weight * audio_colour_loss(
                    model, out.hidden_states[settings.aux_layer], inputs["input_ids"], samples,
                    loud_tokens=loud_tokens)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimiser.step()
            recent = [*recent, (logits.detach().argmax(-1) == target).float()][-settings.window:]
            step, stage_steps = step + 1, stage_steps + 1
            running = torch.stack(recent)
            by_variant = {v: float(running[:, i::len(VARIANTS)].mean()) for i, v in enumerate(VARIANTS)}
            if log is not None and stage_steps % 10 == 0:
                log(f"{stage.name:>5} step {stage_steps:4d} loss {loss.item():.3f} running accuracy "
                    f"{float(running.mean()):.3f} ({', '.join(f'{v} {a:.2f}' for v, a in by_variant.items())})"
                    f" {time.perf_counter() - start:.0f} s")
            if (len(recent) == settings.window and float(running.mean()) >= stage.accuracy
                    and min(by_variant.values()) >= stage.each):
                break
        history.append({"stage": stage.name, "steps": stage_steps,
                        **({"resumed": True} if resume is not None else {}),
                        "running_accuracy": round(float(running.mean()), 4),
                        "running_by_variant": {v: round(a, 4) for v, a in by_variant.items()},
                        "seconds": round(time.perf_counter() - stage_start, 1)})
    model.eval()
    record = {
        "seed": seed, "sizes": sizes, "task": task.to_dict(), "answer_token_ids": token_ids,
        "settings": {**asdict(settings), "stages": [asdict(s) for s in settings.stages]},
        "history": history,
        "train_seconds": round(time.perf_counter() - start
                               + (resume[1]["train_seconds"] if resume is not None else 0.0), 1),
        "stopped": "time limit" if out_of_time() else "curriculum done",
        "threads": torch.get_num_threads(),
    }
    return model, record
