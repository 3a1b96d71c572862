"""The ``omnizip`` command line: run / inspect / bench on the bundled defaults, and bad input.

Everything runs offline on the built-in random-weight models and the bundled clip. The
commands are called in-process through ``omnizip.cli.main`` (one subprocess checks the module
entry point), with ``--quiet`` where stderr must hold exactly the one error line.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("av")
pytest.importorskip("matplotlib")

from omnizip import cli
from omnizip.bench import DecoderDims, predicted_speedup, prefill_macs


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


def test_predicted_speedup_formula():
    dims = DecoderDims(hidden=8, layers=2, q_width=8, kv_width=4, mlp_width=16)
    # per layer: n * (2*8*8 + 2*8*4 + 3*8*16) + n (n+1) * 8
    assert prefill_macs(10, dims) == 2 * (10 * (128 + 64 + 384) + 10 * 11 * 8)
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
    if shutil.which("ffmpeg"):
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
             "testsrc=size=64x48:rate=5:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
             str(root / "silent.mp4")],
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
    "unknown command": (["shrink"], "invalid choice"),
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
    if case == "no audio track" and not (bad_files / "silent.mp4").exists():
        pytest.skip("needs ffmpeg")
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


def test_video_only_runs_a_silent_video(bad_files, capsys):
    if not (bad_files / "silent.mp4").exists():
        pytest.skip("needs ffmpeg")
    code, out, err = run_cli(capsys, "run", str(bad_files / "silent.mp4"), "--video-only",
                             "--quiet", "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "audio 0 -> 0" in out


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


@pytest.mark.skipif(
    not hasattr(__import__("omnizip.demo.tiny_model", fromlist=["x"]), "build_tiny_qwen3_omni_thinker"),
    reason="no tiny Qwen3-Omni builder",
)
def test_run_tiny_qwen3(capsys):
    code, out, err = run_cli(capsys, "run", "--model", "tiny-qwen3-omni", "--quiet",
                             "--max-new-tokens", "1", "--warmup", "0")
    assert code == 0, err
    assert "Qwen3-Omni" in out and re.search(r"tokens\s+\d+ -> \d+", out)


def test_eval_is_mounted_when_available(capsys):
    try:
        import omnizip.cli_eval  # noqa: F401
    except Exception:
        pytest.skip("omnizip.cli_eval does not import")
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--benchmark" in capsys.readouterr().out


def test_assets_are_package_data():
    text = (Path(cli.__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"assets/*.mp4"' in text
