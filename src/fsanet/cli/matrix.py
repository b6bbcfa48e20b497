"""`fsanet matrix`: the accuracy of every backend x precision x calibration on AFLW2000."""

from __future__ import annotations

import argparse
import sys

from fsanet.cli import groups, types


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.engine.tta import NONE, TTA_MODES

    p.add_argument("--backends", type=types.csv, help="comma-separated (default: all)")
    p.add_argument("--precisions", type=types.csv, help="comma-separated (default: all)")
    p.add_argument(
        "--methods", type=types.csv, help="int8 calibration methods, comma-separated (default: all)"
    )
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=NONE,
        help="flip: every engine also with flip TTA, in the row below it",
    )
    p.add_argument("--output", metavar="FILE.md", help="also write the table as Markdown")


def run(args: argparse.Namespace) -> None:
    from fsanet.measure.matrix import accuracy_matrix, write_markdown

    matrix = accuracy_matrix(
        args.backends, args.precisions, args.methods, args.mirror, tta=args.tta
    )
    data, text = matrix.to_dict(), str(matrix)
    if args.output:
        command = "fsanet matrix " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["matrix"] else ""
        data["output"] = str(write_markdown(matrix, args.output, command or "fsanet matrix"))
        text += f"\n\nwritten to {data['output']}"
    groups.emit(args, data, text)
