"""``run_eval``: answer every item, score it, and keep a resumable record on disk.

A run lives in one folder named after its configuration (:func:`run_name`), under the
output root::

    <output>/<benchmark>__<model>__<method>[__<options>]/
        config.json        what ran: benchmark, data, model, method and its full configuration,
                           generation settings (written once; a resume must match it)
        predictions.jsonl  one line per answered item (appended and flushed as it goes)
        metrics.json       accuracy overall / per category / per annotation field, tokens kept,
                           FLOPs ratio, prefill time (rewritten as the run goes and at the end)

Resuming: items whose id already has an error-free line in ``predictions.jsonl`` are skipped;
items that failed (``"error"`` set, e.g. an unreadable video) are tried again, and the latest
line of an id wins. A half-written last line (the run was killed mid-write) is dropped.

``predictions.jsonl`` lines: ``id``, ``category``, ``fields``, ``answer`` (gold letter),
``prediction`` (extracted letter or null), ``correct``, ``response`` (decoded text),
``error`` (null or the message), ``stats`` (the answer function's stats plus ``flops_ratio``,
``macs_full`` and ``macs_kept`` when the model's dimensions are known; methods whose decoder
layers see different token counts report them as ``layer_tokens`` and are counted per layer).

``metrics.json``: ``accuracy`` (correct / answered, failures count as wrong), ``correct``,
``answered``, ``n_items``, ``n_errors``, ``complete``, ``per_category`` and ``per_field``
(``{name: {value: {accuracy, correct, total}}}``), ``tokens`` (means per item of the prompt,
audio and video tokens before/after and the multimodal ``retention`` = kept / total over all
items), ``flops_ratio`` (mean per item) and ``flops_ratio_aggregate`` (summed FLOPs ratio),
``prefill_ms`` / ``ttft_ms`` / ``overhead_ms`` (mean and median), ``throughput`` (items answered
by the last invocation, its wall time and items/s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..flops import decoder_dims, run_macs
from .datasets import Item
from .extract import extract_choice

__all__ = ["AnswerFn", "RunResult", "compute_metrics", "read_predictions", "run_eval", "run_name"]

AnswerFn = Callable[[Item], tuple[str, dict]]

#: config.json keys a resumed run must agree on
FINGERPRINT = ("benchmark", "model", "method", "method_config", "generation")


def _slug(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(text)).strip("-.")
    return text or "x"


def run_name(benchmark: str, model: str, method: str, options: dict[str, Any] | None = None) -> str:
    """Folder name of a run: ``<benchmark>__<model>__<method>[__k=v_k=v]``.

    ``model`` contributes its last path component (``Qwen/Qwen2.5-Omni-7B`` ->
    ``Qwen2.5-Omni-7B``); options are sorted; a long option string is replaced by a short hash.
    """
    model_part = _slug(Path(str(model).rstrip("/")).name or str(model))
    parts = [_slug(benchmark), model_part, _slug(method)]
    if options:
        opts = "_".join(f"{_slug(k)}={_slug(v)}" for k, v in sorted(options.items()))
        if len(opts) > 80:
            opts = "opts-" + hashlib.sha1(opts.encode()).hexdigest()[:10]
        parts.append(opts)
    return "__".join(parts)


def read_predictions(path: Path) -> dict[str, dict]:
    """The records of ``predictions.jsonl`` by id (latest wins); drops a half-written last line.

    Raises ValueError naming the file and line for a corrupt line elsewhere.
    """
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("not a record with an 'id'")
        except ValueError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                # interrupted mid-write: drop it so the file stays valid JSONL
                path.write_text("".join(lines[:-1]), encoding="utf-8")
                break
            raise ValueError(f"{path}: line {lineno}: corrupt prediction record ({exc})") from None
        records[str(rec["id"])] = rec
    return records


def _acc(correct: int, total: int) -> dict[str, Any]:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "median": statistics.median(values)}


def compute_metrics(items: list[Item], records: dict[str, dict]) -> dict[str, Any]:
    """metrics.json for ``items`` given the records (by id) answered so far."""
    done = [records[it.id] for it in items if it.id in records]
    correct = sum(bool(r.get("correct")) for r in done)
    per_cat: dict[str, list[int]] = {}
    per_field: dict[str, dict[str, list[int]]] = {}
    for rec in done:
        ok = int(bool(rec.get("correct")))
        per_cat.setdefault(str(rec.get("category", "")), [0, 0])
        per_cat[str(rec.get("category", ""))][0] += ok
        per_cat[str(rec.get("category", ""))][1] += 1
        for name, value in (rec.get("fields") or {}).items():
            if value in (None, ""):
                continue
            slot = per_field.setdefault(name, {}).setdefault(str(value), [0, 0])
            slot[0] += ok
            slot[1] += 1
    stats = [r.get("stats") or {} for r in done if not r.get("error")]

    def mean_of(key: str) -> float | None:
        vals = [float(s[key]) for s in stats if s.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    mm_total = sum(s.get("n_audio", 0) + s.get("n_video", 0) for s in stats
                   if "kept_audio" in s and "kept_video" in s)
    mm_kept = sum(s.get("kept_audio", 0) + s.get("kept_video", 0) for s in stats
                  if "kept_audio" in s and "kept_video" in s)
    tokens = {
        key: mean_of(key)
        for key in ("prompt_tokens", "n_text", "n_audio", "kept_audio", "n_video", "kept_video",
                    "generated_tokens")
    }
    kept_prompt = [s["n_text"] + s["kept_audio"] + s["kept_video"] for s in stats
                   if all(k in s for k in ("n_text", "kept_audio", "kept_video"))]
    tokens["prompt_tokens_kept"] = statistics.fmean(kept_prompt) if kept_prompt else None
    tokens["retention"] = mm_kept / mm_total if mm_total else None
    macs_full = sum(s.get("macs_full", 0) for s in stats)
    macs_kept = sum(s.get("macs_kept", 0) for s in stats)
    return {
        "n_items": len(items),
        "answered": len(done),
        "n_errors": sum(1 for r in done if r.get("error")),
        "complete": len(done) == len(items),
        "accuracy": correct / len(done) if done else 0.0,
        "correct": correct,
        "per_category": {k: _acc(*v) for k, v in sorted(per_cat.items())},
        "per_field": {name: {k: _acc(*v) for k, v in sorted(vals.items())}
                      for name, vals in sorted(per_field.items())},
        "tokens": tokens,
        "flops_ratio": mean_of("flops_ratio"),
        "flops_ratio_aggregate": macs_kept / macs_full if macs_full else None,
        "prefill_ms": _summary([float(s["prefill_ms"]) for s in stats if s.get("prefill_ms") is not None]),
        "ttft_ms": _summary([float(s["ttft_ms"]) for s in stats if s.get("ttft_ms") is not None]),
        "overhead_ms": _summary([float(s["overhead_ms"]) for s in stats if s.get("overhead_ms") is not None]),
    }


def _answers(answer_fn: AnswerFn, todo: list[Item]) -> Iterable[tuple[Item, str, dict, str | None]]:
    """``(item, response, stats, error)`` per item: from ``answer_fn.answer_batch(items)`` when
    the answer function batches (an engine, in any order), else one call per item."""
    batch = getattr(answer_fn, "answer_batch", None)
    if batch is not None:
        yield from batch(todo)
        return
    for item in todo:
        try:
            response, stats = answer_fn(item)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded per item, retried on resume
            yield item, "", {}, f"{type(exc).__name__}: {exc}"
            continue
        yield item, response, dict(stats or {}), None


@dataclass
class RunResult:
    """What :func:`run_eval` did: the folder, the metrics, items run now and skipped."""

    output_dir: Path
    metrics: dict[str, Any]
    n_run: int
    n_skipped: int


def _flops_stats(stats: dict, dims: Any, prune_layer: int | None) -> dict:
    need = ("n_text", "n_audio", "n_video", "kept_audio", "kept_video")
    if dims is None or not all(isinstance(stats.get(k), int) for k in need):
        return {}
    generated = int(stats.get("generated_tokens", 0) or 0)
    full_n = stats["n_text"] + stats["n_audio"] + stats["n_video"]
    kept_n = stats["n_text"] + stats["kept_audio"] + stats["kept_video"]
    full = run_macs(dims, full_n, generated=generated)
    layer_tokens = stats.get("layer_tokens")
    if isinstance(layer_tokens, list) and len(layer_tokens) == dims.layers:
        kept = run_macs(dims, kept_n, generated=generated, layer_tokens=layer_tokens)
    elif prune_layer is None:
        kept = run_macs(dims, kept_n, generated=generated)
    else:
        kept = run_macs(dims, full_n, generated=generated, prune_layer=prune_layer, n_after=kept_n)
    return {"macs_full": full, "macs_kept": kept, "flops_ratio": kept / full if full else 1.0}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_eval(
    items: Iterable[Item],
    answer_fn: AnswerFn,
    *,
    output: str | os.PathLike,
    benchmark: str,
    model: str,
    method: str = "none",
    method_config: Any = None,
    options: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    dims: Any = None,
    prune_layer: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    metrics_every: int = 20,
) -> RunResult:
    """Evaluate ``items`` with ``answer_fn`` into ``<output>/<run_name(...)>``.

    Args:
        items: the benchmark's items (:func:`~omnizip.eval.datasets.load_benchmark`).
        answer_fn: ``item -> (decoded answer, stats)`` (:class:`~omnizip.eval.generation.
            OmniAnswerer` for a model; anything for tests). Exceptions are recorded per item
            (counted as wrong, retried on resume); KeyboardInterrupt stops the run cleanly.
            An answer function with ``answer_batch(items)`` (yielding ``(item, answer, stats,
            error or None)`` in any order: :class:`~omnizip.eval.vllm_engine.VllmAnswerer`)
            gets all the items to answer at once.
        output: the output root; the run's folder is created inside it.
        benchmark, model, method: names for the folder and config.json.
        method_config: the method's configuration (a dataclass or dict), recorded in full.
        options: the options that name the run (e.g. ``{"retention": 0.45}``).
        generation: decoding/input settings recorded in config.json (part of the fingerprint).
        extra_config: other facts for config.json (data path, ...), not compared on resume.
        dims: the decoder for the FLOPs ratio (what :func:`omnizip.flops.decoder_dims` accepts).
        prune_layer: K for in-decoder methods (FastV), for the FLOPs count.
        limit: only the first ``limit`` items.
        overwrite: start over (deletes the folder's previous predictions and metrics).
        progress: show a tqdm progress bar.
    Raises:
        ValueError: the folder holds a run of another configuration (use ``overwrite``).
    """
    items = list(items)
    if limit is not None:
        items = items[:limit]
    dims = decoder_dims(dims) if dims is not None else None
    run_dir = Path(output) / run_name(benchmark, model, method, options)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    pred_path = run_dir / "predictions.jsonl"
    metrics_path = run_dir / "metrics.json"
    config = {
        "benchmark": benchmark,
        "model": model,
        "method": method,
        "method_config": _jsonable(method_config),
        "options": _jsonable(options or {}),
        "generation": _jsonable(generation or {}),
        **_jsonable(extra_config or {}),
    }
    if overwrite:
        for p in (pred_path, metrics_path, config_path):
            p.unlink(missing_ok=True)
    if config_path.exists():
        try:
            previous = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path}: invalid JSON ({exc.msg}); use overwrite") from None
        diff = [k for k in FINGERPRINT if previous.get(k) != config.get(k)]
        if diff:
            raise ValueError(
                f"{run_dir} holds a run with a different {', '.join(diff)}; pass overwrite=True "
                "(--overwrite) to start over or choose another output folder"
            )
        config["created"] = previous.get("created")
    else:
        config["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    from .. import __version__

    config["omnizip_version"] = __version__
    _write_json(config_path, config)

    records = read_predictions(pred_path)
    todo = [it for it in items if it.id not in records or records[it.id].get("error")]
    skipped = len(items) - len(todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=skipped, desc=f"{benchmark} {method}", unit="q")
    n_run = 0
    answered = sum(1 for it in items if it.id in records)
    n_correct = sum(1 for it in items if it.id in records and records[it.id].get("correct"))
    started = time.perf_counter()
    try:
        with pred_path.open("a", encoding="utf-8") as out:
            for item, response, stats, error in _answers(answer_fn, todo):
                prediction = None if error else extract_choice(response, item.options, item.letters)
                stats.update(_flops_stats(stats, dims, prune_layer))
                rec = {
                    "id": item.id,
                    "category": item.category,
                    "fields": item.fields,
                    "answer": item.answer,
                    "prediction": prediction,
                    "correct": prediction == item.answer,
                    "response": response,
                    "error": error,
                    "stats": _jsonable(stats),
                }
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                out.flush()
                answered += item.id not in records  # a retried failure was counted already
                n_correct += rec["correct"]
                records[item.id] = rec
                n_run += 1
                if bar is not None:
                    bar.set_postfix(acc=f"{n_correct / max(1, answered):.3f}")
                    bar.update(1)
                if metrics_every and n_run % metrics_every == 0:
                    _write_json(metrics_path, compute_metrics(items, records))
    finally:
        if bar is not None:
            bar.close()
        metrics = compute_metrics(items, records)
        metrics.update({"benchmark": benchmark, "model": model, "method": method})
        wall = time.perf_counter() - started
        metrics["throughput"] = {"items": n_run, "seconds": wall,
                                 "items_per_s": n_run / wall if n_run and wall > 0 else None}
        _write_json(metrics_path, metrics)
    return RunResult(output_dir=run_dir, metrics=metrics, n_run=n_run, n_skipped=skipped)
