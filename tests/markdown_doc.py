"""Reading the project's Markdown pages the way GitHub renders them: fenced blocks, headings and
their anchors, relative links. Shared by tests/test_readme.py and tests/test_docs_links.py.

Written for this repository's pages (CommonMark fences of backticks, ATX headings, inline links);
it is not a general Markdown parser.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^\s*```\s*(?P<info>[^`\s]*)")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
#: inline links and images, ``[text](target)`` / ``![alt](target "title")``; the text may hold
#: code spans and one level of brackets
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\((?P<target>[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                  r"(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def pages() -> list[Path]:
    """README.md and every docs/*.md page, the pages the docs tests cover (found anew each run)."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (``python``, ``text``, ...), the line number of its
    first body line, its body, and the non-blank line just before the opening fence."""

    info: str
    line: int
    source: str
    before: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text``, in order."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append(Block(m.group("info").lower(), start, "\n".join(body) + "\n", before))
        i += 1
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line outside fenced blocks."""
    out, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line) or (in_fence and re.match(r"^\s*```\s*$", line)):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((number, line))
    return out


def _plain(heading: str) -> str:
    """The text GitHub renders for a heading's inline Markdown: links become their text, code
    spans and emphasis lose their markers."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "")
    return re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (before de-duplication): the rendered text lower-cased,
    every character but letters, marks, digits, connector punctuation (``_``), spaces and ``-``
    dropped, each space turned into ``-``."""
    kept = "".join(ch for ch in _plain(heading).strip().lower()
                   if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc")
    return kept.replace(" ", "-")


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(line number, level, text)`` of every ATX heading outside fenced blocks."""
    out = []
    for number, line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            out.append((number, len(m.group("hashes")), m.group("text")))
    return out


def anchors(text: str) -> list[str]:
    """Every heading anchor of a page, in order, duplicates numbered ``-1``, ``-2`` as GitHub does."""
    seen: dict[str, int] = {}
    out = []
    for _, _, heading in headings(text):
        base = slug(heading)
        n = seen.get(base, 0)
        out.append(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def links(text: str) -> list[tuple[int, str]]:
    """``(line number, target)`` of every inline link and image outside fenced blocks and code
    spans."""
    out = []
    for number, line in prose_lines(text):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            out.append((number, m.group("target")))
    return out


def toc(text: str, max_level: int = 3) -> str:
    """A page index in this project's style: one bullet per heading below the title, nested by
    level, linking the heading's anchor (for writing pages; the tests check the anchors only)."""
    lines = []
    for (_, level, heading), anchor in zip(headings(text), anchors(text), strict=True):
        if 2 <= level <= max_level:
            label = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)
            lines.append(f"{'  ' * (level - 2)}- [{label}](#{anchor})")
    return "\n".join(lines)
