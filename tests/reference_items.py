"""Reference for chunk items: a prompt whose media items are each decided alone.

A live stream sent as chunk items (one video with its own audio per chunk) is decided item by
item, by the vLLM plugin and by ``omnizip.stream(..., chunk_seconds=...)``. The reference here
never goes through either: the processor builds the whole multi-item prompt at once and
transformers runs it with ``omnizip.patch`` and :class:`PerItem`, a configuration that cuts the
prompt's media into its items and runs the plain configuration on each.
"""

from __future__ import annotations

import dataclasses

import torch

from omnizip.config import OmniZipConfig
from omnizip.core import TokenDecision
from omnizip.demo.media import build_inputs
from omnizip.patch import patch


@dataclasses.dataclass(frozen=True)
class PerItem(OmniZipConfig):
    """The exact-budget OmniZip configuration deciding each media item of a prompt alone.

    The items of a prompt are its maximal runs of audio/video placeholder tokens (the markers
    around each item break the runs); ``compress`` runs the plain configuration on every run
    with that run's audio scores and stitches the keep masks and embeddings back together.
    """

    def compress(self, embeds, input_ids, *, audio_token_id, video_token_id, tokens_per_frame,
                 audio_scores=None, video_scores=None, history=None):
        per_frame = torch.as_tensor(tokens_per_frame).flatten().unique()
        assert per_frame.numel() == 1, "the chunks of a stream share one resolution"
        tokens_per_frame = int(per_frame)
        plain = OmniZipConfig.from_dict(self.to_dict())
        media = (input_ids == audio_token_id) | (input_ids == video_token_id)
        edges = torch.diff(media.long(), prepend=media.new_zeros(1).long(), append=media.new_zeros(1).long())
        starts = torch.nonzero(edges == 1).flatten().tolist()
        ends = torch.nonzero(edges == -1).flatten().tolist()
        keep = torch.ones_like(media)
        out = embeds.clone()
        is_audio = input_ids == audio_token_id
        audio_seen = 0
        for start, end in zip(starts, ends, strict=True):  # one entry per item (a handful)
            n_audio = int(is_audio[start:end].sum())
            scores = None
            if audio_scores is not None:
                scores = audio_scores[audio_seen : audio_seen + n_audio]
            audio_seen += n_audio
            res = plain.compress(embeds[start:end], input_ids[start:end],
                                 audio_token_id=audio_token_id, video_token_id=video_token_id,
                                 tokens_per_frame=tokens_per_frame, audio_scores=scores)
            keep[start:end] = res.keep
            out[start:end] = res.embeds
        return TokenDecision(keep=keep, embeds=out,
                             audio_positions=torch.nonzero(is_audio).flatten(),
                             video_positions=torch.nonzero(input_ids == video_token_id).flatten())


def patched_greedy_run(thinker, inputs: dict, config, max_new_tokens: int,
                       use_audio_in_video: bool = True) -> dict:
    """Greedy ``generate`` of ``thinker`` patched with ``config`` on processor ``inputs``:
    ``{"embeds" [L, D], "positions" [3, L]}`` (the decoder's prefill inputs), ``"tokens"``,
    ``"logprobs"`` (of the greedy tokens) and ``"uncompressed_len"`` (the prompt's length
    before compression)."""
    seen: dict = {}

    def on_decoder(module, args, kwargs):
        if "embeds" not in seen:
            seen["embeds"] = kwargs["inputs_embeds"][0].detach().clone()
            seen["positions"] = kwargs["position_ids"][-3:, 0].detach().clone()  # 3 M-RoPE rows

    decoder = thinker.model.language_model if hasattr(thinker.model, "language_model") else thinker.model
    with patch(thinker, config), torch.no_grad():
        hook = decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)
        try:
            out = thinker.generate(**inputs, use_audio_in_video=use_audio_in_video,
                                   max_new_tokens=max_new_tokens, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)
        finally:
            hook.remove()
    prompt_len = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_len:].tolist()
    logprobs = torch.log_softmax(torch.stack(out.logits, dim=1)[0].float(), dim=-1)
    seen["tokens"] = tokens
    seen["logprobs"] = [float(logprobs[i, t]) for i, t in enumerate(tokens)]
    seen["uncompressed_len"] = prompt_len
    return seen


def per_item_reference(thinker, processor, items: list[dict], config: OmniZipConfig,
                       max_new_tokens: int) -> dict:
    """The whole prompt ``items`` (conversation items: videos with their audio, then the
    question) through the processor and the patched thinker with ``config`` decided per item:
    what :func:`patched_greedy_run` returns, plus ``"inputs"``."""
    inputs = dict(build_inputs(processor, [items], use_audio_in_video=True, fps=2.0))
    per_item = PerItem.from_dict(config.replace(budget="exact").to_dict())
    return {**patched_greedy_run(thinker, inputs, per_item, max_new_tokens), "inputs": inputs}


def chunk_session_runs(thinker, processor, chunks: list[tuple], question: str,
                       config: OmniZipConfig, chunk_seconds: float, max_new_tokens: int,
                       ask_after: list[int]) -> dict:
    """One ``omnizip.stream(..., chunk_seconds=...)`` session fed ``chunks`` (``(frames,
    audio)`` of ``chunk_seconds`` each), asked ``question`` once ``n`` chunks are in, for each
    ``n`` of ``ask_after``: ``{n: {"embeds" [L, D], "positions" [3, L], "tokens",
    "logprobs"}}``, the rows being every decoder input the session's cache took for that
    prompt (the text before the media, each chunk, the question, the first generated step's
    input) as the decoder received them."""
    import omnizip

    calls: list[tuple] = []

    def on_decoder(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        positions = kwargs["position_ids"]
        # M-RoPE rows [3 or 4, 1, n]; a decode step gets one row ([1, 1, n]), used for all three
        if positions.dim() == 3 and positions.shape[0] >= 3:
            positions = positions[-3:, 0]
        else:
            positions = positions.reshape(-1, positions.shape[-1])[0].expand(3, -1)
        calls.append((cache, kwargs["inputs_embeds"][0].detach().clone(),
                      positions.detach().clone()))

    decoder = thinker.model.language_model if hasattr(thinker.model, "language_model") else thinker.model
    hook = decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)
    runs: dict = {}
    try:
        session = omnizip.stream(thinker, processor, config, chunk_seconds=chunk_seconds)
        committed = [c for c in calls if c[0] is session._cache.cache]  # the text before the media
        for i, (frames, audio) in enumerate(chunks, start=1):
            calls.clear()
            session.append(frames, audio)
            committed += [c for c in calls if c[0] is session._cache.cache]
            if i not in ask_after:
                continue
            calls.clear()
            session.ask(question, max_new_tokens=max_new_tokens, do_sample=False,
                        output_logits=True, return_dict_in_generate=True)
            asked = [c for c in calls if c[0] is session._cache.cache]
            rows = committed + asked[:2]  # the question, then generate's first step (one token)
            out = session.last_output
            tokens = session.answers[-1].tokens
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1)[0].float(), dim=-1)
            runs[i] = {"embeds": torch.cat([r[1] for r in rows]),
                       "positions": torch.cat([r[2] for r in rows], dim=1),
                       "tokens": tokens,
                       "logprobs": [float(logprobs[k, t]) for k, t in enumerate(tokens)]}
    finally:
        hook.remove()
    return runs
