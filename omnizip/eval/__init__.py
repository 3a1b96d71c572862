"""Evaluation harness: benchmark loaders, the multiple-choice prompt, answer extraction, the
resumable runner, model-backed answering and the optional lmms-eval plugin.

Importing this package imports neither transformers nor lmms-eval.
"""

from .datasets import BENCHMARKS, Item, load_benchmark
from .extract import extract_choice
from .prompt import ANSWER_INSTRUCTION, SYSTEM_PROMPT, build_conversation, build_prompt
from .runner import RunResult, compute_metrics, read_predictions, run_eval, run_name

__all__ = [
    "ANSWER_INSTRUCTION",
    "BENCHMARKS",
    "SYSTEM_PROMPT",
    "Item",
    "RunResult",
    "build_conversation",
    "build_prompt",
    "compute_metrics",
    "extract_choice",
    "load_benchmark",
    "read_predictions",
    "run_eval",
    "run_name",
]
