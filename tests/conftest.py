"""Shared fixtures and helpers of the model tests: tiny models per family, prompts, and the
independent references (the unpatched model's decoder inputs, the decoder run directly).

The references never go through the adapter: the decoder inputs come from the unpatched model
(:func:`omnizip.models.capture.capture_decoder_inputs` stops it at the decoder), tokens per
frame from ``video_grid_thw``, and the decoder reference is ``language_model`` + ``lm_head``
called directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op produces while it is active: the
    memory-bound probe of the core tests (``with LargestTensor() as probe: ...; probe.largest``)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


NEW_TOKENS = 3
VIDEO, IMAGE = 151656, 151655  # the same ids in both families


@dataclass(frozen=True)
class FamilySpec:
    """One model family as the tests use it."""

    name: str  # test id: "qwen2_5" / "qwen3"
    adapter: str  # the adapter's name (in the INFO summary)
    audio: int  # audio placeholder id
    deepstack: bool  # the decoder takes DeepStack side inputs
    stream_parity: bool  # the adapter runs frame_parity="stream" for an unset config
    frame: tuple[int, int]  # (width, height) of test frames: 4x4 merged tokens per frame
    image: tuple[int, int]  # (width, height) of the test image
    video2: tuple[int, int]  # (width, height) of the second video (another resolution)

    def thinker(self, attn: str = "sdpa", **sizes: Any) -> Any:
        """The tiny random-weight thinker (built once per session and arguments)."""
        return _thinker(self.name, attn, tuple(sorted(sizes.items())))

    def full_model(self, **sizes: Any) -> Any:
        from omnizip.demo.tiny_model import build_tiny_qwen2_5_omni, build_tiny_qwen3_omni

        build = build_tiny_qwen2_5_omni if self.name == "qwen2_5" else build_tiny_qwen3_omni
        return build(seed=0, **sizes)

    def processor(self, max_pixels: int | None = None, min_pixels: int | None = None) -> Any:
        return _processor(self.name, max_pixels, min_pixels)

    def config(self) -> Any:
        """The OmniZip configuration the adapter runs for ``OmniZipConfig()``."""
        from omnizip import OmniZipConfig

        return OmniZipConfig(frame_parity="stream") if self.stream_parity else OmniZipConfig()


FAMILIES = {
    "qwen2_5": FamilySpec("qwen2_5", "qwen2_5_omni", 151646, False, False, (112, 112), (56, 84), (84, 112)),
    "qwen3": FamilySpec("qwen3", "qwen3_omni", 151675, True, True, (128, 128), (64, 96), (96, 128)),
}
#: what each family's tests run on: Qwen3-Omni with 2-second audio attention windows
#: (n_window_infer 200 mel frames = 26 encoder frames), so windows differ from whole streams
MODEL_SIZES = {"qwen2_5": {}, "qwen3": {"audio_window_infer": 200}}


@functools.cache
def _thinker(name: str, attn: str, sizes: tuple) -> Any:
    from omnizip.demo.tiny_model import (
        build_tiny_qwen2_5_omni_thinker,
        build_tiny_qwen3_omni_thinker,
    )

    build = build_tiny_qwen2_5_omni_thinker if name == "qwen2_5" else build_tiny_qwen3_omni_thinker
    return build(seed=0, attn_implementation=attn, **dict(sizes))


@functools.cache
def _processor(name: str, max_pixels: int | None, min_pixels: int | None) -> Any:
    from omnizip.demo.processor import build_offline_processor, build_offline_qwen3_omni_processor

    if name == "qwen2_5":  # 112x112 frames -> 4x4 merged tokens per frame (P = 16)
        return build_offline_processor(max_pixels=max_pixels or 112 * 112, min_pixels=min_pixels or 56 * 56)
    return build_offline_qwen3_omni_processor(max_pixels=max_pixels or 128 * 128, min_pixels=min_pixels or 64 * 64)


@functools.cache
def family_media(name: str) -> dict:
    """Synthetic clips of one family's test sizes (V/A 4 s, V2/A2 3 s, V8/A8 8 s, img)."""
    from omnizip.demo.media import synthetic_frames, synthetic_speech

    spec = FAMILIES[name]
    (w, h), (w2, h2), (wi, hi) = spec.frame, spec.video2, spec.image
    return {
        "V": synthetic_frames(4.0, seed=0, width=w, height=h),
        "A": synthetic_speech(4.0, 2.0, seed=0),
        "V8": synthetic_frames(8.0, seed=3, width=w, height=h),
        "A8": synthetic_speech(8.0, 5.0, seed=3),
        "V2": synthetic_frames(3.0, seed=1, width=w2, height=h2),
        "A2": synthetic_speech(3.0, 1.0, seed=1),
        "img": synthetic_frames(1.0, seed=2, width=wi, height=hi)[0],
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request) -> FamilySpec:
    """Each model family in turn (the model-integration contract runs on all of them)."""
    return FAMILIES[request.param]


# ----------------------------------------------------------------------------- prompts
def prompt(kind: str, m: dict) -> tuple[list, bool]:
    """(conversations, use_audio_in_video) for each prompt kind."""
    text = {"type": "text", "text": "What happens in the clip?"}
    av = {"type": "video", "video": m["V"], "audio": m["A"]}
    av2 = {"type": "video", "video": m["V2"], "audio": m["A2"]}
    table = {
        "av": ([[av, text]], True),
        "audio_only": ([[{"type": "audio", "audio": m["A"]}, text]], False),
        "two_audio": ([[{"type": "audio", "audio": m["A"]}, {"type": "audio", "audio": m["A2"]}, text]], False),
        "video_only": ([[{"type": "video", "video": m["V"]}, text]], False),
        # transformers gives a silent video under use_audio_in_video=True plain text positions
        "video_only_uav": ([[{"type": "video", "video": m["V"]}, text]], True),
        "separate_blocks": ([[av, text]], False),
        "image": ([[{"type": "image", "image": m["img"]}, av, text]], True),
        "image_av": ([[{"type": "image", "image": m["img"]}, av, text]], True),
        "two_videos": ([[av, av2, text]], True),
        "text_only": ([[text]], True),
        "batch": ([[av, text], [av2, text]], True),
    }
    if "V8" in m:
        table["long_av"] = ([[{"type": "video", "video": m["V8"], "audio": m["A8"]}, text]], True)
    return table[kind]


def make_inputs(processor, media, kind):
    from omnizip.demo.media import build_inputs

    conv, uav = prompt(kind, media)
    return dict(build_inputs(processor, conv, use_audio_in_video=uav)), uav


def single_av_inputs(processor, media, video: str, audio: str) -> dict:
    """One video with its audio and the usual question (a row of the "batch" prompt alone)."""
    from omnizip.demo.media import build_inputs

    conv = [[{"type": "video", "video": media[video], "audio": media[audio]},
             {"type": "text", "text": "What happens in the clip?"}]]
    return dict(build_inputs(processor, conv, use_audio_in_video=True))


# ----------------------------------------------------------------------------- references
def thinker_of(model):
    return getattr(model, "thinker", model)


def lm_of(model):
    return thinker_of(model).model.language_model


def audio_id(model) -> int:
    return int(thinker_of(model).config.audio_token_id)


def embedding_stage(model, inputs, uav=True, audio=True):
    """The unpatched thinker up to the decoder: embeddings, positions, DeepStack inputs
    (``vpm``/``deepstack``, None without) and (``audio``) the last audio layer's input
    (``hidden``, ``cu_seqlens``) and ``feature_lens``. Tensors are copies."""
    from omnizip.models.capture import capture_decoder_inputs

    got: dict = {}

    def on_tower(mod, args, kwargs):
        got["feature_lens"] = kwargs["feature_lens"].clone()

    def on_attn(mod, args, kwargs):
        got["hidden"] = kwargs["hidden_states"].detach().clone()
        got["cu_seqlens"] = kwargs["cu_seqlens"].clone()

    tower = thinker_of(model).model.audio_tower
    hooks = [
        tower.register_forward_pre_hook(on_tower, with_kwargs=True),
        tower.layers[-1].self_attn.register_forward_pre_hook(on_attn, with_kwargs=True),
    ] if audio else []
    try:
        captured = capture_decoder_inputs(model, **inputs, use_audio_in_video=uav)
    finally:
        for h in hooks:
            h.remove()
    got["embeds"] = captured["inputs_embeds"]
    got["positions"] = captured["position_ids"]
    got["vpm"] = captured.get("visual_pos_masks")
    got["deepstack"] = captured.get("deepstack_visual_embeds")
    return got


def tokens_per_frame_from_grid(inputs, ids_row):
    """P of every video run of one row, from video_grid_thw (2x2 merge), video by video."""
    if "video_grid_thw" not in inputs:
        return []
    grid = inputs["video_grid_thw"]
    per_video = (grid.prod(-1) // 4).tolist()
    p_video = ((grid[:, 1] * grid[:, 2]) // 4).tolist()
    is_v = (ids_row == VIDEO).long()
    starts = ((is_v[1:] == 1) & (is_v[:-1] == 0)).nonzero().flatten() + 1
    if is_v[0]:
        starts = torch.cat([torch.tensor([0]), starts])
    before = torch.cumsum(is_v, 0) - is_v  # video tokens before each slot
    bounds = torch.tensor(per_video).cumsum(0)
    return [p_video[int(torch.searchsorted(bounds, before[s], right=True))] for s in starts]


def expected_row(model, inputs, uav, config, scores, row=0):
    """What compress_sequence decides for one row (config as the adapter should run it), the
    kept embeddings and positions, and (single-row prompts) the pruned DeepStack inputs."""
    from omnizip import compress_sequence

    stage = embedding_stage(model, inputs, uav)
    valid = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"][row][valid]
    embeds = stage["embeds"][row][valid]
    audio = audio_id(model)
    n_audio = int((ids == audio).sum())
    res = compress_sequence(
        embeds, ids, scores if n_audio else None, audio_token_id=audio, video_token_id=VIDEO,
        tokens_per_frame=tokens_per_frame_from_grid(inputs, ids) or 1, config=config,
    )
    return kept_inputs(stage, res, row, valid) | {"stage": stage, "res": res}


def kept_inputs(stage, decision, row=0, valid=None):
    """The decoder inputs of one row (its real slots ``valid``) restricted to a decision's kept
    tokens: embeddings (the decision's), original M-RoPE positions, and (single-row prompts)
    the pruned DeepStack mask and features."""
    positions = stage["positions"]
    if positions.shape[0] == 4:  # a leading plain text row: keep the M-RoPE rows
        positions = positions[1:]
    positions = positions[:, row] if valid is None else positions[:, row][:, valid]
    out = {"embeds": decision.embeds[decision.keep], "positions": positions[:, decision.keep],
           "vpm": None, "deepstack": None}
    if stage["vpm"] is not None and stage["vpm"].shape[0] == 1:
        vpm = stage["vpm"][0]
        out["vpm"] = vpm[decision.keep]
        out["deepstack"] = [f[decision.keep[vpm]] for f in stage["deepstack"]]
    return out


def decode_steps(model, cache, start, tokens):
    """Feed ``tokens`` one by one at positions start, start + 1, ... (all three M-RoPE rows)."""
    lm = lm_of(model)
    out = []
    for i, tok in enumerate(tokens):
        emb = lm.embed_tokens(torch.tensor([[int(tok)]]))
        pos = torch.full((3, 1, 1), start + i)  # int64, or float32 for float positions
        res = lm(inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True)
        cache = res.cache
        out.append(thinker_of(model).lm_head(res.last_hidden_state[:, -1]))
    return out


def direct_logits(model, exp, tokens, deepstack=True):
    """The decoder run directly: prefill the kept embeddings ``exp["embeds"]`` [L', D] at their
    original positions ``exp["positions"]`` [3, L'] (with the pruned DeepStack features), then
    feed ``tokens`` one by one at max(position) + 1, 2, ... Returns [len(tokens) + 1, V]."""
    positions = exp["positions"][:, None]
    extra = {}
    if deepstack and exp["vpm"] is not None:
        extra = {"visual_pos_masks": exp["vpm"][None], "deepstack_visual_embeds": exp["deepstack"]}
    with torch.no_grad():
        res = lm_of(model)(inputs_embeds=exp["embeds"][None], position_ids=positions, use_cache=True, **extra)
        start = positions.max() + 1
        start = float(start) if positions.is_floating_point() else int(start)
        out = [thinker_of(model).lm_head(res.last_hidden_state[:, -1])]
        out += decode_steps(model, res.cache, start, tokens)
    return torch.cat(out)


class DecoderSpy:
    """Records the decoder's inputs as the patch hands them over (registered after the patch)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.hook = lm_of(model).register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, mod, args, kwargs):
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache")
        ds = kwargs.get("deepstack_visual_embeds")
        vpm = kwargs.get("visual_pos_masks")
        self.calls.append({
            "embeds": kwargs["inputs_embeds"].detach().clone(),
            "positions": None if kwargs.get("position_ids") is None else kwargs["position_ids"].clone(),
            "mask": mask.clone() if isinstance(mask, torch.Tensor) else mask,
            "past": 0 if cache is None else int(cache.get_seq_length()),
            "vpm": None if vpm is None else vpm.clone(),
            "deepstack": None if ds is None else [f.detach().clone() for f in ds],
        })

    def remove(self):
        self.hook.remove()


def generate(model, inputs, uav=True, **kw):
    """Greedy ``generate`` (``NEW_TOKENS`` new tokens): ([B, n] tokens, [B, n, V] logits)."""
    kw.setdefault("max_new_tokens", NEW_TOKENS)
    kw.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(
            **inputs, use_audio_in_video=uav, output_logits=True, return_dict_in_generate=True, **kw
        )
    prompt_len = inputs["input_ids"].shape[1]
    return out.sequences[:, prompt_len:], torch.stack(out.logits, dim=1)


def hook_counts(model):
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]
