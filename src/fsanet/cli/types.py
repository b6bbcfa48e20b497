"""argparse types: every value is checked while parsing, so a bad one is a usage error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from fsanet.core.errors import FsanetError


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def number(
    kind: type[int] | type[float] = float,
    least: float = 0.0,
    most: float = math.inf,
    *,
    above: bool = False,
) -> Callable[[str], Any]:
    """The argparse type of every numeric option: a finite `kind` in [least, most], or in
    (least, most] with `above`; nan, inf and out-of-range values are refused as usage errors."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {noun}, got '{text}'") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
        if above and value <= least:
            raise argparse.ArgumentTypeError(f"must be more than {least:g}, got {value:g}")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least:g}, got {value:g}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {value:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


positive = number(int, 1)  # counts and sizes
count = number(int, 0)  # counts that may be zero
positive_float = number(float, 0.0, above=True)  # durations, timeouts, sizes in MB
non_negative_float = number(float, 0.0)  # waits that may be zero
fraction = number(float, 0.0, 1.0)  # detector score thresholds
port = number(int, 0, 65535)


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def batches(text: str) -> list[int]:
    """`1,16,32` -> [1, 16, 32], checked by the benchmark's own rule."""
    from fsanet.measure.bench import parse_batches

    try:
        return parse_batches(text)
    except FsanetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def library(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A library parser as an argparse type: its FsanetError becomes a usage error."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except FsanetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped
