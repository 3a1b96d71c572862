"""The ``omnizip`` parser and entry point: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from typing import Any

from . import bench_cmd, eval_cmd, inspect_cmd, probe_cmd, run_cmd, stream_cmd
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, CLIError, Parser, one_line

__all__ = ["build_parser", "main"]

#: the subcommands, in the order ``--help`` lists them
COMMANDS = (run_cmd, stream_cmd, inspect_cmd, bench_cmd, eval_cmd, probe_cmd)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="omnizip",
        description="OmniZip: training-free audio-guided token compression for omnimodal LLMs "
        "(Qwen2.5-Omni, Qwen3-Omni). Without --model a random-weight model is built in code; "
        "without VIDEO the bundled demo clip is used.",
    )
    parser.add_argument("--version", action="version", version=f"omnizip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--quiet", action="store_true", help="only the results on stdout")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


@contextlib.contextmanager
def _quiet_libraries(debug: bool, no_progress: bool) -> Any:
    """Library warnings, logs and progress bars off for the command (unless ``--debug``);
    the previous state is restored afterwards (``main`` may run inside another program)."""
    loggers = {name: logging.getLogger(name) for name in ("omnizip", "huggingface_hub", "transformers")}
    levels = {name: lg.level for name, lg in loggers.items()}
    hf_logging = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging
    hf_state = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) if hf_logging else None
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
            for lg in loggers.values():
                lg.setLevel(logging.ERROR)  # e.g. the Hub client logs every retry of a host
            if hf_logging is not None:
                hf_logging.set_verbosity_error()
        if no_progress and hf_logging is not None:
            hf_logging.disable_progress_bar()  # transformers' own bars (weight loading)
        try:
            yield
        finally:
            for name, lg in loggers.items():
                lg.setLevel(levels[name])
            if hf_logging is not None and hf_state is not None:
                hf_logging.set_verbosity(hf_state[0])
                if hf_state[1]:
                    hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnizip`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    debug = bool(args.debug)
    if args.quiet:
        args.no_progress = True
    if args.command == "bench" and args.clip_seconds is None:
        import torch

        on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        args.clip_seconds = 60.0 if on_gpu else 20.0
    prog = f"omnizip {args.command}"
    try:
        with _quiet_libraries(debug, bool(args.no_progress)):
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"{prog}: error: unexpected {one_line(exc)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
