"""omnizip in the real lmms-eval 0.7: the entry point, the model class, the shipped tasks, and
lmms-eval's own CLI end to end on the tiny model and generated clips (the command of
docs/evaluation.md, as written there)."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import weakref
from importlib import metadata
from pathlib import Path

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval")

from omnizip.demo.media import have_media_tools, make_test_clip  # noqa: E402
from omnizip.eval import lmms_eval_plugin as plugin  # noqa: E402
from omnizip.eval.lmms.model_args import conversation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
needs_media = pytest.mark.skipif(not have_media_tools(), reason="needs ffmpeg and espeak-ng")
ENTRY_POINT = "omnizip.eval.lmms_eval_plugin:model_manifest"


def _declared_entry_point() -> str:
    """omnizip_qwen_omni's value in pyproject's [project.entry-points."lmms_eval.models"]."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r'^\[project\.entry-points\."lmms_eval\.models"\]\n(.*?)(?=^\[|\Z)', text, re.M | re.S)
    assert section, "pyproject.toml declares no lmms_eval.models entry point"
    m = re.search(rf'^{plugin.MODEL_NAME}\s*=\s*"([^"]+)"', section.group(1), re.M)
    assert m, f"pyproject.toml: no {plugin.MODEL_NAME} in the lmms_eval.models entry points"
    return m.group(1)


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for lmms-eval subprocesses: this tree first on the path, no
    LMMS_EVAL_PLUGINS. When the installed omnizip's metadata predates the entry point (an
    editable install made before pyproject declared it; `make test` reinstalls on a change),
    the declaration of pyproject.toml is installed as metadata into a temporary folder."""
    env = {k: v for k, v in os.environ.items() if k != "LMMS_EVAL_PLUGINS"}
    paths = [str(ROOT)]
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="lmms_eval.models")}
    if installed.get(plugin.MODEL_NAME) != _declared_entry_point():
        info = tmp_path / "entry-points" / "omnizip_entry_points-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: omnizip-entry-points\nVersion: 0\n")
        (info / "entry_points.txt").write_text(
            f"[lmms_eval.models]\n{plugin.MODEL_NAME} = {_declared_entry_point()}\n")
        paths.append(str(info.parent))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return env


# ----------------------------------------------------------------------------- registration
def test_pyproject_declares_the_entry_point():
    assert _declared_entry_point() == ENTRY_POINT
    manifest = plugin.model_manifest()
    from lmms_eval.models.registry_v2 import ModelManifest

    assert isinstance(manifest, ModelManifest)
    assert (manifest.model_id, manifest.simple_class_path, manifest.chat_class_path) == (
        "omnizip_qwen_omni", "omnizip.eval.lmms.models.omnizip_qwen_omni.OmniZipQwenOmni", None)


@pytest.mark.parametrize("route", ["entry point", "LMMS_EVAL_PLUGINS"])
def test_lmms_eval_resolves_the_model(route, tmp_path):
    """lmms-eval's own registry finds the class, in a fresh interpreter, by either route."""
    env = _subprocess_env(tmp_path)
    if route == "LMMS_EVAL_PLUGINS":
        env["LMMS_EVAL_PLUGINS"] = "omnizip.eval.lmms"
    code = ("from lmms_eval.models import get_model, MODEL_REGISTRY_V2 as r; "
            "c = get_model('omnizip_qwen_omni'); "
            "print(c.__module__, c.__name__, r.resolve('omnizip_qwen_omni').model_type)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split() == ["omnizip.eval.lmms.model", "OmniZipQwenOmni", "simple"]


def test_register_adds_the_manifest_in_process():
    from lmms_eval.models import MODEL_REGISTRY_V2

    cls = plugin.register()
    assert MODEL_REGISTRY_V2.get_model_class("omnizip_qwen_omni") is cls
    from lmms_eval.api.model import lmms

    assert issubclass(cls, lmms) and cls.is_simple


def test_without_lmms_eval_an_import_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    assert not plugin.is_available()
    with pytest.raises(ImportError, match=r"needs lmms-eval \(pip install 'omnizip\[lmms\]'\)"):
        plugin.build_model_class()
    with pytest.raises(ImportError, match="needs lmms-eval"):
        from omnizip.eval.lmms.models.omnizip_qwen_omni import OmniZipQwenOmni  # noqa: F401
    # the legacy plugin layout imports without lmms-eval (moved from tests/test_eval.py)
    from omnizip.eval.lmms import models

    assert models.AVAILABLE_MODELS == {"omnizip_qwen_omni": "OmniZipQwenOmni"}
    assert importlib.util.find_spec("omnizip.eval.lmms.tasks") is not None  # the CLI needs it
    assert Path(plugin.task_path(), "avut", "avut.yaml").is_file()


# ----------------------------------------------------------------------------- the model class
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not have_media_tools():
        pytest.skip("needs ffmpeg and espeak-ng")
    root = tmp_path_factory.mktemp("lmms_clip")
    return str(make_test_clip(root / "talk.mp4", seconds=2.0, width=112, height=112, fps=4,
                              speech="The bar moves."))


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _create(args: str, **forwarded):
    """As lmms-eval's evaluator builds a model: the --model_args string plus its CLI's kwargs."""
    cls = plugin.build_model_class()
    return cls.create_from_arg_string(args, {"batch_size": 1, "device": None, **forwarded})


def _request(context, doc, doc_id=0, gen=None):
    return types.SimpleNamespace(args=(context, gen or {"until": [], "max_new_tokens": 1},
                                       lambda d: d["visuals"], doc_id, "task", "test"))


def test_model_args_errors_are_clear(one_thread):
    with pytest.raises(ValueError, match=r"unknown model argument 'windw': neither a model "
                                         r"argument \(pretrained, method, .*\) nor an option of "
                                         r"method 'dycoke' \(retention, token_budget, .*window"):
        _create("pretrained=tiny,method=dycoke,windw=3")
    with pytest.raises(ValueError, match="g need a compression method, but method=none"):
        _create("pretrained=tiny,method=none,g=15")
    with pytest.raises(ValueError, match="unknown method 'zip'; known methods: none, omnizip"):
        _create("pretrained=tiny,method=zip")
    with pytest.raises(ValueError, match="one request at a time"):
        _create("pretrained=tiny,method=none", batch_size=4)
    with pytest.raises(ValueError, match=r"preset must be one of \['35', '45'\], got 50"):
        _create("pretrained=tiny,method=omnizip,preset=50")


def test_model_args_select_seats(one_thread):
    """The plugin builds SEATS by name, its options from text (the release's "16-18-20")."""
    from omnizip.methods import SEATSConfig

    lm = _create("pretrained=tiny,method=seats,retention=0.25,drop_layers=1,late_block_layer=2")
    try:
        assert isinstance(lm.method_config, SEATSConfig)
        assert (lm.method_config.retention, lm.method_config.drop_layers) == (0.25, (1,))
        assert lm.answerer.handle.adapter.effective_method.family == "Qwen2.5-Omni"
    finally:
        lm.clean()


@needs_media
def test_generate_until_records_failures_and_clean_releases(clip, one_thread):
    from lmms_eval.api.instance import GenerationResult

    lm = _create("pretrained=tiny,method=dycoke,retention=0.5,window=3", max_batch_size=8)
    assert lm.method_config.window == 3 and lm.method_config.retention == 0.5
    # options given as text (a direct call) are parsed to the method's field types
    direct = plugin.build_model_class()(pretrained="tiny", method="dycoke", window="3", retention="0.5")
    assert direct.method_config.window == 3 and direct.method_config.retention == 0.5
    direct.clean()
    docs = {0: {"visuals": [clip]}, 1: {"visuals": []}, 2: {"visuals": [clip, clip]}}
    lm.task_dict = {"task": {"test": docs}}
    out = lm.generate_until([_request("Q?\nA. x\nB. y", docs[i], i) for i in (0, 1, 2)])
    ok, missing, two = lm.last_stats
    assert isinstance(out[0], GenerationResult) and out[1:] == ["", ""]
    assert "error" not in ok and ok["kept_audio"] + ok["kept_video"] == round(
        0.5 * (ok["n_audio"] + ok["n_video"]))
    seen = ok["prompt_tokens"] - (ok["n_audio"] + ok["n_video"] - ok["kept_audio"] - ok["kept_video"])
    assert out[0].token_counts.input_tokens == seen < ok["prompt_tokens"]
    assert missing["error"].startswith("FileNotFoundError") and missing["doc_id"] == 1
    assert two["error"].startswith("ValueError: omnizip_qwen_omni: each request must hold exactly one video")
    with pytest.raises(NotImplementedError):
        lm.loglikelihood([])

    handle, model_ref = lm.answerer.handle, weakref.ref(lm.model)
    assert handle.active
    lm.clean()
    assert not handle.active and lm.model is None and lm.answerer is None
    del handle
    gc.collect()
    assert model_ref() is None  # nothing holds the model any more
    assert lm.generate_until([_request("Q?", docs[0])]) == [""]  # after clean: a failed item


@needs_media
def test_use_audio_in_video_false_keeps_the_audio(clip, one_thread):
    stats = {}
    for uav in (True, False):
        lm = _create(f"pretrained=tiny,method=none,use_audio_in_video={uav}")
        lm.task_dict = {"task": {"test": {0: {"visuals": [clip]}}}}
        lm.generate_until([_request("Q?", {"visuals": [clip]})])
        stats[uav] = lm.last_stats[0]
        inputs, interleaved = lm.answerer.inputs(conversation("Q?", [clip], None))
        ids = inputs["input_ids"][0]
        audio = torch.nonzero(ids == lm.answerer.audio_token_id).flatten()
        video = torch.nonzero(ids == lm.answerer.video_token_id).flatten()
        assert interleaved is uav
        if not uav:  # its own block after the video, not dropped
            assert audio.numel() > 0 and audio.min() > video.max()
        lm.clean()
    assert stats[False]["n_audio"] == stats[True]["n_audio"] > 0
    assert stats[False]["n_video"] == stats[True]["n_video"] > 0


# ----------------------------------------------------------------------------- shipped tasks
SAMPLES = {
    # task -> (benchmark, variable, annotation file name, records writer)
    "avut": ("avut", "OMNIZIP_AVUT", "AV_Human_data.json", lambda v: [
        {"QA_id": "q0", "video_id": "v0", "video_path": v, "question": "Who speaks?",
         "option_A": "a man", "option_B": "a cat", "option_C": "nobody", "answer": "A",
         "task_type": "speaker"},
        {"QA_id": "q1", "video_id": "v1", "video_path": "gone.mp4", "question": "What moves?",
         "option_A": "a bar", "option_B": "a car", "answer": "B", "task_type": "motion"}]),
    "daily_omni": ("dailyomni", "OMNIZIP_DAILY_OMNI", "qa.json", lambda v: [
        {"Question": "Who speaks?", "Choice": ["A. a man", "B. a cat", "C. nobody"], "Answer": "A",
         "video_id": "v0", "Type": "speaker", "video_category": "talk", "video_duration": "30s"},
        {"Question": "What moves?", "Choice": ["A. a bar", "B. a car"], "Answer": "B",
         "video_id": "v1", "Type": "motion", "video_category": "talk", "video_duration": "60s"}]),
    "shortvid_bench": ("shortvid", "OMNIZIP_SHORTVID_BENCH", "ShortVid-Bench-1k.json", lambda v: [
        {"id": "q0", "video": v, "question": "Who speaks?", "candidates": ["a man", "a cat", "nobody"],
         "answer": "A", "problem_type": "speaker"},
        {"id": "q1", "video": "gone.mp4", "question": "What moves?", "candidates": ["a bar", "a car"],
         "answer": "B", "problem_type": "motion"}]),
    "omnivideobench": ("omnivideobench", "OMNIZIP_OMNIVIDEOBENCH", "data.json", lambda v: [
        {"video": v[:-4], "video_type": "Vlog", "duration": "01:30", "questions": [
            {"question": "Who speaks?", "options": ["A.a man", "B.a cat", "C.nobody"],
             "correct_option": "A", "answer": "a man", "question_type": "speaker", "audio_type": "Speech"},
            {"question": "What moves?", "options": ["A.a bar", "B.a car"], "correct_option": "B",
             "answer": "a car", "question_type": "motion", "audio_type": "Sound"}]}]),
    "lvomnibench": ("lvomnibench", "OMNIZIP_LVOMNIBENCH", "data.json", lambda v: [
        {"question_id": "q0", "video_id": v[:-4], "question": "Who speaks?",
         "options": ["A. a man", "B. a cat", "C. nobody"], "correct_option": "A",
         "question_type": "speaker", "audio_type": "Speech", "difficulty": "easy"},
        {"question_id": "q1", "video_id": "gone", "question": "What moves?",
         "options": ["A. a bar", "B. a car"], "correct_option": "B", "question_type": "motion",
         "audio_type": "Sound", "difficulty": "hard"}]),
}


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=plugin.task_path())


@pytest.mark.parametrize("task", sorted(SAMPLES))
def test_shipped_task_loads_and_scores(task, task_manager, tmp_path, monkeypatch):
    from lmms_eval.tasks import get_task_dict

    from omnizip.eval.datasets import load_benchmark
    from omnizip.eval.prompt import build_prompt

    benchmark, variable, name, records = SAMPLES[task]
    data = tmp_path / name
    data.write_text(json.dumps(records("v0.mp4")))
    monkeypatch.setenv(variable, str(data))
    monkeypatch.delenv(f"{variable}_VIDEO_DIR", raising=False)
    assert task in task_manager.all_tasks
    obj = get_task_dict([task], task_manager)[task]
    docs = list(obj.test_docs())
    items = load_benchmark(benchmark, data)
    assert [d["id"] for d in docs] == [i.id for i in items] and len(docs) == 2
    # the prompt and the letter are omnizip eval's
    assert obj.doc_to_text(docs[0]) == build_prompt(items[0].question, items[0].options)
    assert obj.doc_to_text(docs[0]).splitlines()[1:3] == ["Options:", "A. a man"]
    assert obj.doc_to_target(docs[1]) == "B"
    assert obj.doc_to_visual(docs[1]) == []  # the missing video: no visual, not an exception
    scored = [obj.process_results(docs[0], [answer])["accuracy"]["correct"]
              for answer in ("A", "(a)", "The answer is A.", "a man", "B. a cat", "", "C")]
    assert scored == [True, True, True, True, False, False, False]
    results = [obj.process_results(d, [a])["accuracy"] for d, a in
               ((docs[0], "A"), (docs[1], "A"), (docs[1], "B. a car"), (docs[0], "nothing"))]
    assert obj.aggregation()["accuracy"](results) == 0.5


def test_shipped_task_without_its_variable_says_which(task_manager, monkeypatch):
    from lmms_eval.tasks import get_task_dict

    monkeypatch.delenv("OMNIZIP_AVUT", raising=False)
    with pytest.raises(ValueError, match=r"task avut: no annotation file: set \$\{OMNIZIP_AVUT\}"):
        get_task_dict(["avut"], task_manager)


# ----------------------------------------------------------------------------- lmms-eval's CLI
def _documented_command() -> str:
    """The tested bash block of docs/evaluation.md (after its marker comment)."""
    text = (ROOT / "docs" / "evaluation.md").read_text()
    m = re.search(r"<!-- tests/test_lmms_eval.py runs this block[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert m, "docs/evaluation.md lost the tested lmms-eval block"
    return m.group(1)


@needs_media
def test_lmms_eval_cli_end_to_end(tmp_path):
    """lmms-eval's CLI, found through the entry point (no LMMS_EVAL_PLUGINS), runs the shipped
    ShortVid-Bench task on generated clips: per-sample results, compression logged per request,
    a missing video recorded as a failed item."""
    root = tmp_path / "ShortVid-Bench"
    for i in range(2):
        make_test_clip(root / "videos" / f"c{i}.mp4", seconds=2.0, width=112, height=112, fps=4,
                       speech=f"Clip {i}. The bar moves.")
    recs = [{"id": f"q{i}", "video": f"c{i}.mp4", "question": f"What moves in clip {i}?",
             "candidates": ["a bar", "a ball"], "answer": "A", "problem_type": "motion"}
            for i in range(2)]
    recs.append({"id": "q2", "video": "gone.mp4", "question": "?", "candidates": ["x", "y"],
                 "answer": "B", "problem_type": "motion"})
    (root / "ShortVid-Bench-1k.json").write_text(json.dumps(recs))

    command = _documented_command()
    assert "pretrained=Qwen/Qwen2.5-Omni-7B," in command
    # the documented command on the tiny model (one token answers keep it short)
    command = command.replace("pretrained=Qwen/Qwen2.5-Omni-7B,", "pretrained=tiny,max_new_tokens=1,")
    env = _subprocess_env(tmp_path)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]

    lines = re.findall(r"omnizip_qwen_omni: shortvid_bench doc (\d): omnizip\[qwen2_5_omni\]: 1 row\(s\), "
                       r"prefill (\d+) -> (\d+) tokens; audio (\d+)/(\d+), video (\d+)/(\d+) kept", log)
    assert sorted(int(x[0]) for x in lines) == [0, 1], log[-3000:]
    for _, before, after, ka, na, kv, nv in (map(int, x) for x in lines):
        assert abs(ka + kv - round(0.45 * (na + nv))) <= 1  # OmniZip meets a target to ~1 token
        assert after == before - (na + nv - ka - kv) and ka < na and kv < nv
    assert "shortvid_bench doc 2: failed, answered ''" in log and "gone.mp4" in log

    out = tmp_path / "results" / "lmms"
    (samples_file,) = out.rglob("*_samples_shortvid_bench.jsonl")
    samples = sorted((json.loads(x) for x in samples_file.read_text().splitlines()),
                     key=lambda s: s["doc_id"])
    assert [s["doc"]["id"] if "doc" in s else s["accuracy"]["id"] for s in samples] == ["q0", "q1", "q2"]
    assert [s["target"] for s in samples] == ["A", "A", "B"]
    assert samples[2]["accuracy"]["correct"] is False
    kept_inputs = {int(x[0]): int(x[2]) for x in lines}
    for s in samples[:2]:
        assert s["token_counts"][0]["input_tokens"] == kept_inputs[s["doc_id"]]
    (results_file,) = out.rglob("*_results.json")
    accuracy = json.loads(results_file.read_text())["results"]["shortvid_bench"]["accuracy,none"]
    assert accuracy == sum(s["accuracy"]["correct"] for s in samples) / 3
