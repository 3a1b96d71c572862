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
``task_type``, ``domain`` is accepted too, and so is lmms-lab's copy (``lmms-lab/worldsense``,
the records of lmms-eval's ``worldsense`` task: ``index``, ``video_path`` relative to the dataset
root - ``video_dir``, else the file's folder or its parent -, ``question``, ``candidates``,
``answer``, ``task_type``, ``task_domain``, ``duration``). Item id: ``<video_id>/<task key>``
(flat: ``id``, else ``index``, else the position).

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

**Daily-Omni** (``liarliar/Daily-Omni``: ``qa.json``; videos
``Videos/<video_id>/<video_id>_video.mp4``, the ``Videos/`` folder next to the file unless
``video_dir`` is given). A list of records: ``Question``, ``Choice`` (list of ``"A. ..."``),
``Answer`` (letter), ``video_id``, ``Type`` (the category), ``video_category``,
``video_duration`` (``30s``/``60s``). Item id: ``<video_id>-<index>`` (the file has none).

**OmniVideoBench** and **LVOmniBench**: :mod:`omnizip.eval.omni_benchmarks`.

Answers are normalised to one capital letter (``"b"``, ``"(B)"``, ``"B. cat"`` -> ``B``) that
must name one of the options. Options are kept as displayed lines ``"A. text"`` (a letter
prefix is added when the file has bare option texts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .annotations import (
    LETTERS,
    Item,
    Where,
    dedupe,
    default_folder,
    find_relative,
    list_field,
    normalise_answer,
    option_lines,
    options_and_answer,
    read_records,
    record_list,
    text_field,
    video_path,
)
from .omni_benchmarks import load_lvomnibench, load_omnivideobench

__all__ = ["BENCHMARKS", "Item", "load_benchmark", "normalise_answer", "option_lines"]


# --------------------------------------------------------------------------------- benchmarks

def load_worldsense(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """WorldSense (see the module docstring for the fields)."""
    path = Path(path)
    data = read_records(path)
    folder = Path(video_dir) if video_dir is not None else default_folder(path, ("videos", "video"))
    items: list[Item] = []
    if isinstance(data, dict):
        for key, entry in data.items():
            where = Where(path, repr(key))
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: item {key!r}: expected an object, got {type(entry).__name__}")
            video_id = text_field(where, entry, "video_id", required=False, default=str(key)) or str(key)
            domain = text_field(where, entry, "domain", required=False)
            tasks = [k for k in entry if k.startswith("task") and isinstance(entry[k], dict)]
            if not tasks:
                raise where.error("task1", "is missing (no task<k> question objects)")
            for task_key in tasks:
                task = entry[task_key]
                tw = Where(path, f"{key!r}.{task_key}")
                options, answer = options_and_answer(
                    tw, list_field(tw, task, "candidates"), text_field(tw, task, "answer"), "candidates"
                )
                items.append(Item(
                    id=f"{video_id}/{task_key}",
                    video=video_path(folder, f"{video_id}.mp4"),
                    question=text_field(tw, task, "question"),
                    options=options,
                    answer=answer,
                    category=text_field(tw, task, "task_type", required=False) or task_key,
                    fields={"domain": domain,
                            "task_domain": text_field(tw, task, "task_domain", required=False)},
                ))
    elif isinstance(data, list):
        for i, record in enumerate(data):
            where = Where(path, i)
            rel = text_field(where, record, "video_path", required=False)
            if rel:  # lmms-lab's copy: a path relative to the dataset root
                video = find_relative(rel, Path(video_dir) if video_dir is not None else None, path)
            else:
                video = video_path(folder, text_field(where, record, "video", required=False) or (
                    text_field(where, record, "video_id") + ".mp4"
                ))
            options, answer = options_and_answer(
                where, list_field(where, record, "candidates"), text_field(where, record, "answer"),
                "candidates",
            )
            ident = text_field(where, record, "id", required=False) or text_field(
                where, record, "index", required=False)
            fields = {"domain": text_field(where, record, "domain", required=False)
                      or text_field(where, record, "task_domain", required=False)}
            duration = text_field(where, record, "duration", required=False)
            if duration:
                fields["duration"] = duration
            items.append(Item(
                id=ident or str(i),
                video=video,
                question=text_field(where, record, "question"),
                options=options,
                answer=answer,
                category=text_field(where, record, "task_type", required=False),
                fields=fields,
            ))
    else:
        raise ValueError(f"{path}: expected a JSON object keyed by video (or a list), got {type(data).__name__}")
    return dedupe(items, path)


def load_videomme(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """Video-MME (see the module docstring for the fields)."""
    path = Path(path)
    data = record_list(path)
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
        where = Where(path, i)
        options, answer = options_and_answer(
            where, list_field(where, record, "options"), text_field(where, record, "answer")
        )
        video_id = text_field(where, record, "videoID")
        items.append(Item(
            id=text_field(where, record, "question_id"),
            video=video_path(folder, video_id if video_id.endswith(".mp4") else f"{video_id}.mp4"),
            question=text_field(where, record, "question"),
            options=options,
            answer=answer,
            category=text_field(where, record, "task_type", required=False),
            fields={k: text_field(where, record, k, required=False)
                    for k in ("duration", "domain", "sub_category")},
        ))
    return dedupe(items, path)


def load_avut(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """AVUT (see the module docstring for the fields)."""
    path = Path(path)
    data = record_list(path)
    folder = Path(video_dir) if video_dir is not None else path.parent
    items = []
    for i, record in enumerate(data):
        where = Where(path, i)
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
        options_t, answer = options_and_answer(
            where, options, text_field(where, record, "answer"), "option_B"
        )
        rel = text_field(where, record, "video_path")
        video = folder / rel
        if not video.exists() and rel.startswith("data/") and (folder / rel[5:]).exists():
            video = folder / rel[5:]
        qa_id = text_field(where, record, "QA_id", required=False)
        video_id = text_field(where, record, "video_id", required=False)
        items.append(Item(
            id=qa_id or f"{video_id or 'item'}-{i}",
            video=str(video),
            question=text_field(where, record, "question"),
            options=options_t,
            answer=answer,
            category=text_field(where, record, "task_type", required=False),
        ))
    return dedupe(items, path)


def load_shortvid(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """ShortVid-Bench (see the module docstring for the fields)."""
    path = Path(path)
    data = record_list(path)
    folder = Path(video_dir) if video_dir is not None else default_folder(path, ("videos", "video"))
    items = []
    for i, record in enumerate(data):
        where = Where(path, i)
        options, answer = options_and_answer(
            where, list_field(where, record, "candidates"), text_field(where, record, "answer"),
            "candidates",
        )
        ident = ""
        for key in ("id", "qid", "question_id"):
            ident = text_field(where, record, key, required=False)
            if ident:
                break
        items.append(Item(
            id=ident or str(i),
            video=video_path(folder, text_field(where, record, "video")),
            question=text_field(where, record, "question"),
            options=options,
            answer=answer,
            category=text_field(where, record, "problem_type", required=False),
            fields={"data_type": text_field(where, record, "data_type", required=False)},
        ))
    return dedupe(items, path)


def load_dailyomni(path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[Item]:
    """Daily-Omni (see the module docstring for the fields)."""
    path = Path(path)
    data = record_list(path)
    folder = Path(video_dir) if video_dir is not None else default_folder(path, ("Videos", "videos"))
    items = []
    for i, record in enumerate(data):
        where = Where(path, i)
        options, answer = options_and_answer(
            where, list_field(where, record, "Choice"), text_field(where, record, "Answer"), "Choice",
            "Answer",
        )
        video_id = text_field(where, record, "video_id")
        items.append(Item(
            id=text_field(where, record, "id", required=False) or f"{video_id}-{i}",
            video=str(folder / video_id / f"{video_id}_video.mp4"),
            question=text_field(where, record, "Question"),
            options=options,
            answer=answer,
            category=text_field(where, record, "Type", required=False),
            fields={k: text_field(where, record, k, required=False)
                    for k in ("video_category", "video_duration")},
        ))
    return dedupe(items, path)


#: benchmark name -> loader(path, video_dir=None) -> list[Item]
BENCHMARKS: dict[str, Callable[..., list[Item]]] = {
    "worldsense": load_worldsense,
    "videomme": load_videomme,
    "avut": load_avut,
    "shortvid": load_shortvid,
    "dailyomni": load_dailyomni,
    "omnivideobench": load_omnivideobench,
    "lvomnibench": load_lvomnibench,
}

_ALIASES = {
    "video-mme": "videomme", "video_mme": "videomme", "shortvid-bench": "shortvid",
    "shortvid_bench": "shortvid", "shortvidbench": "shortvid", "world-sense": "worldsense",
    "daily-omni": "dailyomni", "daily_omni": "dailyomni",
    "omni-video-bench": "omnivideobench", "omnivideo": "omnivideobench",
    "lv-omni-bench": "lvomnibench", "lvomni": "lvomnibench",
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
