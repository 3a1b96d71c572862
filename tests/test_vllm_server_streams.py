"""Live streams against a real vLLM server (tiny Qwen2.5-Omni, OmniZip preset 45, 127.0.0.1).

One server for the module. A stream is a growing conversation, one video item (with its own
audio) per chunk, then the question (docs/serving_streams.md):

- ``python -m omnizip.vllm.stream_client`` plays a 12-s clip as 4-s chunks and asks after each
  chunk: every prompt is the previous one plus one compressed chunk (its size from the
  checkpoint's processor and the exact-budget rule, tests/vllm_server/expected.py), and the
  cached prefix grows;
- bad streams are served, not crashed (each chunk is decided alone, so a chunk is valid on
  its own): chunks out of order, a chunk of another resolution mid-stream, a stream whose first
  chunk is missing, a chunk longer than the others. After each, the server is healthy and a
  valid stream gets the same tokens as before. (A causal configuration is refused at start-up:
  tests/test_vllm_server_startup.py.)
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import openai
import pytest
from vllm_server.expected import exact_budget_removed, uncompressed_layout
from vllm_server.harness import AUDIO_IN_VIDEO, REPO, VllmServer

from omnizip.vllm.stream_client import cut_chunks, question_times, stream_messages

PRESET_45 = {"rho_audio": 0.3, "rho_video": 0.6}
CHUNK = 4.0
QUESTION = "What happens?"
MARKERS = 4  # <|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|> around each chunk


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    from omnizip.demo.media import make_test_clip

    folder = tmp_path_factory.mktemp("stream-media")
    make_test_clip(folder / "clip12.mp4", seconds=12.0, width=160, height=120, fps=4, texture=True)
    make_test_clip(folder / "clip8_other_size.mp4", seconds=8.0, width=224, height=160, fps=4,
                   texture=True)
    return folder


@pytest.fixture(scope="module")
def server(media, tmp_path_factory):
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2.5-omni"), "qwen2.5-omni")
    log = tmp_path_factory.mktemp("logs") / "vllm-streams.log"
    srv = VllmServer(checkpoint, log, media_root=media, vllm_args=["--max-model-len", "4096"])
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def chunks(media):
    return cut_chunks(media / "clip12.mp4", CHUNK)


def _ask(client, chunk_list, salt: str):
    return client.chat.completions.create(
        model=client.models.list().data[0].id, messages=stream_messages(chunk_list, QUESTION),
        max_tokens=4, temperature=0.0, extra_body={**AUDIO_IN_VIDEO, "cache_salt": salt})


def _chunk_file(chunk, path: Path) -> Path:
    path.write_bytes(base64.b64decode(chunk.url.split(",", 1)[1]))
    return path


def test_question_times_cover_the_clip():
    assert question_times(12.0, 4.0) == [4.0, 8.0, 12.0]
    assert question_times(10.0, 4.0) == [4.0, 8.0, 10.0]
    assert question_times(3.0, 10.0) == [3.0]


def test_stream_client_prefix_grows_by_one_compressed_chunk_per_question(server, media, chunks, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "omnizip.vllm.stream_client", str(media / "clip12.mp4"),
         "--url", server.base_url + "/v1", "--ask-every", str(CHUNK), "--chunk-seconds", str(CHUNK),
         "--question", QUESTION, "--max-tokens", "3", "--no-pace", "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["t"] for a in answers] == [4.0, 8.0, 12.0]
    assert set(answers[0]) == {"t", "prompt_tokens", "cached_tokens", "ttft_ms", "text"}

    # expected sizes from the checkpoint's own processor: the first prompt is a one-video
    # prompt; every later chunk adds its compressed block and its four markers
    sizes = []
    for i, chunk in enumerate(chunks):
        layout = uncompressed_layout(server.model, _chunk_file(chunk, tmp_path / f"c{i}.mp4"), QUESTION)
        sizes.append((layout, layout.n_audio + layout.n_video - exact_budget_removed(layout, **PRESET_45)))
    expected = sizes[0][0].total - exact_budget_removed(sizes[0][0], **PRESET_45)
    for n, answer in enumerate(answers):
        if n:
            expected += sizes[n][1] + MARKERS
        assert answer["prompt_tokens"] == expected, n
    block = server.block_size()
    cached = [a["cached_tokens"] for a in answers]
    # the first question of this stream finds nothing; each later one finds every whole block
    # of the previous prompt up to its last chunk's closing markers
    assert cached[0] == 0
    question_tail = answers[0]["prompt_tokens"] - sizes[0][0].prefix + sizes[0][0].n_audio + sizes[0][0].n_video - sizes[0][1]
    for n in (1, 2):
        common = answers[n - 1]["prompt_tokens"] - question_tail
        assert cached[n] == common // block * block > cached[n - 1]


@pytest.fixture(scope="module")
def reference(client, chunks):
    """A valid three-chunk stream's tokens, asked before any bad stream."""
    reply = _ask(client, chunks, "reference")
    return reply.choices[0].message.content, reply.usage.completion_tokens, reply.usage.prompt_tokens


def _other_size(media) -> object:
    return cut_chunks(media / "clip8_other_size.mp4", CHUNK)[0]


def _long(media):
    return cut_chunks(media / "clip12.mp4", 8.0)[0]  # two 4-s chunks' worth in one item


BAD_STREAMS = {
    "chunks_out_of_order": lambda chunks, media: [chunks[1], chunks[0], chunks[2]],
    "another_resolution_mid_stream": lambda chunks, media: [chunks[0], _other_size(media), chunks[2]],
    "first_chunk_missing": lambda chunks, media: chunks[1:],
    "chunk_longer_than_the_others": lambda chunks, media: [_long(media), chunks[2]],
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_stream_is_served_and_the_server_keeps_serving(server, client, chunks, media, reference, name):
    """Each chunk is decided alone, so these are valid prompts: answered (200) with one
    compressed block per chunk; then a valid stream still gets the reference tokens."""
    bad = BAD_STREAMS[name](chunks, media)
    reply = _ask(client, bad, uuid.uuid4().hex)
    assert reply.usage.completion_tokens >= 1
    if name == "chunks_out_of_order":  # the same items, so the same compressed length
        assert reply.usage.prompt_tokens == reference[2]
    assert server.healthy()
    again = _ask(client, chunks, uuid.uuid4().hex)
    assert (again.choices[0].message.content, again.usage.completion_tokens,
            again.usage.prompt_tokens) == reference


def test_stream_of_a_clip_without_audio_is_refused_with_400(server, client, chunks, media, reference, tmp_path):
    """use_audio_in_video with a chunk that has no audio track: a 400, then served as before."""
    silent = tmp_path / "no_audio.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(media / "clip12.mp4"), "-t", "4",
                    "-an", "-c:v", "libx264", "-preset", "ultrafast", str(silent)], check=True)
    url = "data:video/mp4;base64," + base64.b64encode(silent.read_bytes()).decode()
    content = [{"type": "video_url", "video_url": {"url": chunks[0].url}},
               {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.models.list().data[0].id,
                                       messages=[{"role": "user", "content": content}], max_tokens=4,
                                       extra_body=AUDIO_IN_VIDEO)
    assert err.value.status_code == 400
    assert server.healthy()
    again = _ask(client, chunks, uuid.uuid4().hex)
    assert again.usage.prompt_tokens == reference[2]
    assert again.choices[0].message.content == reference[0]


def _client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnizip.vllm.stream_client", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize(("args", "expected"), [
    (["--ask-every", "0"], "--ask-every must be a positive number of seconds, got 0"),
    (["--chunk-seconds", "-4"], "--chunk-seconds must be a positive number of seconds, got -4"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
])
def test_stream_client_refuses_a_bad_argument_in_one_line(media, args, expected):
    result = _client(str(media / "clip12.mp4"), *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"omnizip.vllm.stream_client: error: {expected}"
    assert result.stdout == ""


def test_stream_client_refuses_a_missing_or_unreadable_clip(tmp_path):
    missing = _client(str(tmp_path / "none.mp4"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"omnizip.vllm.stream_client: error: CLIP: no such file: {tmp_path / 'none.mp4'}"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    result = _client(str(junk))
    assert result.returncode == 2
    assert result.stderr.startswith(f"omnizip.vllm.stream_client: error: CLIP: {junk} is not a readable video")
    assert len(result.stderr.strip().splitlines()) == 1


def test_stream_client_without_a_server_says_so_in_one_line(media):
    from vllm_server.harness import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    result = _client(str(media / "clip12.mp4"), "--url", url, "--no-pace", "--chunk-seconds", "4")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"omnizip.vllm.stream_client: cannot reach {url}")
