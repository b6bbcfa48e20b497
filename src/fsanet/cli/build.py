"""`fsanet build`: TF graph -> ONNX -> graph passes -> precision -> engine, checked against
TensorFlow; `--precision auto` measures the candidates here and keeps the fastest."""

from __future__ import annotations

import argparse

from fsanet.cli import groups, types


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS

    groups.add_engine(p, f"{FUSION} (default), {', '.join(VARIANTS)}")
    p.add_argument(
        "--batch",
        dest="tune_batches",
        type=types.batches,
        metavar="SIZES",
        help="--precision auto: batch sizes to time the candidates at (default: "
        f"{','.join(map(str, groups._build_default('tune_batches')))})",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> None:
    from fsanet.api import build, describe

    artifact = build(groups.build_options(args), args.mirror, force=args.force)
    groups.emit(
        args, {"path": str(artifact.path), **artifact.manifest.to_dict()}, describe(artifact)
    )
