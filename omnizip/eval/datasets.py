"""Loaders for local copies of the audio-video benchmarks of the OmniZip paper.

Every loader returns a list of :class:`Item` (one multiple-choice question each) and raises
``ValueError("<file>: item <i>: field '<name>' ...")`` for a malformed file, naming the file,
the item and the field. Files are read as ``.json`` (a list, or WorldSense's dict), ``.jsonl``
(one object per line), ``.csv`` (a header row; list fields as a JSON list or one option per
line) or ``.parquet`` (needs pandas with pyarrow). Media files are not opened here: an
item's ``video`` is the path the runner will read (missing files are reported per item).

Expected fields (the published annotation formats):

**WorldSense** (``honglyhly/WorldSense``: ``worldsense_qa.json``; videos ``<video_id>.mp4``,
default folder ``videos/`` next to the file). A JSON object keyed by video; each value holds
``video_id`` (default: the key), ``domain``, ``video_caption`` (unused) and any number of
``task<k>`` objects with ``question`` (str), ``candidates`` (list of str, e.g.
``"A. ..."``), ``answer`` (letter), ``task_type`` (the category), ``task_domain``. A flat
list of records with ``video_id``/``video``, ``question``, ``candidates``, ``answer``,
``task_type``, ``domain`` is accepted too. Item id: ``<video_id>/<task key>`` (flat: index).

**Video-MME** (``lmms-lab/Video-MME``: ``videomme/test-00000-of-00001.parquet``, or the same
records as JSON/JSONL/CSV; videos ``<videoID>.mp4``, default folder ``data/`` or ``videos/``
or ``video/`` next to the file, else its parent's). Fields: ``question_id`` (id), ``videoID``,
``question``, ``options`` (list of ``"A. ..."``), ``answer`` (letter), ``task_type``
(category), ``duration`` (short/medium/long), ``domain``, ``sub_category``.

**AVUT** (``tsinghua-ee/AVUTBenchmark``: ``AV_Human_data.json``; videos under the folder of
``video_path``). A list of records: ``QA_id`` (id; default ``video_id`` + index),
``video_id``, ``video_path`` (relative; a leading ``data/`` is dropped when the file exists
only without it), ``question``, ``option_A`` .. ``option_F`` (absent or null for unused
letters), ``answer`` (letter), ``task_type`` (category).

**ShortVid-Bench** (``TencentARC/ShortVid-Bench``: ``ShortVid-Bench-1k.json``; videos under
``videos/`` next to the file unless ``video_dir`` is given). A list of records: ``id`` /
``qid`` / ``question_id`` (optional; default: the index), ``video`` (relative path),
``question``, ``candidates`` (list of str), ``answer`` (letter), ``problem_type`` (category),
``data_type``.

Answers are normalised to one capital letter (``"b"``, ``"(B)"``, ``"B. cat"`` -> ``B``) that
must name one of the options. Options are kept as displayed lines ``"A. text"`` (a letter
prefix is added when the file has bare option texts).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "Item", "load_benchmark", "normalise_answer", "option_lines"]

LETTERS = "ABCDEFGHIJ"
_PREFIX = re.compile(r"^\s*\(?([A-Ja-j])\s*[\).:：、]\s*")


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


class _Where:
    """Error context: file and item."""

    def __init__(self, path: Path, index: int | str) -> None:
        self.path, self.index = path, index

    def error(self, name: str, message: str) -> ValueError:
        return ValueError(f"{self.path}: item {self.index}: field {name!r} {message}")


def _read_records(path: Path) -> Any:
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


def _text(where: _Where, record: Any, name: str, *, required: bool = True, default: str = "") -> str:
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


def _list_field(where: _Where, record: Any, name: str) -> list[str]:
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


def _options_answer(
    where: _Where, options: list[str], answer: str, name: str = "options"
) -> tuple[tuple[str, ...], str]:
    if len(options) < 2:
        raise where.error(name, f"needs at least 2 options, got {len(options)}")
    if len(options) > len(LETTERS):
        raise where.error(name, f"has {len(options)} options, at most {len(LETTERS)} are supported")
    letter = normalise_answer(answer)
    if letter is None:
        raise where.error("answer", f"must be an option letter, got {answer!r}")
    if letter not in LETTERS[: len(options)]:
        raise where.error("answer", f"is {letter!r} but there are only {len(options)} options")
    return option_lines(options), letter


def _video_path(folder: Path | None, name: str) -> str:
    return str(folder / name) if folder is not None else name


def _default_folder(path: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        candidate = path.parent / name
        if candidate.is_dir():
            return candidate
    return path.parent / names[0]


def _dedupe(items: list[Item], path: Path) -> list[Item]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise ValueError(f"{path}: item {i}: field 'id' duplicates item {seen[item.id]} ({item.id!r})")
        seen[item.id] = i
    return items


# --------------------------------------------------------------------------------- benchmarks

def load_worldsense(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """WorldSense (see the module docstring for the fields)."""
    path = Path(path)
    data = _read_records(path)
    folder = Path(video_dir) if video_dir is not None else _default_folder(path, ("videos", "video"))
    items: list[Item] = []
    if isinstance(data, dict):
        for key, entry in data.items():
            where = _Where(path, repr(key))
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: item {key!r}: expected an object, got {type(entry).__name__}")
            video_id = _text(where, entry, "video_id", required=False, default=str(key)) or str(key)
            domain = _text(where, entry, "domain", required=False)
            tasks = [k for k in entry if k.startswith("task") and isinstance(entry[k], dict)]
            if not tasks:
                raise where.error("task1", "is missing (no task<k> question objects)")
            for task_key in tasks:
                task = entry[task_key]
                tw = _Where(path, f"{key!r}.{task_key}")
                options, answer = _options_answer(
                    tw, _list_field(tw, task, "candidates"), _text(tw, task, "answer"), "candidates"
                )
                items.append(Item(
                    id=f"{video_id}/{task_key}",
                    video=_video_path(folder, f"{video_id}.mp4"),
                    question=_text(tw, task, "question"),
                    options=options,
                    answer=answer,
                    category=_text(tw, task, "task_type", required=False) or task_key,
                    fields={"domain": domain,
                            "task_domain": _text(tw, task, "task_domain", required=False)},
                ))
    elif isinstance(data, list):
        for i, record in enumerate(data):
            where = _Where(path, i)
            video = _text(where, record, "video", required=False) or (
                _text(where, record, "video_id") + ".mp4"
            )
            options, answer = _options_answer(
                where, _list_field(where, record, "candidates"), _text(where, record, "answer"),
                "candidates",
            )
            items.append(Item(
                id=_text(where, record, "id", required=False) or str(i),
                video=_video_path(folder, video),
                question=_text(where, record, "question"),
                options=options,
                answer=answer,
                category=_text(where, record, "task_type", required=False),
                fields={"domain": _text(where, record, "domain", required=False)},
            ))
    else:
        raise ValueError(f"{path}: expected a JSON object keyed by video (or a list), got {type(data).__name__}")
    return _dedupe(items, path)


def load_videomme(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """Video-MME (see the module docstring for the fields)."""
    path = Path(path)
    data = _read_records(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    if video_dir is not None:
        folder = Path(video_dir)
    else:
        folder = None
        for base in (path.parent, path.parent.parent):
            for name in ("data", "videos", "video"):
                if (base / name).is_dir():
                    folder = base / name
                    break
            if folder is not None:
                break
        folder = folder or path.parent / "data"
    items = []
    for i, record in enumerate(data):
        where = _Where(path, i)
        options, answer = _options_answer(
            where, _list_field(where, record, "options"), _text(where, record, "answer")
        )
        video_id = _text(where, record, "videoID")
        items.append(Item(
            id=_text(where, record, "question_id"),
            video=_video_path(folder, video_id if video_id.endswith(".mp4") else f"{video_id}.mp4"),
            question=_text(where, record, "question"),
            options=options,
            answer=answer,
            category=_text(where, record, "task_type", required=False),
            fields={k: _text(where, record, k, required=False)
                    for k in ("duration", "domain", "sub_category")},
        ))
    return _dedupe(items, path)


def load_avut(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """AVUT (see the module docstring for the fields)."""
    path = Path(path)
    data = _read_records(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    folder = Path(video_dir) if video_dir is not None else path.parent
    items = []
    for i, record in enumerate(data):
        where = _Where(path, i)
        if not isinstance(record, dict):
            raise ValueError(f"{path}: item {i}: expected an object, got {type(record).__name__}")
        options = []
        for letter in LETTERS[:6]:
            value = record.get(f"option_{letter}")
            if value is None or (isinstance(value, str) and not value.strip()):
                break
            if not isinstance(value, (str, int, float)):
                raise where.error(f"option_{letter}", f"must be a string, got {type(value).__name__}")
            options.append(str(value))
        if not options:
            raise where.error("option_A", "is missing")
        options_t, answer = _options_answer(
            where, options, _text(where, record, "answer"), "option_B"
        )
        rel = _text(where, record, "video_path")
        video = folder / rel
        if not video.exists() and rel.startswith("data/") and (folder / rel[5:]).exists():
            video = folder / rel[5:]
        qa_id = _text(where, record, "QA_id", required=False)
        video_id = _text(where, record, "video_id", required=False)
        items.append(Item(
            id=qa_id or f"{video_id or 'item'}-{i}",
            video=str(video),
            question=_text(where, record, "question"),
            options=options_t,
            answer=answer,
            category=_text(where, record, "task_type", required=False),
        ))
    return _dedupe(items, path)


def load_shortvid(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """ShortVid-Bench (see the module docstring for the fields)."""
    path = Path(path)
    data = _read_records(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    folder = Path(video_dir) if video_dir is not None else _default_folder(path, ("videos", "video"))
    items = []
    for i, record in enumerate(data):
        where = _Where(path, i)
        options, answer = _options_answer(
            where, _list_field(where, record, "candidates"), _text(where, record, "answer"),
            "candidates",
        )
        ident = ""
        for key in ("id", "qid", "question_id"):
            ident = _text(where, record, key, required=False)
            if ident:
                break
        items.append(Item(
            id=ident or str(i),
            video=_video_path(folder, _text(where, record, "video")),
            question=_text(where, record, "question"),
            options=options,
            answer=answer,
            category=_text(where, record, "problem_type", required=False),
            fields={"data_type": _text(where, record, "data_type", required=False)},
        ))
    return _dedupe(items, path)


#: benchmark name -> loader(path, video_dir=None) -> list[Item]
BENCHMARKS: dict[str, Callable[..., list[Item]]] = {
    "worldsense": load_worldsense,
    "videomme": load_videomme,
    "avut": load_avut,
    "shortvid": load_shortvid,
}

_ALIASES = {
    "video-mme": "videomme", "video_mme": "videomme", "shortvid-bench": "shortvid",
    "shortvid_bench": "shortvid", "shortvidbench": "shortvid", "world-sense": "worldsense",
}


def benchmark_key(name: str) -> str:
    """Canonical benchmark name (case-insensitive; ``Video-MME`` -> ``videomme``)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key


def load_benchmark(name: str, path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """Load benchmark ``name`` (see :data:`BENCHMARKS`) from its local annotation file."""
    return BENCHMARKS[benchmark_key(name)](path, video_dir=video_dir)
