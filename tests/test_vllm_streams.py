"""A live stream served by vLLM as chunk items equals the Hugging Face model on the same chunks.

A client sends a live stream as a growing conversation: one video item (with its own audio,
``use_audio_in_video``) per chunk of the stream, then the question (docs/serving_streams.md).
The server decides each chunk item from that item alone, so a chunk's decision and slot count
never change when later chunks arrive, and the prefix cache reuses every earlier chunk.

Reference: the Hugging Face chunk stream, ``omnizip.stream(thinker, processor, config,
chunk_seconds=...)`` on transformers 5.2x, fed the same chunks and asked after the same chunks
(its equality with the whole multi-item prompt decided per item is tests/test_stream_items.py).
vLLM side: the plugin in the vLLM environment (tests/vllm/capture_vllm.py), chunked prefill on
(128-token prefill steps), the three questions of one stream sharing a cache salt, then four
streams sent at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_items import chunk_session_runs
from test_vllm_equivalence import (
    ROOT,
    _capture,
    _load_hf_thinker,
    _prompt,
    _save_checkpoint,
    textured_clip,
    vllm_python,
)

from omnizip.config import OmniZipConfig

CONFIG = {"preset": "45", "budget": "exact"}
CHUNK_SECONDS = 4.0  # two 2-s windows: chunks end on Qwen2.5-Omni's audio-encoder spans
N_CHUNKS = 3
MAX_TOKENS = 3
PREFILL_CHUNK = 128
QUESTION = "What happens in the stream?"


def _chunks(frames: np.ndarray, audio: np.ndarray, seconds: float) -> list[tuple[np.ndarray, np.ndarray]]:
    per_frames, per_samples = int(2 * seconds), int(16000 * seconds)
    n = len(frames) // per_frames
    return [(frames[i * per_frames : (i + 1) * per_frames], audio[i * per_samples : (i + 1) * per_samples])
            for i in range(n)]


@pytest.fixture(scope="module")
def stream_setup(tmp_path_factory):
    from transformers import AutoProcessor

    work = tmp_path_factory.mktemp("vllm_streams")
    ckpt = _save_checkpoint(work / "ckpt")
    processor = AutoProcessor.from_pretrained(ckpt)
    streams = {name: _cut_stream(work, name, CHUNK_SECONDS * N_CHUNKS, CHUNK_SECONDS, speech)
               for name, speech in (("s", "One two three four five six seven eight."),
                                    ("t", "Hello there."))}
    return {"work": work, "ckpt": ckpt, "processor": processor, "streams": streams}


def _cut_stream(work, name: str, seconds: float, chunk: float, speech: str) -> list[dict]:
    from transformers.video_utils import load_video

    from omnizip.demo.media import load_audio_track

    clip = textured_clip(work / f"{name}.mp4", seconds=seconds, speech=speech)
    frames, _ = load_video(str(clip), fps=2, backend="pyav")
    audio = load_audio_track(clip, 16000).astype(np.float32)
    chunks = []
    for i, (f, a) in enumerate(_chunks(frames, audio, chunk)):
        path = work / f"{name}{i}.npz"
        np.savez(path, frames=f, audio=a)
        chunks.append({"frames": f, "audio": a, "npz": str(path)})
    return chunks


def _stream_request(setup, name: str, n: int, salt: str) -> tuple[dict, list]:
    """(vLLM request fields, HF conversation items) for the first ``n`` chunks of a stream."""
    chunks = setup["streams"][name][:n]
    items = [{"type": "video", "video": c["frames"], "audio": c["audio"]} for c in chunks]
    items.append({"type": "text", "text": QUESTION})
    prompt = _prompt(setup["processor"], [{"type": "video"}] * n + [items[-1]])
    paths = [c["npz"] for c in chunks]
    request = {"name": f"{name}{n}", "prompt": prompt, "frames": paths, "audio": paths,
               "use_audio_in_video": True, "salt": salt}
    return request, items


def _hf_session_runs(thinker, setup, name: str, ask_after: list[int], chunk_seconds: float) -> dict:
    """The Hugging Face chunk stream (``omnizip.stream(..., chunk_seconds=...)``) fed the
    stream's chunks, asked after each chunk count of ``ask_after``: ``{f"{name}{n}": rows,
    positions, tokens, logprobs}``."""
    chunks = [(c["frames"], c["audio"]) for c in setup["streams"][name][: max(ask_after)]]
    runs = chunk_session_runs(thinker, setup["processor"], chunks, QUESTION,
                              OmniZipConfig.preset("45"), chunk_seconds, MAX_TOKENS, ask_after)
    return {f"{name}{n}": run for n, run in runs.items()}


STREAM = [("s", n) for n in range(1, N_CHUNKS + 1)]
# four streams at once: two lengths of each clip
CONCURRENT = [("s", 2), ("t", 3), ("s", 3), ("t", 1)]


@pytest.fixture(scope="module")
def stream_runs(stream_setup):
    requests, hf_items = [], {}
    for name, n in STREAM:
        req, items = _stream_request(stream_setup, name, n, salt="stream-s")
        requests.append(req)
        hf_items[req["name"]] = items
    for name, n in CONCURRENT:
        req, items = _stream_request(stream_setup, name, n, salt=f"{name}{n}")
        hf_items[req["name"]] = items
        if req["name"] not in {r["name"] for r in requests}:
            requests.append({**req, "salt": f"single-{name}{n}"})
    spec = {
        "model": str(stream_setup["ckpt"]),
        "omnizip": CONFIG,
        "max_num_batched_tokens": PREFILL_CHUNK,
        "max_tokens": MAX_TOKENS,
        "max_items": N_CHUNKS,
        "requests": requests,
        "batch": [f"{name}{n}" for name, n in CONCURRENT],
    }
    vllm = _capture(stream_setup, spec, "streams")
    thinker = _load_hf_thinker(stream_setup["ckpt"])
    asked: dict[str, list[int]] = {}
    for key in hf_items:
        asked.setdefault(key[0], []).append(int(key[1:]))
    hf = {}
    for name, ns in asked.items():
        hf.update(_hf_session_runs(thinker, stream_setup, name, sorted(set(ns)), CHUNK_SECONDS))
    torch.save({"hf": hf, "vllm": vllm}, stream_setup["work"] / "compared.pt")  # for debugging
    return {"hf": hf, "vllm": vllm}


@pytest.mark.parametrize("n", range(1, N_CHUNKS + 1))
def test_stream_decoder_inputs_equal_the_hf_chunk_stream(stream_runs, n):
    """The rows and positions vLLM's decoder prefills (after the cached prefix) are those the
    Hugging Face chunk stream's cache took for the same chunks."""
    hf, got = stream_runs["hf"][f"s{n}"], stream_runs["vllm"]["single"][f"s{n}"]
    assert got["prompt_len"] == hf["embeds"].shape[0]
    cached = got["cached"]
    assert torch.equal(got["positions"], hf["positions"][:, cached:].to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], hf["embeds"][cached:].float(), atol=1e-4, rtol=1e-4), (
        f"max |diff| {(got['embeds'] - hf['embeds'][cached:]).abs().max():.3g}")
    assert got["prefill_chunks"] > 1 or got["prompt_len"] - cached <= PREFILL_CHUNK


def test_stream_greedy_tokens_equal_the_hf_chunk_stream(stream_runs):
    for name, n in STREAM:
        hf, got = stream_runs["hf"][f"{name}{n}"], stream_runs["vllm"]["single"][f"{name}{n}"]
        assert got["tokens"] == hf["tokens"], n
        assert np.allclose(got["logprobs"], hf["logprobs"], atol=1e-3, rtol=0), n


def test_earlier_chunks_keep_their_slots_and_come_from_the_prefix_cache(stream_runs, stream_setup):
    """Each question's prompt starts with the previous question's prompt up to the closing
    markers of its last chunk (earlier decisions and slot counts never change), and the prefix
    cache serves every whole block of it."""
    single = stream_runs["vllm"]["single"]
    tok = stream_setup["processor"].tokenizer
    eos = tok.convert_tokens_to_ids("<|audio_eos|>")
    previous_cached = -1
    for n in range(1, N_CHUNKS + 1):
        ids = single[f"s{n}"]["prompt_ids"]
        assert ids.count(eos) == n
        if n > 1:
            before = single[f"s{n - 1}"]["prompt_ids"]
            common = len(before) - before[::-1].index(eos) + 1  # through <|vision_eos|>
            assert ids[:common] == before[:common]
            # the prefix cache hands out whole blocks of the common prefix
            block = stream_runs["vllm"]["block_size"]
            assert single[f"s{n}"]["cached"] == common // block * block
        assert single[f"s{n}"]["cached"] > previous_cached  # grows with the stream
        previous_cached = single[f"s{n}"]["cached"]
    assert single["s1"]["cached"] == 0


def test_four_concurrent_streams_equal_the_hf_chunk_stream(stream_runs):
    batch = stream_runs["vllm"]["batch"]
    for name, n in CONCURRENT:
        hf, got = stream_runs["hf"][f"{name}{n}"], batch[f"{name}{n}"]
        assert got["prompt_len"] == hf["embeds"].shape[0]
        assert got["tokens"] == hf["tokens"], (name, n)
        assert np.allclose(got["logprobs"], hf["logprobs"], atol=1e-3, rtol=0), (name, n)


QWEN3_CHUNK_SECONDS = 8.0  # the tiny Qwen3-Omni's audio-encoder span (n_window_infer 800 mel frames)


@pytest.fixture(scope="module")
def qwen3_stream_runs(stream_setup):
    """Qwen3-Omni (time-merged layout, DeepStack features, MoE decoder): one 16-s stream in two
    8-s chunks, asked after each chunk with one cache salt; chunked prefill on."""
    from transformers import AutoProcessor

    work = stream_setup["work"]
    ckpt = _save_checkpoint(work / "ckpt-qwen3", "qwen3-omni")
    setup3 = {"work": work, "ckpt": ckpt, "processor": AutoProcessor.from_pretrained(ckpt),
              "streams": {"q": _cut_stream(work, "q", 2 * QWEN3_CHUNK_SECONDS, QWEN3_CHUNK_SECONDS,
                                           "One two three four five.")}}
    requests, hf_items = [], {}
    for n in (1, 2):
        req, items = _stream_request(setup3, "q", n, salt="stream-q")
        requests.append(req)
        hf_items[req["name"]] = items
    spec = {"model": str(ckpt), "family": "qwen3-omni", "omnizip": CONFIG,
            "max_num_batched_tokens": PREFILL_CHUNK, "max_tokens": MAX_TOKENS, "max_items": 2,
            "requests": requests}
    vllm = _capture(setup3, spec, "streams-qwen3")
    thinker = _load_hf_thinker(ckpt, "qwen3-omni")
    hf = _hf_session_runs(thinker, setup3, "q", [1, 2], QWEN3_CHUNK_SECONDS)
    return {"hf": hf, "vllm": vllm}


@pytest.mark.parametrize("n", [1, 2])
def test_qwen3_stream_equals_the_hf_chunk_stream(qwen3_stream_runs, n):
    hf, got = qwen3_stream_runs["hf"][f"q{n}"], qwen3_stream_runs["vllm"]["single"][f"q{n}"]
    assert got["prompt_len"] == hf["embeds"].shape[0]
    cached = got["cached"]
    assert (cached > 0) == (n > 1)  # the second question reuses the first chunk's blocks
    hf_positions = hf["positions"][:, cached:]
    assert torch.equal(hf_positions, hf_positions.round())  # integral at 2 fps (13 ids/s)
    assert torch.equal(got["positions"], hf_positions.to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], hf["embeds"][cached:].float(), atol=1e-4, rtol=1e-4), (
        f"max |diff| {(got['embeds'] - hf['embeds'][cached:]).abs().max():.3g}")
    assert got["tokens"] == hf["tokens"]
    assert np.allclose(got["logprobs"], hf["logprobs"], atol=1e-3, rtol=0)


DRIVE_STREAMING_INPUT = Path(__file__).resolve().parent / "vllm" / "drive_streaming_input.py"


@pytest.fixture(scope="module")
def streaming_input(stream_setup):
    """The same stream through vLLM's streaming-input path (one resumable ``AsyncLLM`` request,
    tests/vllm/drive_streaming_input.py): chunk 0 (1 token, dropped by vLLM), chunk 1 and the
    question, then a new user turn with chunk 2 and the question again."""
    processor, chunks = stream_setup["processor"], stream_setup["streams"]["s"]
    full = _prompt(processor, [{"type": "video"}] * 2 + [{"type": "text", "text": QUESTION}])
    video = "<|vision_bos|><|VIDEO|><|vision_eos|>"
    head, rest = full.split(video, 1)
    ask = rest.split(video, 1)[1]  # the question and the assistant header
    turn = "<|im_end|>\n<|im_start|>user\n"
    spec = {"model": str(stream_setup["ckpt"]), "omnizip": CONFIG, "inputs": [
        {"prompt": head + video, "chunks": [chunks[0]["npz"]], "max_tokens": 1},
        {"prompt": video + ask, "chunks": [chunks[1]["npz"]], "max_tokens": MAX_TOKENS},
        {"prompt": turn + video + ask, "chunks": [chunks[2]["npz"]], "max_tokens": MAX_TOKENS},
    ]}
    work = stream_setup["work"]
    (work / "streaming-input.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run([vllm_python(), str(DRIVE_STREAMING_INPUT), str(work / "streaming-input.json"),
                           str(work / "streaming-input-out.json")],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        pytest.fail(f"streaming input failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    tokenizer = processor.tokenizer
    return {"steps": json.loads((work / "streaming-input-out.json").read_text()),
            "lengths": {name: len(tokenizer(text, add_special_tokens=False)["input_ids"])
                        for name, text in (("turn", turn), ("ask", ask))}}


def test_streaming_input_path_carries_chunk_items(streaming_input, stream_runs):
    """vLLM's resumable streaming-input request takes the chunk items one input at a time:
    after chunk 1 and the question, the session is the chat route's two-chunk prompt and
    answers with its greedy tokens; a later input (a new turn with chunk 2) extends the
    session by the compressed chunk and the question (after what vLLM keeps of the answer)."""
    steps, single = streaming_input["steps"], stream_runs["vllm"]["single"]
    assert len(steps) == 3
    assert steps[1]["prompt_len"] == single["s2"]["prompt_len"]
    assert steps[1]["tokens"] == single["s2"]["tokens"] == stream_runs["hf"]["s2"]["tokens"]
    before, after = steps[1]["prompt_ids"], steps[2]["prompt_ids"]
    assert after[: len(before)] == before  # earlier inputs stay as they were
    chunk_2 = single["s3"]["prompt_len"] - single["s2"]["prompt_len"]  # its block and 4 markers
    lengths = streaming_input["lengths"]
    # vLLM keeps those of the answer's tokens it already computed as inputs (at most all but
    # the last sampled one; none in the runs here) in the session, then the new input
    kept = len(after) - len(before) - (lengths["turn"] + chunk_2 + lengths["ask"])
    assert 0 <= kept <= MAX_TOKENS - 1
    assert after[len(before) : len(before) + kept] == steps[1]["tokens"][:kept]
    assert len(steps[2]["tokens"]) == MAX_TOKENS
