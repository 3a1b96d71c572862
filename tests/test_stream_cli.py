"""``omnizip stream`` and ``omnizip run --causal/--json`` from the shell, on generated clips.

The main check runs both commands as real subprocesses on the same clip: the stream's last
answer (asked at the end of the input, after the last partial window is committed) and its
windows equal the offline causal run's. A live source is piped through stdin by ffmpeg.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from omnizip import cli
from omnizip.demo.media import make_test_clip

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng (make system-deps)")

WINDOW_KEYS = {"event", "index", "t", "audio", "kept_audio", "video", "kept_video",
               "cache_tokens", "ms"}
ANSWER_KEYS = {"event", "t", "question", "text", "tokens", "latency_ms"}
COUNTS = ("index", "audio", "kept_audio", "video", "kept_video")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_test_clip(tmp_path_factory.mktemp("stream") / "clip.mp4", seconds=5.5)


def omnizip_cli(*args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnizip.cli", *args], stdin=stdin,
                          capture_output=True, text=True, timeout=600)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


COMMON = ["--max-new-tokens", "4", "--causal-lookback", "3", "--quiet"]


@pytest.fixture(scope="module")
def file_run(clip):
    """``omnizip stream CLIP --json`` (no pacing), asking every 2.5 s of stream time."""
    stream = omnizip_cli("stream", str(clip), "--json", "--no-pace", "--ask-every", "2.5", *COMMON)
    assert stream.returncode == 0, stream.stderr
    return events(stream.stdout)


def test_stream_answer_and_windows_equal_run_causal_json(clip, file_run):
    offline = omnizip_cli("run", str(clip), "--causal", "--json", "--warmup", "0", *COMMON)
    assert offline.returncode == 0, offline.stderr
    got = file_run
    ref = json.loads(offline.stdout)
    assert set(ref) == {"text", "tokens", "windows"}
    windows = [e for e in got if e["event"] == "window"]
    answers = [e for e in got if e["event"] == "answer"]
    assert all(set(e) == WINDOW_KEYS for e in windows)
    assert all(set(e) == ANSWER_KEYS for e in answers)
    assert [{k: w[k] for k in COUNTS} for w in windows] == ref["windows"]
    assert len(windows) == 3  # 5.5 s: two whole 2-s windows and a partial one
    assert [w["t"] for w in windows] == [0.0, 2.0, 4.0]
    assert all(w["cache_tokens"] > 0 and w["ms"] >= 0 for w in windows)
    # asked at 2.5 s and 5 s of stream time on the committed windows, then at the end
    assert len(answers) == 3 and [a["t"] for a in answers] == sorted(a["t"] for a in answers)
    assert 2.5 <= answers[0]["t"] < 3.5 and 5.0 <= answers[1]["t"] <= answers[2]["t"]
    assert answers[-1]["tokens"] == ref["tokens"] and answers[-1]["text"] == ref["text"]
    assert len(ref["tokens"]) == 4 and answers[-1]["question"]


def test_stream_reads_a_live_source_from_stdin(clip, file_run):
    """ffmpeg remuxes the clip to MPEG-TS on a pipe; the stream decodes it as it comes."""
    feeder = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip),
                               "-c", "copy", "-f", "mpegts", "-"], stdout=subprocess.PIPE)
    try:
        proc = omnizip_cli("stream", "-", "--json", "--no-pace", "--max-new-tokens", "2",
                           "--ask-every", "100", "--quiet", stdin=feeder.stdout)
    finally:
        feeder.stdout.close()
        feeder.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = events(proc.stdout)
    windows = [e for e in got if e["event"] == "window"]
    from_file = [e["video"] for e in file_run if e["event"] == "window"]
    assert [w["video"] for w in windows] == from_file  # the same frames as from the file
    assert got[-1]["event"] == "answer" and len(got[-1]["tokens"]) == 2


def test_stream_plays_in_real_time_with_a_status_line(tmp_path, capsys):
    short = make_test_clip(tmp_path / "short.mp4", seconds=2.5)
    started = time.perf_counter()
    code = cli.main(["stream", str(short), "--max-new-tokens", "2", "--ask-every", "100",
                     "--no-progress"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr()
    assert code == 0, out.err
    assert elapsed >= 2.5  # paced: the source plays no faster than real time
    assert "real-time factor" in out.err and "cache" in out.err
    assert out.out.strip().startswith("[") and ", end]" in out.out


def test_run_json_prints_one_object(capsys):
    """``omnizip run --json`` (offline rules): text, token ids, and the windows of the bundled
    10-second clip (five 2-s windows of 2 frames x 140 tokens and 50 audio tokens)."""
    code = cli.main(["run", "--json", "--quiet", "--max-new-tokens", "2", "--warmup", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    got = json.loads(out.out)
    assert set(got) == {"text", "tokens", "windows"} and len(got["tokens"]) == 2
    assert [w["index"] for w in got["windows"]] == [0, 1, 2, 3, 4]
    assert [w["video"] for w in got["windows"]] == [280] * 5
    assert sum(w["audio"] for w in got["windows"]) == 251  # 10.05 s of audio at 25 per second
    assert all(0 < w["kept_video"] < w["video"] and 0 < w["kept_audio"] <= w["audio"]
               for w in got["windows"])


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory):
    return make_test_clip(tmp_path_factory.mktemp("silent") / "silent.mp4", seconds=2.0,
                          with_audio=False)


@pytest.mark.parametrize(("argv", "message"), [
    (["stream", "{missing}"], "cannot open it as media"),
    (["stream", "{silent}"], "no audio track"),
    (["stream", ""], "CLIP: empty path"),
    (["stream", "--max-cache-tokens", "0"], "--max-cache-tokens must be >= 1"),
    (["stream", "--max-cache-tokens", "20"], "--max-cache-tokens: 20 is too small"),
    (["stream", "--fps", "3"], "fps: 3 frames per second"),
    (["stream", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["run", "--causal-lookback", "3"], "--causal-lookback applies to causal decisions only"),
    (["run", "--causal", "--video-only"], "--causal needs the audio track"),
    (["run", "--causal", "--causal-lookback", "1"], "--causal-lookback"),
], ids=["missing", "no-audio", "empty", "cache-0", "cache-small", "fps", "new-tokens",
        "lookback-offline", "causal-video-only", "lookback-1"])
def test_bad_input_is_one_line(argv, message, tmp_path, silent_clip, capsys):
    argv = [a.format(missing=tmp_path / "nothing.mp4", silent=silent_clip) for a in argv]
    code = cli.main([*argv, "--quiet", "--no-pace"] if argv[0] == "stream" else [*argv, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"omnizip {argv[0]}: error: ") and message in err[0], err
