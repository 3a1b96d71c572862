"""README.md and docs/*.md hold together: links resolve, and quoted ``--help`` texts are real.

Pages: README.md and every ``docs/*.md`` (by glob, so pages added later are covered).

* **Links.** Every inline link and image outside code (``[text](target)``, ``![alt](target)``)
  whose target has no URL scheme is a path relative to the page: it must exist inside the
  repository (a file or a folder). A ``#anchor`` (alone: the same page; after a ``.md`` path:
  that page) must be a heading anchor of the target page as GitHub makes them: the heading's
  rendered text lower-cased, every character but letters, digits, ``_``, ``-`` and spaces
  dropped, spaces turned into ``-``, and a repeated anchor numbered ``-1``, ``-2``, ...
  (tests/markdown_doc.py). Links with a scheme (``https:``, ``mailto:``) are not fetched.
* **``--help`` texts.** A quoted help text is marked by an HTML comment line
  ``<!-- cli-help: omnizip run -->`` (the command, without ``--help``) directly followed by a
  ```text block; the block must equal what ``omnizip run --help`` prints on a terminal
  ``scripts/docs_cli_help.WIDTH`` (100) columns wide. ``python scripts/docs_cli_help.py --write``
  regenerates every marked block from the parser. A block that starts like a help text
  (``usage: omnizip``) without the marker fails, so no help text is quoted unchecked; and
  docs/cli.md quotes the help of every subcommand the parser has.
* **Front page.** README.md has at most 350 lines, and it and docs/README.md (the index) link
  every ``docs/*.md`` page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from markdown_doc import ROOT, anchors, fenced_blocks, links, pages, rel, slug

sys.path.insert(0, str(ROOT / "scripts"))
import docs_cli_help

PAGES = pages()
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def test_slugs_follow_github():
    """Anchors GitHub gives these headings (written out by hand from its rules)."""
    assert slug("Hugging Face Qwen2.5-Omni") == "hugging-face-qwen25-omni"
    assert slug("9. Streams: the causal rules") == "9-streams-the-causal-rules"
    assert slug("`--help` of every command") == "--help-of-every-command"
    assert slug("Methods (`omnizip.methods`)") == "methods-omnizipmethods"
    assert slug("Core API contract (omnizip.core) — what adapters") == "core-api-contract-omnizipcore--what-adapters"
    assert slug("lmms-eval's own vLLM model") == "lmms-evals-own-vllm-model"
    assert slug("Equal-cost comparison: `omnizip bench --methods ... --flops-ratio F`") == (
        "equal-cost-comparison-omnizip-bench---methods----flops-ratio-f")
    assert slug("The [README](../README.md) and **bold** ρ_a") == "the-readme-and-bold-ρ_a"
    assert anchors("# A\n## Setup\n```\n# not a heading\n```\n## Setup\n### Setup\n") == [
        "a", "setup", "setup-1", "setup-2"]


def test_the_link_extractor_skips_code():
    text = ("See [a](x.md#b), ![img](images/p.png) and `[not](code.md)`.\n"
            "```python\n# [not](block.md)\n```\n[c](https://example.org/(x)) [d](#e \"title\")\n")
    assert links(text) == [(1, "x.md#b"), (1, "images/p.png"), (5, "https://example.org/(x)"), (5, "#e")]


def _broken_links(page: Path, text: str) -> list[str]:
    """What is wrong with each relative link of ``text``, the content of ``page``."""
    broken = []
    for line, target in links(text):
        where = f"{rel(page)}:{line}: ({target})"
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{where} leaves the repository")
        elif not dest.exists():
            broken.append(f"{where} names no file or folder")
        elif anchor:
            if dest.suffix != ".md":
                broken.append(f"{where}: an anchor into a file that is not a Markdown page")
            elif anchor not in anchors(dest.read_text(encoding="utf-8") if path else text):
                broken.append(f"{where}: {rel(dest)} has no heading with the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_relative_links_and_anchors_resolve(page):
    assert _broken_links(page, page.read_text(encoding="utf-8")) == []


def test_the_link_check_finds_broken_links():
    """The check itself: a missing file, a missing anchor and a path out of the repository fail;
    a good link and anchor pass."""
    text = ("# Page\n[ok](architecture.md#modules) [gone](no_such_page.md) [here](#page) "
            "[bad](core_api.md#no-such-heading) [out](../../outside.md) [self](#no-such-anchor)\n")
    found = "\n".join(_broken_links(ROOT / "docs" / "README.md", text))
    assert "(architecture.md#modules)" not in found and "(#page)" not in found
    for bad in ("(no_such_page.md) names no file", "(core_api.md#no-such-heading)",
                "(../../outside.md) leaves the repository", "(#no-such-anchor)"):
        assert bad in found


QUOTED = [(rel(page), command, body) for page in PAGES
          for command, body in docs_cli_help.quoted(page.read_text(encoding="utf-8"))]


def test_help_texts_are_quoted_with_their_marker():
    """docs/cli.md quotes the help of the command and of every subcommand the parser has (a new
    subcommand needs its marked block there), each block with its marker; no page quotes a help
    text without one."""
    in_cli_md = {command for page, command, _ in QUOTED if page == "docs/cli.md"}
    assert {"omnizip run", "omnizip stream", "omnizip inspect", "omnizip bench", "omnizip eval"} <= set(
        docs_cli_help.commands())
    missing = [c for c in docs_cli_help.commands() if c not in in_cli_md]
    assert not missing, (f"docs/cli.md quotes no --help of {missing}: add '<!-- cli-help: COMMAND -->' "
                         "and an empty ```text block, then run python scripts/docs_cli_help.py --write")
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert text.count("<!-- cli-help:") == len(docs_cli_help.quoted(text)), (
            f"{rel(page)}: a cli-help marker not directly followed by a ```text block")
        for block in fenced_blocks(text):
            if block.source.startswith("usage: omnizip"):
                assert block.before.startswith("<!-- cli-help:"), (
                    f"{rel(page)}:{block.line}: a quoted help text without its cli-help marker")


@pytest.mark.parametrize(("page", "command", "body"), QUOTED,
                         ids=[f"{page}:{command}" for page, command, _ in QUOTED])
def test_quoted_help_is_the_parsers(page, command, body):
    assert body == docs_cli_help.cli_help(command), (
        f"{page}: `{command} --help` changed; run python scripts/docs_cli_help.py --write")


def test_the_help_check_sees_a_stale_text():
    """A quoted text that is not the parser's is found, and regenerating replaces it; a marker
    naming no subcommand is an error that names it."""
    text = "intro\n<!-- cli-help: omnizip run -->\n```text\nusage: omnizip run [OLD]\n```\nafter\n"
    (command, body), = docs_cli_help.quoted(text)
    assert command == "omnizip run" and body == "usage: omnizip run [OLD]\n"
    assert body != docs_cli_help.cli_help(command)
    fresh = docs_cli_help.regenerate(text)
    assert docs_cli_help.quoted(fresh) == [("omnizip run", docs_cli_help.cli_help("omnizip run"))]
    assert fresh.startswith("intro\n") and fresh.endswith("```\nafter\n")
    with pytest.raises(ValueError, match="'nosuch' is not one of"):
        docs_cli_help.cli_help("omnizip nosuch")


def test_the_readme_is_a_front_page_that_links_every_page():
    """README.md stays a front page (at most 350 lines) and links every docs/*.md page, so a
    page added later is reachable from it (docs/README.md, the index, links them too)."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 350, "README.md is the front page: move details to docs/"
    for index in (readme, ROOT / "docs" / "README.md"):
        linked = {(index.parent / target.partition("#")[0]).resolve()
                  for _, target in links(index.read_text(encoding="utf-8"))
                  if not SCHEME.match(target) and target.partition("#")[0]}
        unlinked = [rel(page) for page in PAGES if page.parent.name == "docs" and page != index
                    and page.resolve() not in linked]
        assert not unlinked, f"{rel(index)} links no {unlinked}"
