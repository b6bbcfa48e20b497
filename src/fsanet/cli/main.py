"""`fsanet`: the parser and the entry point. Each verb is a module of this package with
`HELP`, `add_arguments(parser)` and `run(args)`; only the verb being run is imported, so
`fsanet --help` loads none of them."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
from types import ModuleType
from typing import NoReturn

from fsanet import __version__
from fsanet.cli.groups import HelpFormatter, add_common
from fsanet.core import progress
from fsanet.core.errors import FsanetError

# verb -> one line of help (the verb's module is fsanet.cli.<verb>)
VERBS = {
    "fetch": "download and verify model and data files",
    "dataset": "build FSA-Net's 64x64 AFLW2000 set from the official release",
    "build": "convert the TensorFlow graphs into a verified engine",
    "eval": "evaluate an engine on AFLW2000 (MAE per variant and fused)",
    "run": "one click: fetch, dataset, build, eval",
    "matrix": "accuracy of every backend x precision on AFLW2000",
    "predict": "head pose of every face in images, folders, video",
    "bench": "throughput and latency per batch size, vs TensorFlow",
    "serve": "HTTP head-pose service with dynamic batching",
    "loadtest": "load a local `fsanet serve`: throughput, latency",
    "export": "an engine as a Triton model repository",
}
# `serve` stops on SIGTERM itself (uvicorn drains the requests in flight, then exits 0).
_OWN_SIGTERM = frozenset({"serve"})
# Writing the results failed (a full disk, a closed pipe): one line, not a traceback.
_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EPIPE})


def verb_module(name: str) -> ModuleType:
    return importlib.import_module(f"fsanet.cli.{name}")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (exit 2, argparse's code for usage
    errors) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parser(verbs: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The `fsanet` parser, with the arguments of `verbs` (default: all) filled in."""
    top = _Parser(
        prog="fsanet",
        description="FSA-Net head pose: fetch, build verified engines, evaluate on AFLW2000.",
        formatter_class=HelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"fsanet {__version__}")
    top.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in VERBS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        add_common(p)
        if verbs is None or name in verbs:
            verb_module(name).add_arguments(p)
    return top


def _verb_in(argv: list[str]) -> str | None:
    """The verb of a command line: its first word that names one."""
    return next((a for a in argv if a in VERBS), None)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for Ctrl-C: temporary
    files are removed by the `finally` blocks that made them."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = _verb_in(argv)
    top = parser((verb,) if verb else ())
    args = top.parse_args(argv)
    if args.command is None:  # a bare `fsanet`: what there is to run
        top.print_help()
        return 0
    if args.quiet:
        progress.set_enabled(False)
    previous = None
    if args.command not in _OWN_SIGTERM and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        verb_module(args.command).run(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not after main returns
    except FsanetError as e:
        print(f"fsanet: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:
            raise
        print(f"fsanet: error: cannot write the output: {e.strerror}", file=sys.stderr)
        _silence_stdout()  # what is still buffered there cannot be written either
        return 1
    except KeyboardInterrupt as e:
        print("fsanet: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
