"""Reading benchmark annotation files: formats, field checks, option lines and answer letters.

The shared plumbing of :mod:`omnizip.eval.datasets`: every error is a ``ValueError`` naming the
file, the item and the field (``"<file>: item <i>: field '<name>' ..."``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LETTERS", "Item", "Where", "dedupe", "default_folder", "find_relative", "list_field",
           "normalise_answer", "option_lines", "options_and_answer", "read_records", "record_list",
           "text_field", "video_path"]

LETTERS = "ABCDEFGHIJ"
_PREFIX = re.compile(r"^\s*\(?([A-Ja-j])\s*[\).:：、]\s*")


class Where:
    """Error context: file and item."""

    def __init__(self, path: Path, index: int | str) -> None:
        self.path, self.index = path, index

    def error(self, name: str, message: str) -> ValueError:
        return ValueError(f"{self.path}: item {self.index}: field {name!r} {message}")


def read_records(path: Path) -> Any:
    """The raw records of an annotation file (list, or dict for WorldSense)."""
    if not path.is_file():
        raise ValueError(f"{path}: annotation file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with path.open(encoding="utf-8") as f:
                return json.load(f)
        if suffix == ".jsonl":
            out = []
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
            return out
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            try:
                import pandas as pd
            except ImportError:
                raise ValueError(
                    f"{path}: reading parquet needs pandas and pyarrow (pip install pandas "
                    "pyarrow), or convert the file to JSON/JSONL"
                ) from None
            frame = pd.read_parquet(path)
            return [
                {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
                for row in frame.to_dict(orient="records")
            ]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    raise ValueError(f"{path}: unsupported annotation format {suffix!r} (use .json, .jsonl, .csv or .parquet)")


def text_field(where: Where, record: Any, name: str, *, required: bool = True, default: str = "") -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where.path}: item {where.index}: expected an object, got {type(record).__name__}")
    value = record.get(name)
    if value is None or (isinstance(value, float) and value != value):  # missing / NaN (pandas)
        if required:
            raise where.error(name, "is missing")
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise where.error(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise where.error(name, "is empty")
    return value


def list_field(where: Where, record: Any, name: str) -> list[str]:
    if not isinstance(record, dict):
        raise ValueError(f"{where.path}: item {where.index}: expected an object, got {type(record).__name__}")
    value = record.get(name)
    if value is None:
        raise where.error(name, "is missing")
    if isinstance(value, str):  # CSV: a JSON list, or one option per line
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                raise where.error(name, "is not a valid JSON list") from None
        else:
            value = [v for v in stripped.splitlines() if v.strip()]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise where.error(name, f"must be a list of strings, got {type(value).__name__}")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise where.error(name, "must hold non-empty strings")
    return value


def option_lines(options: list[str]) -> tuple[str, ...]:
    """Displayed option lines ``"A. text"``; texts that already carry their letter stay."""
    out = []
    for i, text in enumerate(options):
        text = text.strip()
        m = _PREFIX.match(text)
        if m and m.group(1).upper() == LETTERS[i]:
            out.append(text)
        else:
            out.append(f"{LETTERS[i]}. {text}")
    return tuple(out)


def normalise_answer(value: str) -> str | None:
    """``"B"``, ``"b"``, ``"(B)"``, ``"B."``, ``"B. cat"`` -> ``"B"``; anything else None."""
    text = value.strip()
    m = re.fullmatch(r"\(?([A-Ja-j])\)?[.:)]?", text) or _PREFIX.match(text)
    return m.group(1).upper() if m else None


def options_and_answer(
    where: Where, options: list[str], answer: str, name: str = "options",
    answer_name: str = "answer",
) -> tuple[tuple[str, ...], str]:
    """Displayed option lines and the answer letter, checked (``name``/``answer_name``: the
    fields the errors name)."""
    if len(options) < 2:
        raise where.error(name, f"needs at least 2 options, got {len(options)}")
    if len(options) > len(LETTERS):
        raise where.error(name, f"has {len(options)} options, at most {len(LETTERS)} are supported")
    letter = normalise_answer(answer)
    if letter is None:
        raise where.error(answer_name, f"must be an option letter, got {answer!r}")
    if letter not in LETTERS[: len(options)]:
        raise where.error(answer_name, f"is {letter!r} but there are only {len(options)} options")
    return option_lines(options), letter


def video_path(folder: Path | None, name: str) -> str:
    return str(folder / name) if folder is not None else name


def default_folder(path: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        candidate = path.parent / name
        if candidate.is_dir():
            return candidate
    return path.parent / names[0]


@dataclass(frozen=True)
class Item:
    """One multiple-choice question.

    Attributes:
        id: unique, stable id (resume keys on it).
        video: path of the video file (absolute, or as given when no folder is known).
        question: the question text.
        options: displayed option lines, ``"A. text"``, in letter order.
        answer: the correct letter.
        category: the benchmark's task type (accuracy is reported per category).
        fields: other annotation fields worth a breakdown (domain, duration, ...).
    """

    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: str
    category: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "video": self.video, "question": self.question,
            "options": list(self.options), "answer": self.answer, "category": self.category,
            "fields": dict(self.fields),
        }


def dedupe(items: list[Item], path: Path) -> list[Item]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise ValueError(f"{path}: item {i}: field 'id' duplicates item {seen[item.id]} ({item.id!r})")
        seen[item.id] = i
    return items


def record_list(path: Path) -> list:
    """The annotation file's records, which must be a list (a clear error otherwise)."""
    data = read_records(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data


def find_relative(rel: str, video_dir: Path | None, annotations: Path) -> str:
    """A media path given relative to a dataset root: under ``video_dir`` when given (also by
    its file name alone), else under the annotation file's folder or the one above it (the
    first that exists; the first candidate when none does, reported per item later)."""
    bases = [video_dir] if video_dir is not None else [annotations.parent, annotations.parent.parent]
    candidates = [base / rel for base in bases]
    if video_dir is not None:
        candidates.append(video_dir / Path(rel).name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return str(candidates[0])
