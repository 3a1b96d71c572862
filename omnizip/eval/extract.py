"""Reading the chosen option letter out of a model's answer.

:func:`extract_choice` tries, in order (letters are limited to the item's options):

1. the whole answer is a letter, possibly bracketed or followed by punctuation
   (``"B"``, ``"b"``, ``"(B)"``, ``"B."``);
2. an explicit statement: ``answer is (B)``, ``answer: b``, ``option B``, ``choice (B)``,
   ``correct one is B`` (case-insensitive);
3. a leading letter with a delimiter: ``"B. cat"``, ``"(B) cat"``, ``"b) cat"``, ``"B: cat"``;
4. a leading capital letter followed by a space and text that matches that option
   (``"B cat"``) - a bare leading ``"A "`` is otherwise the English article;
5. the answer contains exactly one option's text (case-insensitive), e.g. ``"cat"``;
6. the first standalone capital option letter (``"I think C is right"``), skipping an
   ``A`` used as an article (``"A man ..."``).

It returns None when nothing matches (counted as wrong).
"""

from __future__ import annotations

import re

__all__ = ["extract_choice"]

_ALL = "ABCDEFGHIJ"


def _option_texts(options: list[str] | tuple[str, ...] | None) -> list[str]:
    out = []
    for opt in options or ():
        m = re.match(r"^\s*\(?[A-Ja-j]\s*[\).:]\s*(.*)$", opt)
        out.append((m.group(1) if m else opt).strip().lower())
    return out


def extract_choice(
    text: str | None, options: list[str] | tuple[str, ...] | None = None, letters: str | None = None
) -> str | None:
    """The option letter an answer names, or None.

    Args:
        text: the model's decoded answer.
        options: the displayed options (``"A. cat"`` or bare texts), for rules 4-5 and the
            valid letters.
        letters: valid letters (default: one per option, else ``A``-``J``).
    """
    if text is None:
        return None
    answer = text.strip()
    if not answer:
        return None
    if letters is None:
        letters = _ALL[: len(options)] if options else _ALL
    valid = set(letters.upper())
    cls = f"[{''.join(sorted(valid))}{''.join(sorted(valid)).lower()}]"

    # 1. the whole answer is a letter
    m = re.fullmatch(rf"[\s\"'*`(\[]*({cls})[\s\"'*`)\].:]*", answer)
    if m:
        return m.group(1).upper()
    # 2. explicit statements
    m = re.search(
        rf"(?:answer|option|choice|correct (?:one|option|answer))\s*(?:is|would be|:)?\s*"
        rf"(?:option\s*)?[\"'*`(\[]*({cls})(?![A-Za-z])",
        answer,
        flags=re.IGNORECASE,
    )
    if m:
        return m.group(1).upper()
    # 3. leading letter with a delimiter
    m = re.match(rf"^[\s\"'*`]*\(?({cls})\s*[\).:]", answer)
    if m:
        return m.group(1).upper()
    texts = _option_texts(options)
    # 4. leading capital letter + the text of that option
    m = re.match(r"^([A-J])\s+(.+)$", answer, flags=re.DOTALL)
    if m and m.group(1) in valid and texts:
        idx = _ALL.index(m.group(1))
        rest = m.group(2).strip().rstrip(".").lower()
        if idx < len(texts) and texts[idx] and (rest.startswith(texts[idx]) or texts[idx].startswith(rest)):
            return m.group(1)
    # 5. exactly one option text mentioned
    low = answer.lower()
    hits = [i for i, t in enumerate(texts) if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", low)]
    if len(hits) == 1:
        return _ALL[hits[0]]
    # 6. first standalone capital option letter, not the article "A"
    for m in re.finditer(r"(?<![A-Za-z])([A-J])(?![A-Za-z])", answer):
        letter = m.group(1)
        if letter not in valid:
            continue
        if letter == "A" and re.match(r"\s+[a-z]", answer[m.end():]):
            continue
        return letter
    return None
