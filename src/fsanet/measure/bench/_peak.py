"""Measure numpy's fp32 matrix-multiply rate; run as a script in a child process.

A child process so that the BLAS thread count can be set before numpy loads
(OPENBLAS_NUM_THREADS and friends are read once, at load time). Prints one JSON object.
Imports nothing from fsanet, so it starts fast.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import numpy as np


def _openblas_core() -> str | None:
    """The kernel set OpenBLAS picked (it honours OPENBLAS_CORETYPE), when OpenBLAS is used."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for path in paths:
            lib = ctypes.CDLL(path)
            for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_",
                           "scipy_openblas_get_corename", "openblas_get_corename"):  # fmt: skip
                func = getattr(lib, symbol, None)
                if func is not None:
                    func.restype = ctypes.c_char_p
                    return func().decode()
    except Exception:  # best effort: the rate is what matters
        return None
    return None


def measure(sizes: list[int], seconds: float) -> dict[str, object]:
    rates: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), np.float32)
        np.matmul(a, b, out=out)  # warm up: page in, pick kernels
        best = float("inf")
        end = time.perf_counter() + seconds
        reps = 0
        while reps < 3 or time.perf_counter() < end:
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start)
            reps += 1
        rates[str(n)] = 2 * n**3 / best / 1e9
    return {"gflops_by_size": rates, "openblas_core": _openblas_core()}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(measure(args["sizes"], args["seconds"])))
