"""``omnizip stream`` and ``omnizip run --causal/--json`` from the shell, on generated clips.

The main check runs both commands as real subprocesses on the same clip: the stream's last
answer (asked at the end of the input, after the last partial window is committed) and its
windows equal the offline causal run's. A live source is piped through stdin by ffmpeg.
``omnizip stream --chunk-seconds S`` (chunk items, the vLLM layout) is checked against the
whole multi-item prompt built at once by the processor, each item decided alone
(tests/reference_items.py).
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


# ------------------------------------------------------------------ --chunk-seconds: chunk items
CHUNK_KEYS = {"event", "index", "t", "end", "audio", "kept_audio", "video", "kept_video",
              "cache_tokens", "ms"}
CHUNK_NEW = 4


@pytest.fixture(scope="module")
def chunk_run(clip):
    """``omnizip stream CLIP --chunk-seconds 2 --json`` (no pacing), asking every 2.5 s."""
    proc = omnizip_cli("stream", str(clip), "--chunk-seconds", "2", "--json", "--no-pace",
                       "--ask-every", "2.5", "--max-new-tokens", str(CHUNK_NEW), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return events(proc.stdout)


def test_stream_chunk_seconds_events(chunk_run):
    """5.5 s in 2-s chunk items: 0-2, 2-4 and the shorter 4-5.5 s committed at the end; the
    questions at 2.5 s and 5 s see the chunks complete by then, the last one all three."""
    kinds = [e["event"] for e in chunk_run]
    assert kinds == ["chunk", "answer", "chunk", "answer", "chunk", "answer"]
    chunks = [e for e in chunk_run if e["event"] == "chunk"]
    assert all(set(c) == CHUNK_KEYS for c in chunks)
    assert all(set(a) == ANSWER_KEYS for a in chunk_run if a["event"] == "answer")
    assert [(c["index"], c["t"], c["end"]) for c in chunks] == [(0, 0.0, 2.0), (1, 2.0, 4.0),
                                                                (2, 4.0, 5.5)]
    # 2 s: 4 frames = 2 video steps of 140 tokens, 50 audio tokens (25 per second)
    assert [(c["video"], c["audio"]) for c in chunks[:2]] == [(280, 50), (280, 50)]
    assert all(0 < c["kept_audio"] < c["audio"] and 0 < c["kept_video"] < c["video"]
               and c["ms"] >= 0 for c in chunks)
    cache = [c["cache_tokens"] for c in chunks]
    kept = [c["kept_audio"] + c["kept_video"] for c in chunks]
    assert all(b - a > k for a, b, k in zip(cache, cache[1:], kept[1:], strict=False))  # + markers


def test_stream_chunk_seconds_answers_equal_the_per_item_prompt(clip, chunk_run):
    """Each answer's tokens are those of the prompt holding the chunks committed before it as
    video items (each with its own audio), then the question, built by the processor at once
    and run by transformers with each item decided alone; the clip is decoded as the stream
    decodes it and cut at every 2 s. The last chunk's cache size is that prompt's rows up to
    the question."""
    from reference_items import per_item_reference

    from omnizip import OmniZipConfig
    from omnizip.cli.options import DEFAULT_QUESTION
    from omnizip.loading import load_model
    from omnizip.stream.prompt import item_prompt_pieces
    from omnizip.stream.source import read_stream

    loaded = load_model("tiny-qwen2.5-omni", device="cpu")
    rate = int(loaded.processor.feature_extractor.sampling_rate)
    frames, audio = read_stream(str(clip), fps=2.0, sampling_rate=rate)
    cuts = [(0, 4, 0, 2 * rate), (4, 8, 2 * rate, 4 * rate), (8, len(frames), 4 * rate, audio.size)]
    items = [{"type": "video", "video": frames[a:b], "audio": audio[c:d]} for a, b, c, d in cuts]
    question = {"type": "text", "text": DEFAULT_QUESTION}
    n_question = int(item_prompt_pieces(loaded.processor).question_ids(DEFAULT_QUESTION).numel())
    seen = 0
    for event in chunk_run:
        if event["event"] == "chunk":
            seen += 1
            continue
        ref = per_item_reference(loaded.thinker, loaded.processor, [*items[:seen], question],
                                 OmniZipConfig(), CHUNK_NEW)
        assert event["tokens"] == ref["tokens"] and len(ref["tokens"]) == CHUNK_NEW
        assert event["question"] == DEFAULT_QUESTION
    assert seen == 3
    last = [e for e in chunk_run if e["event"] == "chunk"][-1]
    assert last["cache_tokens"] == ref["embeds"].shape[0] - n_question


def test_stream_chunk_seconds_drops_an_audio_tail_without_frames(capsys):
    """The bundled clip: 20 frames and 10.048 s of audio; in 5-s chunks the last 0.048 s of
    audio has no frame to make a chunk item with: it is dropped, with a note, and the stream
    ends normally."""
    code = cli.main(["stream", "--chunk-seconds", "5", "--json", "--no-pace", "--ask-every", "100",
                     "--max-new-tokens", "2", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    got = events(out.out)
    assert [(e["event"], e.get("t"), e.get("end")) for e in got[:2]] == [
        ("chunk", 0.0, 5.0), ("chunk", 5.0, 10.0)]
    assert got[2]["event"] == "answer" and len(got) == 3 and len(got[2]["tokens"]) == 2
    assert "dropped 0.048 s of audio with no frame after the last chunk" in out.err
    assert "chunks 2 |" in out.err and "budget=exact" in out.err


@pytest.mark.parametrize(("argv", "message"), [
    (["--chunk-seconds", "2", "--max-cache-tokens", "100"],
     "--max-cache-tokens does not apply with --chunk-seconds"),
    (["--chunk-seconds", "2", "--causal-lookback", "3"],
     "--causal-lookback does not apply with --chunk-seconds"),
    (["--chunk-seconds", "2", "--budget", "reference"],
     "--budget reference does not apply with --chunk-seconds"),
    (["--chunk-seconds", "0"], "argument --chunk-seconds: expected a positive finite number"),
    (["--chunk-seconds", "nan"], "argument --chunk-seconds: expected a positive finite number"),
    (["--chunk-seconds", "1.5"], "--chunk-seconds must hold whole video steps of 2 frames"),
    (["--chunk-seconds", "0.3"], "--chunk-seconds must hold whole frames at fps=2"),
    (["--chunk-seconds", "2", "--fps", "3"], "--fps: 3 frames per second"),
], ids=["cache", "lookback", "budget", "zero", "nan", "half-step", "frames", "fps"])
def test_chunk_seconds_refusals_are_one_line(argv, message, capsys):
    try:
        code = cli.main(["stream", *argv, "--quiet", "--no-pace"])
    except SystemExit as exc:  # argparse's own refusals (the Parser prints one line)
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("omnizip stream: error: ") and message in err[0], err
