"""`fsanet dataset`: FSA-Net's 64x64 AFLW2000 set, built from the official release."""

from __future__ import annotations

import argparse

from fsanet.cli.groups import emit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", metavar="PATH", help="AFLW2000-3D zip or folder (default: the pinned release)"
    )
    p.add_argument("--output", metavar="NPZ", help="where to write (default: the cache)")


def run(args: argparse.Namespace) -> None:
    from fsanet.assets.aflw2000 import load_aflw2000, prepare_aflw2000

    path = prepare_aflw2000(args.source, args.mirror, args.output)
    data = load_aflw2000(path)
    evaluated = len(data.evaluation_subset())
    emit(
        args,
        {"path": str(path), "num_images": len(data), "num_evaluated": evaluated},
        f"{path}: {len(data)} crops of 64x64, {evaluated} within ±99° (evaluated)",
    )
