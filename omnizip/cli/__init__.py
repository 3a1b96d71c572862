"""The ``omnizip`` command line: ``run``, ``inspect``, ``bench`` and ``eval``.

    omnizip run [VIDEO] --question "..." [--model ID_OR_PATH] [--preset 45|35 | --rho-audio X ...]
    omnizip inspect [VIDEO] -o DIR
    omnizip bench [--model ...] [--clip-seconds N] [--reps N] [-o results.json]
    omnizip eval --benchmark NAME --data PATH --model ID_OR_PATH [--method M --retention R]

Without ``--model`` a random-weight model of the real Qwen2.5-Omni architecture is built in
code (its answers are noise; its speed is that of its size); without ``VIDEO`` the bundled
10-second clip (``omnizip/assets/demo_clip.mp4``, made by ``scripts/make_demo_clip.py``) is used.

Bad input (a missing or unreadable file, a video without audio, a model that cannot be loaded,
an unknown preset, a ratio out of range, an output path that cannot be written) prints one
``omnizip <command>: error: ...`` line and exits with status 2; ``--debug`` shows the traceback
of unexpected errors (status 1).

Modules: :mod:`~omnizip.cli.app` (parser, ``main``), :mod:`~omnizip.cli.errors`,
:mod:`~omnizip.cli.options` (shared options), :mod:`~omnizip.cli.session` (model, clip and
prompt for a command), one ``*_cmd`` module per command. Models load through
:mod:`omnizip.loading`, media through :mod:`omnizip.inputs`.
"""

from __future__ import annotations

from ..inputs import Clip, loop_clip, read_clip
from ..loading import BUILTIN_MODELS
from .app import build_parser, main
from .errors import CLIError
from .options import DEFAULT_CLIP

__all__ = ["BUILTIN_MODELS", "DEFAULT_CLIP", "CLIError", "Clip", "build_parser", "loop_clip", "main", "read_clip"]
