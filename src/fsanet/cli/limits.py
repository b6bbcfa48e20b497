"""Numeric flags bound to a field of a config dataclass: the field's default (in the flag's
unit) and its library maximum, so the parser refuses a value the library would."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, NamedTuple

from fsanet.cli import types


class Limit(NamedTuple):
    """One numeric flag of `serve`: the ServeConfig or Limits field it sets, in its unit."""

    flag: str
    field: str
    kind: type[int] | type[float]
    least: float
    help: str
    unit: int = 1  # the flag's unit in the field's (1 MiB for --max-body-mb)
    above: bool = False  # more than `least`, not at least
    metavar: str | None = None


def _dest(limit: Limit) -> str:
    return limit.flag.lstrip("-").replace("-", "_")


def add_limit(p: argparse.ArgumentParser, limit: Limit, defaults: dict[str, Any]) -> None:
    from fsanet.deploy.serve.config import maximum

    default = defaults.get(limit.field)
    most = maximum(limit.field) / limit.unit
    p.add_argument(
        limit.flag,
        type=types.number(limit.kind, limit.least, most, above=limit.above),
        default=None if default is None else limit.kind(default / limit.unit),
        metavar=limit.metavar,
        help=limit.help,
    )


def plain_defaults(cls: type) -> dict[str, Any]:
    """A dataclass's plain defaults (those made by a factory depend on the machine)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    }


def limit_values(args: argparse.Namespace, limits: tuple[Limit, ...]) -> dict[str, Any]:
    """The limits given (None: the library's default), in their fields' units."""
    out = {}
    for limit in limits:
        value = getattr(args, _dest(limit))
        if value is not None:
            out[limit.field] = limit.kind(value * limit.unit)
    return out
