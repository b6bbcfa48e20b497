"""`fsanet fetch`: download and sha256-verify the graphs, AFLW2000-3D and YuNet."""

from __future__ import annotations

import argparse

from fsanet.cli.groups import emit


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FILES, FUSION

    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"{', '.join(FILES)}, or {FUSION} for the three graphs (default: all)",
    )


def run(args: argparse.Namespace) -> None:
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import resolve_files

    paths = {f.name: str(fetch(f, args.mirror)) for f in resolve_files(args.names)}
    emit(args, {"files": paths}, "\n".join(f"{n:<36} {p}" for n, p in paths.items()))
