"""What omnizip's lmms-eval tasks share: the documents (from omnizip's benchmark loaders), the
prompt, the answer extraction and the metric. The YAML files name these with ``!function``.

A document is one :class:`omnizip.eval.datasets.Item` as a dict: ``id``, ``video`` (path),
``question``, ``options`` (``"A. ..."`` lines), ``answer`` (letter), ``category``,
``fields`` (the benchmark's other annotation fields).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from lmms_eval.api.task import ConfigurableTask
from loguru import logger

from ...datasets import load_benchmark
from ...extract import extract_choice
from ...prompt import build_prompt

__all__ = ["OmniZipBenchmarkTask", "aggregate_accuracy", "doc_to_target", "doc_to_text",
           "doc_to_visual", "load_docs", "process_results"]


def _setting(kwargs: dict[str, Any], key: str) -> str | None:
    """A ``dataset_kwargs`` value with ``$VARS`` expanded; None when empty or unset."""
    value = kwargs.get(key)
    if value is None:
        return None
    value = os.path.expanduser(os.path.expandvars(str(value))).strip()
    return None if not value or "$" in value else value


def load_docs(task: str, dataset_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's documents from its ``dataset_kwargs``: ``benchmark`` (a name of
    :data:`omnizip.eval.datasets.BENCHMARKS`), ``annotations`` (the file) and ``video_dir``
    (optional), each of which may name environment variables (``${OMNIZIP_AVUT}``).

    Raises:
        ValueError: no annotation file configured (the message names the variable), or a
            malformed file (the loader's message: file, item, field).
    """
    benchmark = dataset_kwargs.get("benchmark")
    annotations = _setting(dataset_kwargs, "annotations")
    if annotations is None:
        raise ValueError(
            f"task {task}: no annotation file: set {dataset_kwargs.get('annotations')} (the "
            f"environment variable) to the path of the {benchmark} annotation file, or "
            "dataset_kwargs.annotations in the task YAML"
        )
    items = load_benchmark(str(benchmark), Path(annotations), video_dir=_setting(dataset_kwargs, "video_dir"))
    docs = [item.to_dict() for item in items]
    for doc in docs:
        if not doc["fields"]:  # arrow has no empty struct (AVUT has no extra fields)
            del doc["fields"]
    return docs


class OmniZipBenchmarkTask(ConfigurableTask):
    """lmms-eval's YAML task, with the documents read by omnizip's loaders from a local copy
    of the benchmark instead of a Hugging Face dataset."""

    def __init__(self, config: dict[str, Any]) -> None:
        # lmms-eval hands python tasks their YAML including the `class` key itself
        super().__init__(config={k: v for k, v in config.items() if k != "class"})

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        import datasets

        docs = load_docs(self.config.task, dict(dataset_kwargs or {}))
        if not docs:
            raise ValueError(f"task {self.config.task}: the annotation file holds no questions")
        split = self.config.test_split or "test"
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset


def doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """``[video path]``, or ``[]`` when the file is missing (logged; the model then records the
    item as failed, as lmms-eval's own tasks do)."""
    if Path(doc["video"]).is_file():
        return [doc["video"]]
    logger.warning(f"video not found: {doc['video']} (item {doc['id']})")
    return []


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The user text of ``omnizip eval``: question, ``Options:``, the options, the instruction."""
    return build_prompt(doc["question"], doc["options"])


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["answer"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    """Score one answer: the letter :func:`~omnizip.eval.extract.extract_choice` reads."""
    answer = results[0] if results else ""
    pred = extract_choice(answer, doc["options"])
    return {"accuracy": {"id": doc["id"], "category": doc["category"], "pred": pred,
                         "answer": doc["answer"], "correct": pred == doc["answer"]}}


def aggregate_accuracy(results: list[dict[str, Any]]) -> float:
    """Share of correct answers (an unreadable answer is wrong); logs it per category."""
    if not results:
        return 0.0
    per_category: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_category[r["category"] or "-"].append(bool(r["correct"]))
    for category, marks in sorted(per_category.items()):
        logger.info(f"{category}: {sum(marks)}/{len(marks)} = {sum(marks) / len(marks):.4f}")
    return sum(bool(r["correct"]) for r in results) / len(results)
