"""The ``omnizip`` command line: run / inspect / bench on the bundled defaults, and bad input.

Everything runs offline on the built-in random-weight models and the bundled clip. The
commands are called in-process through ``omnizip.cli.main`` (one subprocess checks the module
entry point), with ``--quiet`` where stderr must hold exactly the one error line.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omnizip import cli
from omnizip.flops import DecoderDims, predicted_speedup, run_macs


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- defaults
def test_bundled_clip_is_small_and_has_speech_then_silence():
    clip_path = cli.DEFAULT_CLIP
    assert clip_path.is_file() and clip_path.stat().st_size <= 1_000_000
    clip = cli.read_clip(clip_path, progress=False)
    assert 9.5 <= clip.duration <= 10.5
    assert clip.frames.shape[0] == 20 and clip.frames.shape[-1] == 3  # 10 s at 2 fps
    import numpy as np

    rate = clip.sampling_rate
    first, last = clip.audio[: 4 * rate], clip.audio[-3 * rate :]
    assert np.abs(first).mean() > 20 * max(np.abs(last).mean(), 1e-6)  # speech, then silence
    # visible motion: consecutive sampled frames differ
    assert np.abs(clip.frames[1].astype(int) - clip.frames[0].astype(int)).mean() > 1.0
    looped = cli.loop_clip(clip, 25.0)
    assert looped.frames.shape[0] == 50 and looped.audio.size == 25 * rate


def test_run_on_defaults(capsys):
    code, out, err = run_cli(capsys, "run", "--no-progress", "--max-new-tokens", "2")
    assert code == 0, err
    assert "noise" in out  # the built-in model says its answers are noise
    tokens = re.search(r"tokens\s+(\d+) -> (\d+) prompt tokens", out)
    assert tokens and int(tokens.group(2)) < int(tokens.group(1))
    assert re.search(r"compress\s+[\d.]+ ms", out)
    assert re.search(r"prefill\s+[\d.]+ ms", out)
    assert "answer" in out and "Traceback" not in err


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    code = cli.main(["inspect", "--quiet", "-o", str(out_dir), "--preset", "35"])
    assert code == 0
    return out_dir


def test_inspect_writes_png_html_json(inspected):
    from PIL import Image

    png = inspected / "report.png"
    html = (inspected / "report.html").read_text()
    numbers = json.loads((inspected / "report.json").read_text())
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1200 and img.size[1] >= 800
    # the page embeds exactly this PNG
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match and base64.b64decode(match.group(1)) == png.read_bytes()
    assert numbers["config"]["rho_audio"] == 0.4 and numbers["config"]["rho_video"] == 0.7
    tokens = numbers["tokens"]
    assert 0 < tokens["audio_kept"] < tokens["audio"] and 0 < tokens["video_kept"] < tokens["video"]
    windows = numbers["windows"]
    assert len(windows) == 5  # 10 s in 2-second windows
    assert all(0.0 <= w["S"] <= 1.0 and 0.0 <= w["r"] < 1.0 for w in windows)
    assert sum(w["video_kept"] for w in windows) == tokens["video_kept"]
    status = numbers["audio_token_status"]
    assert status["salient"] + status["anchor"] == tokens["audio_kept"]


def test_bench_tiny_writes_three_configurations(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(
        capsys, "bench", "--model", "tiny-qwen2.5-omni", "--clip-seconds", "4", "--reps", "2",
        "--warmup", "0", "--presets", "45", "--no-progress", "--retry-contended", "0", "-o", str(out),
    )
    assert code == 0, err
    data = json.loads(out.read_text())
    assert set(data["configs"]) == {"full", "omnizip-45", "kept-45"}
    full, omni, kept = (data["configs"][k] for k in ("full", "omnizip-45", "kept-45"))
    assert omni["decoder_tokens"] == kept["decoder_tokens"] < full["decoder_tokens"]
    for cfg in (full, omni, kept):
        assert len(cfg["prefill_ms"]["runs"]) == 2 and cfg["prefill_ms"]["median"] > 0
        assert cfg["ttft_ms"]["median"] >= cfg["prefill_ms"]["median"] * 0.5
        assert cfg["peak_memory_mib"] > 0
    assert omni["overhead_ms"]["median"] > 0
    cmp = data["comparison"]["45"]
    assert cmp["predicted_speedup"] > 1 and "prefill_within_5pct_of_limit" in cmp["targets"]
    # (c) is fed exactly what (b) kept, at the original positions
    assert data["checks"]["45"]["positions_equal"] is True
    assert data["machine"]["cpu_cores"] and data["definitions"]["memory"]
    assert "(c) kept-only 45%" in stdout and "targets 45%" in stdout


def test_bench_methods_at_one_flops_ratio(capsys, tmp_path):
    """--methods with --flops-ratio: each method's retention is solved on its count model and
    the run measures its FLOPs ratio layer by layer (FastV keeps its first K layers whole)."""
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(
        capsys, "bench", "--model", "tiny-qwen2.5-omni", "--clip-seconds", "4", "--reps", "1",
        "--warmup", "0", "--methods", "seats,random,omnizip", "--flops-ratio", "0.4",
        "--no-progress", "--retry-contended", "0", "-o", str(out),
    )
    assert code == 0, err
    data = json.loads(out.read_text())
    assert set(data["configs"]) == {"full", "seats", "random", "omnizip"}
    full = data["configs"]["full"]
    for name in ("seats", "random", "omnizip"):
        cfg, setting = data["configs"][name], data["settings"]["methods"][name]
        assert cfg["kind"] == "method" and 0 < setting["retention"] <= 1
        assert abs(setting["predicted_flops_ratio"] - 0.4) < 0.02
        assert abs(cfg["flops_ratio"] - 0.4) < 0.03, name
        assert len(cfg["layer_tokens"]) == 2 and cfg["peak_memory_mib"] > 0
        assert cfg["prefill_ms"]["median"] > 0 and cfg["ttft_ms"]["median"] > 0
    seats = data["configs"]["seats"]["layer_tokens"]
    assert seats[0] > seats[1] and seats[0] < full["decoder_tokens"]  # Stage I, then removal
    assert "FLOPs ratio" in stdout and "seats" in stdout


def test_predicted_speedup_formula():
    dims = DecoderDims(hidden=8, layers=2, q_width=8, kv_width=4, mlp_width=16)
    # per layer: n * (2*8*8 + 2*8*4 + 3*8*16) + n (n+1) * 8 (the one decoder cost model)
    assert run_macs(dims, 10) == 2 * (10 * (128 + 64 + 384) + 10 * 11 * 8)
    assert predicted_speedup(100, 100, dims) == pytest.approx(1.0)
    # linear-only limit: the token ratio; the quadratic term pushes it above
    assert predicted_speedup(1000, 500, dims) > 2.0


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.mp4").write_text("this is not a video\n")
    (root / "truncated.mp4").write_bytes(cli.DEFAULT_CLIP.read_bytes()[:3000])
    (root / "empty_model").mkdir()
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text('{"model_type": "bert"}\n')
    (root / "shortvid.json").write_text(json.dumps([{
        "video": "notes.mp4", "question": "Q?", "candidates": ["A. x", "B. y"], "answer": "A",
        "problem_type": "motion", "data_type": "video"}]))
    # ffmpeg is a test requirement (`make system-deps`): no skip when it is missing
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc=size=64x48:rate=5:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
         str(root / "silent.mp4")],
        check=True,
    )
    # 0.12 s with audio (AAC, as most files): the duration the file states, not one frame's 0.5 s
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc=size=64x48:rate=25:duration=0.12", "-f", "lavfi", "-i",
         "sine=frequency=440:duration=0.12", "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(root / "short.mp4")],
        check=True,
    )
    return root


BAD_CASES = {
    "missing file": (["run", "{root}/missing.mp4"], "no such file"),
    "not a video": (["run", "{root}/notes.mp4"], "cannot read"),
    "truncated video": (["run", "{root}/truncated.mp4"], "cannot read"),
    "a folder": (["run", "{root}"], "not a file"),
    "no audio track": (["run", "{root}/silent.mp4"], "no audio track"),
    "inspect missing file": (["inspect", "{root}/missing.mp4", "-o", "{root}/out"], "no such file"),
    "model path missing": (["run", "--model", "{root}/no/such/model"], "no such file"),
    "model folder without config": (["run", "--model", "{root}/empty_model"], "config.json"),
    "model of another kind": (["run", "--model", "{root}/bert"], "not an omni model"),
    "unknown preset": (["run", "--preset", "50"], "unknown preset"),
    "bench unknown preset": (["bench", "--presets", "45,50"], "unknown preset"),
    "rho audio too large": (["run", "--rho-audio", "1.5"], "--rho-audio"),
    "rho video negative": (["inspect", "--rho-video", "-0.1"], "--rho-video"),
    "ratio not a number": (["run", "--rho-audio", "lots"], "invalid float"),
    "bad budget": (["run", "--budget", "tight"], "invalid choice"),
    "bench clip length": (["bench", "--clip-seconds", "0"], "--clip-seconds"),
    "bench flops without methods": (["bench", "--flops-ratio", "0.5"], "--flops-ratio needs --methods"),
    "bench unknown method": (["bench", "--methods", "seats,sets"], "--methods: give distinct names"),
    "bench flops ratio above 1": (["bench", "--methods", "seats", "--flops-ratio", "1.5"], "--flops-ratio must lie in"),
    "unknown command": (["shrink"], "invalid choice"),
    # issue 11: each of these hung, sampled one frame, or exited 1 ("unexpected error")
    "fps inf": (["run", "--fps", "inf"], "--fps"),
    "fps nan": (["run", "--fps", "nan"], "--fps"),
    "inspect fps inf": (["inspect", "--fps", "inf", "-o", "{root}/out-fps"], "--fps"),
    "bench fps nan": (["bench", "--fps", "nan"], "--fps"),
    "bench clip length nan": (["bench", "--clip-seconds", "nan"], "--clip-seconds"),
    "dtype int8": (["run", "--dtype", "int8"], "--dtype 'int8'"),
    "bench dtype int8": (["bench", "--model", "tiny-qwen2.5-omni", "--dtype", "int8"], "--dtype"),
    "unknown attention": (["run", "--attn-implementation", "magic"], "--attn-implementation 'magic'"),
    # without the flash-attn package (this suite's environment), and on CPU in any case
    "flash attention on cpu": (["run", "--device", "cpu", "--attn-implementation",
                                "flash_attention_2"], "'flash_attention_2' needs"),
    "inspect onto a file": (["inspect", "-o", "{root}/notes.mp4"], "exists and is not a folder"),
    "inspect unwritable": (["inspect", "-o", "{root}/notes.mp4/report"], "cannot create the folder"),
    "bench output is a folder": (["bench", "-o", "{root}"], "is a folder"),
    "empty video path": (["run", ""], "empty path"),
    "inspect empty video path": (["inspect", "", "-o", "{root}/out-empty"], "empty path"),
    "eval fps inf": (["eval", "--benchmark", "shortvid", "--data", "{root}/x.json", "--model",
                      "tiny", "--fps", "inf"], "--fps"),
    "eval dtype int8": (["eval", "--benchmark", "shortvid", "--data", "{root}/shortvid.json",
                         "--model", "tiny", "--dtype", "int8", "--output", "{root}/out-eval"],
                        "--dtype 'int8'"),
    "eval model missing": (["eval", "--benchmark", "shortvid", "--data", "{root}/shortvid.json",
                            "--model", "{root}/no/such/model", "--output", "{root}/out-eval"],
                           "no such file"),
}


def invoke(argv: list[str]) -> int:
    """``cli.main`` or argparse's own exit, as a status."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_and_nonzero(case, bad_files, capsys):
    args, expected = BAD_CASES[case]
    argv = [a.format(root=bad_files) for a in args]
    if case != "unknown command":
        argv.append("--quiet")
    code = invoke(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("omnizip") and "error:" in lines[0]
    assert expected in lines[0]


@pytest.mark.parametrize("flag", ["--video-only", "--no-audio"])
def test_video_only_runs_a_silent_video(bad_files, capsys, flag):
    """``--no-audio`` (``omnizip eval``'s old name) is an alias of ``--video-only``."""
    code, out, err = run_cli(capsys, "run", str(bad_files / "silent.mp4"), flag,
                             "--quiet", "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "audio 0 -> 0" in out


def test_short_clip_duration_is_the_files(bad_files, capsys):
    clip = cli.read_clip(bad_files / "short.mp4")
    assert len(clip.frames) == 1 and clip.duration == pytest.approx(0.12, abs=0.005)
    code, out, err = run_cli(capsys, "run", str(bad_files / "short.mp4"), "--quiet",
                             "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "(0.12 s, 1 frame" in out and "0.5 s" not in out


def test_fps_inf_fails_fast_instead_of_hanging(tmp_path):
    """A subprocess with a timeout: before the fix the frame sampling loop never ended."""
    proc = subprocess.run(
        [sys.executable, "-m", "omnizip.cli", "run", "--fps", "inf", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--fps" in lines[0] and "positive finite" in lines[0]


def test_read_clip_refuses_bad_fps_and_empty_path():
    with pytest.raises(ValueError, match=r"fps must be a positive finite number, got inf"):
        cli.read_clip(cli.DEFAULT_CLIP, fps=float("inf"))
    with pytest.raises(ValueError, match=r"fps must be a positive finite number, got nan"):
        cli.read_clip(cli.DEFAULT_CLIP, fps=float("nan"))
    with pytest.raises(ValueError, match=r"empty video path ''"):
        cli.read_clip("")


def test_run_loads_a_checkpoint_folder(tmp_path, capsys):
    """--model with a local folder: config read, model_type dispatched, from_pretrained."""
    from omnizip.demo.processor import build_offline_processor
    from omnizip.demo.tiny_model import build_tiny_qwen2_5_omni_thinker

    folder = tmp_path / "tiny-thinker"
    build_tiny_qwen2_5_omni_thinker(seed=1).save_pretrained(folder)
    build_offline_processor(max_pixels=112 * 112, min_pixels=56 * 56).save_pretrained(folder)
    code, out, err = run_cli(capsys, "run", "--model", str(folder), "--quiet",
                             "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "Qwen2_5OmniThinkerForConditionalGeneration" in out and "noise" not in out
    assert re.search(r"tokens\s+\d+ -> \d+", out)


def test_module_entry_point_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "omnizip.cli", "run", str(tmp_path / "nothing.mp4")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"omnizip run: error: {tmp_path / 'nothing.mp4'}: no such file"
    ]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("run", "inspect", "bench"):
        assert command in text


def test_run_tiny_qwen3(capsys):
    code, out, err = run_cli(capsys, "run", "--model", "tiny-qwen3-omni", "--quiet",
                             "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "Qwen3-Omni" in out and re.search(r"tokens\s+\d+ -> \d+", out)


def test_eval_is_mounted(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--benchmark" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    """A two-question ShortVid-Bench copy: a clip with speech and a silent one (ffmpeg,
    espeak-ng: test requirements, no skip)."""
    from omnizip.demo.media import make_test_clip

    root = tmp_path_factory.mktemp("shortvid")
    rows = []
    for i, (name, speech) in enumerate([("talk.mp4", "The bar moves."), ("silent.mp4", None)]):
        make_test_clip(root / "videos" / name, seconds=2.0, width=112, height=112, fps=4,
                       with_audio=speech is not None, speech=speech or "")
        rows.append({"video": name, "question": f"What happens in clip {i}?",
                     "candidates": ["A. a bar moves", "B. nothing", "C. a cat sings"],
                     "answer": "A", "problem_type": "motion", "data_type": "video"})
    path = root / "ShortVid-Bench-1k.json"
    path.write_text(json.dumps(rows))
    return path


def test_eval_end_to_end_on_a_tiny_local_benchmark(tiny_benchmark, tmp_path, capsys):
    """``omnizip eval`` through ``omnizip.cli.main``: loads the built-in model through the one
    loader, answers both questions, writes metrics with a FLOPs ratio from the one cost model."""
    out = tmp_path / "results"
    code, stdout, err = run_cli(
        capsys, "eval", "--benchmark", "shortvid", "--data", str(tiny_benchmark), "--model",
        "tiny-qwen2.5-omni", "--method", "omnizip", "--retention", "0.5", "--max-new-tokens", "1",
        "--max-pixels", "12544", "--min-pixels", "3136", "--output", str(out), "--quiet",
    )
    assert code == 0, err
    run_dir = out / "shortvid__tiny-qwen2.5-omni__omnizip__retention=0.5"
    assert str(run_dir) in stdout and "accuracy" in stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["answered"] == 2 and metrics["n_errors"] == 0
    recs = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    talk, silent = recs
    assert talk["stats"]["n_audio"] > 0 and silent["stats"]["n_audio"] == 0
    assert 0 < talk["stats"]["flops_ratio"] < 1


def test_assets_are_package_data():
    text = (Path(cli.__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"assets/*.mp4"' in text


def test_one_loader_for_every_command():
    """The CLI, ``omnizip eval`` and the lmms-eval plugin's import path share one loader; bad
    arguments name themselves before anything is built."""
    import omnizip.eval.generation as generation
    import omnizip.loading as loading

    assert generation.load_model is loading.load_model
    assert set(loading.BUILTIN_MODELS) >= {"tiny-qwen2.5-omni", "tiny-qwen3-omni", "tiny"}
    assert {"qwen2_5_omni", "qwen3_omni_moe", "qwen3_omni_moe_thinker"} <= set(loading.MODEL_CLASSES)
    with pytest.raises(ValueError, match=r"^dtype 'int8': expected auto, float32, bfloat16, float16$"):
        loading.load_model("tiny", dtype="int8")
    with pytest.raises(ValueError, match=r"^attn_implementation 'magic': expected one of"):
        loading.load_model("tiny", attn_implementation="magic")
    with pytest.raises(ValueError, match=r"^model '': expected a built-in name"):
        loading.load_model("")
