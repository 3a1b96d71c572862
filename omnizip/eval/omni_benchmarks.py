"""Loaders for two long audio-video benchmarks SEATS reports on: OmniVideoBench and LVOmniBench.

Same contract as :mod:`omnizip.eval.datasets` (a list of :class:`~omnizip.eval.annotations.Item`;
``ValueError("<file>: item <i>: field '<name>' ...")`` for a malformed file; ``.json``,
``.jsonl``, ``.csv`` or ``.parquet``). The fields relied on:

**OmniVideoBench** (``NJU-LINK/OmniVideoBench``; 1,000 questions on 628 videos). Two shapes:

- the release's ``data.json``: a list of videos, each ``video`` (file name without ``.mp4``),
  ``video_type``, ``duration`` (``"MM:SS"``) and ``questions``: objects with ``question``,
  ``options`` (``["A.text", ...]``), ``correct_option`` (letter), ``question_type``,
  ``audio_type`` (``answer``, the option text, and ``reasoning_steps`` are not used). Videos
  ``<video_dir>/<video>.mp4``, default the ``videos/`` folder next to the file. Item id:
  ``<video>/<index of the question in its video>``.
- flat records (one per question, as the Hugging Face data and SEATS's lmms-eval task read
  them): ``video`` (a path relative to the dataset root, or a file name), ``question``,
  ``options`` (a list, or its printed form), ``correct_option``, ``video_type``,
  ``question_type``, ``audio_type``, ``duration``; ``id`` / ``question_id`` if present (else
  the position).

Category: ``question_type``; breakdowns: ``video_type``, ``audio_type``, ``duration`` and its
bucket ``duration_group`` (``0-1min``, ``1-5min``, ``5-10min``, ``10-30min``, ``>30min``, the
buckets of the benchmark's own scoring).

**LVOmniBench** (``KD-TAO/LVOmniBench``: ``data.json``, 1,014 questions on 275 videos of 10-90
minutes; SEATS's copy ``xxayt/LVOmniBench``). A list of records: ``video_id`` (videos
``<video_dir>/<video_id>.mp4``, default ``videos/`` next to the file or next to its folder),
``question``, ``options`` (list or printed form), the answer letter in ``correct_option``
(KD-TAO) or ``answer`` (xxayt), ``question_id`` (id; default ``<video_id>-<index>``),
``question_type`` (category), ``audio_type``, ``difficulty``, ``video_category``,
``sub_category``, ``duration``.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from .annotations import (
    LETTERS,
    Item,
    Where,
    dedupe,
    default_folder,
    find_relative,
    list_field,
    options_and_answer,
    record_list,
    text_field,
    video_path,
)

__all__ = ["duration_group", "load_lvomnibench", "load_omnivideobench"]

_LETTER = re.compile(r"^\s*\(?([A-Ja-j])\s*[\).:]\s*")
#: the duration buckets of OmniVideoBench's and LVOmniBench's scoring (upper bounds, seconds)
DURATION_GROUPS = ((60, "0-1min"), (300, "1-5min"), (600, "5-10min"), (1800, "10-30min"))


def duration_group(duration: str) -> str:
    """``"MM:SS"`` / ``"HH:MM:SS"`` / seconds -> its bucket; ``""`` when unreadable."""
    try:
        parts = [float(p) for p in str(duration).strip().split(":")]
    except ValueError:
        return ""
    if not parts or len(parts) > 3:
        return ""
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return next((name for bound, name in DURATION_GROUPS if seconds <= bound), ">30min")


def _options(where: Where, record: Any, name: str = "options") -> list[str]:
    """A list field, also in its printed Python form (``"['A. x', 'B. y']"``)."""
    value = record.get(name) if isinstance(record, dict) else None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            record = {**record, name: [str(v) for v in parsed]}
    options = list_field(where, record, name)
    # "A.text" (OmniVideoBench writes no space) is shown as "A. text", like every benchmark
    return [_LETTER.sub("", text, count=1) if _letter_of(text) == LETTERS[i] else text
            for i, text in enumerate(options)]


def _letter_of(text: str) -> str | None:
    m = _LETTER.match(text)
    return m.group(1).upper() if m else None


def _answer(where: Where, record: Any, names: tuple[str, ...]) -> tuple[str, str]:
    """(letter text, field name): the first of ``names`` present."""
    for name in names:
        value = text_field(where, record, name, required=False)
        if value.strip():
            return value, name
    raise where.error(names[0], "is missing")


def _video(folder: Path, name: str) -> str:
    return video_path(folder, name if Path(name).suffix else f"{name}.mp4")


def _omnivideo_item(where: Where, q: Any, ident: str, video: str, shared: dict[str, str]) -> Item:
    answer, field = _answer(where, q, ("correct_option",))  # its "answer" is the option text
    options, letter = options_and_answer(where, _options(where, q), answer, "options", field)
    duration = shared.get("duration") or text_field(where, q, "duration", required=False)
    fields = {
        "video_type": shared.get("video_type") or text_field(where, q, "video_type", required=False),
        "audio_type": text_field(where, q, "audio_type", required=False),
        "duration": duration,
        "duration_group": duration_group(duration) if duration else "",
    }
    return Item(id=ident, video=video, question=text_field(where, q, "question"), options=options,
                answer=letter, category=text_field(where, q, "question_type", required=False),
                fields=fields)


def load_omnivideobench(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """OmniVideoBench, either shape (see the module docstring)."""
    path = Path(path)
    data = record_list(path)
    given = Path(video_dir) if video_dir is not None else None
    folder = given or default_folder(path, ("videos", "video"))
    items: list[Item] = []
    for i, record in enumerate(data):
        where = Where(path, i)
        if isinstance(record, dict) and "questions" in record:  # the release's data.json
            name = text_field(where, record, "video")
            questions = record["questions"]
            if not isinstance(questions, list) or not questions:
                raise where.error("questions", "must be a non-empty list of question objects")
            shared = {k: text_field(where, record, k, required=False) for k in ("video_type", "duration")}
            for k, q in enumerate(questions):
                items.append(_omnivideo_item(Where(path, f"{i}.questions[{k}]"), q, f"{name}/{k}",
                                             _video(folder, name), shared))
            continue
        name = text_field(where, record, "video")
        video = find_relative(name, given, path) if "/" in name else _video(folder, name)
        ident = text_field(where, record, "id", required=False) or text_field(
            where, record, "question_id", required=False) or str(i)
        items.append(_omnivideo_item(where, record, ident, video, {}))
    return dedupe(items, path)


def load_lvomnibench(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """LVOmniBench (see the module docstring)."""
    path = Path(path)
    data = record_list(path)
    if video_dir is not None:
        folder = Path(video_dir)
    else:
        here, above = path.parent / "videos", path.parent.parent / "videos"
        folder = here if here.is_dir() or not above.is_dir() else above
    items: list[Item] = []
    for i, record in enumerate(data):
        where = Where(path, i)
        video_id = text_field(where, record, "video_id")
        answer, field = _answer(where, record, ("correct_option", "answer"))
        options, letter = options_and_answer(where, _options(where, record), answer, "options", field)
        fields = {k: text_field(where, record, k, required=False)
                  for k in ("audio_type", "difficulty", "video_category", "sub_category", "duration")}
        fields["duration_group"] = duration_group(fields["duration"]) if fields["duration"] else ""
        items.append(Item(
            id=text_field(where, record, "question_id", required=False) or f"{video_id}-{i}",
            video=_video(folder, video_id), question=text_field(where, record, "question"),
            options=options, answer=letter,
            category=text_field(where, record, "question_type", required=False), fields=fields,
        ))
    return dedupe(items, path)
