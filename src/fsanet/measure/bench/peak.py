"""What the numbers were measured on: CPU, ISA, library versions, and the fp32 matmul peak."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
BLAS_ENV = ("OPENBLAS_CORETYPE", *THREAD_ENV)
PEAK_SIZES = (256, 512, 1024, 1536)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _blas() -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {}
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        info = {k: blas[k] for k in ("name", "version", "openblas configuration") if k in blas}
    except (TypeError, AttributeError):  # numpy < 1.26 has no mode="dicts"
        pass
    info["env"] = {k: os.environ[k] for k in BLAS_ENV if k in os.environ}
    return info


def machine_info(with_tensorflow: bool = False) -> dict[str, Any]:
    """The CPU as the runtimes see it (fsanet.core.machine: model, cores, ISA features and class),
    the OS, library versions and numpy's BLAS; never imports TensorFlow."""
    libraries = {
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
    }
    if with_tensorflow:
        libraries["tensorflow"] = _version("tensorflow") or _version("tensorflow-cpu")
    return {
        **this_machine().to_dict(),  # "cores": the CPUs this process may use
        "logical_cpus": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "libraries": libraries,
        "blas": _blas(),
    }


@dataclass(frozen=True)
class Peak:
    """numpy's best fp32 matmul rate with `threads` BLAS threads (the roofline's ceiling)."""

    gflops: float
    threads: int
    gflops_by_size: dict[str, float] = field(default_factory=dict)
    openblas_core: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gflops"] = round(self.gflops, 2)
        data["gflops_by_size"] = {k: round(v, 2) for k, v in self.gflops_by_size.items()}
        return data


def measure_peak(threads: int = 1, seconds: float = 0.25) -> Peak:
    """Best fp32 GFLOP/s of numpy's matmul over a few square sizes, `seconds` each."""
    env = dict(os.environ)
    for key in THREAD_ENV:
        env[key] = str(threads)
    args = json.dumps({"sizes": list(PEAK_SIZES), "seconds": seconds})
    script = Path(__file__).with_name("_peak.py")
    try:
        done = subprocess.run(
            [sys.executable, str(script), args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        data = json.loads(done.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        raise FsanetError(f"could not measure the matmul peak with numpy ({e})") from e
    rates = {k: float(v) for k, v in data["gflops_by_size"].items()}
    return Peak(max(rates.values()), threads, rates, data.get("openblas_core"))
