"""Errors and exit statuses of the ``omnizip`` command line.

Bad input (a missing or unreadable file, a model that cannot be loaded, a bad option value)
is one ``omnizip <command>: error: ...`` line and exit status 2; anything else is a bug,
status 1 (``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "CLIError", "Parser", "one_line", "say"]

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class CLIError(Exception):
    """Bad input or an environment problem: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def say(message: str, quiet: bool = False) -> None:
    """A progress line on stderr (stdout holds the results)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
