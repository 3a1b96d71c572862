"""Annotation formats from the lmms ecosystem in ``omnizip eval``: Daily-Omni's ``qa.json`` and
lmms-lab's WorldSense records (the data of lmms-eval's ``worldsense`` task)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnizip.eval.datasets import BENCHMARKS, load_benchmark


def _write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


DAILY = [
    {"Question": "Who speaks first?", "Choice": ["A. the man", "B. the woman", "C. nobody", "D. a dog"],
     "Answer": "B", "video_id": "abc", "Type": "AV Event Alignment", "video_category": "Vlog",
     "video_duration": "30s"},
    {"Question": "What follows the bell?", "Choice": ["laughter", "silence"], "Answer": "a",
     "video_id": "xyz", "Type": "Event Sequence", "video_category": "Sports", "video_duration": "60s"},
]


def test_daily_omni(tmp_path):
    data = _write(tmp_path / "qa.json", DAILY)
    (tmp_path / "Videos").mkdir()
    items = load_benchmark("Daily-Omni", data)
    assert "dailyomni" in BENCHMARKS and load_benchmark("daily_omni", data) == items
    assert [i.id for i in items] == ["abc-0", "xyz-1"]
    assert items[0].video == str(tmp_path / "Videos" / "abc" / "abc_video.mp4")
    assert items[0].options == ("A. the man", "B. the woman", "C. nobody", "D. a dog")
    assert items[1].options == ("A. laughter", "B. silence") and items[1].answer == "A"
    assert items[0].category == "AV Event Alignment"
    assert items[0].fields == {"video_category": "Vlog", "video_duration": "30s"}
    other = load_benchmark("dailyomni", data, video_dir=tmp_path / "elsewhere")
    assert other[1].video == str(tmp_path / "elsewhere" / "xyz" / "xyz_video.mp4")


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.pop("Choice"), "item 0: field 'Choice' is missing"),
    (lambda r: r.update(Answer="E"), "item 0: field 'Answer' is 'E' but there are only 4 options"),
    (lambda r: r.pop("video_id"), "item 0: field 'video_id' is missing"),
    (lambda r: r.update(Question=""), "item 0: field 'Question' is empty"),
])
def test_daily_omni_errors_name_file_item_field(tmp_path, change, message):
    records = json.loads(json.dumps(DAILY))
    change(records[0])
    data = _write(tmp_path / "qa.json", records)
    with pytest.raises(ValueError) as err:
        load_benchmark("dailyomni", data)
    assert str(err.value) == f"{data}: {message}"


LMMS_LAB = [
    {"index": 0, "video_path": "videos/v0.mp4", "subtitle_path": "subtitles/v0.srt",
     "question": "What is heard?", "candidates": ["A. a bell", "B. a car", "C. rain", "D. nothing"],
     "answer": "C", "task_type": "Audio Recognition", "task_domain": "Daily Life",
     "duration": "<1min", "audio_class": ["rain"]},
    {"index": 1, "video_path": "videos/v1.mp4", "subtitle_path": "subtitles/v1.srt",
     "question": "Who waves?", "candidates": ["A. a child", "B. a man", "C. a woman", "D. nobody"],
     "answer": "A", "task_type": "Human Interaction", "task_domain": "Sports",
     "duration": "1-2min", "audio_class": []},
]


def test_lmms_lab_worldsense_records(tmp_path):
    # lmms-lab's layout: the records file in a subfolder, videos/ at the dataset root
    root = tmp_path / "WorldSense"
    data = _write(root / "worldsense" / "test.json", LMMS_LAB)
    (root / "videos").mkdir()
    (root / "videos" / "v0.mp4").write_bytes(b"")
    items = load_benchmark("worldsense", data)
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].video == str(root / "videos" / "v0.mp4")  # found one folder up
    assert items[1].video == str(root / "worldsense" / "videos" / "v1.mp4")  # none exists: the first guess
    assert (items[0].answer, items[0].category) == ("C", "Audio Recognition")
    assert items[0].fields == {"domain": "Daily Life", "duration": "<1min"}
    # --video-dir: the path under it, or the file name alone
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "v1.mp4").write_bytes(b"")
    items = load_benchmark("worldsense", data, video_dir=flat)
    assert items[1].video == str(flat / "v1.mp4") and items[0].video == str(flat / "videos" / "v0.mp4")


def test_lmms_lab_worldsense_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame(LMMS_LAB).to_parquet(path)
    items = load_benchmark("worldsense", path)
    assert [i.options[2] for i in items] == ["C. rain", "C. a woman"] and items[1].answer == "A"


@pytest.mark.skipif(not __import__("omnizip.demo.media", fromlist=["x"]).have_media_tools(),
                    reason="needs ffmpeg and espeak-ng")
def test_omnizip_eval_on_daily_omni(tmp_path, capsys):
    """``omnizip eval --benchmark dailyomni`` end to end on the tiny model: one real clip, one
    missing video (an error in its record, not an abort)."""
    import torch

    from omnizip.cli import main
    from omnizip.demo.media import make_test_clip

    make_test_clip(tmp_path / "Videos" / "abc" / "abc_video.mp4", seconds=2.0, width=112,
                   height=112, fps=4, speech="Hello there.")
    data = _write(tmp_path / "qa.json", DAILY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["eval", "--benchmark", "dailyomni", "--data", str(data), "--model", "tiny",
                     "--method", "omnizip", "--retention", "0.5", "--max-new-tokens", "1",
                     "--output", str(tmp_path / "out"), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "out" / "dailyomni__tiny__omnizip__retention=0.5"
    records = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    assert by_id["abc-0"]["error"] is None and by_id["abc-0"]["stats"]["n_audio"] > 0
    s = by_id["abc-0"]["stats"]
    assert abs(s["kept_audio"] + s["kept_video"] - round(0.5 * (s["n_audio"] + s["n_video"]))) <= 1
    assert "xyz_video.mp4" in by_id["xyz-1"]["error"]
