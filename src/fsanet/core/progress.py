"""Progress bars for long work: on a terminal by default, off in logs and with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

_enabled: bool | None = None  # None: only when stderr is a terminal


def set_enabled(enabled: bool | None) -> None:
    global _enabled
    _enabled = enabled


def bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    disable = (not sys.stderr.isatty()) if _enabled is None else not _enabled
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, file=sys.stderr, **kwargs)
