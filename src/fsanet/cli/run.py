"""`fsanet run`: the vendor sample's one-click run: fetch, dataset, build, eval."""

from __future__ import annotations

import argparse

from fsanet.cli import eval as eval_verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    eval_verb.add_arguments(p)


def run(args: argparse.Namespace) -> None:
    from fsanet.api import prepare_run

    eval_verb.evaluate(args, prepare_run(args.models, args.dataset, args.mirror))
