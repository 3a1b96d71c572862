"""The text around a stream's media: the processor's own chat template, cut at the video.

The prompt of a stream is the one a processor builds for one user turn holding the video and
a question (``[{"type": "video"}, {"type": "text", "text": question}]``, optionally after a
system turn). It is rendered once with a placeholder question and cut at the video block:

* the *prefix*: the text before the video and the two opening markers
  (``<|vision_bos|><|audio_bos|>``; Qwen3-Omni: ``<|vision_start|><|audio_start|>``), which go
  into the cache before the first window;
* the *closing*: the two closing markers, the question and the assistant header, which
  :meth:`omnizip.stream.StreamSession.ask` runs on top of the cache and drops afterwards.

Special tokens split the text before BPE runs, so the pieces tokenize exactly as the whole
prompt does (tests/test_stream_layout.py compares with the processor's ``input_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ItemPromptPieces", "PromptPieces", "item_prompt_pieces", "prompt_pieces"]

_QUESTION = "\x00question\x00"


@dataclass(frozen=True)
class PromptPieces:
    """The token ids around the media of a stream's prompt.

    Attributes:
        prefix_ids: int64 ``[n_text + 2]`` text before the media, then the two opening markers.
        closing_markers: int64 ``[2]`` the two markers after the media.
        before_question, after_question: the template's text between the closing markers and
            the question, and after it (the end of the turn and the assistant header).
    """

    prefix_ids: torch.Tensor
    closing_markers: torch.Tensor
    before_question: str
    after_question: str
    tokenizer: Any

    @property
    def n_text(self) -> int:
        """Text tokens before the opening markers."""
        return int(self.prefix_ids.numel()) - 2

    def closing_ids(self, question: str) -> torch.Tensor:
        """int64 ``[n]``: the closing markers, then ``question`` in its template text."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        text = self.before_question + question + self.after_question
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.cat([self.closing_markers, torch.tensor(ids, dtype=torch.int64)])


def _token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"processor: {token!r} is not one token of its tokenizer")
    return int(ids[0])


def prompt_pieces(processor: Any, system: str | None = None) -> PromptPieces:
    """Cut ``processor``'s chat template (a Qwen2.5-Omni or Qwen3-Omni processor) at the
    video block of a one-turn prompt; ``system``: an optional system message."""
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system must be a str or None, got {type(system).__name__}")
    tokenizer = processor.tokenizer
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": _QUESTION}]})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    block = processor.vision_bos_token + processor.video_token + processor.vision_eos_token
    if text.count(block) != 1 or text.count(_QUESTION) != 1:
        raise ValueError("processor: its chat template does not render one video block and the "
                         "question after it")
    before, after = text.split(block)
    between, end = after.split(_QUESTION)
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    opening = [_token_id(tokenizer, processor.vision_bos_token),
               _token_id(tokenizer, processor.audio_bos_token)]
    closing = [_token_id(tokenizer, processor.audio_eos_token),
               _token_id(tokenizer, processor.vision_eos_token)]
    return PromptPieces(
        prefix_ids=torch.tensor([*prefix, *opening], dtype=torch.int64),
        closing_markers=torch.tensor(closing, dtype=torch.int64),
        before_question=between,
        after_question=end,
        tokenizer=tokenizer,
    )


@dataclass(frozen=True)
class ItemPromptPieces:
    """The token ids around the media items of a chunk stream's prompt: one user turn holding
    one video item per chunk, then the question (what a streaming client sends to vLLM).

    Attributes:
        prefix_ids: int64 ``[n]`` the text before the first item (no markers).
        between_ids: int64 ``[m]`` the text between two items (often empty).
        after_item: tokens after the item of a one-item prompt without a question (the end
            of the turn and the assistant header), as the session's chunk prompts end.
        before_question, after_question: the text between the last item and the question,
            and after it.
    """

    prefix_ids: torch.Tensor
    between_ids: torch.Tensor
    after_item: int
    before_question: str
    after_question: str
    tokenizer: Any

    def question_ids(self, question: str) -> torch.Tensor:
        """int64 ``[n]``: ``question`` in its template text, after the last item."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        text = self.before_question + question + self.after_question
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"],
                            dtype=torch.int64)


def item_prompt_pieces(processor: Any, system: str | None = None) -> ItemPromptPieces:
    """Cut ``processor``'s chat template at the video blocks of a prompt with two video items
    and a question, and of one with a single item and no question."""
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system must be a str or None, got {type(system).__name__}")
    tokenizer = processor.tokenizer

    def render(content: list[dict[str, Any]]) -> str:
        messages: list[dict[str, Any]] = []
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": content})
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"],
                            dtype=torch.int64)

    block = processor.vision_bos_token + processor.video_token + processor.vision_eos_token
    two = render([{"type": "video"}, {"type": "video"}, {"type": "text", "text": _QUESTION}])
    one = render([{"type": "video"}])
    if two.count(block) != 2 or two.count(_QUESTION) != 1 or one.count(block) != 1:
        raise ValueError("processor: its chat template does not render one block per video "
                         "item and the question after them")
    before, between, rest = two.split(block)
    before_one, after_one = one.split(block)
    if before_one != before:
        raise ValueError("processor: its chat template renders different text before the first "
                         "video with and without a question")
    before_question, after_question = rest.split(_QUESTION)
    return ItemPromptPieces(
        prefix_ids=ids(before), between_ids=ids(between), after_item=int(ids(after_one).numel()),
        before_question=before_question, after_question=after_question, tokenizer=tokenizer)
