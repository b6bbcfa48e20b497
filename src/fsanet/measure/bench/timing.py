"""Timing: the interleaved run order, the timed iterations and the inputs they are fed."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.engine.backends import check_images

_POOL = 256  # distinct crops cycled through, so no batch is served twice in a row
_RANDOM_SEED = 0


def interleave(num_engines: int, rounds: int) -> list[tuple[int, int]]:
    """(round, engine index) in run order: A B, then B A, then A B...

    Every engine runs once per round, next to the others, so slow drift of the machine hits
    all of them alike; reversing every other round cancels the advantage of going first.
    """
    order: list[tuple[int, int]] = []
    for r in range(rounds):
        engines = range(num_engines) if r % 2 == 0 else reversed(range(num_engines))
        order += [(r, e) for e in engines]
    return order


def split_iterations(iterations: int, rounds: int) -> list[int]:
    """Iterations per round, as even as possible, summing to `iterations`."""
    return [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]


def time_calls(
    engine: Callable[[np.ndarray], Any],
    feeds: list[np.ndarray],
    count: int | None,
    seconds: float | None,
) -> tuple[list[float], list[float]]:
    """Run `count` iterations (or for `seconds`, at least one); per-iteration timings."""
    prepare: list[float] = []
    call: list[float] = []
    clock = time.perf_counter
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call would land in one engine's numbers only
    try:
        deadline = clock() + seconds if seconds is not None else math.inf
        i = 0
        while (count is None or i < count) and (i == 0 or clock() < deadline):
            raw = feeds[i % len(feeds)]
            t0 = clock()
            batch = check_images(raw)
            t1 = clock()
            engine(batch)
            t2 = clock()
            prepare.append(t1 - t0)
            call.append(t2 - t1)
            i += 1
    finally:
        if enabled:
            gc.enable()
    return prepare, call


def batch_feeds(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """A few distinct uint8 batches drawn in order from the pool (wrapping around)."""
    count = max(1, min(8, len(pool) // batch))
    return [
        np.take(pool, range(j * batch, (j + 1) * batch), axis=0, mode="wrap") for j in range(count)
    ]


def input_pool(dataset: str | Path | None, mirror: str | None = None) -> tuple[np.ndarray, str]:
    """uint8 crops to feed: AFLW2000 where available (or asked for), else random pixels.

    `dataset`: None (the cached AFLW2000 set if it is there, else random), "random", or the
    path of an AFLW2000 npz / release.
    """
    if dataset is None:
        from fsanet.assets.aflw2000 import default_npz_path

        dataset = default_npz_path() if default_npz_path().is_file() else "random"
    if str(dataset) == "random":
        rng = np.random.default_rng(_RANDOM_SEED)
        return rng.integers(0, 256, size=(_POOL, 64, 64, 3), dtype=np.uint8), "random"
    from fsanet.assets.aflw2000 import load_aflw2000

    images = load_aflw2000(dataset, mirror).evaluation_subset().images
    return np.ascontiguousarray(images[:_POOL]), "aflw2000"
