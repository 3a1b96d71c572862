"""The README's Python snippets (and those of the docs pages in ``DOC_PAGES``) run as written.

Every ```python block of README.md and of the pages listed in ``DOC_PAGES`` is executed on its
own, in a fresh namespace, from the repository root (as a reader pasting it would). A block may opt out of running only with a
first line ``# readme: no-run (<reason>)`` whose reason names what cannot exist in the test
environment: a real checkpoint (a download) or a GPU. Opted-out blocks are still compiled, and
:func:`test_opt_outs_are_justified` lists them with their reasons. A block that talks to the
``make serve`` server starts with ``# readme: needs-server`` instead: tests/test_vllm_server.py
runs it as written against the real vLLM server it starts (only the address and the media
folder the server may read are swapped in). The blocks are found anew on every run, so sections
added later are covered without touching this file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NO_RUN = re.compile(r"^#\s*readme:\s*no-run\s*\((?P<reason>[^)]*)\)\s*$")
#: what an opt-out reason must name: only these cannot exist here
JUSTIFIED = re.compile(r"checkpoint|GPU|CUDA", re.IGNORECASE)
#: a block run by tests/test_vllm_server.py against the server it starts
NEEDS_SERVER = re.compile(r"^#\s*readme:\s*needs-server\b")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, source)`` of each fenced ```python block, in order."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^\s*```\s*python\s*$", lines[i]):
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def opt_out_reason(source: str) -> str | None:
    first = source.lstrip("\n").splitlines()[0] if source.strip() else ""
    m = NO_RUN.match(first.strip())
    return m.group("reason").strip() if m else None


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
def needs_server(source: str) -> bool:
    first = source.lstrip("\n").splitlines()[0] if source.strip() else ""
    return bool(NEEDS_SERVER.match(first.strip()))


SERVER_BLOCKS = [(line, src) for line, src in BLOCKS if needs_server(src)]
RUN = [(line, src) for line, src in BLOCKS if opt_out_reason(src) is None and not needs_server(src)]
NOT_RUN = [(line, src, opt_out_reason(src)) for line, src in BLOCKS if opt_out_reason(src) is not None]

#: docs topic pages whose blocks run like the README's (same opt-out rule, no server blocks)
DOC_PAGES = [ROOT / "docs" / "streaming.md", ROOT / "docs" / "serving_streams.md"]
DOC_BLOCKS = [(page.relative_to(ROOT).as_posix(), line, src) for page in DOC_PAGES
              for line, src in python_blocks(page.read_text(encoding="utf-8"))]
DOC_RUN = [(page, line, src) for page, line, src in DOC_BLOCKS if opt_out_reason(src) is None]


def test_the_extractor_finds_blocks_and_markers():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# readme: no-run (needs a GPU)\ny\n```\n"
    blocks = python_blocks(text)
    assert blocks == [(3, "x = 1\n"), (9, "# readme: no-run (needs a GPU)\ny\n")]
    assert opt_out_reason(blocks[0][1]) is None
    assert opt_out_reason(blocks[1][1]) == "needs a GPU"
    assert BLOCKS, "README.md has no python blocks"
    assert needs_server("# readme: needs-server (make serve)\nx\n")
    assert not needs_server("x = 1\n")


def test_server_blocks_talk_to_make_serve():
    """The blocks left to tests/test_vllm_server.py are requests to `make serve`'s address."""
    assert SERVER_BLOCKS, "README.md shows no request to the vLLM server"
    for line, source in SERVER_BLOCKS:
        assert "http://127.0.0.1:8000" in source, f"README.md:{line}"
        compile(source, f"README.md:{line}", "exec", dont_inherit=True)


def test_opt_outs_are_justified():
    """Each block that does not run says why, and the reason is a checkpoint or a GPU."""
    not_run = [("README.md", line, reason) for line, _, reason in NOT_RUN]
    not_run += [(page, line, opt_out_reason(src)) for page, line, src in DOC_BLOCKS
                if opt_out_reason(src) is not None]
    listed = [f"{page}:{line}: {reason}" for page, line, reason in not_run]
    print("README/docs blocks not run:", *listed, sep="\n  ")
    for page, line, reason in not_run:
        assert JUSTIFIED.search(reason), (
            f"{page}:{line}: opt-out reason {reason!r} names no real checkpoint or GPU")
    assert DOC_BLOCKS, "the docs pages of DOC_PAGES hold no python blocks"


@pytest.mark.parametrize(("line", "source", "reason"), NOT_RUN,
                         ids=[f"line{line}" for line, _, _ in NOT_RUN])
def test_opted_out_blocks_compile(line, source, reason):
    compile(source, f"README.md:{line}", "exec", dont_inherit=True)


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


@pytest.mark.parametrize(("line", "source"), RUN, ids=[f"line{line}" for line, _ in RUN])
def test_block_runs(line, source, monkeypatch):
    _run_block(f"README.md:{line}", source, monkeypatch)


@pytest.mark.parametrize(("page", "line", "source"), DOC_RUN,
                         ids=[f"{page}:{line}" for page, line, _ in DOC_RUN])
def test_docs_block_runs(page, line, source, monkeypatch):
    _run_block(f"{page}:{line}", source, monkeypatch)
