"""The multiple-choice prompt of the OmniZip paper's evaluation.

The user turn is the video followed by::

    {question}
    Options:
    A. ...
    B. ...
    Answer with the option's letter from the given choices directly.

The last line is the standard multiple-choice instruction of LLaVA-style evaluations (used by
lmms-eval's Video-MME task and its relatives); the OmniZip authors' evaluation scripts
(github.com/KD-TAO/OmniZip, ``eval/eval.py`` for WorldSense, ``eval/eval_avut.py``,
``eval/eval_shortvideobench.py``) build exactly this prompt, with the system turn of
:data:`SYSTEM_PROMPT` (Qwen2.5-Omni's default system prompt plus one sentence asking to pick
an option), feed the video with its audio track (``use_audio_in_video`` when the file has
audio), decode greedily and read the first option letter of the answer.
"""

from __future__ import annotations

from typing import Any

from .datasets import Item

__all__ = ["ANSWER_INSTRUCTION", "QWEN_OMNI_SYSTEM_PROMPT", "SYSTEM_PROMPT", "build_conversation",
           "build_prompt"]

#: Qwen2.5-Omni's default system prompt (its model card).
QWEN_OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)

#: The system prompt of the OmniZip evaluation scripts.
SYSTEM_PROMPT = (
    QWEN_OMNI_SYSTEM_PROMPT
    + " Please analyze the video carefully and select the most appropriate answer from the "
    "given options."
)

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def build_prompt(question: str, options: list[str] | tuple[str, ...]) -> str:
    """The user text: question, ``Options:``, one option per line, the instruction."""
    return f"{question.strip()}\nOptions:\n" + "\n".join(options) + f"\n{ANSWER_INSTRUCTION}"


def build_conversation(
    item: Item, *, system_prompt: str | None = SYSTEM_PROMPT, video: Any = None
) -> list[dict[str, Any]]:
    """Chat messages for one item (the processor's ``apply_chat_template`` format).

    Args:
        item: the question.
        system_prompt: the system turn (None: no system turn, the template's default).
        video: what the video entry holds (default: the item's path).
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({
        "role": "user",
        "content": [
            {"type": "video", "video": item.video if video is None else video},
            {"type": "text", "text": build_prompt(item.question, item.options)},
        ],
    })
    return messages
