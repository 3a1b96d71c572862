"""OmniVideoBench and LVOmniBench in ``omnizip eval``: generated local files in each published
format (the release's nested data.json, the flat records as JSON / JSONL / CSV / parquet), video
folders, duration buckets, and errors that name the file, the item and the field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from omnizip.eval.datasets import BENCHMARKS, load_benchmark
from omnizip.eval.omni_benchmarks import duration_group

OVB_NESTED = [
    {"video": "video_1", "video_type": "Vlog", "duration": "03:28", "questions": [
        {"question": "Which concepts fit the sign?", "question_type": "reference reasoning",
         "audio_type": "Speech", "reasoning_steps": [{"modality": "audio", "evidence": "x", "inference": "y"}],
         "answer": "Stories and anime",
         "options": ["A.Stories and anime", "B.Palaces", "C.Cuisine", "D.Gardens"], "correct_option": "A"},
        {"question": "Which direction?", "question_type": "spatial understanding", "audio_type": "Speech",
         "answer": "Northeast", "options": ["A.Northwest", "B.Southwest", "C.Southeast", "D.Northeast"],
         "correct_option": "D"}]},
    {"video": "video_2", "video_type": "Cartoon", "duration": "12:05", "questions": [
        {"question": "Why turn around?", "question_type": "causal reasoning", "audio_type": "Sound",
         "answer": "A step", "options": ["A.A door", "B.A step"], "correct_option": "B"}]},
]

OVB_FLAT = [
    {"video": "videos/video_1.mp4", "question": "Which direction?", "options": "['A.Northwest', 'B.Northeast']",
     "correct_option": "B", "video_type": "Vlog", "question_type": "spatial understanding",
     "audio_type": "Speech", "duration": "03:28"},
    {"video": "video_9", "question": "How many cars?", "options": ["A.1", "B.2", "C.3"],
     "correct_option": "C", "video_type": "News", "question_type": "counting", "audio_type": "Speech",
     "duration": "45:10"},
]

LVO = [
    {"question_id": "lv-0", "video_id": "video_0", "question": "What is said at the end?",
     "options": ["A. goodbye", "B. hello", "C. thanks", "D. nothing"], "correct_option": "A",
     "question_type": "Speech Recognition", "audio_type": "Speech", "difficulty": "Easy",
     "video_category": "Documentary", "sub_category": "Nature", "duration": "00:52:10"},
    {"video_id": "video_7", "question": "Which instrument plays?", "options": "['A. piano', 'B. drum']",
     "answer": "b", "question_type": "Sound Recognition", "audio_type": "Music", "difficulty": "Hard",
     "video_category": "Concert", "sub_category": "Live", "duration": "1205"},
]


def _write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def test_omnivideobench_release_data_json(tmp_path):
    data = _write(tmp_path / "data.json", OVB_NESTED)
    (tmp_path / "videos").mkdir()
    items = load_benchmark("OmniVideoBench", data)
    assert "omnivideobench" in BENCHMARKS and load_benchmark("omni-video-bench", data) == items
    assert [i.id for i in items] == ["video_1/0", "video_1/1", "video_2/0"]
    assert items[0].video == str(tmp_path / "videos" / "video_1.mp4")
    assert items[0].options == ("A. Stories and anime", "B. Palaces", "C. Cuisine", "D. Gardens")
    assert [i.answer for i in items] == ["A", "D", "B"]
    assert items[2].category == "causal reasoning"
    assert items[0].fields == {"video_type": "Vlog", "audio_type": "Speech", "duration": "03:28",
                               "duration_group": "1-5min"}
    assert items[2].fields["duration_group"] == "10-30min"
    moved = load_benchmark("omnivideobench", data, video_dir=tmp_path / "clips")
    assert moved[2].video == str(tmp_path / "clips" / "video_2.mp4")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_omnivideobench_flat_records(tmp_path, fmt):
    root = tmp_path / "OmniVideoBench"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "video_1.mp4").write_bytes(b"")
    path = root / "data" / f"test.{fmt}"
    path.parent.mkdir()
    if fmt == "json":
        path.write_text(json.dumps(OVB_FLAT))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in OVB_FLAT) + "\n")
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(OVB_FLAT[0]))
            writer.writeheader()
            for r in OVB_FLAT:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    else:
        pd = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        pd.DataFrame([{**r, "options": r["options"] if isinstance(r["options"], str) else json.dumps(r["options"])}
                      for r in OVB_FLAT]).to_parquet(path)
    items = load_benchmark("omnivideobench", path)
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].video == str(root / "videos" / "video_1.mp4")  # relative to the dataset root
    assert items[0].options == ("A. Northwest", "B. Northeast") and items[0].answer == "B"
    assert items[1].options[2] == "C. 3" and items[1].fields["duration_group"] == ">30min"


def test_lvomnibench(tmp_path):
    root = tmp_path / "LVOmniBench"
    (root / "videos").mkdir(parents=True)
    data = _write(root / "data.json", LVO)
    items = load_benchmark("LVOmniBench", data)
    assert "lvomnibench" in BENCHMARKS and load_benchmark("lv-omni-bench", data) == items
    assert [i.id for i in items] == ["lv-0", "video_7-1"]
    assert items[0].video == str(root / "videos" / "video_0.mp4")
    assert items[1].options == ("A. piano", "B. drum") and [i.answer for i in items] == ["A", "B"]
    assert items[0].category == "Speech Recognition"
    assert items[0].fields == {"audio_type": "Speech", "difficulty": "Easy", "video_category": "Documentary",
                               "sub_category": "Nature", "duration": "00:52:10", "duration_group": ">30min"}
    assert items[1].fields["duration_group"] == "10-30min"
    # SEATS's copy keeps the records in data/, the videos one folder up
    nested = _write(root / "data" / "test.json", LVO)
    assert load_benchmark("lvomnibench", nested)[0].video == str(root / "videos" / "video_0.mp4")


def test_duration_groups():
    assert [duration_group(d) for d in ("00:59", "1:00", "05:00", "9:59", "29:00", "30:01", "1:00:00",
                                        "75", "x")] == [
        "0-1min", "0-1min", "1-5min", "5-10min", "10-30min", ">30min", ">30min", "1-5min", ""]


@pytest.mark.parametrize(("bench", "records", "change", "message"), [
    ("omnivideobench", OVB_NESTED, lambda r: r[0]["questions"][1].pop("correct_option"),
     "item 0.questions[1]: field 'correct_option' is missing"),
    ("omnivideobench", OVB_NESTED, lambda r: r[1]["questions"][0].update(correct_option="C"),
     "item 1.questions[0]: field 'correct_option' is 'C' but there are only 2 options"),
    ("omnivideobench", OVB_NESTED, lambda r: r[1].update(questions=[]),
     "item 1: field 'questions' must be a non-empty list of question objects"),
    ("omnivideobench", OVB_FLAT, lambda r: r[1].pop("video"), "item 1: field 'video' is missing"),
    ("lvomnibench", LVO, lambda r: r[1].pop("answer"), "item 1: field 'correct_option' is missing"),
    ("lvomnibench", LVO, lambda r: r[0].update(options="not a list"),
     "item 0: field 'options' needs at least 2 options, got 1"),
    ("lvomnibench", LVO, lambda r: r[0].pop("video_id"), "item 0: field 'video_id' is missing"),
])
def test_errors_name_file_item_field(tmp_path, bench, records, change, message):
    records = json.loads(json.dumps(records))
    change(records)
    data = _write(tmp_path / "data.json", records)
    with pytest.raises(ValueError) as err:
        load_benchmark(bench, data)
    assert str(err.value) == f"{data}: {message}"
