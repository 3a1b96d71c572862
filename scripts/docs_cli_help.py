#!/usr/bin/env python3
"""The ``--help`` texts quoted in README.md and docs/*.md, generated from the real parser.

    python scripts/docs_cli_help.py            # list the quoted help texts and whether each is current
    python scripts/docs_cli_help.py --write    # rewrite every quoted help text from the parser
    python scripts/docs_cli_help.py --check    # exit 1 when one differs (tests/test_docs_links.py checks it too)

A quoted help text is an HTML comment line ``<!-- cli-help: omnizip run -->`` (the command
without ``--help``) directly followed by a ```text block: that block must be exactly what
``omnizip run --help`` prints with the terminal ``WIDTH`` columns wide (argparse wraps help to the
terminal; the docs fix it so the text does not depend on who generated it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the terminal width the quoted help texts are formatted for
WIDTH = 100
MARKER = re.compile(r"^<!-- cli-help: (?P<command>[^>]*?) -->\n```text\n(?P<body>.*?)^```$", re.M | re.S)


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _parser():
    sys.path.insert(0, str(ROOT))
    from omnizip.cli.app import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def commands() -> list[str]:
    """``omnizip`` and ``omnizip SUBCOMMAND`` for every subcommand, in ``--help`` order."""
    return ["omnizip", *(f"omnizip {name}" for name in _subcommands(_parser()))]


def cli_help(command: str) -> str:
    """What ``<command> --help`` prints (``command`` is ``omnizip`` or ``omnizip SUBCOMMAND``),
    formatted for a terminal ``WIDTH`` columns wide."""
    words = command.split()
    if not words or words[0] != "omnizip":
        raise ValueError(f"cli-help marker: expected 'omnizip [SUBCOMMAND]', got {command!r}")
    parser = _parser()
    for word in words[1:]:
        subcommands = _subcommands(parser)
        if word not in subcommands:
            raise ValueError(f"cli-help marker {command!r}: {word!r} is not one of {sorted(subcommands)}")
        parser = subcommands[word]
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        return parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def quoted(text: str) -> list[tuple[str, str]]:
    """``(command, quoted help text)`` of every marked block of a page."""
    return [(m.group("command"), m.group("body")) for m in MARKER.finditer(text)]


def regenerate(text: str) -> str:
    """The page with every marked block replaced by the real help text."""
    def current(m: re.Match) -> str:
        return f"<!-- cli-help: {m.group('command')} -->\n```text\n{cli_help(m.group('command'))}```"
    return MARKER.sub(current, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the quoted help texts")
    mode.add_argument("--check", action="store_true", help="exit 1 when a quoted help text is stale")
    args = p.parse_args(argv)
    stale = []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        for command, body in quoted(text):
            ok = body == cli_help(command)
            print(f"{page.relative_to(ROOT)}: {command} --help: {'current' if ok else 'STALE'}")
            stale += [] if ok else [page]
        if args.write and page in stale:
            page.write_text(regenerate(text), encoding="utf-8")
    if args.write and stale:
        print(f"rewrote {len(set(stale))} page(s)")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
