"""The Python snippets of README.md and of every docs/*.md page run as written.

Every ```python block of README.md and of every page ``docs/*.md`` (found by glob on every run,
so a page added later is covered without touching this file) is executed on its own, in a fresh
namespace, from the repository root (as a reader pasting it would). A block may opt out of
running only with a first line ``# readme: no-run (<reason>)`` whose reason names what cannot
exist in the test environment: a real checkpoint (a download) or a GPU. Opted-out blocks are
still compiled, and :func:`test_opt_outs_are_justified` lists them with their reasons. A block
that talks to the ``make serve`` server starts with ``# readme: needs-server`` instead:
tests/test_vllm_server.py runs it as written against the real vLLM server it starts (only the
address and the media folder the server may read are swapped in). Blocks that build models use
the built-in tiny ones (``load_model("tiny")``), so the whole module takes seconds.

Links, anchors and the quoted ``--help`` texts of the same pages: tests/test_docs_links.py.
"""

from __future__ import annotations

import re

import pytest
from markdown_doc import ROOT, fenced_blocks, pages, rel

NO_RUN = re.compile(r"^#\s*readme:\s*no-run\s*\((?P<reason>[^)]*)\)\s*$")
#: what an opt-out reason must name: only these cannot exist here
JUSTIFIED = re.compile(r"checkpoint|GPU|CUDA", re.IGNORECASE)
#: a block run by tests/test_vllm_server.py against the server it starts
NEEDS_SERVER = re.compile(r"^#\s*readme:\s*needs-server\b")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, source)`` of each fenced ```python block, in order."""
    return [(b.line, b.source) for b in fenced_blocks(text) if b.info == "python"]


def _first_line(source: str) -> str:
    return source.lstrip("\n").splitlines()[0].strip() if source.strip() else ""


def opt_out_reason(source: str) -> str | None:
    m = NO_RUN.match(_first_line(source))
    return m.group("reason").strip() if m else None


def needs_server(source: str) -> bool:
    return bool(NEEDS_SERVER.match(_first_line(source)))


#: ``(page, first line, source)`` of every python block of README.md and docs/*.md
BLOCKS = [(rel(page), line, src) for page in pages()
          for line, src in python_blocks(page.read_text(encoding="utf-8"))]
SERVER_BLOCKS = [(page, line, src) for page, line, src in BLOCKS if needs_server(src)]
RUN = [(page, line, src) for page, line, src in BLOCKS
       if opt_out_reason(src) is None and not needs_server(src)]
NOT_RUN = [(page, line, src, opt_out_reason(src)) for page, line, src in BLOCKS
           if opt_out_reason(src) is not None]


def test_the_extractor_finds_blocks_and_markers():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# readme: no-run (needs a GPU)\ny\n```\n"
    blocks = python_blocks(text)
    assert blocks == [(3, "x = 1\n"), (9, "# readme: no-run (needs a GPU)\ny\n")]
    assert opt_out_reason(blocks[0][1]) is None
    assert opt_out_reason(blocks[1][1]) == "needs a GPU"
    assert needs_server("# readme: needs-server (make serve)\nx\n")
    assert not needs_server("x = 1\n")


def test_every_page_is_covered():
    """The glob finds the README and the docs pages, and both hold blocks that run."""
    names = {rel(page) for page in pages()}
    assert {"README.md", "docs/core_api.md", "docs/streaming.md"} <= names
    assert any(page == "README.md" for page, _, _ in RUN), "README.md has no python block that runs"
    assert any(page.startswith("docs/") for page, _, _ in RUN), "docs/ has no python block that runs"


def test_server_blocks_talk_to_make_serve():
    """The blocks left to tests/test_vllm_server.py are requests to `make serve`'s address."""
    assert SERVER_BLOCKS, "no page shows a request to the vLLM server"
    for page, line, source in SERVER_BLOCKS:
        assert "http://127.0.0.1:8000" in source, f"{page}:{line}"
        compile(source, f"{page}:{line}", "exec", dont_inherit=True)


def test_opt_outs_are_justified():
    """Each block that does not run says why, and the reason is a checkpoint or a GPU."""
    listed = [f"{page}:{line}: {reason}" for page, line, _, reason in NOT_RUN]
    print("README/docs blocks not run:", *listed, sep="\n  ")
    for page, line, _, reason in NOT_RUN:
        assert JUSTIFIED.search(reason), (
            f"{page}:{line}: opt-out reason {reason!r} names no real checkpoint or GPU")


@pytest.mark.parametrize(("page", "line", "source", "reason"), NOT_RUN,
                         ids=[f"{page}:{line}" for page, line, _, _ in NOT_RUN])
def test_opted_out_blocks_compile(page, line, source, reason):
    compile(source, f"{page}:{line}", "exec", dont_inherit=True)


def _run_block(name: str, source: str, monkeypatch) -> None:
    import torch

    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's small ops are fastest single-threaded here
    try:
        # dont_inherit: this file's `from __future__ import annotations` must not leak into the
        # block (a reader's paste has real annotations; dataclasses there depend on it)
        exec(compile(source, name, "exec", dont_inherit=True), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("page", "line", "source"), RUN, ids=[f"{page}:{line}" for page, line, _ in RUN])
def test_block_runs(page, line, source, monkeypatch):
    _run_block(f"{page}:{line}", source, monkeypatch)
