"""Regression tests for the model-adapter bugs of issue 11 (items 2, 3 and 6).

2. Placeholder ids with no media behind them are text: OmniZip compresses only the audio/video
   tokens that the encoders filled in this forward. A text-only prompt with stray ``<|VIDEO|>``
   or audio ids runs exactly as without the patch; stray ids next to real media of the other
   kind change nothing in the decision over the real media.
3. Qwen3-Omni with ``output_router_logits=True`` and an attention mask: the MoE load-balancing
   loss covers the tokens the decoder actually ran (the compressed, re-padded batch), i.e. it
   equals transformers' own loss computed for a direct decoder run on those inputs.
6. Another text turn on a compressed cache: a second question continuing a finished
   ``generate``'s cache reuses the compressed prefix and gives the logits of a direct decoder
   run on the kept tokens followed by both turns; new media on a compressed cache is refused.

References never go through the adapter's bookkeeping: the unpatched model, transformers'
``load_balancing_loss_func``, and ``language_model`` + ``lm_head`` called directly on the
decoder inputs of the compressed prefill (that those equal the core's decision is covered by
tests/test_qwen2_5_omni.py and tests/test_qwen3_omni.py).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from conftest import FAMILIES, MODEL_SIZES, family_media

from omnizip import OmniZipConfig, patch
from omnizip.demo.media import build_inputs

FAMILY_NAMES = ("qwen2_5_omni", "qwen3_omni")
#: the names tests/conftest.py gives them
CONFTEST_NAME = {"qwen2_5_omni": "qwen2_5", "qwen3_omni": "qwen3"}
#: (audio, video) placeholder ids per family
IDS = {"qwen2_5_omni": (151646, 151656), "qwen3_omni": (151675, 151656)}
IM_END = 151645
NEW_TOKENS = 3
QUESTION = "What happens in the clip?"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def families():
    """Per family: (thinker, processor, media), the shared tiny models of tests/conftest.py
    (Qwen3-Omni with 2-second audio attention windows)."""
    return {
        family: (spec.thinker(**MODEL_SIZES[spec.name]), spec.processor(), family_media(spec.name))
        for family, spec in ((f, FAMILIES[CONFTEST_NAME[f]]) for f in FAMILY_NAMES)
    }


def conversation(kind: str, media: dict, question: str = QUESTION) -> tuple[list, bool]:
    text = {"type": "text", "text": question}
    return {
        "av": ([[{"type": "video", "video": media["V"], "audio": media["A"]}, text]], True),
        "av_batch": ([[{"type": "video", "video": media["V"], "audio": media["A"]}, text],
                      [{"type": "video", "video": media["V2"], "audio": media["A2"]},
                       {"type": "text", "text": "Why?"}]], True),
        "video_only": ([[{"type": "video", "video": media["V"]}, text]], False),
        "audio_only": ([[{"type": "audio", "audio": media["A"]}, text]], False),
        "text_only": ([[text]], False),
    }[kind]


def make_inputs(proc, media, kind: str) -> tuple[dict, bool]:
    conv, uav = conversation(kind, media)
    return dict(build_inputs(proc, conv, use_audio_in_video=uav)), uav


def insert_ids(inputs: dict, ids: list[int]) -> dict:
    """``inputs`` with ``ids`` inserted into the (single-row) prompt right before the user
    turn's closing ``<|im_end|>``, i.e. inside the question text."""
    row = inputs["input_ids"][0]
    ends = (row == IM_END).nonzero().flatten()
    at = int(ends[-1])  # the last <|im_end|> closes the user turn (the prompt ends with
    #                     "<|im_start|>assistant\n")
    new = dict(inputs)
    new["input_ids"] = torch.cat([row[:at], torch.tensor(ids, dtype=row.dtype), row[at:]])[None]
    new["attention_mask"] = torch.ones_like(new["input_ids"])
    return new


def run_generate(model, inputs, uav, **kw):
    kw.setdefault("max_new_tokens", NEW_TOKENS)
    kw.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(
            **inputs, use_audio_in_video=uav, output_logits=True, return_dict_in_generate=True, **kw
        )
    return out, torch.stack(out.logits, dim=1)


class DecoderSpy:
    """Records every decoder call's inputs as the patch hands them over (register after the
    patch, so it sees what the decoder really gets)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.hook = model.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, mod, args, kwargs):
        def clone(x):
            if isinstance(x, torch.Tensor):
                return x.detach().clone()
            if isinstance(x, (list, tuple)):
                return [clone(v) for v in x]
            return x

        cache = kwargs.get("cache")
        self.calls.append({
            **{k: clone(kwargs.get(k)) for k in (
                "inputs_embeds", "position_ids", "attention_mask", "visual_pos_masks",
                "deepstack_visual_embeds")},
            "past": 0 if cache is None else int(cache.get_seq_length()),
        })

    def remove(self):
        self.hook.remove()


def prefill_kwargs(call: dict) -> dict:
    """Decoder kwargs of a recorded prefill call (DeepStack inputs only when present)."""
    out = {"inputs_embeds": call["inputs_embeds"], "position_ids": call["position_ids"],
           "attention_mask": call["attention_mask"]}
    if call["visual_pos_masks"] is not None:
        out["visual_pos_masks"] = call["visual_pos_masks"]
        out["deepstack_visual_embeds"] = call["deepstack_visual_embeds"]
    return out


def direct_logits(model, prefill: dict, tokens: list[int]) -> torch.Tensor:
    """``language_model`` + ``lm_head`` run directly (no patch): prefill the recorded decoder
    inputs of one row, then feed ``tokens`` one by one at ``max(M-RoPE position) + 1, 2, ...``.
    Returns ``[len(tokens) + 1, V]``: the logits after the prefill and after every token."""
    lm = model.model.language_model
    positions = prefill["position_ids"]
    mrope = positions[1:] if positions.shape[0] == 4 else positions
    nxt = mrope.max() + 1
    out = []
    with torch.no_grad():
        res = lm(**prefill_kwargs(prefill), use_cache=True)
        cache = res.cache
        out.append(model.lm_head(res.last_hidden_state[:, -1]))
        for i, tok in enumerate(tokens):
            emb = lm.embed_tokens(torch.tensor([[int(tok)]]))
            pos = torch.full((3, 1, 1), 0, dtype=mrope.dtype) + (nxt + i)
            res = lm(inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True)
            cache = res.cache
            out.append(model.lm_head(res.last_hidden_state[:, -1]))
    return torch.cat(out)


# ----------------------------------------------------------------------------- bug 2
STRAY = {"two_adjacent_video": ("video", 2), "one_video": ("video", 1), "four_audio": ("audio", 4)}


@pytest.mark.parametrize("case", list(STRAY))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stray_placeholders_in_a_text_prompt_are_left_alone(family, case, families):
    """A text-only prompt holding placeholder ids (no media, no encoder call): the patched
    model (default config) generates exactly what the unpatched one does, and compresses
    nothing. Used to raise "cannot tell the video tokens per frame" (two adjacent video ids)
    or drop the stray tokens (one video id; audio ids ranked by energy)."""
    model, proc, media = families[family]
    audio, video = IDS[family]
    kind, count = STRAY[case]
    inputs = insert_ids(make_inputs(proc, media, "text_only")[0], [audio if kind == "audio" else video] * count)
    base, base_logits = run_generate(model, inputs, False)
    with patch(model, OmniZipConfig()) as handle:
        out, logits = run_generate(model, inputs, False)
    assert handle.results == [] and handle.kept_indices == []
    assert torch.equal(out.sequences, base.sequences)
    assert torch.equal(logits, base_logits)


@pytest.mark.parametrize("real", ["video_only", "audio_only"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stray_placeholders_next_to_real_media_are_text(family, real, families):
    """Real media of one kind plus stray placeholder ids of the other kind in the question:
    the stray tokens are kept like text and the decision over the real media is the one for
    the same prompt with an ordinary text token in their place."""
    model, proc, media = families[family]
    audio, video = IDS[family]
    stray = audio if real == "video_only" else video
    inputs, _ = make_inputs(proc, media, real)
    plain_id = int(inputs["input_ids"][0, -2])  # an ordinary text token of the chat template
    assert plain_id not in (audio, video)
    with_stray = insert_ids(inputs, [stray] * 4)
    with_text = insert_ids(inputs, [plain_id] * 4)
    with patch(model, OmniZipConfig()) as handle, torch.no_grad():
        model(**with_text)
        want = handle.results[0]
        model(**with_stray)
        got = handle.results[0]
    is_stray = with_stray["input_ids"][0] == stray
    assert int(is_stray.sum()) == 4
    assert bool(got.keep[is_stray].all())
    assert (got.n_audio, got.n_video) == (want.n_audio, want.n_video)
    assert (got.n_audio if real == "video_only" else got.n_video) == 0
    assert torch.equal(got.keep, want.keep)
    assert got.n_kept < got.keep.numel()  # the real media were compressed


# ----------------------------------------------------------------------------- bug 3
@pytest.mark.parametrize("kind", ["av", "av_batch"])
def test_qwen3_router_aux_loss_with_attention_mask(kind, families):
    """Qwen3-Omni, default config, ``output_router_logits=True`` with the caller's attention
    mask (one row, and a left-padded batch): no size mismatch, and ``aux_loss`` is
    transformers' own load-balancing loss for a direct decoder run on the inputs the decoder
    got (the compressed batch and its padding mask). (transformers' ``generate`` itself
    cannot return router logits for a padded batch: its decode steps pass the whole mask.)"""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

    model, proc, media = families["qwen3_omni"]
    inputs, uav = make_inputs(proc, media, kind)
    assert "attention_mask" in inputs
    with patch(model, OmniZipConfig()):
        spy = DecoderSpy(model)
        try:
            with torch.no_grad():
                out = model(**inputs, use_audio_in_video=uav, output_router_logits=True)
        finally:
            spy.remove()
    prefill = spy.calls[0]
    mask = prefill["attention_mask"]
    n_rows = prefill["inputs_embeds"].shape[0] * prefill["inputs_embeds"].shape[1]
    assert prefill["inputs_embeds"].shape[1] < inputs["input_ids"].shape[1]  # tokens were dropped
    with torch.no_grad():
        direct = model.model.language_model(**prefill_kwargs(prefill), output_router_logits=True)
    cfg = model.config.text_config
    want = load_balancing_loss_func(direct.router_logits, cfg.num_experts, cfg.num_experts_per_tok, mask)
    if kind == "av_batch":  # the padding matters, so the test sees which mask was used
        assert isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all())
        unmasked = load_balancing_loss_func(direct.router_logits, cfg.num_experts, cfg.num_experts_per_tok, None)
        assert not torch.allclose(want, unmasked)
    assert out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, want, rtol=1e-5, atol=1e-6)
    assert [r.shape[0] for r in out.router_logits] == [n_rows] * len(direct.router_logits)
    for got_layer, want_layer in zip(out.router_logits, direct.router_logits, strict=True):
        torch.testing.assert_close(got_layer, want_layer, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bug 6
def second_turn_ids(proc, question: str = "And what then?") -> torch.Tensor:
    """``[1, q]`` ids closing the assistant turn and asking another question."""
    text = f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return proc.tokenizer(text, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("resend", ["whole_conversation", "new_tokens_only", "static_cache"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_second_text_turn_reuses_the_compressed_cache(family, resend, families):
    """Turn 1: video with its audio, compressed (default config), greedy. Turn 2: another
    question, continuing turn 1's returned cache, passing either the whole conversation
    (``generate`` slices off what the cache holds; also on a static cache) or only the tokens
    not yet in the cache with the whole conversation's attention mask. The second answer's
    logits equal a direct decoder run on the kept tokens + turn 1's answer + the question,
    and nothing is prefilled again."""
    model, proc, media = families[family]
    inputs, uav = make_inputs(proc, media, "av")
    q2 = second_turn_ids(proc)
    with patch(model, OmniZipConfig()) as handle:
        spy = DecoderSpy(model)
        try:
            static = {"cache_implementation": "static"} if resend == "static_cache" else {}
            first, _ = run_generate(model, inputs, uav, **static)
            results = handle.results
            n_calls = len(spy.calls)
            conversation = torch.cat([first.sequences, q2], dim=1)
            mask = torch.ones_like(conversation)
            if resend != "new_tokens_only":
                ids = conversation
            else:  # the last answer token was never fed to the model, so it is not cached
                ids = conversation[:, -(q2.shape[1] + 1):]
            with torch.no_grad():
                second = model.generate(
                    input_ids=ids, attention_mask=mask, cache=first.cache,
                    max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                    return_dict_in_generate=True,
                )
        finally:
            spy.remove()
    assert handle.results is results  # no new prefill was compressed
    prefill = spy.calls[0]
    n_kept = prefill["inputs_embeds"].shape[1]
    assert n_kept < inputs["input_ids"].shape[1]
    # turn 2 fed only the tokens the cache lacked: the last answer token and the question
    turn2 = spy.calls[n_calls]
    assert turn2["past"] == n_kept + NEW_TOKENS - 1
    assert turn2["inputs_embeds"].shape[1] == q2.shape[1] + 1
    answer1 = first.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    answer2 = second.sequences[0, -NEW_TOKENS:].tolist()
    ref = direct_logits(model, prefill, answer1 + q2[0].tolist() + answer2[:-1])
    start = len(answer1) + q2.shape[1]
    torch.testing.assert_close(
        torch.stack(second.logits, dim=1)[0], ref[start : start + NEW_TOKENS], rtol=1e-4, atol=1e-5
    )
    assert answer2 == ref[start : start + NEW_TOKENS].argmax(-1).tolist()


def two_turns(model, inputs, uav, q2):
    """Turn 1 (greedy) then turn 2 on its cache with the whole conversation and its mask.
    Returns (turn 1 answer [B, n], turn 2 answer [B, n], turn 2 logits [B, n, V])."""
    first, _ = run_generate(model, inputs, uav)
    conversation = torch.cat([first.sequences, q2.expand(first.sequences.shape[0], -1)], dim=1)
    prompt = inputs["input_ids"].shape[1]
    later = torch.ones_like(conversation[:, prompt:])
    mask = torch.cat([inputs["attention_mask"], later], dim=1)  # keeps the left padding
    with torch.no_grad():
        second = model.generate(
            input_ids=conversation, attention_mask=mask, cache=first.cache,
            max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
            return_dict_in_generate=True,
        )
    return (first.sequences[:, prompt:], second.sequences[:, -NEW_TOKENS:],
            torch.stack(second.logits, dim=1))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_second_text_turn_on_a_left_padded_batch(family, families):
    """The same two turns on a left-padded batch (the caller's mask, with its padding, is
    kept by ``generate``): every row's second answer equals that row's conversation run
    alone (itself checked against the direct decoder run above)."""
    model, proc, media = families[family]
    inputs, uav = make_inputs(proc, media, "av_batch")
    assert not bool(inputs["attention_mask"][1, 0])  # row 1 is left-padded
    q2 = second_turn_ids(proc)
    conv, _ = conversation("av_batch", media)
    with patch(model, OmniZipConfig()):
        answer1, answer2, logits2 = two_turns(model, inputs, uav, q2)
        for row, items in enumerate(conv):
            single = dict(build_inputs(proc, [items], use_audio_in_video=uav))
            s_answer1, s_answer2, s_logits2 = two_turns(model, single, uav, q2)
            assert torch.equal(s_answer1[0], answer1[row])
            assert torch.equal(s_answer2[0], answer2[row])
            torch.testing.assert_close(logits2[row], s_logits2[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_new_media_on_a_compressed_cache_is_refused(family, families):
    """A second turn bringing a new video (its frames and placeholders) on top of a
    compressed cache is refused with a ValueError naming the compressed cache."""
    model, proc, media = families[family]
    inputs, uav = make_inputs(proc, media, "av")
    conv = [[{"type": "video", "video": media["V2"]}, {"type": "text", "text": "And this one?"}]]
    turn2 = dict(build_inputs(proc, conv, use_audio_in_video=False))
    with patch(model, OmniZipConfig()):
        first, _ = run_generate(model, inputs, uav)
        ids = torch.cat([first.sequences, turn2["input_ids"]], dim=1)
        with torch.no_grad(), pytest.raises(ValueError, match="compressed cache"):
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), cache=first.cache,
                pixel_values_videos=turn2["pixel_values_videos"],
                video_grid_thw=turn2["video_grid_thw"], max_new_tokens=NEW_TOKENS, do_sample=False,
            )
